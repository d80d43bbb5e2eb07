"""The robustness study's archive (nnunet_missingmod/study/archive.py): finished steps carried to a fresh
machine, taken only when made from the same data and training code, and the repository's archives
usable with today's code. The study command resumed from an archive in a new work folder, as a next
machine would, is tested with the command (tests/test_study_command.py)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

import pytest
import SimpleITK as sitk

from conftest import REPO, clean_env, run

from nnunet_missingmod.study import archive, presets


def test_a_steps_code_is_its_trainers_modules_and_what_they_import(tmp_path):
    """A change to MAG-MS leaves ModalityDropoutTrainer's fingerprint alone, a change to the base
    trainer they share changes both, a new trainer in the registry changes neither, and MST-KD,
    whose teacher lookup imports the registry, depends on every trainer."""
    package = tmp_path / "nnunet_missingmod"
    shutil.copytree(os.path.join(REPO, "nnunet_missingmod"), package, ignore=shutil.ignore_patterns("__pycache__"))
    entries = {name: (f"nnunet_missingmod.training.{name}", "nnunet_missingmod.planning")
               for name in ("modality_dropout", "magms", "mstkd")}

    def fingerprints():
        code = archive.TrainingCode(str(package))
        return {name: code.fingerprint(modules) for name, modules in entries.items()}

    code = archive.TrainingCode(str(package))
    dropout = code.modules(entries["modality_dropout"])
    assert "nnunet_missingmod.training.base" in dropout and "nnunet_missingmod.masking" in dropout
    assert "nnunet_missingmod.training.magms" not in dropout and "nnunet_missingmod.training" not in dropout
    assert "nnunet_missingmod.losses.self_distillation" in code.modules(entries["magms"])
    assert "nnunet_missingmod.training.magms" in code.modules(entries["mstkd"])
    before = fingerprints()

    def edit(relative, text):
        path = package / relative
        path.write_text(path.read_text() + text)
        return fingerprints()

    after = edit("training/magms.py", "\nEXTRA = 1\n")
    assert after["modality_dropout"] == before["modality_dropout"]
    assert after["magms"] != before["magms"] and after["mstkd"] != before["mstkd"]
    (package / "training" / "new_method.py").write_text("from nnunet_missingmod.training.base import "
                                                         "MissingModalityTrainer\n\n\nclass NewTrainer("
                                                         "MissingModalityTrainer):\n    pass\n")
    registered = edit("training/__init__.py", "from nnunet_missingmod.training.new_method import NewTrainer\n")
    assert registered["modality_dropout"] == before["modality_dropout"] and registered["magms"] == after["magms"]
    assert registered["mstkd"] != after["mstkd"]
    shared = edit("training/base.py", "\nEXTRA = 1\n")
    assert all(shared[name] != registered[name] for name in entries)
    assert edit("training/modality_dropout.py", "\n# a comment\n") == shared
    path = package / "training" / "modality_dropout.py"
    source = path.read_text()
    path.write_text('"""Another docstring."""\n' + source.split('"""', 2)[2].lstrip("\n"))
    assert fingerprints() == shared
    assert edit("inference/reports.py", "\nEXTRA = 1\n") == shared  # evaluation code trains nothing
    with pytest.raises(KeyError, match="not a module"):
        code.modules(["nnunet_missingmod.training.absent"])


def test_dataset_fingerprint_is_the_data_not_the_files(tmp_path):
    from nnunet_missingmod.synthetic import write_nnunet_dataset
    first = write_nnunet_dataset(981, 2, 1, shape=(16, 20, 16), seed=0, raw_folder=str(tmp_path / "a"))
    second = write_nnunet_dataset(981, 2, 1, shape=(16, 20, 16), seed=0, raw_folder=str(tmp_path / "b"))
    assert archive.dataset_fingerprint(first) == archive.dataset_fingerprint(second)
    label = os.path.join(second, "labelsTs", sorted(os.listdir(os.path.join(second, "labelsTs")))[0])
    image = sitk.ReadImage(label)
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 1 - min(array[0, 0, 0], 1)  # one voxel
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, label)
    assert archive.dataset_fingerprint(first) != archive.dataset_fingerprint(second)


def make_archive(folder, code="code-1", dataset="data-1", size=None):
    return archive.StudyArchive(str(folder), size or {"epochs": 2}, dataset, lambda step: f"{code} {step}", "abc",
                                log=lambda m: None)


def test_a_step_travels_with_its_files_and_only_with_the_same_training_code(tmp_path):
    work = tmp_path / "work"
    (work / "evaluation" / "seed_1" / "T").mkdir(parents=True)
    (work / "evaluation" / "seed_1" / "T" / "per_case.csv").write_text("case,subset\n")
    first = make_archive(tmp_path / "archive")
    first.add("evaluate T seed 1", str(work), ["evaluation/seed_1/T/per_case.csv"])
    first.add("train T seed 1", str(work), [], training={"minutes": 1.5})

    fresh = tmp_path / "fresh"
    same = make_archive(tmp_path / "archive")
    usable = same.usable()
    assert set(usable) == {"evaluate T seed 1", "train T seed 1"}
    assert usable["train T seed 1"]["training"] == {"minutes": 1.5} and usable["train T seed 1"]["commit"] == "abc"
    assert same.take("evaluate T seed 1", usable["evaluate T seed 1"], str(fresh))
    assert (fresh / "evaluation" / "seed_1" / "T" / "per_case.csv").read_text() == "case,subset\n"

    messages = []
    other_code = archive.StudyArchive(str(tmp_path / "archive"), {"epochs": 2}, "data-1", lambda step: "code-2", None,
                                      log=messages.append)
    assert other_code.usable() == {}
    assert "2 step(s) made with other training code" in messages[0] and "train T seed 1" in messages[0]

    os.remove(tmp_path / "archive" / "evaluation" / "seed_1" / "T" / "per_case.csv")
    assert not same.take("evaluate T seed 1", usable["evaluate T seed 1"], str(tmp_path / "elsewhere"))


def test_an_archive_of_other_data_or_another_size_is_refused_by_name(tmp_path):
    make_archive(tmp_path / "archive").add("train T seed 1", str(tmp_path), [], training={})
    with pytest.raises(archive.ArchiveMismatch, match="made from other data"):
        make_archive(tmp_path / "archive", dataset="data-2")
    with pytest.raises(archive.ArchiveMismatch, match="another size"):
        make_archive(tmp_path / "archive", size={"epochs": 3})


@pytest.mark.e2e
def test_steps_a_work_folder_made_with_other_training_code_are_done_again_not_archived(tmp_path):
    """A work folder resumed after a change to the training code: its finished trainings and
    evaluations are forgotten (networks moved aside), the data and preprocessing kept; steps made
    with this code stay. Before, such steps were archived as if made with the current code."""
    study = presets.preset_study(presets.SIZES["tiny"], str(tmp_path / "work"), ["ModalityDropoutTrainer"], [1],
                                 "none", "cpu")
    old, current = "0" * 64, study.code_of("train FullModalityTrainer seed 1")
    steps = {"dataset": old, "preprocessing": old, "train ModalityDropoutTrainer seed 1": old,
             "evaluate ModalityDropoutTrainer seed 1": None, "train FullModalityTrainer seed 1": current,
             "evaluate FullModalityTrainer seed 1": current}
    with study.locked_state() as state:  # as the work folder was left
        state["done"] = {step: "2026-12-01 10:00:00" for step in steps}
        state["training_code"] = {step: code for step, code in steps.items() if code is not None}
        state["trainings"] = {"ModalityDropoutTrainer seed 1": {"minutes": 1.0},
                              "FullModalityTrainer seed 1": {"minutes": 2.0}}
    network = os.path.join(study.model_folder("ModalityDropoutTrainer", 1), "fold_0")
    os.makedirs(network)
    study.forget_steps_of_other_code()
    assert sorted(study.state["done"]) == ["dataset", "evaluate FullModalityTrainer seed 1", "preprocessing",
                                           "train FullModalityTrainer seed 1"]
    assert list(study.state["trainings"]) == ["FullModalityTrainer seed 1"]
    assert not os.path.exists(network) and os.path.isdir(study.model_folder("ModalityDropoutTrainer", 1) + ".stale")
    with open(tmp_path / "work" / "study.json") as f:
        assert sorted(json.load(f)["done"]) == sorted(study.state["done"])
    assert study.state["training_code"]["evaluate FullModalityTrainer seed 1"] == current
    assert study.code_of("evaluate ModalityDropoutTrainer x2 seed ensemble") != current
    study.mark("evaluate ModalityDropoutTrainer seed 1")  # no archive here: only recorded
    assert (study.state["training_code"]["evaluate ModalityDropoutTrainer seed 1"]
            == study.code_of("train ModalityDropoutTrainer seed 1"))


@pytest.mark.parametrize("name", ["cpu", "cpu3d"])
def test_the_repositorys_archive_serves_this_code_on_regenerated_data(name, tmp_path):
    """What the next machine takes from benchmarks/results: the preset's data, generated again here,
    is the data the archive was made from, and every archived step was made with today's training
    code (a change to training code restamps the archive in the same commit: docs/study.md)."""
    size = presets.SIZES[name]
    study = presets.preset_study(size, str(tmp_path / "work"), ["ModalityDropoutTrainer"], [1], "none", "cpu")
    study.prepare_data(planned=False)  # the raw data only: the archive's fingerprint is of the raw data
    messages = []
    stored = archive.StudyArchive(os.path.join(REPO, "benchmarks", "results", f"study_{name}"), study.identity,
                                  archive.dataset_fingerprint(study.dataset_folder), study.code_of, None,
                                  log=messages.append)
    assert stored.content["steps"] and len(stored.usable()) == len(stored.content["steps"]), messages


@pytest.mark.e2e
@pytest.mark.parametrize("name, page, options", [("cpu", "results.md", []),
                                                 ("cpu3d", "results-3d.md", ["--no_compute_matched"])])
def test_the_committed_report_is_regenerated_exactly_from_its_archive(name, page, options, tmp_path):
    """docs/results.md and docs/results-3d.md, everything under their heading paragraph, from the archive
    alone, as the study command writes them on a fresh machine (the paragraph holds the date and command)."""
    script = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_missingmod_study")
    run([script, "--preset", name, "--work", tmp_path / "work", "--report", tmp_path / page, "--report_only",
         *options], clean_env({}))
    regenerated, committed = ((folder / page).read_text() for folder in (tmp_path, pathlib.Path(REPO) / "docs"))
    assert regenerated.split("\n## ", 1)[1] == committed.split("\n## ", 1)[1]


def test_restamping_keeps_the_old_fingerprint_and_the_evidence(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    first = make_archive(tmp_path / "archive")
    first.add("train T seed 1", str(work), [], training={"minutes": 1.5, "weights_sha256": "w"})
    newer = make_archive(tmp_path / "archive", code="code-2")
    assert newer.usable() == {}
    assert newer.restamp("retrained train T seed 1: same weights") == ["train T seed 1"]
    again = make_archive(tmp_path / "archive", code="code-2")
    record = again.usable()["train T seed 1"]
    assert record["training_code"] == "code-2 train T seed 1"
    assert record["training_code_was"][0]["training_code"] == "code-1 train T seed 1"
    assert record["training_code_was"][0]["evidence"] == "retrained train T seed 1: same weights"
    assert again.restamp("nothing to do") == []
