"""The docs name only flags the commands have: every flag written after one of the package's
console scripts in README.md or docs/*.md must appear in that script's ``--help``."""

from __future__ import annotations

import contextlib
import glob
import importlib
import io
import os
import re
import sys

import pytest

from conftest import REPO

# console script -> module with main(argv), as pyproject.toml registers them
SCRIPTS = {
    "nnUNetv2_synthetic_brats": "nnunet_missingmod.synthetic",
    "nnUNetv2_predict_missing": "nnunet_missingmod.inference.predict_missing",
    "nnUNetv2_evaluate_missing": "nnunet_missingmod.inference.evaluate_missing",
    "nnUNetv2_missingmod_demo": "nnunet_missingmod.demo",
    "nnUNetv2_smml_priors": "nnunet_missingmod.priors.compute",
    "nnUNetv2_convert_brats": "nnunet_missingmod.dataset_conversion.brats",
    "nnUNetv2_convert_fets": "nnunet_missingmod.dataset_conversion.fets",
    "nnUNetv2_convert_msd_brain": "nnunet_missingmod.dataset_conversion.msd",
    "nnUNetv2_convert_predictions_to_source": "nnunet_missingmod.dataset_conversion.back_conversion",
}
FLAG = re.compile(r"(?<![\w/.-])(--?[A-Za-z][\w-]*)")
SCRIPT = re.compile(r"\b(" + "|".join(SCRIPTS) + r")\b")


def logical_lines(page: str):
    """(first line number, line) with shell continuations (a trailing backslash) joined."""
    pending, first = "", None
    for number, line in enumerate(open(page), 1):
        first = first or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, pending + line
        pending, first = "", None


def documented_flags() -> dict[str, set[tuple[str, str]]]:
    """script -> {(flag, where)}: flags on the same line after the script's name, up to the end of
    the code span, a table cell or the next command."""
    found: dict[str, set[tuple[str, str]]] = {name: set() for name in SCRIPTS}
    pages = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
    for page in pages:
        for number, line in logical_lines(page):
            matches = list(SCRIPT.finditer(line))
            for i, match in enumerate(matches):
                end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
                command = re.split(r"[`|;]|&&| \(|, |\. ", line[match.end():end])[0]
                for flag in FLAG.findall(command):
                    found[match[1]].add((flag, f"{os.path.relpath(page, REPO)}:{number}"))
    return found


def help_text(script: str, monkeypatch) -> str:
    """``script --help`` in process, as the console script calls ``main()`` (argv from sys.argv)."""
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        importlib.import_module(SCRIPTS[script]).main()
    return out.getvalue()


DOCUMENTED = documented_flags()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_documented_flag_exists(script, monkeypatch):
    text = help_text(script, monkeypatch)
    offered = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    missing = sorted(f"{flag} ({where})" for flag, where in DOCUMENTED[script] if flag not in offered)
    assert not missing, f"{script} --help has no {', '.join(missing)}"


def test_the_docs_use_the_commands():
    """The extraction finds what it should: the evaluation's documented options, and flags of most commands."""
    evaluation = {flag for flag, _ in DOCUMENTED["nnUNetv2_evaluate_missing"]}
    assert {"-tr", "--subsets", "--figures", "--ensemble_with"} <= evaluation
    assert sum(bool(flags) for flags in DOCUMENTED.values()) >= 6


def test_the_readme_shows_the_table_of_docs_demo_md():
    """docs/demo.md is what the demo writes (tests/test_demo.py); the README shows the same table."""
    from test_demo import table_rows
    readme = table_rows(open(os.path.join(REPO, "README.md")).read())
    assert readme and readme == table_rows(open(os.path.join(REPO, "docs", "demo.md")).read())
