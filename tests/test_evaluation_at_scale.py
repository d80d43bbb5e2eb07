"""Sharded, resumed and merged evaluations equal one single run; bad input stops with the file named."""

import copy
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import clean_env, run
from nnunet_missingmod.inference.cases import CaseError
from nnunet_missingmod.inference.evaluate_missing import evaluate_missing, main, merge_evaluation
from nnunet_missingmod.inference.records import EvaluationStateError, cases_of_part


@pytest.fixture(scope="module")
def folders(raw_dataset):
    return os.path.join(raw_dataset, "imagesTs"), os.path.join(raw_dataset, "labelsTs")


@pytest.fixture(scope="module")
def single_run(predictor, folders, tmp_path_factory):
    """The reference: one in-process run over every case and subset."""
    out = tmp_path_factory.mktemp("single") / "evaluation"
    evaluate_missing(predictor, *folders, str(out), show_progress=False)
    return out


@pytest.fixture
def other_model(predictor):
    """The same network with other weights: another model to the evaluation's records."""
    other = copy.copy(predictor)
    other.list_of_parameters = [{k: v * 0.9 if v.is_floating_point() else v for k, v in p.items()}
                                for p in predictor.list_of_parameters]
    return other


def command(trained_model, folders, out, *extra):
    return ["nnUNetv2_evaluate_missing", "-m", trained_model["folder"], "-f", "0", "-i", folders[0], "-o", out,
            "-device", "cpu", "--disable_tta", *extra]


def test_cases_are_shared_among_parts_as_nnunet_predict_shares_them():
    cases = [f"case_{i}" for i in (3, 0, 4, 1, 2)]
    assert [cases_of_part(cases, 2, k) for k in (0, 1)] == [["case_0", "case_2", "case_4"], ["case_1", "case_3"]]
    with pytest.raises(ValueError, match=r"-part_id 2 is out of range for -num_parts 2 \(0 to 1\)"):
        cases_of_part(cases, 2, 2)


def test_two_parts_run_as_two_processes_merge_to_the_single_run(predictor, other_model, trained_model, folders,
                                                                nnunet_folders, single_run, tmp_path):
    """As a job array reruns after a model change: the folder holds both parts of another model's
    evaluation, the parts start together with --overwrite, and part 1 reads a copy of the test set
    mounted at another path. Neither refuses the other, and the merge equals one single run."""
    out = str(tmp_path / "sharded")
    for k in (0, 1):
        evaluate_missing(other_model, *folders, out, subsets=["T1ce"], num_parts=2, part_id=k, show_progress=False)
    mount = tmp_path / "node_2" / "data"
    for folder in folders:
        shutil.copytree(folder, mount / os.path.basename(folder))
    env = clean_env(nnunet_folders)
    parts = [subprocess.Popen(command(trained_model, (str(mount / os.path.basename(folders[0])),) if k else folders,
                                      out, "-num_parts", "2", "-part_id", str(k), "-np", "1", "--overwrite"),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    outputs = [p.communicate(timeout=1200)[0] for p in parts]
    assert [p.returncode for p in parts] == [0, 0], outputs
    assert "nnUNetv2_evaluate_missing --merge -o" in outputs[0]
    assert not os.path.exists(os.path.join(out, "per_case.csv"))  # a part alone writes no report
    merged = run(["nnUNetv2_evaluate_missing", "--merge", "-o", out], env)
    assert "| **Mean** |" in merged.stdout
    assert (tmp_path / "sharded" / "per_case.csv").read_text() == (single_run / "per_case.csv").read_text()
    assert (tmp_path / "sharded" / "table.md").read_text() == (single_run / "table.md").read_text()


def test_a_killed_evaluation_resumes_to_the_same_reports(trained_model, folders, nnunet_folders, single_run,
                                                         tmp_path):
    out = tmp_path / "resumed"
    env = clean_env(nnunet_folders)
    process = subprocess.Popen(command(trained_model, folders, out, "-np", "0"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1200

    def finished_records():  # not the hidden temporary file of a record being written
        folder = out / "records"
        return sorted(n for n in os.listdir(folder) if not n.startswith(".")) if folder.is_dir() else []
    while not finished_records():
        assert process.poll() is None and time.time() < deadline, "the evaluation ended before its first record"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    scored = finished_records()
    assert len(scored) == 1 and not (out / "per_case.csv").exists()  # killed between the two test cases
    first_record = (out / "records" / scored[0]).read_bytes()

    again = run(command(trained_model, folders, out, "-np", "0"), env, check=False)
    assert again.returncode != 0 and "stopped after 1 of 2 cases" in again.stderr
    assert "--continue_evaluation" in again.stderr
    run(command(trained_model, folders, out, "-np", "0", "--continue_evaluation"), env)
    assert (out / "records" / scored[0]).read_bytes() == first_record  # not scored again
    assert (out / "per_case.csv").read_text() == (single_run / "per_case.csv").read_text()


def test_workers_score_what_the_main_process_scores(predictor, folders, single_run, tmp_path, monkeypatch):
    """The workers start with another nnUNet_def_n_proc than this process read when it imported
    nnU-Net (as CI's test process once read 8 and its workers 2): the export's torch thread count
    must not reach a score. Records compared too: their reliability bins are unrounded sums."""
    from nnunetv2.configuration import default_num_processes
    monkeypatch.setenv("nnUNet_def_n_proc", "8" if default_num_processes != 8 else "2")
    evaluate_missing(predictor, *folders, str(tmp_path / "pool"), num_workers=2, show_progress=False)
    assert (tmp_path / "pool" / "per_case.csv").read_text() == (single_run / "per_case.csv").read_text()
    for record in sorted(os.listdir(single_run / "records")):
        assert (tmp_path / "pool" / "records" / record).read_bytes() == (single_run / "records" / record).read_bytes()


def test_a_finished_evaluation_is_kept_or_reused_never_silently_replaced(predictor, folders, single_run, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(single_run, out)
    with pytest.raises(FileExistsError, match="finished.*--continue_evaluation"):
        evaluate_missing(predictor, *folders, str(out), show_progress=False)
    summary = evaluate_missing(predictor, *folders, str(out), continue_evaluation=True, show_progress=False)
    assert (out / "per_case.csv").read_text() == (single_run / "per_case.csv").read_text()
    assert summary["subsets"][-1] == "T1+T1ce+T2+FLAIR"


def test_another_models_evaluation_is_neither_continued_nor_merged(predictor, other_model, folders, tmp_path):
    out = str(tmp_path / "taken")
    evaluate_missing(predictor, *folders, out, subsets=["T1ce"], show_progress=False)
    for flag in ({}, {"continue_evaluation": True}):
        with pytest.raises(EvaluationStateError, match=r"holds another evaluation .*weights"):
            evaluate_missing(other_model, *folders, out, subsets=["T1ce"], show_progress=False, **flag)
    with pytest.raises(EvaluationStateError, match=r"holds another evaluation .*subsets"):
        evaluate_missing(predictor, *folders, out, subsets=["FLAIR"], continue_evaluation=True, show_progress=False)
    assert evaluate_missing(other_model, *folders, out, subsets=["T1ce"], overwrite=True,
                            show_progress=False)["subsets"] == ["T1ce"]

    shards = str(tmp_path / "mixed")
    evaluate_missing(predictor, *folders, shards, subsets=["T1ce"], num_parts=2, part_id=0, show_progress=False)
    with pytest.raises(EvaluationStateError, match="holds another evaluation"):
        evaluate_missing(other_model, *folders, shards, subsets=["T1ce"], num_parts=2, part_id=1, show_progress=False)
    with pytest.raises(EvaluationStateError, match=r"part\(s\) 1 of 2 are missing"):
        merge_evaluation(shards)


def test_merging_parts_of_two_models_names_the_part_and_the_difference(predictor, other_model, folders, tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    evaluate_missing(predictor, *folders, first, subsets=["T1ce"], num_parts=2, part_id=0, show_progress=False)
    evaluate_missing(other_model, *folders, second, subsets=["T1ce"], num_parts=2, part_id=1, show_progress=False)
    for name in ("parts", "records"):  # someone gathers both parts into one folder
        shutil.copytree(os.path.join(second, name), os.path.join(first, name), dirs_exist_ok=True)
    with pytest.raises(EvaluationStateError, match=r"part_1_of_2.json is another evaluation than .*part_0_of_2.json: "
                                                   r"weights"):
        merge_evaluation(first)


def test_bad_shard_flags_are_refused_before_the_model_loads(tmp_path):
    with pytest.raises(SystemExit, match="-part_id 2 is out of range for -num_parts 2"):
        main(["-m", str(tmp_path / "no_model"), "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-num_parts", "2",
              "-part_id", "2"])


def test_a_label_the_dataset_does_not_define_is_named_and_earlier_cases_are_kept(predictor, folders, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(folders[1], labels)
    last = sorted(os.listdir(labels))[-1]
    image = sitk.ReadImage(str(labels / last))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 7
    relabelled = sitk.GetImageFromArray(array)
    relabelled.CopyInformation(image)
    sitk.WriteImage(relabelled, str(labels / last))
    out = tmp_path / "out"
    evaluate_missing(predictor, *folders, str(out), subsets=["T1ce"], show_progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # The pre-pass reads every case before anything is written: even --overwrite loses nothing.
    with pytest.raises(CaseError, match=rf"{last} holds label\(s\) \[7\] that dataset.json does not define"):
        evaluate_missing(predictor, folders[0], str(labels), str(out), subsets=["T1ce"], overwrite=True,
                         show_progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --skip_data_check: headers only before the run; the label is read when its case is reached.
    skipped = tmp_path / "skipped"
    with pytest.raises(CaseError, match=rf"{last} holds label\(s\) \[7\]"):
        evaluate_missing(predictor, folders[0], str(labels), str(skipped), subsets=["T1ce"], check_data=False,
                         show_progress=False)
    assert len(os.listdir(skipped / "records")) == 1  # the first case's scores survive, to be continued


def test_the_identity_holds_the_data_and_what_a_case_writes(predictor, folders, tmp_path):
    """Data changed under the same names is another test set; adding --save_predictions or
    --figures to a resumed run would leave the cases already scored without them."""
    data = tmp_path / "data"
    images, labels = (str(data / os.path.basename(f)) for f in folders)
    for folder, copy_to in zip(folders, (images, labels)):
        shutil.copytree(folder, copy_to)
    out = str(tmp_path / "out")
    evaluate_missing(predictor, images, labels, out, subsets=["T1ce"], num_parts=2, part_id=0, show_progress=False)
    last = os.path.join(labels, sorted(os.listdir(labels))[-1])
    image = sitk.ReadImage(last)
    array = sitk.GetArrayFromImage(image)
    assert (array == 2).any()
    array[array == 2] = 1  # an edit in place: same name, same size class, defined labels only
    edited = sitk.GetImageFromArray(array)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, last)
    with pytest.raises(EvaluationStateError, match=r"holds another evaluation .*data: "):
        evaluate_missing(predictor, images, labels, out, subsets=["T1ce"], num_parts=2, part_id=1,
                         show_progress=False)
    with pytest.raises(EvaluationStateError, match=r"holds another evaluation .*data: "):
        evaluate_missing(predictor, images, labels, out, subsets=["T1ce"], num_parts=2, part_id=0,
                         continue_evaluation=True, show_progress=False)

    finished = str(tmp_path / "finished")
    evaluate_missing(predictor, images, labels, finished, subsets=["T1ce"], show_progress=False)
    for extra in ({"save_predictions": True}, {"figures": 1}):
        with pytest.raises(EvaluationStateError, match=r"holds another evaluation .*outputs: "):
            evaluate_missing(predictor, images, labels, finished, subsets=["T1ce"], continue_evaluation=True,
                             show_progress=False, **extra)


def test_an_image_with_nan_is_named(predictor, folders, tmp_path):
    """SimpleITK reads a NaN in a NIfTI file as 0, nnU-Net's nibabel reader keeps it: with that reader
    (or NRRD, MHA files) a NaN would turn the channel's normalisation into NaN everywhere."""
    import nibabel
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    from nnunet_missingmod.inference.cases import find_cases, read_case
    from nnunet_missingmod.modalities import Modalities
    images = tmp_path / "images"
    shutil.copytree(folders[0], images)
    broken = sorted(f for f in os.listdir(images) if f.endswith("_0002.nii.gz"))[0]
    image = nibabel.load(images / broken)
    array = np.asarray(image.dataobj, dtype=np.float32)
    array[1, 2, 3] = np.nan
    nibabel.save(nibabel.Nifti1Image(array, image.affine), images / broken)
    modalities = Modalities.from_dataset_json(predictor.dataset_json)
    case = find_cases(str(images), ".nii.gz", modalities)[broken[:-len("_0002.nii.gz")]]
    with pytest.raises(CaseError, match=rf"{broken} holds 1 NaN or infinite values"):
        read_case(case, modalities, NibabelIO())


def test_overwrite_on_a_part_removes_only_its_own_cases_files(tmp_path):
    """Part 0 of 2 with --overwrite: its cases' records, predictions (also one cut off mid-write)
    and figures go, part 1's stay, and so does part 1's part file of another identity."""
    from nnunet_missingmod.inference.records import EvaluationFolder, part_path, record_path
    cases = ["case_0", "case_1"]
    old = EvaluationFolder(str(tmp_path), {"weights": "old"}, cases, num_parts=2, part_id=1)
    old.open()
    files = {case: [record_path(str(tmp_path), case), tmp_path / "figures" / f"{case}.png",
                    tmp_path / "predictions" / "T1" / f"{case}.nii.gz",
                    tmp_path / "predictions" / "T1+T2" / f".partial_{case}.nii.gz"] for case in cases}
    for path in (p for paths in files.values() for p in paths):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    EvaluationFolder(str(tmp_path), {"weights": "new"}, cases, num_parts=2, part_id=0).open(overwrite=True)
    assert not any(os.path.exists(p) for p in files["case_0"])
    assert all(os.path.exists(p) for p in files["case_1"])
    assert os.path.exists(part_path(str(tmp_path), 1, 2)) and os.path.exists(part_path(str(tmp_path), 0, 2))
