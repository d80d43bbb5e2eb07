"""The README's main command: the whole chain from synthetic data to the table, seeded, quiet, and
printing what docs/demo.md shows."""

import os
import re
import shlex
import sys

import pytest

from conftest import REPO, clean_env, run
from test_evaluation import SUBSETS_IN_ORDER

from nnunet_missingmod.demo import _output_to, _run, _train, epoch_summaries



def table_rows(text: str) -> dict[str, dict[str, float]]:
    """``{subset: {column head: value}}`` of the first table in the papers' layout (the legacy
    Dice and HD95; the lesion-wise table after it is not read), the Mean row's bold removed."""
    rows, header = {}, None
    for line in text.splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if cells[0] == "Subset":
            if header is not None:
                break
            header = cells
        elif header is not None and cells[0] in (*SUBSETS_IN_ORDER, "Mean"):
            rows[cells[0]] = {h: float(c) for h, c in zip(header[1:], cells[1:])}
    return rows


@pytest.mark.parametrize("step", ["command", "training", "in_process"])
def test_a_failing_step_shows_its_command_and_log_tail(step, tmp_path):
    """Each of the demo's three ways of running a step (a command, nnUNetv2_train with its epoch
    lines, an in-process step with its output in a log) stops the demo naming what failed and
    showing the end of its log."""
    failing = [sys.executable, "-c", "print('the last words of a failing step'); raise SystemExit(3)"]
    log = str(tmp_path / "step.log")
    with pytest.raises(SystemExit) as stopped:
        if step == "command":
            _run(failing, dict(os.environ), log)
        elif step == "training":
            _train(failing, dict(os.environ), log, str(tmp_path / "fold_0"), 1, ("WT",))
        else:
            with _output_to(log, "plan and preprocess"):
                os.write(1, b"the last words of a failing step\n")  # as nnU-Net's planning and its workers write
                raise RuntimeError("planning failed")
    message = str(stopped.value)
    assert message.startswith("nnUNetv2_missingmod_demo: '")
    assert (shlex.join(failing) if step != "in_process" else "'plan and preprocess' failed") in message
    assert f"the end of its log ({log})" in message and "the last words of a failing step" in message


def test_epoch_lines_are_read_from_nnunets_log():
    log = ("2026-12-02 06:41:17.6: Epoch 0\n2026-12-02 06:41:17.7: Current learning rate: 0.01\n"
           "2026-12-02 06:41:27.9: train_loss 0.2676\n2026-12-02 06:41:28.4: val_loss 0.1\n"
           "2026-12-02 06:41:28.4: Pseudo dice [np.float32(0.6856), np.float32(0.0), np.float32(0.1)]\n"
           "2026-12-02 06:41:28.4: Epoch time: 9.99 s\n2026-12-02 06:41:29.6: Epoch 1\n")
    assert epoch_summaries(log) == [{"epoch": 0, "loss": 0.2676, "dice": [0.6856, 0.0, 0.1], "time": 9.99}]
    assert epoch_summaries(log.replace("np.float32(0.6856), np.float32(0.0), np.float32(0.1)", "0.5, 0.25, 0.0"))[0][
        "dice"] == [0.5, 0.25, 0.0]


# Measured: the default run with torch's AVX2 kernels instead of AVX-512 on the same machine
# (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) moved the Mean row's Dice by at most 0.15
# points, a subset's Dice by at most 3.2 (a near-empty T1-alone cell) and HD95 by up to 76 mm in
# cells where almost nothing is predicted (Mean HD95 by up to 5.6 mm).
SAME_MACHINE = {"dice": 0.0, "mean_dice": 0.0, "mean_hd95": 0.0}
OTHER_MACHINE = {"dice": 5.0, "mean_dice": 1.0, "mean_hd95": 10.0}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> dict:
    """The README's demo, as typed (plus ``--markdown``, which only also writes the table as a page):
    one run, read by the tests below."""
    folder = tmp_path_factory.mktemp("demo")
    env = clean_env({})
    env.pop("OMP_NUM_THREADS", None)  # torch's own threads, as typed, even beside other test workers
    result = run(["nnUNetv2_missingmod_demo", "-o", folder / "demo", "--markdown", folder / "demo.md"], env, cwd=folder)
    return {"folder": folder, "work": folder / "demo", "stdout": result.stdout}


@pytest.mark.e2e
def test_demo_runs_the_whole_chain_quietly(default_run):
    work, out = default_run["work"], default_run["stdout"]
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "$ nnUNetv2_train 990 2d 0 -tr ModalityDropoutTrainer",
                 "$ nnUNetv2_evaluate_missing", "epoch 1/10: loss", "epoch 10/10: loss", "demo finished"):
        assert step in out
    # nnU-Net's own output (plans, training log) is in files
    assert "Epoch time" not in out and "nnU-Net: a self-configuring" not in out and "U-Net configuration" not in out
    assert "2D U-Net configuration" in (work / "logs" / "plan_and_preprocess.log").read_text()
    assert set(table_rows(out)) == {*SUBSETS_IN_ORDER, "Mean"}
    assert os.path.isfile(work / "evaluation" / "heatmap.png") and os.listdir(work / "evaluation" / "figures")
    assert os.path.isfile(work / "logs" / "train.log") and os.path.isfile(work / "logs" / "evaluate.log")
    assert table_rows((default_run["folder"] / "demo.md").read_text()) == table_rows(out)
    again = run(["nnUNetv2_missingmod_demo", "-o", work], clean_env({}), cwd=default_run["folder"], check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr


@pytest.mark.e2e
def test_the_default_run_prints_the_table_of_docs_demo_md(default_run):
    """The README's demo, as typed, prints docs/demo.md's table: exactly where the run's own page
    names the machine docs/demo.md records (processor, vector instructions, torch and its threads),
    within the measured cross-processor difference elsewhere."""
    page = open(os.path.join(REPO, "docs", "demo.md")).read()
    expected = table_rows(page)
    recorded, here = (re.search(r"^Machine: (.*)$", text, re.MULTILINE)[1]
                      for text in (page, (default_run["folder"] / "demo.md").read_text()))
    tolerance = SAME_MACHINE if recorded == here else OTHER_MACHINE
    got = table_rows(default_run["stdout"])
    assert set(got) == set(expected)
    for subset, values in expected.items():
        for column in (c for c in values if c.startswith("Dice")):
            limit = tolerance["mean_dice" if subset == "Mean" else "dice"]
            assert abs(values[column] - got[subset][column]) <= limit, (subset, column, values, got[subset])
    for column in (c for c in expected["Mean"] if c.startswith("HD95")):  # per subset it swings where almost
        # nothing is predicted; the mean over subsets does not
        assert abs(expected["Mean"][column] - got["Mean"][column]) <= tolerance["mean_hd95"], (expected, got)
