"""The robustness study: every trainer trained on the same synthetic data for the same number of
iterations and patch, evaluated over every modality subset by ``nnUNetv2_evaluate_missing``, and
written up as a Markdown report with tables, heat maps, training cost and a paired comparison
against ModalityDropoutTrainer.

    python benchmarks/robustness_study.py --work /tmp/study [--size tiny|cpu|gpu] [--epochs E]
        [--iterations I] [--trainers ...] [--device cuda] [--report docs/results.md]

Every step leaves a mark in the work folder (``study.json``), so running the same command again
after an interruption goes on where it stopped: a finished training is not repeated, an
interrupted one resumes from its latest checkpoint with ``--c``, a finished evaluation is reused.
nnU-Net does not seed its training; differences between methods smaller than the spread of the
paired comparison are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

DATASET_ID = 982
DATASET_NAME = "RobustnessStudy"
REFERENCE = "ModalityDropoutTrainer"
NO_MASKING = "FullModalityTrainer"
TRAINERS = [NO_MASKING, REFERENCE, "MAGMSTrainer", "MSTKDTrainer", "SMMLTrainer"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISCUSSION = "results-discussion.md"  # the hand-written reading of the report, next to it


@dataclass(frozen=True)
class Size:
    num_train: int
    num_test: int
    shape: tuple
    configuration: str
    epochs: int
    iterations: int
    mirroring: bool  # test-time mirroring in the evaluation (4x the prediction time in 2d, 8x in 3d)


SIZES = {
    # A smoke run: minutes per trainer on 2 CPU cores.
    "tiny": Size(8, 4, (40, 48, 40), "2d", 4, 25, False),
    # The default, for 2 CPU cores within 3 hours (2d learns all three regions in a few hundred
    # iterations where 3d_fullres does not). nnU-Net's 2d batch grows with the dataset (8 cases:
    # 12, 24 cases: 36), so 12 cases (batch 18). Measured: 2 h 49 min on 2 partly loaded cores,
    # about 2 h 20 min idle (LiteMedSAM's priors 190 s per case, training 84 min, evaluation 8 min).
    "cpu": Size(12, 8, (40, 48, 40), "2d", 16, 50, False),
    # On a GPU: 3d_fullres at a realistic size and nnU-Net's iterations per epoch.
    "gpu": Size(60, 20, (96, 112, 96), "3d_fullres", 100, 250, True),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Study:
    """The work folder and its record of what is done (written atomically after every step)."""

    def __init__(self, work: str, size: Size, trainers: list[str], device: str):
        self.work, self.size, self.trainers, self.device = work, size, trainers, device
        self.state_path = os.path.join(work, "study.json")
        self.env = dict(os.environ)
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            self.env[name] = os.path.join(work, name)
            os.makedirs(self.env[name], exist_ok=True)
        self.env.setdefault("nnUNet_def_n_proc", "2")
        self.env.update(nnUNet_missingmod_num_epochs=str(size.epochs),
                        nnUNet_missingmod_iterations_per_epoch=str(size.iterations),
                        nnUNet_missingmod_val_iterations_per_epoch=str(max(2, size.iterations // 10)))
        os.environ.update({k: self.env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        self.state = self._load_state()

    def _load_state(self) -> dict:
        if os.path.isfile(self.state_path):
            with open(self.state_path) as f:
                state = json.load(f)
            if state["size"] != json.loads(json.dumps(asdict(self.size))):
                sys.exit(f"{self.work} holds a study of another size ({state['size']}); "
                         f"use another --work folder or the same size")
            return state
        return {"size": asdict(self.size), "done": {}, "training_s": {}}

    def save(self) -> None:
        tmp = self.state_path + ".partial"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=2)
        os.replace(tmp, self.state_path)

    def done(self, step: str) -> bool:
        return step in self.state["done"]

    def mark(self, step: str) -> None:
        self.state["done"][step] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.save()

    def run(self, command: list[str], log_name: str) -> None:
        path = os.path.join(self.work, "logs", log_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(f"\n$ {' '.join(command)}\n")
            f.flush()
            result = subprocess.run(command, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)} failed ({result.returncode}); its output is in {path}")

    @property
    def dataset_folder(self) -> str:
        return os.path.join(self.env["nnUNet_raw"], f"Dataset{DATASET_ID}_{DATASET_NAME}")

    def model_folder(self, trainer: str) -> str:
        return os.path.join(self.env["nnUNet_results"], f"Dataset{DATASET_ID}_{DATASET_NAME}",
                            f"{trainer}__nnUNetPlans__{self.size.configuration}")

    def evaluation_folder(self, trainer: str) -> str:
        return os.path.join(self.work, "evaluation", trainer)

    # --- the steps ---------------------------------------------------------------------------

    def prepare_data(self) -> None:
        from nnunet_missingmod.planning import plan_and_preprocess
        from nnunet_missingmod.synthetic import write_nnunet_dataset
        if not self.done("dataset"):
            log(f"dataset: {self.size.num_train} training + {self.size.num_test} test cases, shape {self.size.shape}")
            write_nnunet_dataset(DATASET_ID, self.size.num_train, self.size.num_test, name=DATASET_NAME,
                                 shape=tuple(self.size.shape), seed=0, raw_folder=self.env["nnUNet_raw"],
                                 overwrite=True, num_processes=2)
            self.mark("dataset")
        if not self.done("preprocessing"):
            log(f"plans and preprocessing ({self.size.configuration})")
            plan_and_preprocess(DATASET_ID, (self.size.configuration,), num_processes=2)
            self.mark("preprocessing")
        if "SMMLTrainer" in self.trainers and not self.done("smml_priors"):
            log("SMML priors (nnUNetv2_smml_priors, LiteMedSAM)")
            start = time.time()
            self.run(["nnUNetv2_smml_priors", "-d", str(DATASET_ID), "-c", self.size.configuration],
                     "smml_priors.log")
            self.state["priors_s"] = self.state.get("priors_s", 0.0) + time.time() - start
            self.mark("smml_priors")

    def train(self, trainer: str) -> None:
        if self.done(f"train {trainer}"):
            return
        fold = os.path.join(self.model_folder(trainer), "fold_0")
        resume = os.path.isfile(os.path.join(fold, "checkpoint_latest.pth"))
        log(f"training {trainer} for {self.size.epochs} x {self.size.iterations} iterations"
            + (" (resuming with --c)" if resume else ""))
        start = time.time()
        self.run(["nnUNetv2_train", str(DATASET_ID), self.size.configuration, "0", "-tr", trainer,
                  "-device", self.device, *(["--c"] if resume else [])], f"train_{trainer}.log")
        self.state["training_s"][trainer] = self.state["training_s"].get(trainer, 0.0) + time.time() - start
        self.mark(f"train {trainer}")

    def evaluate(self, trainer: str) -> None:
        if self.done(f"evaluate {trainer}"):
            return
        log(f"evaluating {trainer} over all modality subsets")
        self.run(["nnUNetv2_evaluate_missing", "-d", str(DATASET_ID), "-c", self.size.configuration, "-tr",
                  trainer, "-f", "0", "-i", os.path.join(self.dataset_folder, "imagesTs"), "-o",
                  self.evaluation_folder(trainer), "-device", self.device, "--overwrite",
                  *([] if self.size.mirroring else ["--disable_tta"])], f"evaluate_{trainer}.log")
        self.mark(f"evaluate {trainer}")


# --- the report ----------------------------------------------------------------------------------

def read_per_case(path: str) -> dict:
    """{(case, subset, region): dice}"""
    import csv
    with open(path) as f:
        return {(r["case"], r["subset"], r["region"]): float(r["dice"]) for r in csv.DictReader(f)}


def paired_difference(method: dict, reference: dict, region: str, resamples: int = 10000, seed: int = 0) -> dict:
    """Mean over cases of (method - reference) Dice, each case's Dice averaged over the subsets,
    with a percentile bootstrap 95% interval over cases."""
    cases = sorted({c for c, _, r in reference if r == region})
    per_case = []
    for case in cases:
        keys = [k for k in reference if k[0] == case and k[2] == region]
        per_case.append(np.mean([method[k] for k in keys]) - np.mean([reference[k] for k in keys]))
    per_case = np.array(per_case)
    rng = np.random.default_rng(seed)
    means = per_case[rng.integers(0, len(per_case), (resamples, len(per_case)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(per_case.mean()), "ci95": (float(low), float(high)), "n_cases": len(per_case)}


# The bar the study is held to: every method above ModalityDropoutTrainer on these regions' mean
# Dice over the subsets, and every trainer that sees missing modalities in training (all but
# FullModalityTrainer) above FullModalityTrainer by at least this margin on every region.
BAR_REGIONS = ("TC", "ET")
WIDE_MARGIN = 0.05


def bar_rows(mean_dice: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows of the bar's check; ``mean_dice[trainer][short region]``: Dice over the subsets,
    for REFERENCE, NO_MASKING and the methods."""
    reference, unmasked = mean_dice[REFERENCE], mean_dice[NO_MASKING]
    rows = []
    for trainer, dice in mean_dice.items():
        if trainer in (REFERENCE, NO_MASKING):
            continue
        gains = [dice[r] - reference[r] for r in BAR_REGIONS]
        margin = min(dice[r] - unmasked[r] for r in dice)
        met = all(g > 0 for g in gains) and margin >= WIDE_MARGIN
        cells = [f"{v * 100:+.2f}" for v in (*gains, margin)]
        rows.append(f"| {trainer} | " + " | ".join(cells) + f" | {'yes' if met else '**no**'} |")
    return rows


def loss_term_rows(study: Study, trainers: list[str]) -> list[str]:
    """Markdown rows: each trainer's last sampled gradient shares and its clip rate, from its checkpoint."""
    import torch
    rows = []
    for trainer in trainers:
        path = os.path.join(study.model_folder(trainer), "fold_0", "checkpoint_final.pth")
        if not os.path.isfile(path):
            continue
        history = torch.load(path, map_location="cpu", weights_only=False).get("loss_terms", {}).get("history")
        sampled = [r for r in history or [] if "gradient_shares" in r]
        if not sampled:
            continue
        last = sampled[-1]
        shares = ", ".join(f"{name} {share:+.0%}" for name, share in last["gradient_shares"].items() if share)
        clip_group = "network" if "network" in last["clipped_fraction"] else next(iter(last["clipped_fraction"]))
        clipped = np.mean([r["clipped_fraction"][clip_group] for r in history])
        group = "" if clip_group == "network" else f" ({clip_group})"
        rows.append(f"| {trainer} | {last['epoch']} | {shares} | {clipped:.0%}{group} |")
    return rows


def write_report(study: Study, report: str) -> None:
    from nnunet_missingmod.inference.metrics import short_region_name
    from nnunet_missingmod.synthetic import contrast_table, format_contrast_table

    size, trainers = study.size, study.trainers
    summaries = {t: json.load(open(os.path.join(study.evaluation_folder(t), "summary.json"))) for t in trainers}
    regions = summaries[trainers[0]]["regions"]
    short = [short_region_name(r) for r in regions]
    figures = os.path.join(os.path.dirname(os.path.abspath(report)), "results")
    os.makedirs(figures, exist_ok=True)

    lines = ["# Results: every trainer over every modality subset", "",
             f"Produced by `python benchmarks/robustness_study.py --size {study.size_name}"
             f"{'' if study.custom_length is None else study.custom_length}` on {time.strftime('%Y-%m-%d')} "
             f"({study.device}). Synthetic BraTS-like data (`nnunet_missingmod.synthetic`): "
             f"{size.num_train} training and {size.num_test} held-out test cases of shape {tuple(size.shape)}; "
             f"nnU-Net `{size.configuration}` plans; every trainer {size.epochs} epochs x {size.iterations} "
             f"iterations (= {size.epochs * size.iterations} iterations) on fold 0; evaluation with "
             f"`nnUNetv2_evaluate_missing` (test-time mirroring {'on' if size.mirroring else 'off'}) over the 15 "
             "subsets. Dice in %, HD95 in mm (373.13 when exactly one of prediction and reference is empty; "
             "docs/metrics.md).", "",
             "## Mean over the 15 subsets", "",
             "| Trainer | " + " | ".join(f"Dice {s}" for s in short) + " | " + " | ".join(f"HD95 {s}" for s in short)
             + " | training time |", "|---|" + "---:|" * (2 * len(short) + 1)]
    for t in trainers:
        m = summaries[t]["mean_over_subsets"]
        lines.append(f"| {t} | " + " | ".join(f"{m[r]['dice'] * 100:.2f}" for r in regions) + " | "
                     + " | ".join(f"{m[r]['hd95']:.2f}" for r in regions)
                     + f" | {study.state['training_s'].get(t, float('nan')) / 60:.1f} min |")

    lines += ["", "Training time: wall clock of `nnUNetv2_train` (trainer lookup, training and nnU-Net's final "
              "validation) on whatever else the machine was running; docs/benchmarks.md has controlled ratios."]
    if "priors_s" in study.state:
        lines[-1] += (f" SMMLTrainer also needs LiteMedSAM's priors, computed once per dataset by "
                      f"`nnUNetv2_smml_priors` before training: {study.state['priors_s'] / 60:.1f} min for the "
                      f"{size.num_train} training cases.")
    if os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(report)), DISCUSSION)):
        lines += ["", f"What these numbers mean, why a method misses the bar and what was measured to find out: "
                  f"[{DISCUSSION}]({DISCUSSION}) (written by hand; this page is generated)."]
    if REFERENCE in trainers and NO_MASKING in trainers:
        mean_dice = {t: {short_region_name(r): summaries[t]["mean_over_subsets"][r]["dice"] for r in regions}
                     for t in trainers}
        lines += ["", "## The bar", "",
                  f"Every method above {REFERENCE} on mean {' and '.join(BAR_REGIONS)} Dice over the 15 subsets, "
                  f"and above {NO_MASKING} (nnU-Net fed zeroed channels) by at least {WIDE_MARGIN * 100:.0f} "
                  "Dice points on every region (the smallest margin is shown). Differences in Dice points.", "",
                  "| Trainer | " + " | ".join(f"{r} vs {REFERENCE}" for r in BAR_REGIONS)
                  + f" | smallest margin over {NO_MASKING} | meets the bar |",
                  "|---|" + "---:|" * (len(BAR_REGIONS) + 1) + "---|", *bar_rows(mean_dice)]
    if REFERENCE in trainers:
        reference = read_per_case(os.path.join(study.evaluation_folder(REFERENCE), "per_case.csv"))
        lines += ["", f"## Paired comparison with {REFERENCE}", "",
                  "Per test case, Dice averaged over the 15 subsets; the mean over cases of the difference "
                  "(method minus reference, in Dice points) with a percentile bootstrap 95% interval "
                  "(10,000 resamples of the cases).", "",
                  "| Trainer | " + " | ".join(short) + " |", "|---|" + "---:|" * len(short)]
        for t in trainers:
            if t == REFERENCE:
                continue
            method = read_per_case(os.path.join(study.evaluation_folder(t), "per_case.csv"))
            cells = []
            for r in regions:
                d = paired_difference(method, reference, r)
                cells.append(f"{d['mean'] * 100:+.2f} [{d['ci95'][0] * 100:+.2f}, {d['ci95'][1] * 100:+.2f}]")
            lines.append(f"| {t} | " + " | ".join(cells) + " |")

    shares = loss_term_rows(study, trainers)
    if shares:
        lines += ["", "## What drove training: each loss term's share of the step", "",
                  "From each model's checkpoint (docs/training.md): per term, its share of the gradient step "
                  "on the deployed network, <g_i, g>/|g|^2, in the last sampled step of training (shares add "
                  "up to 100 %; negative: against the step); and the fraction of all training steps in which "
                  "nnU-Net's gradient clip (norm 12) engaged on the deployed network.", "",
                  "| Trainer | epoch | shares of the step | clip engaged |", "|---|---:|---|---:|", *shares]

    lines += ["", "## Per subset", ""]
    for t in trainers:
        shutil.copy(os.path.join(study.evaluation_folder(t), "heatmap.png"), os.path.join(figures, f"{t}.png"))
        with open(os.path.join(study.evaluation_folder(t), "table.md")) as f:
            table = f.read().strip()
        if table.startswith("## "):  # the evaluation's own title; this report's heading replaces it
            table = table.split("\n", 1)[1].strip()
        lines += [f"### {t}", "", table, "", f"![{t}](results/{t}.png)", ""]

    lines += ["## The data: contrast of each compartment in each modality", "",
              "Contrast-to-noise ratio of each compartment against the surrounding tissue, per modality "
              "(`nnunet_missingmod.synthetic.contrast_table`, 10 cases): every compartment is clearly "
              "visible in some modalities and only weakly in others.", "",
              format_contrast_table(contrast_table(num_cases=10, shape=tuple(size.shape))), ""]
    tmp = report + ".partial"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, report)
    log(f"wrote {report}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="work folder; rerun the same command to resume")
    parser.add_argument("--size", default="cpu", choices=sorted(SIZES), help="preset (default cpu)")
    parser.add_argument("--epochs", type=int, help="epochs per trainer (overrides the preset)")
    parser.add_argument("--iterations", type=int, help="iterations per epoch (overrides the preset)")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--report", default=os.path.join(REPO, "docs", "results.md"))
    args = parser.parse_args()

    size = SIZES[args.size]
    custom = {k: v for k, v in (("epochs", args.epochs), ("iterations", args.iterations)) if v}
    if custom:
        size = Size(**{**asdict(size), **custom})
    study = Study(os.path.abspath(args.work), size, args.trainers, args.device)
    study.size_name = args.size
    study.custom_length = "".join(f" --{k} {v}" for k, v in custom.items()) or None
    start = time.time()
    study.prepare_data()
    for trainer in args.trainers:
        study.train(trainer)
        study.evaluate(trainer)
    write_report(study, os.path.abspath(args.report))
    log(f"study finished in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
