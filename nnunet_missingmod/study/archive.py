"""The robustness study's finished steps, carried from one machine to the next through the repository.

The CPU study trains about 40 models: some 7 hours on 2 cores, longer than one developer session on
one machine, and a fresh machine starts with nothing but the repository. Every training is seeded,
so the same data, training code and seed give the same network on another machine
(docs/training.md). The study therefore keeps, in the repository, what its report needs from each
finished step (``benchmarks/results/study_<size>/``):

    archive.json                      per step: when, at which commit, with which fingerprints; per
                                      training: its time, its loss-term shares, its weights' SHA-256
    evaluation/<seed>/<trainer>/      per_case.csv, summary.json, heatmap.png, the first figure and
                                      the first case's predictions (the report's comparison figure)
    priors/                           SMML's priors (about an hour of LiteMedSAM on the CPU)

A study started on a fresh machine takes every archived step whose data fingerprint (the test and
training images, labels and dataset.json, as arrays) and training-code fingerprint (the code that
step runs: its trainer's module and every package module that imports, ``TrainingCode``, comments
and docstrings left out, and the versions of the libraries it trains with) match its own, and runs
only what is missing. A step made from other
data or other training code is left out, with its name in the log, and run again. A network that a
later step needs (the ensemble control's two networks) is trained again, and its weights are
compared with the archived digest: a difference says the machines do not repeat each other, and
is logged and recorded.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from importlib import metadata
from typing import Callable, Optional

PACKAGE = "nnunet_missingmod"
LIBRARIES = ("nnunetv2", "torch", "numpy", "batchgeneratorsv2", "batchgenerators", "dynamic_network_architectures")
ARCHIVE_FILE = "archive.json"
EVALUATION_FILES = ("per_case.csv", "summary.json", "heatmap.png")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def _library_versions(digest) -> None:
    for library in LIBRARIES:
        try:
            version = metadata.version(library.replace("_", "-"))
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{library}=={version}\0".encode())


class TrainingCode:
    """The code a step runs, read from the package's syntax trees: an entry module (a trainer's) and
    every package module it imports, transitively, anywhere in its code.

    A name imported from a package is followed to the module that defines it, so that the package's
    registry of trainers (``training/__init__``, which imports them all) ties no trainer to another
    one's code: a change to MAG-MS leaves ModalityDropoutTrainer's steps valid, a change to a module
    they share (``training/base``) makes both stale. A module that imports the package itself (MST-KD's
    teacher lookup) depends on everything the package exports. The package ``__init__`` files a
    submodule's import runs on the way are not followed: they only define names.
    """

    def __init__(self, package_folder: str):
        root = os.path.dirname(os.path.abspath(package_folder))
        self.paths, self.trees = {}, {}
        for path in sorted(glob.glob(os.path.join(os.path.abspath(package_folder), "**", "*.py"), recursive=True)):
            name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
            name = name[:-len(".__init__")] if name.endswith(".__init__") else name
            with open(path) as f:
                tree = _strip_docstrings(ast.parse(f.read(), filename=path))
            self.paths[name], self.trees[name] = os.path.relpath(path, root), tree
        self._fingerprints: dict[tuple, str] = {}

    def _is_package(self, module: str) -> bool:
        return self.paths[module].endswith("__init__.py")

    def _source(self, module: str, node: ast.ImportFrom) -> str:
        """The absolute module name of ``from X import ...`` in ``module`` (relative imports too)."""
        if node.level == 0:
            return node.module or ""
        parts = module.split(".") if self._is_package(module) else module.split(".")[:-1]
        parts = parts[:len(parts) - node.level + 1]
        return ".".join(parts + ([node.module] if node.module else []))

    def _defines(self, module: str, name: str) -> bool:
        for node in self.trees[module].body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return True
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        return False

    def _definer(self, module: str, name: str, seen: frozenset = frozenset()) -> Optional[str]:
        """The package module that defines ``name`` as ``module`` exports it (following re-exports)."""
        if f"{module}.{name}" in self.trees:
            return f"{module}.{name}"
        if self._defines(module, name):
            return module
        for node in self.trees[module].body:
            if not isinstance(node, ast.ImportFrom) or self._source(module, node) not in self.trees:
                continue
            source = self._source(module, node)
            for alias in node.names:
                if (source, name) in seen:
                    continue
                if alias.name == "*":
                    found = self._definer(source, name, seen | {(source, name)})
                    if found:
                        return found
                elif (alias.asname or alias.name) == name:
                    return self._definer(source, alias.name, seen | {(source, name)}) or source
        return None

    def imports(self, module: str) -> set[str]:
        """The package modules ``module`` imports names from, anywhere in its code."""
        found = set()
        for node in ast.walk(self.trees[module]):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in self.trees)
            elif isinstance(node, ast.ImportFrom) and self._source(module, node) in self.trees:
                source = self._source(module, node)
                for alias in node.names:
                    found.add(source if alias.name == "*" else self._definer(source, alias.name) or source)
        return found

    def modules(self, entries) -> list[str]:
        """The entry modules and every package module they import, transitively."""
        unknown = [e for e in entries if e not in self.trees]
        if unknown:
            raise KeyError(f"not a module of the package: {', '.join(unknown)}")
        todo, seen = list(entries), set()
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += self.imports(module)
        return sorted(seen)

    def fingerprint(self, entries) -> str:
        """SHA-256 of the syntax trees of ``modules(entries)`` (comments and docstrings left out) and
        of the versions of the libraries that train."""
        key = tuple(sorted(entries))
        if key not in self._fingerprints:
            digest = hashlib.sha256()
            for module in self.modules(key):
                digest.update(self.paths[module].encode() + b"\0" + ast.dump(self.trees[module]).encode() + b"\0")
            _library_versions(digest)
            self._fingerprints[key] = digest.hexdigest()
        return self._fingerprints[key]


def dataset_fingerprint(dataset_folder: str) -> str:
    """SHA-256 of a raw dataset as data: dataset.json's content and each image's and label's voxels
    and geometry (the bytes of a .nii.gz also hold a compression header that may differ)."""
    import numpy as np
    import SimpleITK as sitk
    digest = hashlib.sha256()
    with open(os.path.join(dataset_folder, "dataset.json")) as f:
        digest.update(json.dumps(json.load(f), sort_keys=True).encode())
    for path in sorted(glob.glob(os.path.join(dataset_folder, "*", "*.nii.gz"))):
        image = sitk.ReadImage(path)
        array = np.ascontiguousarray(sitk.GetArrayFromImage(image))
        geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection(), array.shape, str(array.dtype))
        digest.update(os.path.relpath(path, dataset_folder).encode() + repr(geometry).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def current_commit(repository: str) -> Optional[str]:
    try:
        result = subprocess.run(["git", "-C", repository, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True)
        dirty = subprocess.run(["git", "-C", repository, "status", "--porcelain", "--", PACKAGE],
                               capture_output=True, text=True, check=True).stdout.strip()
        return result.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _write_json(path: str, content: dict) -> None:
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _copy(source: str, destination: str) -> None:
    """Copy a file atomically (a partial copy never carries the final name)."""
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    tmp = destination + ".partial"
    shutil.copyfile(source, tmp)
    os.replace(tmp, destination)


def evaluation_files(evaluation_folder: str, with_pictures: bool) -> list[str]:
    """What the report reads of one evaluation, relative to its folder: the scores, and for the first
    seed the heat map, the first figure and the first case's prediction under every subset."""
    files = [f for f in EVALUATION_FILES if os.path.isfile(os.path.join(evaluation_folder, f))]
    if not with_pictures:
        return [f for f in files if f != "heatmap.png"]
    figures = sorted(glob.glob(os.path.join(evaluation_folder, "figures", "*.png")))
    files += [os.path.relpath(figures[0], evaluation_folder)] if figures else []
    predictions = os.path.join(evaluation_folder, "predictions")
    if os.path.isdir(predictions):
        subsets = sorted(os.listdir(predictions))
        cases = sorted(os.listdir(os.path.join(predictions, subsets[0]))) if subsets else []
        if cases:
            files += [os.path.join("predictions", s, cases[0]) for s in subsets
                      if os.path.isfile(os.path.join(predictions, s, cases[0]))]
    return files


class ArchiveMismatch(RuntimeError):
    """The archive belongs to a study of another size or other data."""


class StudyArchive:
    """The archive folder of one study size: what it holds, taking from it and adding to it.

    ``files`` of a step are paths relative to the study's work folder; the archive keeps them under
    the same relative paths, so taking a step is copying its files back.
    """

    def __init__(self, folder: str, size: dict, dataset: str, code_of: Callable[[str], str], commit: Optional[str],
                 log: Callable[[str], None] = print):
        """``code_of(step)``: the fingerprint of the training code the step runs now (``TrainingCode``)."""
        self.folder, self.size, self.dataset, self.code_of, self.commit = folder, size, dataset, code_of, commit
        self.log = log
        self.path = os.path.join(folder, ARCHIVE_FILE)
        self.content = {"size": size, "dataset": dataset, "steps": {}}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.content = json.load(f)
        if self.content.get("size") != size:
            raise ArchiveMismatch(f"{self.path} holds a study of another size ({self.content.get('size')}); "
                                  "pass another --archive folder, or --archive none")
        if self.content.get("dataset") != dataset:
            raise ArchiveMismatch(f"{self.path} was made from other data (dataset fingerprint "
                                  f"{str(self.content.get('dataset'))[:12]}..., this study's {dataset[:12]}...): the "
                                  "synthetic generator or a library that writes the data changed; remove the folder to "
                                  "start the archive again, or pass --archive none")

    def usable(self) -> dict[str, dict]:
        """The archived steps made with the training code they run now: {step: record}."""
        usable, stale = {}, []
        for step, record in self.content["steps"].items():
            (usable.__setitem__(step, record) if record.get("training_code") == self.code_of(step)
             else stale.append(step))
        if stale:
            self.log(f"archive: {len(stale)} step(s) made with other training code, run again: " + "; ".join(stale))
        return usable

    def take(self, step: str, record: dict, work: str) -> bool:
        """Copy a step's files into the work folder; False if one is missing from the archive."""
        sources = [os.path.join(self.folder, f) for f in record.get("files", [])]
        missing = [s for s in sources if not os.path.isfile(s)]
        if missing:
            self.log(f"archive: step '{step}' lacks {missing[0]}; run again")
            return False
        for relative, source in zip(record.get("files", []), sources):
            _copy(source, os.path.join(work, relative))
        return True

    def add(self, step: str, work: str, files: list[str], **details) -> None:
        """Archive a finished step: its files (relative to ``work``) and what else the report needs."""
        for relative in files:
            _copy(os.path.join(work, relative), os.path.join(self.folder, relative))
        self.content["steps"][step] = {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": self.commit,
                                       "training_code": self.code_of(step), "files": sorted(files), **details}
        os.makedirs(self.folder, exist_ok=True)
        _write_json(self.path, self.content)

    def steps(self) -> dict[str, dict]:
        return self.content["steps"]

    def restamp(self, evidence: str) -> list[str]:
        """Give the archived steps made with other training code the current code's fingerprint,
        keeping the old one and ``evidence`` in ``training_code_was``; returns the steps.

        Only for a change of the code's text that leaves what the archived steps trained unchanged
        (code on paths the study does not take), shown by ``evidence``: a retrained archived step
        whose weights have the archived SHA-256. A change in training is rerun, never restamped.
        """
        changed = []
        for step, record in self.content["steps"].items():
            if "training_code" in record and record["training_code"] != self.code_of(step):
                record.setdefault("training_code_was", []).append(
                    {"training_code": record["training_code"], "restamped": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "commit": self.commit, "evidence": evidence})
                record["training_code"] = self.code_of(step)
                changed.append(step)
        _write_json(self.path, self.content)
        return changed
