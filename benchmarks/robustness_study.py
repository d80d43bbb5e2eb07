"""The robustness study: which trainer to pick, measured with its training noise and against the
ceiling a user could reach another way.

Every trainer is trained on the same synthetic data for the same number of iterations and patch,
with several seeds (``nnUNet_missingmod_seed``: each run repeatable, the seeds independent), and
evaluated over every modality subset by ``nnUNetv2_evaluate_missing``. Beside them:

- the dedicated ceiling: one nnU-Net per subset (``DedicatedTrainer__<subset>``), each evaluated on
  its own subset, the alternative to one robust model;
- the ensemble control: ModalityDropoutTrainer's seeds averaged in pairs at inference (nnU-Net's
  own logit averaging, ``--ensemble_with``), as many networks as SMML deploys, with a spread over
  the pairs as the methods have one over seeds;
- pictures of one test case under every subset, per trainer and side by side.

The report (docs/results.md by default) opens with which trainer to use, generated from the
numbers, then the tables, the bar, the ceiling, the ensembles, what drove each training and the
figures.

    python benchmarks/robustness_study.py --work /tmp/study [--size tiny|cpu|cpu3d|gpu3d]
        [--seeds 1 2 3] [--trainers ...] [--dedicated all|singles|none] [--device cuda]
        [--epochs E] [--iterations I] [--report docs/results.md] [--report_only]

Every step leaves a mark in the work folder (``study.json``), so running the same command again
after an interruption goes on where it stopped: a finished training is not repeated, an
interrupted one resumes from its latest checkpoint with ``--c``, a finished evaluation is reused,
and trainers, seeds or dedicated models added to the command are trained on top.

A full CPU study outlasts one session on one machine, so every finished step is also kept in the
repository (``--archive``, default ``benchmarks/results/study_<size>``; study_archive.py): a
study started on a fresh machine takes the archived steps made from the same data and training
code, and runs only the rest. Commit the archive after a session.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from study_archive import (ArchiveMismatch, StudyArchive, TrainingCode, current_commit, dataset_fingerprint,
                           evaluation_files)

DATASET_ID = 982
DATASET_NAME = "RobustnessStudy"
REFERENCE = "ModalityDropoutTrainer"
NO_MASKING = "FullModalityTrainer"
ENSEMBLE = f"{REFERENCE} x2"  # two of the reference's seeds averaged at inference (Study.ensemble_pairs)
CODE_FREE_STEPS = ("dataset", "preprocessing")  # not redone for a training-code change (the archive checks the data)
PRIORS_STEP = "smml_priors"
PRIORS_MODULE = "nnunet_missingmod.priors.compute"  # nnUNetv2_smml_priors
PLANS_MODULE = "nnunet_missingmod.planning"  # the plans every network is built from
NEEDS_PRIORS = ("SMMLTrainer",)
BEST_2D = "best-2d"  # in a preset's trainers: the 2d CPU study's best method (best_method_in_archive)
METHODS = ["MAGMSTrainer", "MSTKDTrainer", "SMMLTrainer"]
TRAINERS = [NO_MASKING, REFERENCE, *METHODS, "SMMLTrainerNoConsistency"]
TWO_NETWORKS = {"SMMLTrainer", "SMMLTrainerNoPriors", "SMMLTrainerNoConsistency", "SMMLTrainerNoPixelConsistency",
                "SMMLTrainerNoFeatureConsistency"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISCUSSION = "results-discussion.md"  # the hand-written reading of the report, next to it
COSTS = os.path.join(REPO, "benchmarks", "results", "methods_cpu.json")  # benchmark_methods.py --save
ARCHIVE_2D = os.path.join(REPO, "benchmarks", "results", "study_cpu")  # the default study, which 3d is checked against


@dataclass(frozen=True)
class Size:
    num_train: int
    num_test: int
    shape: tuple
    configuration: str
    epochs: int
    iterations: int
    mirroring: bool  # test-time mirroring in the evaluation (4x the prediction time in 2d, 8x in 3d)
    seeds: tuple = (1,)
    dedicated: str = "none"  # which dedicated models: "all" 2^M - 1, "singles" (and the full set), "none"
    trainers: tuple = tuple(TRAINERS)


SIZES = {
    # A smoke run: minutes per trainer on 2 CPU cores.
    "tiny": Size(8, 4, (40, 48, 40), "2d", 4, 25, False, seeds=(1,), dedicated="none",
                 trainers=(NO_MASKING, REFERENCE)),
    # The default, for 2 CPU cores. nnU-Net's 2d batch grows with the dataset (12 cases: batch
    # 18); 2d learns all three regions in a few hundred iterations where 3d_fullres does not.
    # Measured per seed (docs/results.md): FullModality 9.5, MD 4.3, MSTKD 27, MAG-MS about 25 min.
    "cpu": Size(12, 8, (40, 48, 40), "2d", 16, 50, False, seeds=(1, 2, 3), dedicated="all"),
    # 3d_fullres on the CPU at a size one developer session holds: a smaller volume, two seeds,
    # the baseline, nnU-Net fed zeroed channels and the 2d study's best method (read from its archive).
    "cpu3d": Size(8, 4, (32, 40, 32), "3d_fullres", 10, 40, False, seeds=(1, 2), dedicated="none",
                  trainers=(NO_MASKING, REFERENCE, BEST_2D)),
    # On a GPU: 3d_fullres at a realistic size, nnU-Net's iterations per epoch, every trainer.
    "gpu3d": Size(60, 20, (96, 112, 96), "3d_fullres", 100, 250, True, seeds=(1, 2, 3), dedicated="all"),
}
SIZES["gpu"] = SIZES["gpu3d"]  # the earlier name


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Study:
    """The work folder and its record of what is done (written atomically after every step)."""

    def __init__(self, work: str, size: Size, trainers: list[str], seeds: list[int], dedicated: str, device: str,
                 archive_folder: str | None = None):
        self.work, self.size, self.trainers, self.seeds, self.device = work, size, trainers, seeds, device
        self.dedicated_kind = dedicated
        self.archive_folder, self.archive = archive_folder, None
        self.state_path = os.path.join(work, "study.json")
        self.env = dict(os.environ)
        self.env["nnUNet_raw"] = os.path.join(work, "nnUNet_raw")
        self.env["nnUNet_preprocessed"] = os.path.join(work, "nnUNet_preprocessed")
        self.env.setdefault("nnUNet_def_n_proc", "2")
        self.env.update(nnUNet_missingmod_num_epochs=str(size.epochs),
                        nnUNet_missingmod_iterations_per_epoch=str(size.iterations),
                        nnUNet_missingmod_val_iterations_per_epoch=str(max(2, size.iterations // 10)))
        for name in ("nnUNet_raw", "nnUNet_preprocessed"):
            os.makedirs(self.env[name], exist_ok=True)
            os.environ[name] = self.env[name]
        self.training_code = TrainingCode(os.path.join(REPO, "nnunet_missingmod"))
        self.state = self._load_state()

    def _load_state(self) -> dict:
        if os.path.isfile(self.state_path):
            with open(self.state_path) as f:
                state = json.load(f)
            recorded = {k: v for k, v in state["size"].items() if k not in ("seeds", "dedicated", "trainers")}
            wanted = {k: v for k, v in json.loads(json.dumps(asdict(self.size))).items()
                      if k not in ("seeds", "dedicated", "trainers")}
            if recorded != wanted:
                sys.exit(f"{self.work} holds a study of another size ({recorded}); use another --work folder "
                         f"or the same size")
            state.setdefault("trainings", {})
            return state
        return {"size": asdict(self.size), "done": {}, "training_s": {}, "trainings": {}}

    def save(self) -> None:
        tmp = self.state_path + ".partial"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=2)
        os.replace(tmp, self.state_path)

    def done(self, step: str) -> bool:
        return step in self.state["done"]

    def code_entries(self, step: str) -> tuple[str, ...]:
        """The package modules a step runs (``TrainingCode`` follows their imports): the priors'
        command; or a trainer's module, the planner whose plans it trains on, and the priors' command
        where priors feed it (an evaluation counts as its training: evaluation code is not training code)."""
        if step == PRIORS_STEP:
            return (PRIORS_MODULE,)
        label = step.split(" ", 1)[1].rsplit(" seed ", 1)[0]
        trainer = REFERENCE if label == ENSEMBLE else label
        from nnunet_missingmod.training.mstkd_teacher import find_trainer_class
        return (find_trainer_class(trainer).__module__, PLANS_MODULE) + ((PRIORS_MODULE,) if trainer in NEEDS_PRIORS else ())

    def code_of(self, step: str) -> str:
        """The fingerprint of the training code ``step`` runs (docs/study.md)."""
        return self.training_code.fingerprint(self.code_entries(step))

    def mark(self, step: str, finished: str | None = None) -> None:
        self.state["done"][step] = finished or time.strftime("%Y-%m-%d %H:%M:%S")
        if step not in CODE_FREE_STEPS:
            self.state.setdefault("training_code", {})[step] = self.code_of(step)
        self.save()
        if finished is None:
            self.archive_step(step)

    def forget_steps_of_other_code(self) -> None:
        """Steps this work folder finished with other training code (or before this record existed)
        are done again, and their networks and priors are moved aside (``<folder>.stale``): a number
        in the report must come from the code that ships, here as in the archive."""
        made_with = self.state.setdefault("training_code", {})
        stale = [step for step in self.state["done"]
                 if step not in CODE_FREE_STEPS and made_with.get(step) != self.code_of(step)]
        for step in stale:
            del self.state["done"][step]
            made_with.pop(step, None)
            folder = None
            if step.startswith("train "):
                key = step.removeprefix("train ")
                self.state["trainings"].pop(key, None)
                self.state["training_s"].pop(key, None)
                trainer, seed = key.rsplit(" seed ", 1)
                folder = self.model_folder(trainer, int(seed) if seed.isdigit() else seed)
            elif step == PRIORS_STEP:
                self.state.pop("priors_s", None)
                folder = next(iter(self.priors_folders()), None)
            if folder and os.path.isdir(folder):
                shutil.rmtree(folder + ".stale", ignore_errors=True)
                os.replace(folder, folder + ".stale")
        self.save()
        if stale:
            log(f"{len(stale)} step(s) of this work folder were made with other training code, done again: "
                + "; ".join(sorted(stale)))

    def priors_folders(self) -> list[str]:
        return glob.glob(os.path.join(self.env["nnUNet_preprocessed"], f"Dataset{DATASET_ID}_{DATASET_NAME}",
                                      "*_smml_priors"))

    def run(self, command: list[str], log_name: str, **env) -> None:
        path = os.path.join(self.work, "logs", log_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(f"\n$ {' '.join(command)}\n")
            f.flush()
            result = subprocess.run(command, env={**self.env, **env}, stdout=f, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)} failed ({result.returncode}); its output is in {path}")

    # --- where things are --------------------------------------------------------------------

    @property
    def dataset_folder(self) -> str:
        return os.path.join(self.env["nnUNet_raw"], f"Dataset{DATASET_ID}_{DATASET_NAME}")

    def results_root(self, seed) -> str:
        """nnUNet_results of one seed's trainings (``"dedicated"``: the dedicated models')."""
        return os.path.join(self.work, "dedicated" if seed == "dedicated" else f"seed_{seed}", "nnUNet_results")

    def model_folder(self, trainer: str, seed) -> str:
        return os.path.join(self.results_root(seed), f"Dataset{DATASET_ID}_{DATASET_NAME}",
                            f"{trainer}__nnUNetPlans__{self.size.configuration}")

    def evaluation_folder(self, trainer: str, seed) -> str:
        """``seed``: a number, ``"dedicated"``, or an ensemble's pair of seeds (``"1+2"``)."""
        kind = ("dedicated" if seed == "dedicated" else f"ensemble_{seed}" if "+" in str(seed) else f"seed_{seed}")
        return os.path.join(self.work, "evaluation", kind, trainer.replace(" ", "_"))

    @property
    def ensemble_pairs(self) -> list[tuple[int, int]]:
        """The reference's seeds paired for the ensemble control: with three or more seeds, each with
        the next (1+2, 2+3, 3+1), so that every network is in two pairs and the pairs give a spread;
        with two, the one pair. Pairs that share a network are not independent: the spread over them
        understates a spread over disjoint pairs, so a verdict against it errs towards "above"."""
        seeds = self.seeds
        if len(seeds) < 2:
            return []
        if len(seeds) == 2:
            return [(seeds[0], seeds[1])]
        return [(seeds[i], seeds[(i + 1) % len(seeds)]) for i in range(len(seeds))]

    @property
    def dedicated_subsets(self) -> list[str]:
        from nnunet_missingmod.modalities import Modalities
        modalities = Modalities.from_dataset_json(os.path.join(self.dataset_folder, "dataset.json"))
        subsets = modalities.subsets()
        if self.dedicated_kind == "none":
            return []
        if self.dedicated_kind == "singles":
            subsets = [s for s in subsets if len(s) == 1] + [subsets[-1]]
        return [modalities.subset_name(s) for s in subsets]

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

    def ensure_priors(self) -> None:
        """SMML's Segment Anything priors, computed once, right before SMMLTrainer first trains."""
        if not self.done(PRIORS_STEP):
            log("SMML priors (nnUNetv2_smml_priors, LiteMedSAM)")
            start = time.time()
            self.run(["nnUNetv2_smml_priors", "-d", str(DATASET_ID), "-c", self.size.configuration],
                     "smml_priors.log")
            self.state["priors_s"] = self.state.get("priors_s", 0.0) + time.time() - start
            self.mark(PRIORS_STEP)

    def has_network(self, trainer: str, seed) -> bool:
        return os.path.isfile(os.path.join(self.model_folder(trainer, seed), "fold_0", "checkpoint_final.pth"))

    def train(self, trainer: str, seed) -> None:
        """Train, unless its network is here. A training taken from the archive has no network: it
        is trained again only when a step needs it, and its weights are compared with the archived."""
        step = f"train {trainer} seed {seed}"
        if self.done(step) and self.has_network(trainer, seed):
            return
        if self.done(step):
            log(f"{trainer} (seed {seed}) was trained on another machine; training it again for its network")
            del self.state["done"][step]
        if trainer in NEEDS_PRIORS:
            self.ensure_priors()
        fold = os.path.join(self.model_folder(trainer, seed), "fold_0")
        resume = os.path.isfile(os.path.join(fold, "checkpoint_latest.pth"))
        log(f"training {trainer} (seed {seed}) for {self.size.epochs} x {self.size.iterations} iterations"
            + (" (resuming with --c)" if resume else ""))
        start = time.time()
        seed_value = self.seeds[0] if seed == "dedicated" else seed
        os.makedirs(self.results_root(seed), exist_ok=True)
        self.run(["nnUNetv2_train", str(DATASET_ID), self.size.configuration, "0", "-tr", trainer,
                  "-device", self.device, *(["--c"] if resume else [])], f"train_{trainer}_seed_{seed}.log",
                 nnUNet_results=self.results_root(seed), nnUNet_missingmod_seed=str(seed_value))
        key = f"{trainer} seed {seed}"
        self.state["training_s"][key] = self.state["training_s"].get(key, 0.0) + time.time() - start
        record, earlier = self.training_record(trainer, seed), self.state["trainings"].get(key)
        record["resumed"] = resume  # seeded from the epoch it resumed at: repeatable, not the uninterrupted run
        if earlier and earlier.get("weights_sha256"):  # trained again for its network: the report keeps
            repeated = earlier["weights_sha256"] == record["weights_sha256"]  # the record of the reported run
            record = {**earlier, "repeats_archived_weights": repeated}
            log(f"{trainer} (seed {seed}) trained again: " + ("the same weights as the archived training" if repeated
                else "**other weights** than the archived training (this machine does not repeat that one)"))
        self.state["trainings"][key] = record
        self.mark(step)

    def training_record(self, trainer: str, seed) -> dict:
        """What the report needs of a finished training, kept when its network is not: its length
        (median logged epoch time x epochs: a pause or a busy neighbour for a few epochs does not
        inflate it), its last sampled loss-term shares and its weights' digest."""
        import torch

        from nnunet_missingmod.inference.records import weights_digest
        fold = os.path.join(self.model_folder(trainer, seed), "fold_0")
        times = []
        for path in glob.glob(os.path.join(fold, "training_log_*.txt")):
            with open(path) as f:
                times += [float(t) for t in re.findall(r"Epoch time: ([\d.]+) s", f.read())]
        minutes = (float(np.median(times)) * self.size.epochs / 60 if times
                   else self.state["training_s"].get(f"{trainer} seed {seed}", float("nan")) / 60)
        checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
        return {"minutes": minutes, "loss_terms": loss_term_summary(checkpoint),
                "weights_sha256": weights_digest([checkpoint["network_weights"]])}

    def evaluate(self, trainer: str, seed, subsets=None, ensemble_with=None, figures: bool = False) -> None:
        """Evaluate ``trainer``'s network of ``seed``; with ``ensemble_with`` (another seed) the two
        networks' logits averaged, recorded as ENSEMBLE of seed ``"<seed>+<ensemble_with>"``."""
        label = trainer if ensemble_with is None else ENSEMBLE
        model_seed, seed = seed, (seed if ensemble_with is None else f"{seed}+{ensemble_with}")
        step = f"evaluate {label} seed {seed}"
        if self.done(step):
            return
        self.train(trainer, model_seed)  # its network, if the training was taken from the archive
        if ensemble_with is not None:
            self.train(trainer, ensemble_with)
        log(f"evaluating {label} (seed {seed}) over " + ("all modality subsets" if subsets is None else subsets[0]))
        extra = ["--subsets", *subsets] if subsets else []
        if ensemble_with is not None:
            extra += ["--ensemble_with", self.model_folder(trainer, ensemble_with)]
        if figures:
            extra += ["--figures", "1", "--save_predictions"]
        self.run(["nnUNetv2_evaluate_missing", "-m", self.model_folder(trainer, model_seed), "-f", "0",
                  "-i", os.path.join(self.dataset_folder, "imagesTs"), "-o", self.evaluation_folder(label, seed),
                  "-device", self.device, "--overwrite", *extra, *([] if self.size.mirroring else ["--disable_tta"]),
                  # On the CPU the worker pool only shares the same cores: in-process is faster for
                  # the study's small volumes (47 s against 81 s per evaluation, docs/study.md).
                  "-np", "0" if self.device == "cpu" else "3"],
                 f"evaluate_{label.replace(' ', '_')}_seed_{seed}.log")
        self.mark(step)

    # --- the archive -------------------------------------------------------------------------

    def open_archive(self) -> None:
        """Take the archived steps this study can use, then archive the finished steps it lacks."""
        if self.archive_folder is None:
            return
        log(f"archive {self.archive_folder}: fingerprints of the data and the training code")
        size = {k: v for k, v in json.loads(json.dumps(asdict(self.size))).items()
                if k not in ("seeds", "dedicated", "trainers")}
        try:
            self.archive = StudyArchive(self.archive_folder, size, dataset_fingerprint(self.dataset_folder),
                                        self.code_of, current_commit(REPO), log=log)
        except ArchiveMismatch as error:
            sys.exit(str(error))
        taken, archived = [], self.archive.usable()
        for step, record in archived.items():
            if self.done(step) or not self.archive.take(step, record, self.work):
                continue
            if "training" in record:
                self.state["trainings"][step.removeprefix("train ")] = record["training"]
            if "priors_s" in record:
                self.state["priors_s"] = record["priors_s"]
            self.mark(step, finished=record["finished"])  # made with this training code, as usable() checks
            taken.append(step)
        if taken:
            log(f"archive: took {len(taken)} finished step(s) made on an earlier machine")
        for step in self.state["done"]:
            if step not in archived:
                self.archive_step(step)

    def archive_step(self, step: str) -> None:
        if self.archive is None or step in ("dataset", "preprocessing"):
            return
        details = {}
        if step == PRIORS_STEP:
            folder = self.priors_folders()
            files = [os.path.relpath(p, self.work) for f in folder for p in sorted(glob.glob(os.path.join(f, "*")))
                     if not p.endswith(".partial")]
            details["priors_s"] = self.state.get("priors_s", float("nan"))
        elif step.startswith("train "):
            key = step.removeprefix("train ")
            if key not in self.state["trainings"]:  # finished by an earlier version of this script
                trainer, seed = key.rsplit(" seed ", 1)
                if not self.has_network(trainer, seed if not seed.isdigit() else int(seed)):
                    return
                self.state["trainings"][key] = self.training_record(trainer, seed if not seed.isdigit() else int(seed))
                self.save()
            files, details["training"] = [], self.state["trainings"][key]
        elif step.startswith("evaluate "):
            label, seed = step.removeprefix("evaluate ").rsplit(" seed ", 1)
            seed = int(seed) if seed.isdigit() else seed
            folder = self.evaluation_folder(label, seed)
            files = [os.path.relpath(os.path.join(folder, f), self.work)
                     for f in evaluation_files(folder, with_pictures=seed == self.seeds[0])]
        else:
            return
        self.archive.add(step, self.work, files, **details)

    def pending_steps(self) -> list[str]:
        """The evaluations the full study would report that are not done yet (a partial report says so)."""
        steps = [f"evaluate {t} seed {s}" for s in self.seeds for t in self.trainers]
        if REFERENCE in self.trainers:
            steps += [f"evaluate {ENSEMBLE} seed {a}+{b}" for a, b in self.ensemble_pairs]
        steps += [f"evaluate {dedicated_trainer(s)} seed dedicated" for s in self.dedicated_subsets]
        return [step for step in steps if not self.done(step)]

    def run_all(self) -> None:
        self.prepare_data()
        self.forget_steps_of_other_code()
        self.open_archive()
        for seed in self.seeds:
            for trainer in self.trainers:
                if not self.done(f"evaluate {trainer} seed {seed}"):
                    self.train(trainer, seed)
                self.evaluate(trainer, seed, figures=seed == self.seeds[0])
        if REFERENCE in self.trainers:
            for first, second in self.ensemble_pairs:
                self.evaluate(REFERENCE, first, ensemble_with=second)
        for subset in self.dedicated_subsets:
            trainer = dedicated_trainer(subset)
            if not self.done(f"evaluate {trainer} seed dedicated"):
                self.train(trainer, "dedicated")
            self.evaluate(trainer, "dedicated", subsets=[subset])


def training_minutes(study: Study, trainer: str, seed) -> float:
    """A training's length as recorded when it finished (Study.training_record)."""
    return study.state["trainings"].get(f"{trainer} seed {seed}", {}).get("minutes", np.nan)


def loss_term_summary(checkpoint: dict) -> dict | None:
    """A checkpoint's last sampled gradient shares and the fraction of steps the clip engaged."""
    history = checkpoint.get("loss_terms", {}).get("history")
    sampled = [r for r in history or [] if "gradient_shares" in r]
    if not sampled:
        return None
    last = sampled[-1]
    group = "network" if "network" in last["clipped_fraction"] else next(iter(last["clipped_fraction"]))
    return {"epoch": last["epoch"], "gradient_shares": last["gradient_shares"], "clip_group": group,
            "clipped": float(np.mean([r["clipped_fraction"][group] for r in history]))}


def dedicated_trainer(subset: str) -> str:
    from nnunet_missingmod.training.dedicated import dedicated_trainer_name
    return dedicated_trainer_name(subset.split("+"))


# --- numbers from the evaluations ----------------------------------------------------------------

def read_per_case(path: str, metric: str = "dice") -> dict:
    """{(case, subset, region): value} of one evaluation's per_case.csv."""
    with open(path) as f:
        return {(r["case"], r["subset"], r["region"]): float(r[metric]) for r in csv.DictReader(f)}


def mean_over_seeds(tables: list[dict]) -> dict:
    """The per-(case, subset, region) mean of several seeds' tables (the same keys in each)."""
    keys = tables[0].keys()
    for t in tables[1:]:
        if t.keys() != keys:
            raise ValueError("the seeds' evaluations cover different cases, subsets or regions")
    return {k: float(np.mean([t[k] for t in tables])) for k in keys}


def mean_dice(table: dict, region: str) -> float:
    """Mean over subsets of the mean over cases, as the papers' "Avg" column."""
    subsets = sorted({s for _, s, r in table if r == region})
    return float(np.mean([np.mean([v for (c, s, r), v in table.items() if s == subset and r == region])
                          for subset in subsets]))


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


@dataclass
class SeedStatistics:
    """A trainer's mean Dice over subsets per region: the seeds' values, their mean and spread."""

    per_seed: dict[str, list[float]]  # region -> one value per seed
    mean: dict[str, float] = field(init=False)
    spread: dict[str, float] = field(init=False)  # sample standard deviation over seeds (0 for one seed)

    def __post_init__(self):
        self.mean = {r: float(np.mean(v)) for r, v in self.per_seed.items()}
        self.spread = {r: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for r, v in self.per_seed.items()}


def compare(method: SeedStatistics, reference: SeedStatistics, region: str) -> tuple[float, str]:
    """(difference of seed means, verdict): "tie" when the difference is within the larger of the
    two trainers' seed spreads, else "above" or "below"."""
    difference = method.mean[region] - reference.mean[region]
    if abs(difference) <= max(method.spread[region], reference.spread[region]):
        return difference, "tie"
    return difference, "above" if difference > 0 else "below"


def gap_closed(method: dict, reference: dict, ceiling: dict, region: str) -> float:
    """The share of the reference's gap to the ceiling that the method closes, on the subsets the
    ceiling covers: (mean method - mean reference) / (mean ceiling - mean reference), each the mean
    over those subsets of the mean over cases."""
    subsets = sorted({s for _, s, r in ceiling if r == region})
    def over(table):
        return np.mean([np.mean([v for (c, s, r), v in table.items() if s == subset and r == region])
                        for subset in subsets])
    gap = over(ceiling) - over(reference)
    return float((over(method) - over(reference)) / gap) if gap > 0 else float("nan")


def share_cell(share: float) -> str:
    return "no gap (the reference is at the ceiling)" if np.isnan(share) else f"{share * 100:.0f} %"


# The bar (issue 14): every method at or above ModalityDropoutTrainer on mean TC and ET (seed means,
# a difference within the seed spread is a tie, which counts as "at"); SMML above the two-network
# ModalityDropoutTrainer ensemble on TC or ET by more than the seed spread; the best method closes
# at least 30 % of the gap to the dedicated ceiling on TC and ET.
BAR_REGIONS = ("TC", "ET")
CEILING_SHARE = 0.30


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
    ensemble on the bar's regions (a tie within the larger spread), and SMML against its branches
    trained apart, which isolates mutual learning and the priors from the second network."""
    lines = []
    for trainer in two_networks:
        verdicts = {r: compare(stats[trainer], stats[ENSEMBLE], r) for r in BAR_REGIONS}
        text = (f"- {trainer} against {ENSEMBLE}: "
                + ", ".join(f"{r} {d * 100:+.2f} ({v})" for r, (d, v) in verdicts.items()))
        above = [r for r, (_, v) in verdicts.items() if v == "above"]
        if trainer == "SMMLTrainer":
            text += (f": above the ensemble on {' and '.join(above)} by more than the seed spread." if above else
                     f": not above it by more than the seed spread on {' or '.join(BAR_REGIONS)}; what SMML gains "
                     f"over {REFERENCE} is what a second network gives.")
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
                       share_of=None) -> str:
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
                 + ("within the seed spread, a tie" if verdict == "tie" else "more than the seed spread"))
        if share_of is not None:
            text += f"; closes {share_cell(share_of(best, region))} of {REFERENCE}'s gap to the dedicated models"
    if best in cost:
        text += f"; trains at {cost[best]:.2f}x nnU-Net's iteration time"
    if best in TWO_NETWORKS and ENSEMBLE in stats:
        difference, verdict = compare(stats[ENSEMBLE], stats[best], region)
        text += (f"; it deploys two networks, and two of {REFERENCE}'s averaged ({ENSEMBLE}) are "
                 f"{difference * 100:+.2f} against it: "
                 + ("a tie, so its lead is what a second network gives" if verdict == "tie"
                    else f"{verdict} it by more than the seed spread"))
        alone = max((t for t in contenders if t not in TWO_NETWORKS), key=lambda t: stats[t].mean[region])
        if alone != REFERENCE:
            difference, verdict = compare(stats[alone], stats[REFERENCE], region)
            text += (f"; the best with one network is {alone} ({stats[alone].mean[region] * 100:.2f} ± "
                     f"{stats[alone].spread[region] * 100:.2f}, {difference * 100:+.2f} against {REFERENCE}: "
                     f"{'a tie' if verdict == 'tie' else verdict})")
    return text + "."


def full_subset_statistics(tables: list[dict], full_subset: str, regions: list[str], short: dict) -> SeedStatistics:
    """A trainer's Dice with every modality present: per seed, the mean over cases on the full subset."""
    return SeedStatistics({short[r]: [float(np.mean([v for (c, s, rr), v in table.items() if s == full_subset and rr == r]))
                                      for table in tables] for r in regions})


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
        statistics[trainer] = SeedStatistics({short_region_name(r): [mean_dice(table, r) for table in tables]
                                              for r in regions})
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
        shares = ", ".join(f"{name} {share:+.0%}" for name, share in summary["gradient_shares"].items() if share)
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
    case = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(study.dataset_folder, "imagesTs"))
                  if f.endswith("_0000.nii.gz"))[0]
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
    dataset_json = json.load(open(os.path.join(study.dataset_folder, "dataset.json")))
    background = read(os.path.join(study.dataset_folder, "imagesTs", f"{case}_0001.nii.gz"))  # T1ce
    reference = read(os.path.join(study.dataset_folder, "labelsTs", f"{case}.nii.gz"))
    return draw(background, reference, predictions, dataset_json, path, title=f"{case}, every trainer (seed "
                f"{study.seeds[0]}), every subset")


def study_subset_order(study: Study) -> list[str]:
    from nnunet_missingmod.modalities import Modalities
    modalities = Modalities.from_dataset_json(os.path.join(study.dataset_folder, "dataset.json"))
    return [modalities.subset_name(s) for s in modalities.subsets()]


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


def write_report(study: Study, report: str, command: str) -> None:
    from nnunet_missingmod.inference.metrics import short_region_name
    from nnunet_missingmod.inference.scoring import POSTPROCESSED_SUFFIX
    from nnunet_missingmod.synthetic import contrast_table, format_contrast_table

    size, trainers, seeds = study.size, study.trainers, study.seeds
    first = json.load(open(os.path.join(study.evaluation_folder(trainers[0], seeds[0]), "summary.json")))
    # The dataset's regions; ETpp, which newer evaluations add, is not part of the study's bar.
    regions = [r for r in first["regions"] if not r.endswith(POSTPROCESSED_SUFFIX)]
    subsets = first["subsets"]
    short = {r: short_region_name(r) for r in regions}
    folder = lambda t, s: study.evaluation_folder(t, s)  # noqa: E731
    dice = {t: [read_per_case(os.path.join(folder(t, s), "per_case.csv")) for s in seeds] for t in trainers}
    hd95 = {t: [read_per_case(os.path.join(folder(t, s), "per_case.csv"), "hd95") for s in seeds] for t in trainers}
    stats = {t: SeedStatistics({short[r]: [mean_dice(table, r) for table in dice[t]] for r in regions})
             for t in trainers}
    mean_hd95 = {t: {short[r]: float(np.mean([mean_dice(table, r) for table in hd95[t]])) for r in regions}
                 for t in trainers}
    seed_mean = {t: mean_over_seeds(dice[t]) for t in trainers}
    pairs = [f"{a}+{b}" for a, b in study.ensemble_pairs
             if os.path.isfile(os.path.join(folder(ENSEMBLE, f"{a}+{b}"), "per_case.csv"))]  # evaluated so far
    ensembles = [read_per_case(os.path.join(folder(ENSEMBLE, p), "per_case.csv")) for p in pairs]
    if ensembles:
        stats[ENSEMBLE], ensemble_spread = ensemble_statistics(
            SeedStatistics({short[r]: [mean_dice(table, r) for table in ensembles] for r in regions}), stats[REFERENCE])
        seed_mean[ENSEMBLE] = mean_over_seeds(ensembles)
    ceiling = {}
    for subset in study.dedicated_subsets:
        path = os.path.join(folder(dedicated_trainer(subset), "dedicated"), "per_case.csv")
        if os.path.isfile(path):
            ceiling.update(read_per_case(path))
    methods = [t for t in trainers if t not in (REFERENCE, NO_MASKING)]
    cost = costs()
    # The figures go next to the report, in a folder named after it (results.md: results/).
    figures = os.path.splitext(os.path.basename(report))[0]
    figures_folder = os.path.join(os.path.dirname(os.path.abspath(report)), figures)
    os.makedirs(figures_folder, exist_ok=True)
    training_min = {t: np.mean([training_minutes(study, t, s) for s in seeds]) for t in trainers}

    lines = ["# Results: which trainer to use, measured", "",
             f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} ({study.device}). Synthetic BraTS-like data "
             f"(`nnunet_missingmod.synthetic`): {size.num_train} training and {size.num_test} held-out test cases of "
             f"shape {tuple(size.shape)}; nnU-Net `{size.configuration}` plans; every model {size.epochs} epochs x "
             f"{size.iterations} iterations (= {size.epochs * size.iterations} iterations) on fold 0, with "
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}; "
             "`nnUNet_missingmod_seed`, docs/training.md); evaluation with `nnUNetv2_evaluate_missing` (test-time "
             f"mirroring {'on' if size.mirroring else 'off'}) over the {len(subsets)} subsets. Dice in %, HD95 in mm "
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
    lines += [which_trainer_line(region, stats, contenders, cost, share_of) for region in ("WT", "TC", "ET")]
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
              "extra training cost where it is above it by more than the seed spread. Costs: docs/benchmarks.md "
              "(CPU, ratios of iteration time against nnUNetTrainer)."]
    if NO_MASKING in full:
        lines += ["", "## With every modality present", "",
                  f"Dice % on {full_subset} alone (mean over the test cases), mean ± standard deviation over the seeds, "
                  f"and the difference from {NO_MASKING}, nnU-Net trained as usual on complete scans: what a trainer "
                  "built for missing modalities gives up, or gains, where none is missing (a difference within the "
                  "larger seed spread is a tie).", "",
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
    if "priors_s" in study.state:
        lines += ["", f"SMMLTrainer also needs LiteMedSAM's priors, computed once per dataset by `nnUNetv2_smml_priors` "
                  f"before training: {study.state['priors_s'] / 60:.1f} min for the {size.num_train} training cases."]

    # the bar
    if REFERENCE in trainers and methods:
        lines += ["", "## The bar", "",
                  f"Each method against {REFERENCE} on mean {' and '.join(BAR_REGIONS)} Dice (difference of the seed "
                  f"means, in Dice points; a difference within the larger of the two trainers' seed spreads is a "
                  f"tie, which meets the bar's 'at or above').", "",
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

    # the 2d ranking, checked in another configuration
    if size.configuration != "2d" and REFERENCE in trainers and methods:
        lines += ["", "## Against the 2d study", ""]
        try:
            best_2d = best_method_in_archive(ARCHIVE_2D)[0]
            lines += [f"Each trainer against {REFERENCE} (difference of the seed means, Dice points; tie within the "
                      f"larger seed spread) in the 2d study (`{os.path.relpath(ARCHIVE_2D, REPO)}`, docs/results.md; "
                      f"the seeds every trainer below has there) and here, in `{size.configuration}`. The 2d study's "
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
        for t in [*trainers, *([ENSEMBLE] if ENSEMBLE in seed_mean else [])]:
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
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the preset's)")
    parser.add_argument("--trainers", nargs="+", help="trainers (default: the preset's)")
    parser.add_argument("--dedicated", choices=("all", "singles", "none"),
                        help="dedicated models: one per subset, per single modality and the full set, or none "
                             "(default: the preset's)")
    parser.add_argument("--epochs", type=int, help="epochs per trainer (overrides the preset)")
    parser.add_argument("--iterations", type=int, help="iterations per epoch (overrides the preset)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--report", default=os.path.join(REPO, "docs", "results.md"))
    parser.add_argument("--archive", help="folder of finished steps kept between machines (default "
                        "benchmarks/results/study_<size>; 'none': no archive)")
    parser.add_argument("--report_only", action="store_true",
                        help="write the report from the steps done so far (here or in the archive), run none; "
                             "the report lists the steps still to run")
    parser.add_argument("--restamp_archive", metavar="EVIDENCE",
                        help="give the archived steps made with other training code the current code's fingerprint, "
                             "recording EVIDENCE that training did not change (a retrained step with the archived "
                             "weights' SHA-256); run nothing (docs/study.md)")
    args = parser.parse_args()

    size = SIZES[args.size]
    custom = {k: v for k, v in (("epochs", args.epochs), ("iterations", args.iterations)) if v}
    if custom:
        size = Size(**{**asdict(size), **custom})
    trainers = list(args.trainers or size.trainers)
    if BEST_2D in trainers:
        try:
            best, scores = best_method_in_archive(ARCHIVE_2D)
        except FileNotFoundError as error:
            parser.error(f"--size {args.size} trains the 2d study's best method: {error}")
        log(f"the 2d study's best method on mean {' and '.join(BAR_REGIONS)} Dice ({ARCHIVE_2D}): {best} ("
            + ", ".join(f"{m} {v * 100:.2f}" for m, v in scores.items()) + ")")
        trainers = [best if t == BEST_2D else t for t in trainers]
    if REFERENCE not in trainers:
        parser.error(f"--trainers must include {REFERENCE}, the reference of every comparison")
    archive = args.archive or os.path.join(REPO, "benchmarks", "results",
                                           f"study_{args.size}{'_custom' if custom else ''}")
    study = Study(os.path.abspath(args.work), size, trainers, list(args.seeds or size.seeds),
                  args.dedicated or size.dedicated, args.device,
                  archive_folder=None if archive == "none" else os.path.abspath(archive))
    if args.restamp_archive:
        if study.archive_folder is None:
            parser.error("--restamp_archive needs an archive")
        size_record = {k: v for k, v in json.loads(json.dumps(asdict(size))).items()
                       if k not in ("seeds", "dedicated", "trainers")}
        with open(os.path.join(study.archive_folder, "archive.json")) as f:
            dataset = json.load(f)["dataset"]  # the data is not regenerated: only code fingerprints change
        changed = StudyArchive(study.archive_folder, size_record, dataset, study.code_of, current_commit(REPO),
                               log=log).restamp(args.restamp_archive)
        log(f"archive {study.archive_folder}: {len(changed)} step(s) restamped")
        return
    start = time.time()
    if args.report_only:
        study.open_archive()
        missing = [step for step in study.pending_steps() if step.rsplit(" seed ", 1)[1].isdigit()]
        if missing:
            parser.error("--report_only needs every trainer evaluated for every seed; not done: "
                         + "; ".join(missing) + " (name fewer with --trainers or --seeds)")
    else:
        study.run_all()
    command = "python benchmarks/robustness_study.py " + " ".join(sys.argv[1:])
    write_report(study, os.path.abspath(args.report), command)
    log(f"study finished in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
