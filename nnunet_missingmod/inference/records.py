"""An evaluation's state on disk: what makes it resumable, shardable over processes and mergeable.

An output folder holds::

    parts/part_K_of_N.json   the run's identity, the cases of part K, and whether it finished
    records/CASE.json        the scores of one case under every subset, written once it is scored
    per_case.csv, summary.json, table.md, heatmap.png   the reports, written by the merge

The identity is everything a score depends on: the networks' weights (a digest of every
parameter set the predictor averages, so another checkpoint, fold list or ``--ensemble_with`` is
another identity), trainer, plans and configuration, inference settings, the subsets, regions and
metric conventions, what a case writes besides its scores (predictions, figures), and the test
set: its case names and a digest of the content of every image and label file, not the folders'
paths, so parts run on nodes that mount the data at different paths merge, and data changed under
the same names does not. Records and parts of another identity are never mixed: a rerun, a
resumed run and the merge refuse them and say which field differs.

Cases are shared among parts as ``nnUNetv2_predict -num_parts/-part_id`` shares them: sorted, and
part K takes every N-th case from the K-th on. Every file is written to a temporary name and moved
into place, so an interrupted run leaves only whole files. ``--overwrite`` on a part touches only
that part's files, and accepts other parts of another identity (they are being replaced by their
own ``--overwrite``; the merge still refuses a mix), so the parts of a job array started together
after a model change cannot make each other fail.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from nnunet_missingmod.inference.reports import REPORT_FILES, atomic_path

FORMAT = 2  # 2: the test set by content digest instead of folder paths; predictions and figures in the identity
PARTS, RECORDS = "parts", "records"
_PART_FILE = re.compile(r"^part_(\d+)_of_(\d+)\.json$")


class EvaluationStateError(ValueError):
    """An output folder whose content cannot be continued or merged as asked; names the file."""


def check_part(num_parts: int, part_id: int) -> None:
    """``-num_parts``/``-part_id`` as nnU-Net takes them, or a ValueError naming the flag."""
    if num_parts < 1:
        raise ValueError(f"-num_parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"-part_id {part_id} is out of range for -num_parts {num_parts} (0 to {num_parts - 1})")


def cases_of_part(case_ids: Sequence[str], num_parts: int, part_id: int) -> list[str]:
    """nnU-Net's sharding (``predict_from_files``): sorted cases, every ``num_parts``-th from ``part_id``."""
    check_part(num_parts, part_id)
    return sorted(case_ids)[part_id::num_parts]


def weights_digest(parameter_sets: Sequence[dict]) -> str:
    """SHA-256 over the tensors of every parameter set, in order: equal only for equal networks."""
    import torch
    digest = hashlib.sha256()
    for parameters in parameter_sets:
        for name in sorted(parameters):
            tensor = parameters[name].detach().cpu().contiguous()
            digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_set_digest(files_of_case: dict[str, Sequence[str]], num_threads: int = 4) -> str:
    """SHA-256 over every case's file names (not their folders) and contents: the same for a copy
    of the test set mounted elsewhere, another after any byte of any file changed. The files are
    hashed in threads (hashlib releases the GIL): about 1 s per GB and thread."""
    paths = sorted({p for files in files_of_case.values() for p in files})
    with ThreadPoolExecutor(max(num_threads, 1)) as pool:
        contents = dict(zip(paths, pool.map(file_digest, paths)))
    digest = hashlib.sha256()
    for case in sorted(files_of_case):
        for name, content in sorted((os.path.basename(p), contents[p]) for p in files_of_case[case]):
            digest.update(f"{case} {name} {content}\n".encode())
    return digest.hexdigest()


def identity_digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _differences(mine: dict, theirs: dict) -> str:
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))

    def short(value):
        text = json.dumps(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return "; ".join(f"{k}: {short(theirs.get(k))} there, {short(mine.get(k))} here" for k in keys)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationStateError(f"cannot read {path}: {e}") from None


def _write_json(path: str, content: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "x") as f:
        json.dump(content, f, indent=1)
        f.write("\n")


def part_path(output_folder: str, part_id: int, num_parts: int) -> str:
    return os.path.join(output_folder, PARTS, f"part_{part_id}_of_{num_parts}.json")


def record_path(output_folder: str, case_id: str) -> str:
    return os.path.join(output_folder, RECORDS, f"{case_id}.json")


def read_parts(output_folder: str) -> dict[tuple[int, int], dict]:
    """``{(part_id, num_parts): part}`` of every part file in the folder."""
    parts = {}
    for path in sorted(glob.glob(os.path.join(output_folder, PARTS, "part_*_of_*.json"))):
        match = _PART_FILE.match(os.path.basename(path))
        if match:
            part = _read_json(path)
            part["path"] = path
            parts[int(match[1]), int(match[2])] = part
    return parts


class EvaluationFolder:
    """One part's view of an output folder: what is already scored, and where new scores go."""

    def __init__(self, output_folder: str, identity: dict, case_ids: Sequence[str], num_parts: int = 1,
                 part_id: int = 0, title: str = ""):
        self.folder, self.identity, self.title = output_folder, identity, title
        self.digest = identity_digest(identity)
        self.num_parts, self.part_id = num_parts, part_id
        self.cases = cases_of_part(case_ids, num_parts, part_id)
        self.part_file = part_path(output_folder, part_id, num_parts)

    # --- starting, resuming, starting over ----------------------------------------------------

    def open(self, overwrite: bool = False, continue_evaluation: bool = False) -> list[str]:
        """Claim the folder for this part; returns the cases still to score.

        A folder with another identity's evaluation in it is refused; one with this part's
        evaluation needs ``--continue_evaluation`` (goes on where it stopped) or ``--overwrite``
        (starts again: clears this part's share, and accepts the other parts' files whatever
        their identity, which their own ``--overwrite`` replaces)."""
        if overwrite and continue_evaluation:
            raise ValueError("--overwrite and --continue_evaluation exclude each other")
        if overwrite:
            self._clear()
        parts = read_parts(self.folder)
        summary = os.path.join(self.folder, "summary.json")
        if not parts and os.path.isfile(summary):
            raise FileExistsError(f"{summary} exists (an evaluation without records, from an earlier version); "
                                  f"pass --overwrite to replace the evaluation in {self.folder}")
        for (part_id, num_parts), part in parts.items():
            if overwrite and (part_id, num_parts) != (self.part_id, self.num_parts):
                continue
            if part["identity"] != self.identity:
                raise EvaluationStateError(
                    f"{self.folder} holds another evaluation ({part['path']}: "
                    f"{_differences(self.identity, part['identity'])}); use another -o folder or --overwrite")
            if num_parts != self.num_parts:
                raise EvaluationStateError(
                    f"{self.folder} holds parts of a {num_parts}-part run ({part['path']}); this is part "
                    f"{self.part_id} of {self.num_parts}: use the same -num_parts, another -o or --overwrite")
        mine = parts.get((self.part_id, self.num_parts))
        done = [c for c in self.cases if self._has_record(c)]
        if mine is not None and not continue_evaluation:
            state = "finished" if mine["complete"] else f"stopped after {len(done)} of {len(self.cases)} cases"
            raise FileExistsError(f"{self.folder} holds this evaluation ({self._name()}, {state}); pass "
                                  f"--continue_evaluation to go on (or reuse it), --overwrite to start again")
        if mine is None and done:
            raise EvaluationStateError(f"{record_path(self.folder, done[0])} exists but {self.part_file} does not; "
                                       f"pass --overwrite to start again")
        self._write_part(complete=bool(mine and mine["complete"]) and len(done) == len(self.cases))
        return [c for c in self.cases if c not in set(done)]

    def _name(self) -> str:
        return f"part {self.part_id} of {self.num_parts}" if self.num_parts > 1 else "a single run"

    def _clear(self) -> None:
        """Remove what an evaluation writes: all of it for a single run; for a part of a sharded
        run, its own cases' records, predictions and figures, its part file and the part files of
        runs with another number of parts, never a file another part of this run may be writing."""
        if self.num_parts == 1:
            for name in (PARTS, RECORDS, "predictions", "figures"):
                shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)
        else:
            mine = set(self.cases)
            for case in self.cases:
                _remove(record_path(self.folder, case))
                _remove(os.path.join(self.folder, "figures", f"{case}.png"))
            for subset in glob.glob(os.path.join(self.folder, "predictions", "*", "")):
                for name in os.listdir(subset):  # CASE<file_ending>, or .partial_CASE<file_ending> mid-write
                    if name.removeprefix(".partial_").split(".", 1)[0] in mine:
                        _remove(os.path.join(subset, name))
            for (_, num_parts), part in read_parts(self.folder).items():
                if num_parts != self.num_parts:
                    _remove(part["path"])
            _remove(self.part_file)
        for name in REPORT_FILES:
            _remove(os.path.join(self.folder, name))

    def _write_part(self, complete: bool) -> None:
        _write_json(self.part_file, {"format": FORMAT, "identity": self.identity, "title": self.title,
                                     "part_id": self.part_id, "num_parts": self.num_parts, "cases": self.cases,
                                     "complete": complete,
                                     "updated": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _has_record(self, case_id: str) -> bool:
        path = record_path(self.folder, case_id)
        if not os.path.isfile(path):
            return False
        if _read_json(path).get("identity") != self.digest:
            raise EvaluationStateError(f"{path} was scored by another evaluation (identity digest differs); "
                                       f"pass --overwrite to start again")
        return True

    # --- scores ------------------------------------------------------------------------------

    def save_case(self, case_id: str, records: list[dict]) -> None:
        _write_json(record_path(self.folder, case_id), {"identity": self.digest, "case": case_id, "records": records})

    def finish(self) -> None:
        missing = [c for c in self.cases if not os.path.isfile(record_path(self.folder, c))]
        if missing:
            raise EvaluationStateError(f"part {self.part_id} of {self.num_parts} cannot finish: no records of "
                                       f"{', '.join(missing[:5])}")
        self._write_part(complete=True)


def _remove(path: str) -> None:
    """Remove a file that another part may remove at the same time."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def merged_records(output_folder: str) -> tuple[dict, list[dict]]:
    """(first part file, records of every case) of a finished evaluation, from all its parts.

    Refuses, naming the file: no parts, parts of different identities or part counts, a part that
    is missing or did not finish, a case without records."""
    parts = read_parts(output_folder)
    if not parts:
        raise EvaluationStateError(f"{os.path.join(output_folder, PARTS)} holds no part_K_of_N.json: nothing "
                                   f"to merge in {output_folder}")
    counts = sorted({n for _, n in parts})
    if len(counts) > 1:
        raise EvaluationStateError(f"{output_folder} mixes runs of {counts} parts; keep one run's parts")
    num_parts = counts[0]
    first = parts[min(parts)]
    for part in parts.values():
        if part["identity"] != first["identity"]:
            raise EvaluationStateError(f"{part['path']} is another evaluation than {first['path']}: "
                                       f"{_differences(first['identity'], part['identity'])}")
    absent = [k for k in range(num_parts) if (k, num_parts) not in parts]
    if absent:
        raise EvaluationStateError(f"part(s) {', '.join(map(str, absent))} of {num_parts} are missing in "
                                   f"{os.path.join(output_folder, PARTS)}: run them (-part_id) before merging")
    unfinished = [p["path"] for p in parts.values() if not p["complete"]]
    if unfinished:
        raise EvaluationStateError(f"{unfinished[0]} did not finish: rerun that part with --continue_evaluation")
    identity = first["identity"]
    digest = identity_digest(identity)
    records = []
    for case in identity["cases"]:
        path = record_path(output_folder, case)
        if not os.path.isfile(path):
            raise EvaluationStateError(f"{path} is missing: case {case} was not scored")
        content = _read_json(path)
        if content.get("identity") != digest:
            raise EvaluationStateError(f"{path} was scored by another evaluation (identity digest differs)")
        records += content["records"]
    return first, records
