"""A study's steps, where their outputs go, and the record of which are done.

A study trains every trainer on one planned dataset for the same budget, with several seeds
(``nnUNet_missingmod_seed``: each run repeatable, the seeds independent), and evaluates each over
every modality subset with ``nnUNetv2_evaluate_missing``. Beside them:

- the dedicated ceiling: one nnU-Net per subset (``DedicatedTrainer__<subset>``), each evaluated on
  its own subset, the alternative to one robust model;
- the ensemble control: ModalityDropoutTrainer's seeds averaged in pairs at inference (nnU-Net's
  own logit averaging, ``--ensemble_with``), as many networks as SMML deploys;
- the compute-matched control: ModalityDropoutTrainer trained for as many epochs as fit in the
  training time of the costliest method of the study, so that "is a method worth its cost" is
  answered at equal compute and not only at equal iterations.

Every step is named (``train MSTKDTrainer seed 1``, ``evaluate MSTKDTrainer seed 1``) and leaves a
mark in ``WORK/study.json`` when it finishes, written under a file lock: a step may run in this
process (``local``) or in a SLURM job of its own (slurm.py), and running the study again goes on
where it stopped.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from nnunet_missingmod.study.archive import ArchiveMismatch, StudyArchive, TrainingCode, current_commit, \
    dataset_fingerprint, evaluation_files

REFERENCE = "ModalityDropoutTrainer"
NO_MASKING = "FullModalityTrainer"
ENSEMBLE = f"{REFERENCE} x2"  # two of the reference's seeds averaged at inference (Study.ensemble_pairs)
COMPUTE_MATCHED = f"{REFERENCE} compute-matched"  # the reference given the costliest method's training time
CODE_FREE_STEPS = ("dataset", "preprocessing")  # not redone for a training-code change (the archive checks the data)
PRIORS_STEP = "smml_priors"
PRIORS_MODULE = "nnunet_missingmod.priors.compute"  # nnUNetv2_smml_priors
PLANS_MODULE = "nnunet_missingmod.planning"  # the plans every network is built from
NEEDS_PRIORS = ("SMMLTrainer",)
METHODS = ["MAGMSTrainer", "MSTKDTrainer", "SMMLTrainer"]
TRAINERS = [NO_MASKING, REFERENCE, *METHODS, "SMMLTrainerNoConsistency"]
TWO_NETWORKS = {"SMMLTrainer", "SMMLTrainerNoPriors", "SMMLTrainerNoConsistency", "SMMLTrainerNoPixelConsistency",
                "SMMLTrainerNoFeatureConsistency"}
PACKAGE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class StudyError(RuntimeError):
    """A study that cannot run as asked; the message names the argument, file or step at fault."""


@dataclass(frozen=True)
class StudySetup:
    """What every trainer of a study trains and is evaluated on. ``epochs`` and ``iterations`` of
    None keep nnU-Net's (1000 x 250); ``test_labels`` of None is the folder beside ``test_images``
    (labelsTs beside imagesTs)."""

    dataset: str  # nnU-Net's DatasetXXX_Name
    configuration: str
    test_images: str
    test_labels: Optional[str] = None
    fold: int = 0
    plans: str = "nnUNetPlans"
    epochs: Optional[int] = None
    iterations: Optional[int] = None
    mirroring: bool = True  # test-time mirroring in the evaluation (4x the prediction time in 2d, 8x in 3d)

    @property
    def dataset_id(self) -> int:
        return int(self.dataset[len("Dataset"):len("Dataset") + 3])

    def identity(self) -> dict:
        """What makes two studies' steps comparable (the work folder and the archive refuse others)."""
        return {"dataset": self.dataset, "configuration": self.configuration, "fold": self.fold,
                "plans": self.plans, "epochs": self.epochs, "iterations": self.iterations, "mirroring": self.mirroring}


def training_label(trainer: str) -> str:
    """The trainer a step's label trains: the controls are ModalityDropoutTrainer's networks."""
    return REFERENCE if trainer in (ENSEMBLE, COMPUTE_MATCHED) else trainer


def dedicated_trainer(subset: str) -> str:
    from nnunet_missingmod.training.dedicated import dedicated_trainer_name
    return dedicated_trainer_name(subset.split("+"))


class Study:
    """The work folder, the steps and the record of what is done.

    ``identity``: what the work folder and the archive must agree on (``setup.identity()``, or a
    preset's own record); ``raw``/``preprocessed``: nnU-Net's folders of the dataset (a preset's
    are in the work folder); ``data_preparation``: writes and plans the dataset when it is not (a
    preset's generator), None for a dataset the user has planned.
    """

    def __init__(self, work: str, setup: StudySetup, trainers: list[str], seeds: list[int], dedicated: str,
                 device: str, identity: Optional[dict] = None, raw: Optional[str] = None,
                 preprocessed: Optional[str] = None, archive_folder: Optional[str] = None,
                 data_preparation: Optional[Callable[["Study", bool], None]] = None, compute_matched: bool = True,
                 ensemble: bool = True, evaluation_workers: Optional[int] = None):
        self.work, self.setup, self.trainers, self.seeds, self.device = work, setup, trainers, seeds, device
        self.identity = identity or setup.identity()
        self.dedicated_kind, self.compute_matched, self.ensemble = dedicated, compute_matched, ensemble
        self.archive_folder, self.archive = archive_folder, None
        self.data_preparation = data_preparation
        self.state_path = os.path.join(work, "study.json")
        self.env = dict(os.environ)
        raw, preprocessed = raw or os.environ.get("nnUNet_raw"), preprocessed or os.environ.get("nnUNet_preprocessed")
        if not raw or not preprocessed:
            raise StudyError("set nnUNet_raw and nnUNet_preprocessed to the folders of the dataset to study")
        self.env.update(nnUNet_raw=raw, nnUNet_preprocessed=preprocessed)
        self.env.setdefault("nnUNet_def_n_proc", "2")
        if setup.epochs:
            self.env["nnUNet_missingmod_num_epochs"] = str(setup.epochs)
        if setup.iterations:
            self.env.update(nnUNet_missingmod_iterations_per_epoch=str(setup.iterations),
                            nnUNet_missingmod_val_iterations_per_epoch=str(max(2, setup.iterations // 10)))
        for name in ("nnUNet_raw", "nnUNet_preprocessed"):
            os.makedirs(self.env[name], exist_ok=True)
        # Evaluation workers: on the CPU the pool only shares the cores the prediction uses, so
        # in-process is faster for small volumes (47 s against 81 s per evaluation, docs/study.md).
        self.evaluation_workers = evaluation_workers if evaluation_workers is not None else (
            0 if device == "cpu" else 3)
        self.training_code = TrainingCode(PACKAGE_FOLDER)
        os.makedirs(work, exist_ok=True)
        with self.locked_state():
            pass  # refuses a work folder of another study before anything runs

    # --- the record of what is done ----------------------------------------------------------

    @contextmanager
    def locked_state(self):
        """The record, read under an exclusive lock and written back atomically on leaving: steps
        that run at once (SLURM jobs) each add their mark without losing another's."""
        with open(self.state_path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.state = self._read_state()
                yield self.state
                tmp = self.state_path + ".partial"
                with open(tmp, "w") as f:
                    json.dump(self.state, f, indent=2)
                os.replace(tmp, self.state_path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> dict:
        if not os.path.isfile(self.state_path):
            return {"setup": self.identity, "done": {}, "training_s": {}, "trainings": {}}
        with open(self.state_path) as f:
            state = json.load(f)
        if state.get("setup") != self.identity:
            raise StudyError(f"{self.work} holds another study ({state.get('setup')}, this one {self.identity}); "
                             "use another work folder or the same dataset, configuration, fold and budget")
        for key in ("done", "training_s", "trainings"):
            state.setdefault(key, {})
        return state

    def reload(self) -> dict:
        with self.locked_state() as state:
            return state

    def done(self, step: str) -> bool:
        return step in self.state["done"]

    def code_entries(self, step: str) -> tuple[str, ...]:
        """The package modules a step runs (``TrainingCode`` follows their imports): the priors'
        command; or a trainer's module, the planner whose plans it trains on, and the priors' command
        where priors feed it (an evaluation counts as its training: evaluation code is not training code)."""
        if step == PRIORS_STEP:
            return (PRIORS_MODULE,)
        trainer = training_label(step.split(" ", 1)[1].rsplit(" seed ", 1)[0])
        from nnunet_missingmod.training.mstkd_teacher import find_trainer_class
        return (find_trainer_class(trainer).__module__, PLANS_MODULE) + ((PRIORS_MODULE,) if trainer in NEEDS_PRIORS else ())

    def code_of(self, step: str) -> str:
        """The fingerprint of the training code ``step`` runs (docs/study.md)."""
        return self.training_code.fingerprint(self.code_entries(step))

    def mark(self, step: str, finished: Optional[str] = None, **state_updates) -> None:
        """Record ``step`` as done (with ``state_updates``: {key: {name: value}} merged into the record)."""
        with self.locked_state() as state:
            state["done"][step] = finished or time.strftime("%Y-%m-%d %H:%M:%S")
            if step not in CODE_FREE_STEPS:
                state.setdefault("training_code", {})[step] = self.code_of(step)
            for key, value in state_updates.items():
                if isinstance(value, dict):
                    state.setdefault(key, {}).update(value)
                else:
                    state[key] = value
        if finished is None:
            self.archive_step(step)

    def forget_steps_of_other_code(self) -> None:
        """Steps this work folder finished with other training code (or before this record existed)
        are done again, and their networks and priors are moved aside (``<folder>.stale``): a number
        in the report must come from the code that ships, here as in the archive."""
        with self.locked_state() as state:
            made_with = state.setdefault("training_code", {})
            stale = [step for step in state["done"]
                     if step not in CODE_FREE_STEPS and made_with.get(step) != self.code_of(step)]
            for step in stale:
                del state["done"][step]
                made_with.pop(step, None)
                folder = None
                if step.startswith("train "):
                    key = step.removeprefix("train ")
                    state["trainings"].pop(key, None)
                    state["training_s"].pop(key, None)
                    trainer, seed = key.rsplit(" seed ", 1)
                    folder = self.model_folder(trainer, int(seed) if seed.isdigit() else seed)
                elif step == PRIORS_STEP:
                    state.pop("priors_s", None)
                    folder = next(iter(self.priors_folders()), None)
                if folder and os.path.isdir(folder):
                    shutil.rmtree(folder + ".stale", ignore_errors=True)
                    os.replace(folder, folder + ".stale")
        if stale:
            log(f"{len(stale)} step(s) of this work folder were made with other training code, done again: "
                + "; ".join(sorted(stale)))

    def run(self, command: list[str], log_name: str, **env) -> None:
        path = os.path.join(self.work, "logs", log_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(f"\n$ {' '.join(command)}\n")
            f.flush()
            result = subprocess.run(command, env={**self.env, **env}, stdout=f, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise StudyError(f"{' '.join(command)} failed ({result.returncode}); its output is in {path}")

    # --- where things are --------------------------------------------------------------------

    @property
    def dataset_folder(self) -> str:
        return os.path.join(self.env["nnUNet_raw"], self.setup.dataset)

    @property
    def label_folder(self) -> str:
        from nnunet_missingmod.inference.evaluate_missing import default_label_folder
        return self.setup.test_labels or default_label_folder(self.setup.test_images)

    def priors_folders(self) -> list[str]:
        return glob.glob(os.path.join(self.env["nnUNet_preprocessed"], self.setup.dataset, "*_smml_priors"))

    def results_root(self, seed, label: str = "") -> str:
        """nnUNet_results of one seed's trainings (``"dedicated"``: the dedicated models'; the
        compute-matched control has its own, its network being a ModalityDropoutTrainer's)."""
        name = "dedicated" if seed == "dedicated" else f"seed_{seed}"
        return os.path.join(self.work, name + ("_compute_matched" if label == COMPUTE_MATCHED else ""), "nnUNet_results")

    def model_folder(self, trainer: str, seed) -> str:
        return os.path.join(self.results_root(seed, trainer), self.setup.dataset,
                            f"{training_label(trainer)}__{self.setup.plans}__{self.setup.configuration}")

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
    def modalities(self):
        from nnunet_missingmod.modalities import Modalities
        return Modalities.from_dataset_json(os.path.join(self.dataset_folder, "dataset.json"))

    @property
    def dedicated_subsets(self) -> list[str]:
        if self.dedicated_kind == "none":
            return []
        modalities = self.modalities  # reads dataset.json
        subsets = modalities.subsets()
        if self.dedicated_kind == "singles":
            subsets = [s for s in subsets if len(s) == 1] + [subsets[-1]]
        return [modalities.subset_name(s) for s in subsets]

    @property
    def compute_matched_methods(self) -> list[str]:
        """The trainers whose cost the control is matched to: every one but the reference and nnU-Net."""
        return [t for t in self.trainers if t not in (REFERENCE, NO_MASKING)]

    @property
    def with_compute_matched(self) -> bool:
        return self.compute_matched and REFERENCE in self.trainers and bool(self.compute_matched_methods)

    # --- the steps ---------------------------------------------------------------------------

    def prepare_data(self, planned: bool = True) -> None:
        """The preset's data (and, if ``planned``, its plans and preprocessing), or a check that the
        user's dataset is planned and its test cases there."""
        if self.data_preparation is not None:
            self.data_preparation(self, planned)
            return
        plans = os.path.join(self.env["nnUNet_preprocessed"], self.setup.dataset, f"{self.setup.plans}.json")
        if not os.path.isfile(plans):
            raise StudyError(f"{plans} is missing: plan and preprocess the dataset first "
                             f"(nnUNetv2_plan_and_preprocess -d {self.setup.dataset_id} -c {self.setup.configuration})")
        with open(plans) as f:
            if self.setup.configuration not in json.load(f)["configurations"]:
                raise StudyError(f"{plans} has no configuration {self.setup.configuration}")
        for folder, what in ((self.setup.test_images, "test images"), (self.label_folder, "test labels")):
            if not os.path.isdir(folder) or not os.listdir(folder):
                raise StudyError(f"the {what} folder {folder} is missing or empty")

    def ensure_priors(self) -> None:
        """SMML's Segment Anything priors, computed once, right before SMMLTrainer first trains."""
        if not self.done(PRIORS_STEP):
            log("SMML priors (nnUNetv2_smml_priors, LiteMedSAM)")
            start = time.time()
            self.run(["nnUNetv2_smml_priors", "-d", str(self.setup.dataset_id), "-c", self.setup.configuration,
                      "-p", self.setup.plans], "smml_priors.log")
            self.mark(PRIORS_STEP, priors_s=self.state.get("priors_s", 0.0) + time.time() - start)

    def has_network(self, trainer: str, seed) -> bool:
        return os.path.isfile(os.path.join(self.model_folder(trainer, seed), f"fold_{self.setup.fold}",
                                           "checkpoint_final.pth"))

    def compute_matched_epochs(self) -> int:
        """The control's epochs: the study's epochs x the mean training time of the costliest method
        over the reference's (each the mean over the seeds where every one of them is trained),
        fixed in the record the first time, so that every seed and every machine trains the same."""
        if "compute_matched" not in self.state:
            epochs = self.setup.epochs or 1000
            trainers = [REFERENCE, *self.compute_matched_methods]
            seeds = [s for s in self.seeds if all(f"{t} seed {s}" in self.state["trainings"] for t in trainers)]
            if not seeds:
                raise StudyError("the compute-matched control needs " + ", ".join(trainers) + " trained first")
            minutes = {t: float(np.mean([training_minutes(self, t, s) for s in seeds])) for t in trainers}
            costliest = max(self.compute_matched_methods, key=minutes.get)
            ratio = minutes[costliest] / minutes[REFERENCE]
            record = {"epochs": max(epochs, int(round(epochs * ratio))), "matched_to": costliest, "ratio": ratio,
                      "seeds": seeds}
            with self.locked_state() as state:
                state.setdefault("compute_matched", record)
            log(f"compute-matched control: {self.state['compute_matched']['epochs']} epochs ({costliest} trains "
                f"{ratio:.2f}x as long as {REFERENCE}, mean over seeds {', '.join(map(str, seeds))})")
        return self.state["compute_matched"]["epochs"]

    def train(self, trainer: str, seed) -> None:
        """Train, unless its network is here. A training taken from the archive has no network: it
        is trained again only when a step needs it, and its weights are compared with the archived."""
        step = f"train {trainer} seed {seed}"
        if self.done(step) and self.has_network(trainer, seed):
            return
        if self.done(step):
            log(f"{trainer} (seed {seed}) was trained on another machine; training it again for its network")
            with self.locked_state() as state:
                state["done"].pop(step, None)
        if trainer in NEEDS_PRIORS:
            self.ensure_priors()
        env = {}
        if trainer == COMPUTE_MATCHED:
            env["nnUNet_missingmod_num_epochs"] = str(self.compute_matched_epochs())
        fold = os.path.join(self.model_folder(trainer, seed), f"fold_{self.setup.fold}")
        resume = os.path.isfile(os.path.join(fold, "checkpoint_latest.pth"))
        log(f"training {trainer} (seed {seed})" + (" (resuming with --c)" if resume else ""))
        start = time.time()
        seed_value = self.seeds[0] if seed == "dedicated" else seed
        os.makedirs(self.results_root(seed, trainer), exist_ok=True)
        self.run(["nnUNetv2_train", str(self.setup.dataset_id), self.setup.configuration, str(self.setup.fold),
                  "-tr", training_label(trainer), "-p", self.setup.plans, "-device", self.device,
                  *(["--c"] if resume else [])], f"train_{trainer.replace(' ', '_')}_seed_{seed}.log",
                 nnUNet_results=self.results_root(seed, trainer), nnUNet_missingmod_seed=str(seed_value), **env)
        key = f"{trainer} seed {seed}"
        self.reload()
        seconds = self.state["training_s"].get(key, 0.0) + time.time() - start
        record, earlier = self.training_record(trainer, seed), self.state["trainings"].get(key)
        record["resumed"] = resume  # seeded from the epoch it resumed at: repeatable, not the uninterrupted run
        if earlier and earlier.get("weights_sha256"):  # trained again for its network: the report keeps
            repeated = earlier["weights_sha256"] == record["weights_sha256"]  # the record of the reported run
            record = {**earlier, "repeats_archived_weights": repeated}
            log(f"{trainer} (seed {seed}) trained again: " + ("the same weights as the archived training" if repeated
                else "**other weights** than the archived training (this machine does not repeat that one)"))
        self.mark(step, training_s={key: seconds}, trainings={key: record})

    def training_record(self, trainer: str, seed) -> dict:
        """What the report needs of a finished training, kept when its network is not: its length
        (median logged epoch time x epochs: a pause or a busy neighbour for a few epochs does not
        inflate it), its last sampled loss-term shares and its weights' digest."""
        import torch

        from nnunet_missingmod.inference.records import weights_digest
        fold = os.path.join(self.model_folder(trainer, seed), f"fold_{self.setup.fold}")
        times = []
        for path in glob.glob(os.path.join(fold, "training_log_*.txt")):
            with open(path) as f:
                times += [float(t) for t in re.findall(r"Epoch time: ([\d.]+) s", f.read())]
        checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
        epochs = checkpoint.get("current_epoch") or self.setup.epochs or len(times)
        minutes = (float(np.median(times)) * epochs / 60 if times
                   else self.state["training_s"].get(f"{trainer} seed {seed}", float("nan")) / 60)
        return {"minutes": minutes, "loss_terms": loss_term_summary(checkpoint),
                "weights_sha256": weights_digest([checkpoint["network_weights"]])}

    def evaluation_command(self, trainer: str, seed, subsets=None, ensemble_with=None,
                           figures: bool = False) -> list[str]:
        """``nnUNetv2_evaluate_missing`` of one evaluation step (without -num_parts/-part_id)."""
        label = trainer if ensemble_with is None else ENSEMBLE
        output = self.evaluation_folder(label, seed if ensemble_with is None else f"{seed}+{ensemble_with}")
        extra = ["--subsets", *subsets] if subsets else []
        if ensemble_with is not None:
            extra += ["--ensemble_with", self.model_folder(trainer, ensemble_with)]
        if figures:
            extra += ["--figures", "1", "--save_predictions"]
        return ["nnUNetv2_evaluate_missing", "-m", self.model_folder(trainer, seed), "-f", str(self.setup.fold),
                "-i", self.setup.test_images, "-l", self.label_folder, "-o", output, "-device", self.device,
                "--overwrite", *extra, *([] if self.setup.mirroring else ["--disable_tta"]),
                "-np", str(self.evaluation_workers)]

    def evaluate(self, trainer: str, seed, subsets=None, ensemble_with=None, figures: bool = False,
                 part: Optional[tuple[int, int]] = None) -> None:
        """Evaluate ``trainer``'s network of ``seed``; with ``ensemble_with`` (another seed) the two
        networks' logits averaged, recorded as ENSEMBLE of seed ``"<seed>+<ensemble_with>"``. ``part``
        (part_id, num_parts): one share of the cases, left for a merge (``merge_evaluation``)."""
        label = trainer if ensemble_with is None else ENSEMBLE
        model_seed, seed = seed, (seed if ensemble_with is None else f"{seed}+{ensemble_with}")
        step = f"evaluate {label} seed {seed}"
        if self.done(step):
            return
        self.train(trainer, model_seed)  # its network, if the training was taken from the archive
        if ensemble_with is not None:
            self.train(trainer, ensemble_with)
        command = self.evaluation_command(trainer, model_seed, subsets, ensemble_with, figures)
        name = f"evaluate_{label.replace(' ', '_')}_seed_{seed}"
        if part is not None:
            log(f"evaluating {label} (seed {seed}), part {part[0]} of {part[1]}")
            self.run(command + ["-num_parts", str(part[1]), "-part_id", str(part[0])], f"{name}_part_{part[0]}.log")
            return
        log(f"evaluating {label} (seed {seed}) over " + ("all modality subsets" if subsets is None else subsets[0]))
        self.run(command, f"{name}.log")
        self.mark(step)

    def merge_evaluation(self, label: str, seed) -> None:
        """The parts of a sharded evaluation merged into its reports; marks the step done."""
        step = f"evaluate {label} seed {seed}"
        if self.done(step):
            return
        self.run(["nnUNetv2_evaluate_missing", "--merge", "-o", self.evaluation_folder(label, seed)],
                 f"evaluate_{label.replace(' ', '_')}_seed_{seed}.log")
        self.mark(step)

    # --- the plan: every step, what it needs, how it runs ------------------------------------

    def evaluations(self) -> list[dict]:
        """Every evaluation of the full study, in order: {step, trainer, seed, subsets, ensemble_with,
        figures, needs (training steps)}."""
        found = [dict(trainer=trainer, seed=seed, figures=seed == self.seeds[0])
                 for seed in self.seeds for trainer in self.trainers]
        if self.with_compute_matched:  # after every training it is matched to
            found += [dict(trainer=COMPUTE_MATCHED, seed=seed) for seed in self.seeds]
        if REFERENCE in self.trainers and self.ensemble:
            found += [dict(trainer=REFERENCE, seed=a, ensemble_with=b) for a, b in self.ensemble_pairs]
        found += [dict(trainer=dedicated_trainer(s), seed="dedicated", subsets=[s]) for s in self.dedicated_subsets]
        for evaluation in found:
            evaluation.setdefault("subsets", None)
            evaluation.setdefault("ensemble_with", None)
            evaluation.setdefault("figures", False)
            pair = evaluation["ensemble_with"]
            label = ENSEMBLE if pair is not None else evaluation["trainer"]
            evaluation["label"] = label
            evaluation["step"] = f"evaluate {label} seed {evaluation['seed']}" + (f"+{pair}" if pair is not None else "")
            evaluation["needs"] = [f"train {evaluation['trainer']} seed {s}"
                                   for s in [evaluation["seed"]] + ([pair] if pair is not None else [])]
        return found

    def training_needs(self, trainer: str, seed) -> list[str]:
        """Steps a training waits for: SMML's priors; the compute-matched control, until its epochs are
        fixed, every training it is matched to."""
        needs = [PRIORS_STEP] if trainer in NEEDS_PRIORS else []
        if trainer == COMPUTE_MATCHED and "compute_matched" not in self.state:
            needs += [f"train {t} seed {s}" for s in self.seeds for t in [REFERENCE, *self.compute_matched_methods]]
        return needs

    def pending_steps(self) -> list[str]:
        """The evaluations the full study would report that are not done yet (a partial report says so)."""
        return [e["step"] for e in self.evaluations() if not self.done(e["step"])]

    def run_all(self) -> None:
        """Every step in this process, in order."""
        self.prepare_data()
        self.forget_steps_of_other_code()
        self.open_archive()
        for evaluation in self.evaluations():
            if evaluation["ensemble_with"] is None and not self.done(evaluation["step"]):
                self.train(evaluation["trainer"], evaluation["seed"])
            self.evaluate(evaluation["trainer"], evaluation["seed"], evaluation["subsets"],
                          evaluation["ensemble_with"], evaluation["figures"])

    # --- the archive -------------------------------------------------------------------------

    def open_archive(self) -> None:
        """Take the archived steps this study can use, then archive the finished steps it lacks."""
        if self.archive_folder is None:
            return
        log(f"archive {self.archive_folder}: fingerprints of the data and the training code")
        try:
            self.archive = StudyArchive(self.archive_folder, self.identity, dataset_fingerprint(self.dataset_folder),
                                        self.code_of, current_commit(os.path.dirname(PACKAGE_FOLDER)), log=log)
        except ArchiveMismatch as error:
            raise StudyError(str(error)) from None
        self.reload()
        taken, archived = [], self.archive.usable()
        for step, record in archived.items():
            if self.done(step) or not self.archive.take(step, record, self.work):
                continue
            updates = {}
            if "training" in record:
                updates["trainings"] = {step.removeprefix("train "): record["training"]}
            if "priors_s" in record:
                updates["priors_s"] = record["priors_s"]
            if "compute_matched" in record and "compute_matched" not in self.state:
                updates["compute_matched"] = record["compute_matched"]
            self.mark(step, finished=record["finished"], **updates)  # made with this code, as usable() checks
            taken.append(step)
        if taken:
            log(f"archive: took {len(taken)} finished step(s) made on an earlier machine")
        for step in list(self.state["done"]):
            if step not in archived:
                self.archive_step(step)

    def restamp_archive(self, evidence: str) -> list[str]:
        """Give the archived steps made with other training code the current code's fingerprint
        (StudyArchive.restamp); the data is not regenerated, only code fingerprints change."""
        with open(os.path.join(self.archive_folder, "archive.json")) as f:
            dataset = json.load(f)["dataset"]
        return StudyArchive(self.archive_folder, self.identity, dataset, self.code_of,
                            current_commit(os.path.dirname(PACKAGE_FOLDER)), log=log).restamp(evidence)

    def archive_step(self, step: str) -> None:
        if self.archive is None or step in CODE_FREE_STEPS:
            return
        details = {}
        if step == PRIORS_STEP:
            folder = self.priors_folders()
            files = [os.path.relpath(p, self.work) for f in folder for p in sorted(glob.glob(os.path.join(f, "*")))
                     if not p.endswith(".partial")]
            details["priors_s"] = self.state.get("priors_s", float("nan"))
        elif step.startswith("train "):
            key = step.removeprefix("train ")
            if key not in self.state["trainings"]:  # finished by an earlier version of the study
                trainer, seed = key.rsplit(" seed ", 1)
                if not self.has_network(trainer, seed if not seed.isdigit() else int(seed)):
                    return
                record = self.training_record(trainer, seed if not seed.isdigit() else int(seed))
                with self.locked_state() as state:
                    state["trainings"][key] = record
            files, details["training"] = [], self.state["trainings"][key]
            if key.startswith(COMPUTE_MATCHED):  # its epochs, method matched and ratio, which the report names
                details["compute_matched"] = self.state["compute_matched"]
        elif step.startswith("evaluate "):
            label, seed = step.removeprefix("evaluate ").rsplit(" seed ", 1)
            seed = int(seed) if seed.isdigit() else seed
            folder = self.evaluation_folder(label, seed)
            files = [os.path.relpath(os.path.join(folder, f), self.work)
                     for f in evaluation_files(folder, with_pictures=seed == self.seeds[0])]
        else:
            return
        self.archive.add(step, self.work, files, **details)


def training_minutes(study: Study, trainer: str, seed) -> float:
    """A training's length as recorded when it finished (Study.training_record)."""
    return study.state["trainings"].get(f"{trainer} seed {seed}", {}).get("minutes", np.nan)


def loss_term_summary(checkpoint: dict) -> Optional[dict]:
    """A checkpoint's last sampled gradient shares and the fraction of steps the clip engaged."""
    history = checkpoint.get("loss_terms", {}).get("history")
    sampled = [r for r in history or [] if "gradient_shares" in r]
    if not sampled:
        return None
    last = sampled[-1]
    group = "network" if "network" in last["clipped_fraction"] else next(iter(last["clipped_fraction"]))
    return {"epoch": last["epoch"], "gradient_shares": last["gradient_shares"], "clip_group": group,
            "clipped": float(np.mean([r["clipped_fraction"][group] for r in history]))}

