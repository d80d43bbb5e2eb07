"""The README's main command, shortened: the whole chain from synthetic data to the table."""

import os

from conftest import clean_env, run
from test_evaluation import SUBSETS_IN_ORDER


def test_demo_runs_the_whole_chain(tmp_path):
    work = tmp_path / "demo"
    result = run(["nnUNetv2_missingmod_demo", "-o", work, "--num-train", "5", "--num-test", "1", "--epochs", "1",
                  "--iterations", "2"], clean_env({}), cwd=tmp_path)
    out = result.stdout
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "$ nnUNetv2_train 990 2d 0 -tr ModalityDropoutTrainer",
                 "$ nnUNetv2_evaluate_missing", "demo finished"):
        assert step in out
    for subset in SUBSETS_IN_ORDER:
        assert f"| {subset} " in out
    assert os.path.isfile(work / "evaluation" / "heatmap.png")
    again = run(["nnUNetv2_missingmod_demo", "-o", work], clean_env({}), cwd=tmp_path, check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr
