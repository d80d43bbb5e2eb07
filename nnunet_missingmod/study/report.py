"""The study's report: which trainer to use, generated from the numbers, then the tables, the bar,
the ceiling, the controls, what drove each training and the figures. Every sentence with a number
or a direction in it is written here from the evaluations' per_case.csv files, so a report
reproduces exactly from a study's archive."""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from typing import Optional

import numpy as np

from nnunet_missingmod.study.statistics import (SeedStatistics, compare, full_subset_statistics, gap_closed,
                                                mean_dice, mean_over_seeds, paired_difference, read_per_case,
                                                seed_statistics, share_cell, sign_flip_p, uncertainty)
from nnunet_missingmod.study.study import (COMPUTE_MATCHED, ENSEMBLE, METHODS, NO_MASKING, PACKAGE_FOLDER, REFERENCE,
                                           TWO_NETWORKS, Study, dedicated_trainer, log, training_minutes)

# The repository the package runs from, when it does (a checkout): the committed benchmark of the
# trainers' costs and the 2d study's archive, which a report of another configuration compares with.
REPO = os.path.dirname(PACKAGE_FOLDER)
DISCUSSION = "results-discussion.md"  # the hand-written reading of the report, next to it
COSTS = os.path.join(REPO, "benchmarks", "results", "methods_cpu.json")  # benchmark_methods.py --save
ARCHIVE_2D = os.path.join(REPO, "benchmarks", "results", "study_cpu")  # the default study, which 3d is checked against

# The bar (issue 14): every method at or above ModalityDropoutTrainer on mean TC and ET (seed means,
# ModalityDropoutTrainer ensemble on TC or ET by more than the seed spread; the best method closes
# at least 30 % of the gap to the dedicated ceiling on TC and ET.
BAR_REGIONS = ("TC", "ET")
CEILING_SHARE = 0.30
BEYOND = "beyond the seed spread and its uncertainty"  # what a verdict other than "tie" means (statistics.compare)


def bar_rows(stats: dict[str, SeedStatistics], methods: list[str]) -> list[str]:
    """Markdown rows: each method against ModalityDropoutTrainer on the bar's regions."""
    rows = []
    for trainer in methods:
        cells, met = [], True
        for region in BAR_REGIONS:
            difference, verdict = compare(stats[trainer], stats[REFERENCE], region)
            cells.append(f"{difference * 100:+.2f} ({verdict})")
            met &= verdict != "below"
        rows.append(f"| {trainer} | " + " | ".join(cells) + f" | {'yes' if met else '**no**'} |")
    return rows


def ensemble_verdicts(stats: dict[str, SeedStatistics], two_networks: list[str]) -> list[str]:
    """What a two-network method adds beyond ensembling: each against the reference's two-seed
    ensemble on the bar's regions (a tie within the larger spread or its uncertainty), and SMML
    against its branches trained apart, which isolates mutual learning and the priors from the
    second network."""
    lines = []
    for trainer in two_networks:
        verdicts = {r: compare(stats[trainer], stats[ENSEMBLE], r) for r in BAR_REGIONS}
        text = (f"- {trainer} against {ENSEMBLE}: "
                + ", ".join(f"{r} {d * 100:+.2f} ({v})" for r, (d, v) in verdicts.items()))
        above = [r for r, (_, v) in verdicts.items() if v == "above"]
        if trainer == "SMMLTrainer":
            text += (f": above the ensemble on {' and '.join(above)} {BEYOND}." if above else
                     f": not above it {BEYOND} on {' or '.join(BAR_REGIONS)}; what SMML gains over {REFERENCE} is "
                     "what a second network gives.")
        lines.append(text if text.endswith(".") else text + ".")
    if {"SMMLTrainer", "SMMLTrainerNoConsistency"} <= set(two_networks):
        verdicts = {r: compare(stats["SMMLTrainer"], stats["SMMLTrainerNoConsistency"], r) for r in BAR_REGIONS}
        lines.append("- SMMLTrainer against SMMLTrainerNoConsistency (mutual learning and priors, the networks "
                     "equal): " + ", ".join(f"{r} {d * 100:+.2f} ({v})" for r, (d, v) in verdicts.items()) + ".")
    return lines


def ensemble_statistics(pairs: SeedStatistics, reference: SeedStatistics) -> tuple[SeedStatistics, str]:
    """The ensemble control's statistics over its seed pairs, and what its ± means. One pair has no
    spread of its own: its networks' spread over seeds (the reference's) stands in, so that a single
    pair is not taken for an exact number in the verdicts."""
    if len(next(iter(pairs.per_seed.values()))) > 1:
        return pairs, "± the spread over the pairs; pairs that share a network understate it"
    pairs.spread = dict(reference.spread)
    return pairs, f"one pair, so ± {REFERENCE}'s spread over seeds"


def which_trainer_line(region: str, stats: dict[str, SeedStatistics], contenders: list[str], cost: dict,
                       share_of=None, cost_unit: str = "nnU-Net's iteration time") -> str:
    """The report's answer for one region: the best seed mean, its lead over the reference against
    the seed spread, the share of the ceiling gap it closes (``share_of(trainer, region)``), its
    cost; for a two-network trainer, whether two reference networks averaged match it, and the
    best trainer that deploys one network."""
    best = max(contenders, key=lambda t: stats[t].mean[region])
    difference, verdict = compare(stats[best], stats[REFERENCE], region)
    text = (f"- **{region}**: best mean Dice {best} ({stats[best].mean[region] * 100:.2f} ± "
            f"{stats[best].spread[region] * 100:.2f} over seeds)")
    if best != REFERENCE:
        text += (f", {difference * 100:+.2f} points against {REFERENCE}: "
                 + ("a tie (within the seed spread or its uncertainty)" if verdict == "tie" else BEYOND))
        if share_of is not None:
            text += f"; closes {share_cell(share_of(best, region))} of {REFERENCE}'s gap to the dedicated models"
    if best in cost:
        text += f"; trains at {cost[best]:.2f}x {cost_unit}"
    if best in TWO_NETWORKS and ENSEMBLE in stats:
        difference, verdict = compare(stats[ENSEMBLE], stats[best], region)
        text += (f"; it deploys two networks, and two of {REFERENCE}'s averaged ({ENSEMBLE}) are "
                 f"{difference * 100:+.2f} against it: "
                 + ("a tie, so its lead is what a second network gives" if verdict == "tie"
                    else f"{verdict} it {BEYOND}"))
        alone = max((t for t in contenders if t not in TWO_NETWORKS), key=lambda t: stats[t].mean[region])
        if alone != REFERENCE:
            difference, verdict = compare(stats[alone], stats[REFERENCE], region)
            text += (f"; the best with one network is {alone} ({stats[alone].mean[region] * 100:.2f} ± "
                     f"{stats[alone].spread[region] * 100:.2f}, {difference * 100:+.2f} against {REFERENCE}: "
                     f"{'a tie' if verdict == 'tie' else verdict})")
    return text + "."




def every_modality_rows(full: dict[str, SeedStatistics], regions: list[str]) -> list[str]:
    """Markdown rows: each trainer with every modality present, against FullModalityTrainer (nnU-Net
    trained as usual, what a user whose scans are always complete would train instead)."""
    rows = []
    for trainer, stats in full.items():
        cells = [f"{stats.mean[r] * 100:.2f} ± {stats.spread[r] * 100:.2f}" for r in regions]
        if trainer != NO_MASKING:
            for r in regions:
                difference, verdict = compare(stats, full[NO_MASKING], r)
                cells.append(f"{difference * 100:+.2f} ({verdict})")
        else:
            cells += ["" for _ in regions]
        rows.append(f"| {trainer} | " + " | ".join(cells) + " |")
    return rows


def costs() -> dict:
    """Iteration-time ratios against nnUNetTrainer from the committed benchmark run, if any."""
    if not os.path.isfile(COSTS):
        return {}
    with open(COSTS) as f:
        results = json.load(f)
    return {name: r["iteration_time"] for name, r in results.get("ratios", {}).items()}


def archive_statistics(archive_folder: str, trainers) -> dict[str, SeedStatistics]:
    """Each trainer's mean Dice per region (short names) in a study's archive, over the seeds that
    every one of ``trainers`` has: the numbers another study is compared with."""
    from nnunet_missingmod.inference.metrics import short_region_name

    def evaluated_seeds(trainer):
        pattern = os.path.join(archive_folder, "evaluation", "seed_*", trainer, "per_case.csv")
        return {os.path.basename(os.path.dirname(os.path.dirname(path))) for path in glob.glob(pattern)}

    seeds = set.intersection(*(evaluated_seeds(t) for t in trainers))
    if not seeds:
        missing = [t for t in trainers if not evaluated_seeds(t)]
        raise FileNotFoundError(f"{archive_folder} has no seed evaluated for every trainer of the 2d study "
                                f"(none for {', '.join(missing) or 'a common seed'}); finish that study first "
                                f"or name the trainers with --trainers")
    statistics = {}
    for trainer in trainers:
        tables = [read_per_case(os.path.join(archive_folder, "evaluation", seed, trainer, "per_case.csv"))
                  for seed in sorted(seeds)]
        regions = sorted({r for _, _, r in tables[0]})
        statistics[trainer] = seed_statistics(tables, regions, {r: short_region_name(r) for r in regions})
    return statistics


def best_method_in_archive(archive_folder: str, methods=tuple(METHODS)) -> tuple[str, dict[str, float]]:
    """The method with the highest mean of TC and ET Dice (the bar's regions), mean over the seeds that
    every method has in a study's archive, and each method's score. The 3D preset trains this one,
    so that it tests the 2d study's ranking rather than a guess of it."""
    statistics = archive_statistics(archive_folder, list(methods))
    scores = {m: float(np.mean([statistics[m].mean[r] for r in BAR_REGIONS])) for m in methods}
    return max(scores, key=scores.get), scores


def ranking_against(stats: dict[str, SeedStatistics], other: dict[str, SeedStatistics], best: str) -> list[str]:
    """Markdown: each trainer against the reference here and in another study (the 2d one), and
    whether the best method and the reference are ranked alike on the bar's regions: the same sign
    of the difference of seed means (the verdicts beside it say whether each is beyond the spread)."""
    trainers = [t for t in stats if t in other and t != REFERENCE and t != ENSEMBLE]
    lines = ["| Trainer | " + " | ".join(f"{r} vs {REFERENCE}, 2d | {r} vs {REFERENCE}, here" for r in BAR_REGIONS)
             + " |", "|---|" + "---:|" * (2 * len(BAR_REGIONS))]
    for t in trainers:
        cells = []
        for r in BAR_REGIONS:
            for table in (other, stats):
                difference, verdict = compare(table[t], table[REFERENCE], r)
                cells.append(f"{difference * 100:+.2f} ({verdict})")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if best in trainers:
        alike = {r: np.sign(compare(stats[best], stats[REFERENCE], r)[0])
                 == np.sign(compare(other[best], other[REFERENCE], r)[0]) for r in BAR_REGIONS}
        same = [r for r, a in alike.items() if a]
        lines += ["", f"{best} and {REFERENCE} are ranked as in the 2d study on "
                  + (" and ".join(same) if same else "neither region")
                  + ("" if len(same) == len(BAR_REGIONS) else
                     f", otherwise on {' and '.join(r for r in BAR_REGIONS if r not in same)}")
                  + f": {'meets' if len(same) == len(BAR_REGIONS) else 'misses'} the bar (the same order of the "
                  "seed means on " + " and ".join(BAR_REGIONS) + ")."]
    return lines


# --- the report ----------------------------------------------------------------------------------

def loss_term_rows(study: Study, trainers: list[str]) -> list[str]:
    """Markdown rows: each trainer's last sampled gradient shares and its clip rate (first seed)."""
    rows = []
    for trainer in trainers:
        summary = study.state["trainings"].get(f"{trainer} seed {study.seeds[0]}", {}).get("loss_terms")
        if not summary:
            continue
        # largest first: the archive stores its records with sorted keys, so the order of the training's
        # own record cannot be what a report regenerated on another machine shows
        ordered = sorted(summary["gradient_shares"].items(), key=lambda item: (-abs(item[1]), item[0]))
        shares = ", ".join(f"{name} {share:+.0%}" for name, share in ordered if share)
        group = "" if summary["clip_group"] == "network" else f" ({summary['clip_group']})"
        rows.append(f"| {trainer} | {summary['epoch']} | {shares} | {summary['clipped']:.0%}{group} |")
    return rows


def per_subset_table(tables: list[dict], hd95_tables: list[dict], subsets: list[str], regions: list[str]) -> str:
    """The evaluation's Markdown table, from the seeds' mean per case."""
    from nnunet_missingmod.inference.reports import markdown_table, summarize
    dice, hd95 = mean_over_seeds(tables), mean_over_seeds(hd95_tables)
    records = [{"case": c, "subset": s, "region": r, "dice": v, "hd95": hd95[(c, s, r)]}
               for (c, s, r), v in dice.items() if r in regions]
    return markdown_table(summarize(records, subsets, regions)).strip()


def comparison_figure(study: Study, trainers: list[str], path: str) -> str | None:
    """Every trainer (seed 1) and the dedicated models on the first test case, side by side."""
    import SimpleITK as sitk

    from nnunet_missingmod.inference.figures import comparison_figure as draw
    dataset_json = json.load(open(os.path.join(study.dataset_folder, "dataset.json")))
    ending = dataset_json["file_ending"]
    case = sorted(f[:-len("_0000" + ending)] for f in os.listdir(study.setup.test_images)
                  if f.endswith("_0000" + ending))[0]
    read = lambda p: sitk.GetArrayFromImage(sitk.ReadImage(p))  # noqa: E731
    predictions = {}
    for trainer in trainers:
        folder = os.path.join(study.evaluation_folder(trainer, study.seeds[0]), "predictions")
        if os.path.isdir(folder):
            predictions[trainer] = {s: read(os.path.join(folder, s, f"{case}.nii.gz")) for s in sorted(os.listdir(folder))}
    if not predictions:
        return None
    subsets = list(next(iter(predictions.values())))
    order = study_subset_order(study)
    subsets = [s for s in order if s in subsets]
    predictions = {t: {s: p[s] for s in subsets} for t, p in predictions.items()}
    channels = {name.lower(): int(index) for index, name in dataset_json["channel_names"].items()}
    shown = next((channels[n] for n in ("t1ce", "t1c", "t1gd") if n in channels), 0)  # enhancement shows best there
    background = read(os.path.join(study.setup.test_images, f"{case}_{shown:04d}{ending}"))
    reference = read(os.path.join(study.label_folder, f"{case}{ending}"))
    return draw(background, reference, predictions, dataset_json, path, title=f"{case}, every trainer (seed "
                f"{study.seeds[0]}), every subset")


def study_subset_order(study: Study) -> list[str]:
    return [study.modalities.subset_name(s) for s in study.modalities.subsets()]


def provenance(study: Study) -> str:
    """Where the steps were run: their dates and commits, and whether a network trained again on a
    later machine repeated the archived one (docs/study.md)."""
    steps = study.archive.steps()
    dates = sorted(r["finished"][:10] for r in steps.values())
    commits = sorted({str(r.get("commit"))[:10] for r in steps.values()})
    repeats = [r["training"]["repeats_archived_weights"] for r in steps.values()
               if "repeats_archived_weights" in r.get("training", {})]
    resumed = [step for step, r in steps.items() if r.get("training", {}).get("resumed")]
    text = (f"The {len(steps)} steps (trainings, evaluations, priors) were run "
            + (f"on {dates[0]}, " if dates[0] == dates[-1] else f"between {dates[0]} and {dates[-1]}, ")
            + f"possibly on several machines, and carried between them by the study's archive "
            f"(`{os.path.relpath(study.archive.folder, REPO)}`, docs/study.md), at commit{'s' if len(commits) > 1 else ''} "
            f"{', '.join(commits)}, all with the same data (fingerprint {study.archive.dataset[:12]}) and each with "
            "the training code its trainer has at this commit (per-step fingerprints in archive.json).")
    if repeats:
        text += (f" Networks trained again on a later machine from their seed: {sum(repeats)} of {len(repeats)} "
                 "repeated the archived weights bit for bit.")
    if resumed:
        text += f" Resumed after an interruption (repeatable, not identical to an uninterrupted run): {', '.join(resumed)}."
    return text


def data_sentence(study: Study, preset, num_test: int) -> str:
    """What the models were trained and tested on, and for how long."""
    setup = study.setup
    if preset is not None:
        data = (f"Synthetic BraTS-like data (`nnunet_missingmod.synthetic`): {preset.num_train} training and "
                f"{preset.num_test} held-out test cases of shape {tuple(preset.shape)}")
    else:
        data = (f"{setup.dataset} ({num_test} test cases from `{setup.test_images}`)")
    budget = (f"{setup.epochs} epochs x {setup.iterations} iterations (= {setup.epochs * setup.iterations} iterations)"
              if setup.epochs and setup.iterations else
              f"{setup.epochs or 1000} epochs x {setup.iterations or 250} iterations (nnU-Net's own where not set)")
    return f"{data}; nnU-Net `{setup.configuration}` plans; every model {budget} on fold {setup.fold}"


def compute_matched_sentence(study: Study) -> str:
    record = study.state.get("compute_matched")
    if not record:
        return COMPUTE_MATCHED
    return (f"{COMPUTE_MATCHED} ({record['epochs']} epochs: {record['matched_to']}'s training time, "
            f"{record['ratio']:.2f}x {REFERENCE}'s)")


def equal_compute_lines(stats: dict[str, SeedStatistics], methods: list[str], regions: list[str]) -> list[str]:
    """Each method against the reference given the same training time: where a method is not above
    it beyond the seed spread and its uncertainty, the method's extra cost buys no more than longer
    training does."""
    lines = []
    for trainer in methods:
        verdicts = {r: compare(stats[trainer], stats[COMPUTE_MATCHED], r) for r in regions}
        above = [r for r, (_, v) in verdicts.items() if v == "above"]
        lines.append(f"- {trainer}: " + ", ".join(f"{r} {d * 100:+.2f} ({v})" for r, (d, v) in verdicts.items())
                     + (f": worth its cost on {' and '.join(above)}." if above else
                        f": below it on every region; training {REFERENCE} for as long gives more."
                        if all(v == "below" for _, v in verdicts.values()) else
                        f": nowhere above it {BEYOND}; training {REFERENCE} for as long gives as much."))
    return lines


def write_report(study: Study, report: str, command: str, preset=None) -> None:
    """``preset``: the synthetic preset's sizes (presets.Size), for the data's description and contrast."""
    from nnunet_missingmod.inference.metrics import short_region_name
    from nnunet_missingmod.inference.scoring import POSTPROCESSED_SUFFIX
    from nnunet_missingmod.synthetic import contrast_table, format_contrast_table

    trainers, seeds = study.trainers, study.seeds
    first = json.load(open(os.path.join(study.evaluation_folder(trainers[0], seeds[0]), "summary.json")))
    # The dataset's regions; ETpp, which newer evaluations add, is not part of the study's bar.
    regions = [r for r in first["regions"] if not r.endswith(POSTPROCESSED_SUFFIX)]
    subsets = first["subsets"]
    short = {r: short_region_name(r) for r in regions}
    folder = lambda t, s: study.evaluation_folder(t, s)  # noqa: E731
    dice = {t: [read_per_case(os.path.join(folder(t, s), "per_case.csv")) for s in seeds] for t in trainers}
    hd95 = {t: [read_per_case(os.path.join(folder(t, s), "per_case.csv"), "hd95") for s in seeds] for t in trainers}
    stats = {t: seed_statistics(dice[t], regions, short) for t in trainers}
    mean_hd95 = {t: {short[r]: float(np.mean([mean_dice(table, r) for table in hd95[t]])) for r in regions}
                 for t in trainers}
    seed_mean = {t: mean_over_seeds(dice[t]) for t in trainers}
    pairs = [f"{a}+{b}" for a, b in study.ensemble_pairs
             if os.path.isfile(os.path.join(folder(ENSEMBLE, f"{a}+{b}"), "per_case.csv"))]  # evaluated so far
    ensembles = [read_per_case(os.path.join(folder(ENSEMBLE, p), "per_case.csv")) for p in pairs]
    if ensembles:
        stats[ENSEMBLE], ensemble_spread = ensemble_statistics(
            seed_statistics(ensembles, regions, short), stats[REFERENCE])
        seed_mean[ENSEMBLE] = mean_over_seeds(ensembles)
    matched_seeds = [s for s in seeds if os.path.isfile(os.path.join(folder(COMPUTE_MATCHED, s), "per_case.csv"))]
    if matched_seeds:
        matched = [read_per_case(os.path.join(folder(COMPUTE_MATCHED, s), "per_case.csv")) for s in matched_seeds]
        matched_hd95 = [read_per_case(os.path.join(folder(COMPUTE_MATCHED, s), "per_case.csv"), "hd95")
                        for s in matched_seeds]
        stats[COMPUTE_MATCHED] = seed_statistics(matched, regions, short)
        mean_hd95[COMPUTE_MATCHED] = {short[r]: float(np.mean([mean_dice(t, r) for t in matched_hd95])) for r in regions}
        seed_mean[COMPUTE_MATCHED] = mean_over_seeds(matched)
    ceiling = {}
    for subset in study.dedicated_subsets:
        path = os.path.join(folder(dedicated_trainer(subset), "dedicated"), "per_case.csv")
        if os.path.isfile(path):
            ceiling.update(read_per_case(path))
    methods = [t for t in trainers if t not in (REFERENCE, NO_MASKING)]
    # Costs: the committed benchmark for the synthetic study; a study of other data measures its own.
    cost, cost_unit = costs(), "nnU-Net's iteration time"
    if preset is None:
        reference_minutes = np.mean([training_minutes(study, REFERENCE, s) for s in seeds])
        cost = {t: np.mean([training_minutes(study, t, s) for s in seeds]) / reference_minutes for t in trainers}
        cost_unit = f"{REFERENCE}'s training time in this study"
    # The figures go next to the report, in a folder named after it (results.md: results/).
    figures = os.path.splitext(os.path.basename(report))[0]
    figures_folder = os.path.join(os.path.dirname(os.path.abspath(report)), figures)
    os.makedirs(figures_folder, exist_ok=True)
    training_min = {t: np.mean([training_minutes(study, t, s) for s in seeds]) for t in trainers}
    if matched_seeds:
        training_min[COMPUTE_MATCHED] = np.mean([training_minutes(study, COMPUTE_MATCHED, s) for s in matched_seeds])
    num_test = len({c for c, _, _ in seed_mean[trainers[0]]})

    lines = ["# Results: which trainer to use, measured", "",
             f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} ({study.device}). "
             f"{data_sentence(study, preset, num_test)}, with {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}; "
             "`nnUNet_missingmod_seed`, docs/training.md); evaluation with `nnUNetv2_evaluate_missing` (test-time "
             f"mirroring {'on' if study.setup.mirroring else 'off'}) over the {len(subsets)} subsets. Dice in %, HD95 in mm "
             "(373.13 when exactly one of prediction and reference is empty; docs/metrics.md)."]
    if study.archive is not None:
        lines += ["", provenance(study)]
    pending = study.pending_steps()
    if pending:
        lines += ["", f"**Written before the study finished**: {len(pending)} evaluation(s) of the full command are not "
                  "run yet, and the tables leave them out: " + "; ".join(s.removeprefix("evaluate ") for s in pending)
                  + ". Running the same command without `--report_only` does them and rewrites this page."]
    if os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(report)), DISCUSSION)):
        lines += ["", f"What the numbers mean and what was measured to explain them: [{DISCUSSION}]({DISCUSSION}) "
                  "(written by hand; this page is generated)."]

    # which trainer to use
    lines += ["", "## Which trainer to use", ""]
    contenders = [t for t in trainers if t != NO_MASKING]
    region_name = {short[r]: r for r in regions}
    share_of = ((lambda t, region: gap_closed(seed_mean[t], seed_mean[REFERENCE], ceiling, region_name[region]))
                if ceiling else None)
    lines += [which_trainer_line(region, stats, contenders, cost, share_of, cost_unit) for region in ("WT", "TC", "ET")]
    if COMPUTE_MATCHED in stats:
        worth = {t: [r for r in ("WT", "TC", "ET") if compare(stats[t], stats[COMPUTE_MATCHED], r)[1] == "above"]
                 for t in methods}
        lines.append(f"- **At equal compute** ({compute_matched_sentence(study)}): "
                     + "; ".join(f"{t} above it on {' and '.join(r)}" if r else f"{t} nowhere above it"
                                 for t, r in worth.items())
                     + f" {BEYOND} (section \"At equal compute\").")
    full_subset = max(subsets, key=lambda s: s.count("+") + 1)
    full = {t: full_subset_statistics(dice[t], full_subset, regions, short) for t in trainers}
    if NO_MASKING in full:
        plain = full[NO_MASKING]
        robust = [t for t in contenders if t in full]
        best_full = max(robust, key=lambda t: np.mean([full[t].mean[r] for r in BAR_REGIONS]))
        lines.append(f"- **Every sequence always present** ({full_subset}): nnU-Net trained as usual "
                     f"({NO_MASKING}) reaches " + " / ".join(f"{plain.mean[r] * 100:.2f}" for r in ("WT", "TC", "ET"))
                     + f" (WT / TC / ET); the best robust trainer there, {best_full}, "
                     + ", ".join(f"{d * 100:+.2f} {r} ({v})" for r in ("WT", "TC", "ET")
                                 for d, v in [compare(full[best_full], plain, r)])
                     + " against it: what training for missing modalities costs, or gains, where none is "
                     "missing (every trainer below).")
    lines += ["", f"{REFERENCE} (nnU-Net with random modality dropout) costs what nnU-Net costs; a method is worth its "
              f"extra training cost where it is above it {BEYOND}"
              + (f", and above {REFERENCE} trained for as long ({COMPUTE_MATCHED})" if COMPUTE_MATCHED in stats else "")
              + (". Costs: docs/benchmarks.md (CPU, ratios of iteration time against nnUNetTrainer)." if preset is not None
                 else ". Costs: each trainer's mean training time over the seeds, against the reference's.")]
    if NO_MASKING in full:
        lines += ["", "## With every modality present", "",
                  f"Dice % on {full_subset} alone (mean over the test cases), mean ± standard deviation over the seeds, "
                  f"and the difference from {NO_MASKING}, nnU-Net trained as usual on complete scans: what a trainer "
                  "built for missing modalities gives up, or gains, where none is missing (a difference within the "
                  "larger seed spread, or whose 95 % interval over seeds and cases reaches into it, is a tie).", "",
                  "| Trainer | " + " | ".join(f"Dice {short[r]}" for r in regions) + " | "
                  + " | ".join(f"{short[r]} vs {NO_MASKING}" for r in regions) + " |",
                  "|---|" + "---:|" * (2 * len(regions)), *every_modality_rows(full, [short[r] for r in regions])]

    # mean over subsets
    lines += ["", f"## Mean over the {len(subsets)} subsets", "",
              f"Mean Dice over the subsets (each the mean over the test cases), mean ± standard deviation over the "
              f"{len(seeds)} seeds; HD95 the mean over seeds. Training time: the median of nnU-Net's "
              "epoch times x the epochs, mean over seeds (robust to a paused or resumed run).",
              "", "| Trainer | " + " | ".join(f"Dice {short[r]}" for r in regions) + " | "
              + " | ".join(f"HD95 {short[r]}" for r in regions) + " | training time |",
              "|---|" + "---:|" * (2 * len(regions) + 1)]
    for t in trainers:
        lines.append(f"| {t} | " + " | ".join(f"{stats[t].mean[short[r]] * 100:.2f} ± {stats[t].spread[short[r]] * 100:.2f}"
                                                for r in regions)
                     + " | " + " | ".join(f"{mean_hd95[t][short[r]]:.2f}" for r in regions)
                     + f" | {training_min[t]:.1f} min |")
    if ENSEMBLE in stats:
        lines.append(f"| {ENSEMBLE} (seed pairs {', '.join(pairs)}, logits averaged; {ensemble_spread}) | "
                     + " | ".join(f"{stats[ENSEMBLE].mean[short[r]] * 100:.2f} ± {stats[ENSEMBLE].spread[short[r]] * 100:.2f}"
                                  for r in regions) + " | | | | |")
    if COMPUTE_MATCHED in stats:
        lines.append(f"| {compute_matched_sentence(study)} | "
                     + " | ".join(f"{stats[COMPUTE_MATCHED].mean[short[r]] * 100:.2f} ± "
                                  f"{stats[COMPUTE_MATCHED].spread[short[r]] * 100:.2f}" for r in regions)
                     + " | " + " | ".join(f"{mean_hd95[COMPUTE_MATCHED][short[r]]:.2f}" for r in regions)
                     + f" | {training_min[COMPUTE_MATCHED]:.1f} min |")
    if "priors_s" in study.state:
        lines += ["", f"SMMLTrainer also needs LiteMedSAM's priors, computed once per dataset by `nnUNetv2_smml_priors` "
                  f"before training: {study.state['priors_s'] / 60:.1f} min"
                  + (f" for the {preset.num_train} training cases." if preset is not None else ".")]

    # the bar
    if REFERENCE in trainers and methods:
        lines += ["", "## The bar", "",
                  f"Each method against {REFERENCE} on mean {' and '.join(BAR_REGIONS)} Dice (difference of the seed "
                  f"means, in Dice points; a difference within the larger of the two trainers' seed spreads, or "
                  f"whose 95 % interval over seeds and cases reaches into it, is a tie, which meets the bar's 'at or above').", "",
                  "| Trainer | " + " | ".join(f"{r} vs {REFERENCE}" for r in BAR_REGIONS) + " | at or above |",
                  "|---|" + "---:|" * len(BAR_REGIONS) + "---|", *bar_rows(stats, methods)]
        if ceiling:
            best = max(methods, key=lambda t: np.mean([stats[t].mean[r] for r in BAR_REGIONS]))
            shares = {r: gap_closed(seed_mean[best], seed_mean[REFERENCE], ceiling,
                                    next(name for name in regions if short[name] == r)) for r in BAR_REGIONS}
            met = all(not np.isnan(v) and v >= CEILING_SHARE for v in shares.values())
            lines += ["", f"The best method on mean {' and '.join(BAR_REGIONS)} ({best}) closes "
                      + ", ".join(f"{share_cell(v)} ({r})" for r, v in shares.items())
                      + f" of {REFERENCE}'s gap to the dedicated ceiling: {'meets' if met else 'misses'} the bar of "
                      f"{CEILING_SHARE:.0%}."]

    # equal compute
    if COMPUTE_MATCHED in stats:
        lines += ["", "## At equal compute", "",
                  f"{compute_matched_sentence(study)}: {REFERENCE} trained for the mean training time of the study's "
                  f"costliest method, same iterations per epoch, seeds {', '.join(map(str, matched_seeds))}. Each method "
                  "against it (difference of the seed means, Dice points; a tie within the larger seed spread or its "
                  "uncertainty):", "",
                  *equal_compute_lines(stats, methods, [short[r] for r in regions])]

    # the 2d ranking, checked in another configuration
    if preset is not None and study.setup.configuration != "2d" and REFERENCE in trainers and methods:
        lines += ["", "## Against the 2d study", ""]
        try:
            best_2d = best_method_in_archive(ARCHIVE_2D)[0]
            lines += [f"Each trainer against {REFERENCE} (difference of the seed means, Dice points; tie within the "
                      f"larger seed spread or its uncertainty) in the 2d study (`{os.path.relpath(ARCHIVE_2D, REPO)}`, "
                      "docs/results.md; "
                      f"the seeds every trainer below has there) and here, in `{study.setup.configuration}`. The 2d study's "
                      f"best method on {' and '.join(BAR_REGIONS)} is {best_2d}.", "",
                      *ranking_against(stats, archive_statistics(ARCHIVE_2D, trainers), best_2d)]
        except FileNotFoundError as error:
            lines.append(f"Not compared: {error}.")

    # paired comparison
    if REFERENCE in trainers:
        lines += ["", f"## Paired comparison with {REFERENCE}", "",
                  "Per test case, Dice averaged over the subsets and the seeds; the mean over cases of the difference "
                  "(method minus reference, Dice points) with a percentile bootstrap 95 % interval over the cases "
                  "(10,000 resamples), and the difference's spread over seeds (standard deviation of the per-seed "
                  "mean differences, seeds paired by number). The interval covers the choice of test cases, the "
                  "spread the training run.", "",
                  "| Trainer | " + " | ".join(short[r] for r in regions) + " |", "|---|" + "---:|" * len(regions)]
        for t in [*trainers, *(c for c in (ENSEMBLE, COMPUTE_MATCHED) if c in seed_mean)]:
            if t == REFERENCE:
                continue
            cells = []
            for r in regions:
                d = paired_difference(seed_mean[t], seed_mean[REFERENCE], r)
                cell = f"{d['mean'] * 100:+.2f} [{d['ci95'][0] * 100:+.2f}, {d['ci95'][1] * 100:+.2f}]"
                if t in dice and len(seeds) > 1:
                    per_seed = [mean_dice(a, r) - mean_dice(b, r) for a, b in zip(dice[t], dice[REFERENCE])]
                    cell += f" ± {np.std(per_seed, ddof=1) * 100:.2f}"
                cells.append(cell)
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines += ["", "How sure each verdict against the reference is: the difference of the seed means, its 95 % "
                  "bootstrap interval over the seeds and the test cases together (10,000 resamples; the cases drawn "
                  "alike for both trainers, each trainer's seeds drawn apart), and the verdict, which is 'above' or "
                  "'below' only when that interval lies beyond the larger seed spread."
                  + (f" Then how many of the {len(seeds)} seeds (paired by number) put the trainer above, and the "
                     f"exact one-sided sign-flip p over them: with {len(seeds)} seeds it cannot go below "
                     f"{2.0 ** -len(seeds):.3f}, so the seeds alone never reach p < 0.1; the interval, which adds the "
                     "test cases, is what the verdicts use." if len(seeds) > 1 else ""), "",
                  "| Trainer | " + " | ".join(short[r] for r in regions) + " |", "|---|" + "---:|" * len(regions)]
        for t in [*trainers, *(c for c in (ENSEMBLE, COMPUTE_MATCHED) if c in stats)]:
            if t == REFERENCE:
                continue
            cells = []
            for r in (short[name] for name in regions):
                difference, verdict = compare(stats[t], stats[REFERENCE], r)
                interval = uncertainty(stats[t], stats[REFERENCE], r)
                cell = f"{difference * 100:+.2f}" + (f" [{interval[0] * 100:+.2f}, {interval[1] * 100:+.2f}]"
                                                     if interval is not None else "") + f" {verdict}"
                if t in dice and len(seeds) > 1:
                    per_seed = np.subtract(stats[t].per_seed[r], stats[REFERENCE].per_seed[r])
                    cell += f"; {int(np.sum(per_seed > 0))}/{len(seeds)}, p {sign_flip_p(per_seed):.3f}"
                cells.append(cell)
            lines.append(f"| {t} | " + " | ".join(cells) + " |")

    # the ceiling
    if ceiling:
        covered = [s for s in subsets if any(k[1] == s for k in ceiling)]
        lines += ["", "## The dedicated ceiling", "",
                  f"One nnU-Net per subset (`DedicatedTrainer__<subset>`, the other modalities always zero, same "
                  f"iterations, seed {seeds[0]}), each evaluated on its own subset: what a user gets from a model per "
                  f"combination of sequences. Dice % per subset (mean over cases); the methods' columns are their "
                  f"seed means.", "",
                  "| Subset | " + " | ".join(f"dedicated {short[r]}" for r in regions) + " | "
                  + " | ".join(f"{REFERENCE} {short[r]}" for r in regions) + " |", "|---|" + "---:|" * (2 * len(regions))]
        for s in covered:
            cell = lambda table, r: np.mean([v for (c, ss, rr), v in table.items() if ss == s and rr == r])  # noqa: E731
            lines.append(f"| {s} | " + " | ".join(f"{cell(ceiling, r) * 100:.2f}" for r in regions) + " | "
                         + " | ".join(f"{cell(seed_mean[REFERENCE], r) * 100:.2f}" for r in regions) + " |")
        lines += ["", f"Share of {REFERENCE}'s gap to the dedicated models that each trainer closes, over these "
                  f"{len(covered)} subsets: (trainer - {REFERENCE}) / (dedicated - {REFERENCE}) of the mean Dice over "
                  "them. 100 % reaches the ceiling, 0 % is the baseline, negative is below it.", "",
                  "| Trainer | " + " | ".join(short[r] for r in regions) + " |", "|---|" + "---:|" * len(regions)]
        for t in [*methods, *([ENSEMBLE] if ENSEMBLE in seed_mean else [])]:
            lines.append(f"| {t} | " + " | ".join(
                share_cell(gap_closed(seed_mean[t], seed_mean[REFERENCE], ceiling, r)) for r in regions) + " |")

    # ensembles
    if ENSEMBLE in stats:
        rows = [t for t in trainers if t in TWO_NETWORKS]
        lines += ["", "## Two networks: what mutual learning adds beyond ensembling", "",
                  f"SMML deploys two networks and averages their logits; {ENSEMBLE} is two seeds of {REFERENCE} "
                  f"averaged the same way (nnU-Net's logit averaging), over the pairs {', '.join(pairs)} ({ensemble_spread})"
                  + ("; SMMLTrainerNoConsistency is SMML's two branches trained apart, without priors"
                     if "SMMLTrainerNoConsistency" in rows else "")
                  + ". Mean Dice %, mean ± spread over seeds (pairs).", "",
                  "| Deployed pair | " + " | ".join(short[r] for r in regions) + " |", "|---|" + "---:|" * len(regions)]
        for t in [ENSEMBLE, *rows]:
            lines.append(f"| {t} | " + " | ".join(f"{stats[t].mean[short[r]] * 100:.2f} ± {stats[t].spread[short[r]] * 100:.2f}"
                                                    for r in regions) + " |")
        lines += ["", *ensemble_verdicts(stats, rows)]

    shares = loss_term_rows(study, trainers)
    if shares:
        lines += ["", "## What drove training: each loss term's share of the step", "",
                  f"From each model's checkpoint (seed {seeds[0]}; docs/training.md): per term, its share of the "
                  "gradient step on the deployed network, <g_i, g>/|g|^2, in the last sampled step of training "
                  "(shares add up to 100 %; negative: against the step); and the fraction of all training steps in "
                  "which nnU-Net's gradient clip (norm 12) engaged.", "",
                  "| Trainer | epoch | shares of the step | clip engaged |", "|---|---:|---|---:|", *shares]

    # figures
    lines += ["", "## Pictures", ""]
    compared = comparison_figure(study, trainers, os.path.join(figures_folder, "comparison.png"))
    if compared:
        lines += ["Every trainer (rows) on the first test case under every subset (columns); edema green, "
                  "necrosis red, enhancing tumour yellow:", "", f"![every trainer]({figures}/comparison.png)", ""]
    for t in trainers:
        source = os.path.join(folder(t, seeds[0]), "figures")
        if os.path.isdir(source) and os.listdir(source):
            shutil.copy(os.path.join(source, sorted(os.listdir(source))[0]), os.path.join(figures_folder, f"{t}_case.png"))
            lines += [f"<details><summary>{t}: the modalities, the reference and every subset</summary>", "",
                      f"![{t}]({figures}/{t}_case.png)", "", "</details>", ""]

    lines += ["## Per subset", "", "Mean over the seeds of each case's Dice and HD95, then the evaluation's table; "
              f"heat map of seed {seeds[0]}.", ""]
    for t in trainers:
        shutil.copy(os.path.join(folder(t, seeds[0]), "heatmap.png"), os.path.join(figures_folder, f"{t}.png"))
        lines += [f"### {t}", "", per_subset_table(dice[t], hd95[t], subsets, regions), "",
                  f"![{t}]({figures}/{t}.png)", ""]

    if preset is not None:
        lines += ["## The data: contrast of each compartment in each modality", "",
                  "Contrast-to-noise ratio of each compartment against the surrounding tissue, per modality "
                  "(`nnunet_missingmod.synthetic.contrast_table`, 10 cases): every compartment is clearly "
                  "visible in some modalities and only weakly in others.", "",
                  format_contrast_table(contrast_table(num_cases=10, shape=tuple(preset.shape))), ""]
    tmp = report + ".partial"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, report)
    log(f"wrote {report}")

