"""Our all-subset evaluations beside the numbers the papers report, subset by subset.

    python benchmarks/paper_comparison.py --dataset brats2024 EVAL_FOLDER [EVAL_FOLDER ...]
        [--run LABEL FOLDER [FOLDER ...]] [--metric dice|hd95] [--convention ours|paper]
        [--labels LABELS_FOLDER [--dataset-json FILE]] [--combine pool|mean]
        [--methods NAME ...] [--numbers benchmarks/paper_numbers.json] [--markdown]

An EVAL_FOLDER is what ``nnUNetv2_evaluate_missing -o`` wrote (summary.json, per_case.csv). Each
positional folder is one column; ``--run LABEL F1 F2 ...`` makes one column of several folders:
the folds of a cross-validation (``--combine pool``, the default: every case once, means over
cases) or the three RFNet BraTS 2018 splits, whose test sets overlap (``--combine mean``: the mean
of the folders' means, as RFNet averages its splits).

Subsets are matched by modality *name* (T1Gd = T1ce = t1c, FLAIR = t2f, ...), never by channel
index: our datasets, RFNet, MST-KDNet and nnU-Net's own BraTS conversions order the channels
differently. Rows follow the community's 15-subset order (singles, pairs,
triples, all), then the mean over the 15 subsets.

The papers' numbers live in ``paper_numbers.json`` with their paper, table, split, metric
convention and source. Where a paper's convention differs from ours, ``--convention paper``
recomputes our numbers in the paper's convention when our files allow it (MST-KDNet's HD95 of 0 for
an empty mask, from per_case.csv; RFNet's ET post-processing, from per_case.csv's ETpp rows, which
``nnUNetv2_evaluate_missing`` scores, or for older evaluations from the predictions saved by
``--save_predictions`` and the reference labels given with ``--labels``) and says so when they do
not. See docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from nnunet_missingmod.inference.metrics import (HD95_ONE_EMPTY, dice, regions_from_dataset_json,
                                                 short_region_name)
from nnunet_missingmod.inference.scoring import Conventions, postprocess_enhancing_tumor
from nnunet_missingmod.modalities import canonical_name

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_NUMBERS = os.path.join(HERE, "paper_numbers.json")
REGIONS = ("WT", "TC", "ET")
METRICS = ("dice", "hd95")
BRATS_MODALITIES = ("T1", "T1ce", "T2", "FLAIR")  # our dataset order, used to name rows
ALL = frozenset(BRATS_MODALITIES)
MEAN = "Mean"
# The 15-subset order of RFNet / mmFormer / M2FTrans / SMML / MST-KDNet tables.
COMMUNITY_ORDER = [frozenset(s) for s in (
    ("T2",), ("T1ce",), ("T1",), ("FLAIR",),
    ("T1ce", "T2"), ("T1ce", "T1"), ("FLAIR", "T1"), ("T1", "T2"), ("FLAIR", "T2"), ("FLAIR", "T1ce"),
    ("FLAIR", "T1ce", "T1"), ("FLAIR", "T1", "T2"), ("FLAIR", "T1ce", "T2"), ("T1ce", "T1", "T2"),
    BRATS_MODALITIES)]
# RFNet's "enhancing_postpro": a predicted ET of fewer voxels than this is emptied before Dice.
RFNET_ET_MIN_VOXELS = Conventions.et_min_voxels


class ComparisonError(Exception):
    """A folder or file that cannot be compared; the message names it."""


def subset_key(names: Iterable[str]) -> frozenset:
    """The modalities of a subset as canonical names, whatever their spelling and order."""
    return frozenset(canonical_name(n) for n in names)


def subset_label(key: frozenset) -> str:
    """``T1ce+FLAIR``: canonical names in our dataset order (the row names of the output)."""
    return "+".join(n for n in BRATS_MODALITIES if n in key) if key <= ALL else "+".join(sorted(key))


def paper_column_key(column: str):
    """A paper's column head -> subset key; ``ALL`` is every modality, ``Avg`` the mean row."""
    if column.strip().lower() in ("avg", "mean", "average"):
        return MEAN
    if column.strip().lower() in ("all", "full"):
        return ALL
    return subset_key(part for part in column.split("+") if part.strip())


# --- the papers' numbers -----------------------------------------------------------------------

@dataclass
class PaperTable:
    """One table of one paper: ``values[region][method][row key]`` in the table's unit."""

    id: str
    paper: str
    table: str
    dataset: str
    metric: str
    decimals: int
    split: str
    convention: str
    convention_key: str
    source: str
    notes: list
    values: dict


def load_paper_numbers(path: str) -> tuple[list[PaperTable], dict, list]:
    """(tables, dataset titles, unavailable entries) from ``paper_numbers.json``, checked."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ComparisonError(f"cannot read the paper numbers {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ComparisonError(f"{path} is not valid JSON: {e}") from None
    tables = []
    for entry in data.get("tables", []):
        where = f"{path}, table {entry.get('id', '?')!r}"
        try:
            columns = [paper_column_key(c) for c in entry["columns"]]
            if entry["metric"] not in METRICS:
                raise ComparisonError(f"{where}: metric {entry['metric']!r} is not one of {METRICS}")
            if entry["dataset"] not in data.get("datasets", {}):
                raise ComparisonError(f"{where}: dataset {entry['dataset']!r} is not in 'datasets'")
            values = {}
            for region, methods in entry["rows"].items():
                if region not in REGIONS:
                    raise ComparisonError(f"{where}: region {region!r} is not one of {REGIONS}")
                for method, row in methods.items():
                    if len(row) != len(columns):
                        raise ComparisonError(f"{where}: {region} {method} has {len(row)} values for "
                                              f"{len(columns)} columns")
                    values.setdefault(region, {})[method] = dict(zip(columns, (float(v) for v in row)))
            tables.append(PaperTable(entry["id"], entry["paper"], entry["table"], entry["dataset"], entry["metric"],
                                     int(entry.get("decimals", 1)), entry["split"], entry["convention"],
                                     entry["convention_key"], entry["source"], list(entry.get("notes", [])), values))
        except KeyError as e:
            raise ComparisonError(f"{where}: missing field {e}") from None
    return tables, data.get("datasets", {}), data.get("unavailable", [])


# --- our evaluations ---------------------------------------------------------------------------

@dataclass
class Evaluation:
    """One ``nnUNetv2_evaluate_missing`` output folder: its per-case records, keyed by name."""

    folder: str
    title: str
    region_names: dict          # WT/TC/ET -> region name as in dataset.json
    subset_names: dict          # subset key -> subset name as written (dataset channel names)
    records: list = field(default_factory=list)  # {"case", "subset" (key), "region" (WT/TC/ET), "dice", "hd95"}
    etpp_dice: dict = field(default_factory=dict)  # (case, subset key) -> ETpp Dice, where the evaluation scored it

    @property
    def cases(self) -> set:
        return {r["case"] for r in self.records}


def _read_title(folder: str) -> str:
    """The evaluation's title from table.md (``## TRAINER on FOLDER (N cases)``), else ''."""
    try:
        with open(os.path.join(folder, "table.md"), encoding="utf-8") as f:
            first = f.readline().strip()
    except OSError:
        return ""
    return first[3:].strip() if first.startswith("## ") else ""


def read_evaluation(folder: str) -> Evaluation:
    """Read and cross-check summary.json and per_case.csv of one evaluation folder."""
    summary_path, csv_path = os.path.join(folder, "summary.json"), os.path.join(folder, "per_case.csv")
    if not os.path.isdir(folder):
        raise ComparisonError(f"evaluation folder {folder} does not exist")
    for path in (summary_path, csv_path):
        if not os.path.isfile(path):
            raise ComparisonError(f"{path} is missing: {folder} is not a finished nnUNetv2_evaluate_missing output")
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        subsets, regions, per_subset = summary["subsets"], summary["regions"], summary["per_subset"]
    except json.JSONDecodeError as e:
        raise ComparisonError(f"{summary_path} is not valid JSON: {e}") from None
    except KeyError as e:
        raise ComparisonError(f"{summary_path} has no {e} entry; is it an nnUNetv2_evaluate_missing summary?") from None

    region_names = {}
    for region in regions:
        short = short_region_name(region)
        if short in REGIONS:
            region_names[short] = region
    missing = [r for r in REGIONS if r not in region_names]
    if missing:
        raise ComparisonError(f"{summary_path}: regions {regions} lack {', '.join(missing)}; the papers report "
                              f"whole tumour, tumour core and enhancing tumour")
    subset_names = {}
    for name in subsets:
        key = subset_key(name.split("+"))
        if not key <= ALL:
            raise ComparisonError(f"{summary_path}: subset {name!r} names modalities outside {', '.join(ALL)}; "
                                  f"the papers' tables are for the four BraTS modalities")
        if key in subset_names:
            raise ComparisonError(f"{summary_path}: subsets {subset_names[key]!r} and {name!r} are the same modalities")
        subset_names[key] = name
    short_of = {name: short for short, name in region_names.items()}
    key_of = {name: key for key, name in subset_names.items()}
    etpp_region = next((r for r in regions if short_region_name(r) == "ETpp"), None)
    etpp_dice = {}

    records, sums = [], {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        wanted = ("case", "subset", "region", "dice", "hd95")
        if reader.fieldnames is None or not set(wanted) <= set(reader.fieldnames):
            raise ComparisonError(f"{csv_path}: expected the columns {','.join(wanted)}, found "
                                  f"{','.join(reader.fieldnames or [])}")
        for line, row in enumerate(reader, start=2):
            if row["subset"] not in key_of:
                raise ComparisonError(f"{csv_path} line {line}: subset {row['subset']!r} is not in {summary_path}")
            if row["region"] not in regions:
                raise ComparisonError(f"{csv_path} line {line}: region {row['region']!r} is not in {summary_path}")
            try:
                values = {m: float(row[m]) for m in METRICS}
            except (TypeError, ValueError):
                raise ComparisonError(f"{csv_path} line {line}: dice {row['dice']!r} / hd95 {row['hd95']!r} "
                                      f"are not numbers") from None
            cell = sums.setdefault((row["subset"], row["region"]), {m: [] for m in METRICS})
            for m in METRICS:
                cell[m].append(values[m])
            if row["region"] in short_of:
                records.append({"case": row["case"], "subset": key_of[row["subset"]],
                                "region": short_of[row["region"]], **values})
            elif row["region"] == etpp_region:
                etpp_dice[row["case"], key_of[row["subset"]]] = values["dice"]
    # per_case.csv and summary.json are written together; a disagreement means one was replaced.
    for subset in subsets:
        for region in regions:
            expected = per_subset.get(subset, {}).get(region, {})
            values = sums.get((subset, region), {m: [] for m in METRICS})
            if len(values["dice"]) != expected.get("n_cases", 0):
                raise ComparisonError(f"{csv_path} has {len(values['dice'])} rows for {subset} / {region}, "
                                      f"{summary_path} counts {expected.get('n_cases', 0)}: was one of them replaced?")
            for m in METRICS:
                if values[m] and not math.isclose(float(np.mean(values[m])), expected[m], rel_tol=1e-9, abs_tol=1e-9):
                    raise ComparisonError(f"{csv_path} and {summary_path} disagree on the mean {m} of {subset} / "
                                          f"{region}: was one of them replaced?")
    return Evaluation(folder, _read_title(folder), region_names, subset_names, records, etpp_dice)


# --- conventions -------------------------------------------------------------------------------

def mstkd_hd95(records: Sequence[dict]) -> list[dict]:
    """MST-KDNet's HD95: 0 when the prediction or the reference is empty. Ours is 373.13 when
    exactly one is empty and 0 when both are, so 373.13 (exactly; a real distance never is)
    becomes 0."""
    return [{**r, "hd95": 0.0 if r["hd95"] == HD95_ONE_EMPTY else r["hd95"]} for r in records]


def _read_mask_array(reader, path: str) -> np.ndarray:
    """A segmentation read by nnU-Net's reader for the dataset's file ending."""
    try:
        return reader.read_seg(path)[0]
    except Exception as e:  # the readers raise bare RuntimeErrors; name the file
        raise ComparisonError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from None


def rfnet_et_postprocessing(evaluation: Evaluation, labels_folder: str, dataset_json: dict,
                            min_voxels: int = RFNET_ET_MIN_VOXELS) -> list[dict]:
    """ET Dice after RFNet's post-processing (a predicted ET of fewer than ``min_voxels`` voxels is
    emptied), recomputed from the predictions that ``--save_predictions`` wrote and the reference
    labels. WT and TC are unchanged, as in RFNet's code."""
    predictions = os.path.join(evaluation.folder, "predictions")
    if not os.path.isdir(predictions):
        raise ComparisonError(f"{evaluation.folder} has no predictions/ folder: RFNet's ET post-processing needs "
                              f"the predictions (run nnUNetv2_evaluate_missing with --save_predictions)")
    regions = regions_from_dataset_json(dataset_json)
    et_name = evaluation.region_names["ET"]
    if et_name not in regions:
        raise ComparisonError(f"region {et_name!r} of {evaluation.folder} is not in the dataset.json given "
                              f"(regions {list(regions)})")
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
    et_labels, ending = list(regions[et_name]), dataset_json["file_ending"]
    reader = determine_reader_writer_from_file_ending(ending, allow_nonmatching_filename=True, verbose=False)()
    references, converted = {}, []
    for record in evaluation.records:
        if record["region"] != "ET":
            converted.append(record)
            continue
        case, subset_name = record["case"], evaluation.subset_names[record["subset"]]
        if case not in references:
            label_file = os.path.join(labels_folder, case + ending)
            if not os.path.isfile(label_file):
                raise ComparisonError(f"no reference label for case {case}: expected {label_file}")
            references[case] = np.isin(_read_mask_array(reader, label_file), et_labels)
        prediction_file = os.path.join(predictions, subset_name, case + ending)
        if not os.path.isfile(prediction_file):
            raise ComparisonError(f"{prediction_file} is missing: the evaluation saved no prediction of {case} "
                                  f"under {subset_name}")
        predicted = np.isin(_read_mask_array(reader, prediction_file), et_labels)
        if predicted.shape != references[case].shape:
            raise ComparisonError(f"{prediction_file} has shape {predicted.shape}, its label {references[case].shape}")
        predicted = postprocess_enhancing_tumor(predicted, min_voxels)
        converted.append({**record, "dice": dice(predicted, references[case])})
    return converted


def convert(evaluation: Evaluation, convention_keys: set, convention: str, labels_folder: Optional[str],
            dataset_json: Optional[dict]) -> list[dict]:
    """The records of ``evaluation`` in the papers' convention where that is asked and possible."""
    records = evaluation.records
    if convention != "paper":
        return records
    if "mstkd" in convention_keys:
        records = mstkd_hd95(records)
    if "rfnet" in convention_keys:
        if evaluation.etpp_dice:  # scored by nnUNetv2_evaluate_missing itself (its ETpp column)
            records = [{**r, "dice": evaluation.etpp_dice[r["case"], r["subset"]]} if r["region"] == "ET" else r
                       for r in records]
        elif labels_folder and dataset_json is not None:  # an older evaluation: recompute from its predictions
            converted = {(r["case"], r["subset"]): r["dice"] for r in
                         rfnet_et_postprocessing(evaluation, labels_folder, dataset_json) if r["region"] == "ET"}
            records = [{**r, "dice": converted[r["case"], r["subset"]]} if r["region"] == "ET" else r
                       for r in records]
    return records


# --- combining folders into one column -----------------------------------------------------------

@dataclass
class Run:
    """One column of ours: a label and one or more evaluation folders."""

    label: str
    evaluations: list
    records: list = field(default_factory=list)  # per folder: its records, after any conversion

    def __post_init__(self):
        if not self.records:
            self.records = [e.records for e in self.evaluations]

    def cells(self, metric: str, combine: str) -> dict:
        """{(subset key | MEAN, region): value} with the mean over subsets as the papers' Avg."""
        if combine == "pool":
            folder_means = [_means([r for recs in self.records for r in recs], metric)]
        else:
            folder_means = [_means(recs, metric) for recs in self.records]
        keys = set.intersection(*(set(m) for m in folder_means))
        cells = {k: float(np.mean([m[k] for m in folder_means])) for k in keys}
        for region in REGIONS:
            subset_values = [v for (s, r), v in cells.items() if r == region]
            if subset_values:
                cells[MEAN, region] = float(np.mean(subset_values))
        return cells

    @property
    def num_subsets(self) -> int:
        return len(set.intersection(*(set(e.subset_names) for e in self.evaluations)))


def _means(records: Sequence[dict], metric: str) -> dict:
    values = {}
    for r in records:
        values.setdefault((r["subset"], r["region"]), []).append(r[metric])
    return {k: float(np.mean(v)) for k, v in values.items()}


def make_run(label: Optional[str], folders: Sequence[str], combine: str) -> Run:
    evaluations = [read_evaluation(f) for f in folders]
    if label is None:
        title = evaluations[0].title
        label = title.split(" on ")[0] if title else os.path.basename(os.path.normpath(folders[0]))
    if combine == "pool" and len(evaluations) > 1:
        seen = {}
        for evaluation in evaluations:
            for case in evaluation.cases:
                if case in seen:
                    raise ComparisonError(f"case {case} is in both {seen[case]} and {evaluation.folder}: pooling "
                                          f"would count it twice; use --combine mean for overlapping test sets "
                                          f"(RFNet's BraTS 2018 splits)")
                seen[case] = evaluation.folder
        subsets = [set(e.subset_names) for e in evaluations]
        if any(s != subsets[0] for s in subsets):
            raise ComparisonError(f"the folders of {label} were evaluated on different subsets: "
                                  f"{', '.join(e.folder for e in evaluations)}")
    return Run(label, evaluations)


# --- output --------------------------------------------------------------------------------------

def _format(value: Optional[float], decimals: int) -> str:
    if value is None:
        return "–"
    if decimals < 2 and round(value, decimals) != round(value, 2):
        decimals = 2  # a transcribed value with more precision than the table's usual
    return f"{value:.{decimals}f}"


def render(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class ConventionNote:
    what: str
    status: str


def convention_notes(keys: set, metric: str, convention: str, labels_given: bool,
                     etpp_scored: bool = False) -> list[ConventionNote]:
    """How each paper convention shown differs from ours, and whether our numbers were converted."""
    converted = convention == "paper"
    notes = []
    if "mstkd" in keys:
        if metric == "hd95":
            notes.append(ConventionNote(
                "MST-KDNet's HD95 is 0 when the prediction or the reference is empty "
                "(ours: 373.13 when exactly one is)",
                "converted from per_case.csv (373.13 -> 0)" if converted else "not converted: pass --convention paper"))
        else:
            notes.append(ConventionNote(
                "MST-KDNet's Dice has +1 smoothing, (2|P∩G|+1)/(|P|+|G|+1)",
                "not convertible from per_case.csv (it needs the voxel counts); it differs from ours by less than "
                "1/(|P|+|G|+1), which matters only for regions of a few voxels"))
        notes.append(ConventionNote(
            "MST-KDNet scores a 160x192x128 centre crop of each case and picks its checkpoint on the test folder",
            "not convertible: we score the whole image with the final checkpoint"))
        notes.append(ConventionNote(
            "MST-KDNet's split is its own and lost; its baselines were re-run by its authors",
            "our folds differ: compare magnitudes and the pattern over subsets, not decimals"))
    if "rfnet" in keys:
        notes.append(ConventionNote(
            "RFNet-family Dice: eps = 1e-8 (both empty = 1, one empty = 0)", "identical to ours"))
        if converted and etpp_scored:
            status = "converted: our ET Dice is the evaluation's ETpp column (predicted ET < 500 voxels -> empty)"
        elif converted and labels_given:
            status = "converted: our ET Dice recomputed from the saved predictions (predicted ET < 500 voxels -> empty)"
        elif converted:
            status = ("not converted: per_case.csv has no predicted ET volume; rerun nnUNetv2_evaluate_missing with "
                      "--save_predictions and pass --labels")
        else:
            status = "not converted: pass --convention paper (with --labels and saved predictions)"
        notes.append(ConventionNote(
            "RFNet's code also reports ET after post-processing (predicted ET < 500 voxels -> empty); which ET the "
            "README averages are is not stated", status))
    return notes


def compare(runs: Sequence[Run], tables: Sequence[PaperTable], datasets: dict, unavailable: Sequence[dict],
            dataset: str, metric: str, combine: str, convention: str, labels_given: bool, markdown: bool,
            methods: Optional[Sequence[str]] = None) -> str:
    """The comparison as text: one table per region, then sources, conventions and gaps."""
    shown = [t for t in tables if t.dataset == dataset and t.metric == metric]
    columns = []  # (header, table or None, method or run)
    for run in runs:
        columns.append((f"{run.label} (ours)", None, run))
    method_count = {}
    for table in shown:
        for method in next(iter(table.values.values())):
            method_count[method] = method_count.get(method, 0) + 1
    for table in shown:
        for method in next(iter(table.values.values())):
            if methods and method not in methods:
                continue
            header = method if method_count[method] == 1 else f"{method} [{table.id}]"
            columns.append((header, table, method))
    run_cells = {run.label: run.cells(metric, combine) for run in runs}
    scale = 100.0 if metric == "dice" else 1.0
    unit = "%" if metric == "dice" else "mm"
    title = datasets.get(dataset, dataset)

    out = []
    heading = "## " if markdown else ""
    for region in REGIONS:
        header = ["Subset"] + [c[0] for c in columns]
        rows = []
        for key in COMMUNITY_ORDER + [MEAN]:
            row = [MEAN if key == MEAN else subset_label(key)]
            for _, table, source in columns:
                if table is None:
                    value = run_cells[source.label].get((key, region))
                    row.append(_format(None if value is None else value * scale, 2))
                else:
                    value = table.values.get(region, {}).get(source, {}).get(key)
                    row.append(_format(value, table.decimals))
            rows.append(row)
        out += [f"{heading}{'Dice' if metric == 'dice' else 'HD95'} {region} ({unit}), {title}", "",
                render(header, rows, markdown), ""]

    bullet = "- " if markdown else "  "
    out.append(f"{heading}Our numbers" if markdown else "Our numbers:")
    for run in runs:
        folders = ", ".join(e.folder for e in run.evaluations)
        cases = len(set.union(*(e.cases for e in run.evaluations)))
        how = "" if len(run.evaluations) == 1 else (" (cases pooled)" if combine == "pool"
                                                     else " (mean of the folders' means)")
        partial = "" if run.num_subsets == 15 else f"; only {run.num_subsets} of the 15 subsets evaluated"
        out.append(f"{bullet}{run.label}: {folders}; {cases} cases{how}{partial}")
    out.append(f"{bullet}convention: Dice per case (both empty = 1, one empty = 0), HD95 in mm (both empty = 0, "
               f"one empty = 373.13), mean over cases per subset, Mean = mean over the 15 subsets, whole image, "
               f"final checkpoint (docs/metrics.md)"
               + ("; converted to the papers' convention where noted below" if convention == "paper" else ""))
    if not shown:
        out += ["", f"No paper reports {metric} for {title} in the numbers file."]
    else:
        out += ["", f"{heading}Papers' numbers" if markdown else "Papers' numbers:"]
        for table in shown:
            out.append(f"{bullet}{table.paper}, {table.table}. Source: {table.source}. Split: {table.split}. "
                       f"Convention: {table.convention}.")
            for note in table.notes:
                out.append(f"  - note: {note}" if markdown else f"    note: {note}")
        notes = convention_notes({t.convention_key for t in shown}, metric, convention, labels_given,
                                 etpp_scored=all(e.etpp_dice for r in runs for e in r.evaluations))
        out += ["", f"{heading}Where the conventions differ" if markdown else "Where the conventions differ:"]
        out += [f"{bullet}{n.what}: {n.status}." for n in notes]
    gaps = [u for u in unavailable if dataset in u.get("datasets", [])]
    if gaps:
        out += ["", f"{heading}Not available" if markdown else "Not available:"]
        out += [f"{bullet}{u['paper']}: {u['reason']} ({u['source']})." for u in gaps]
    return "\n".join(out).rstrip() + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Print our all-subset evaluations beside the numbers the papers report (Dice or HD95 per "
                    "region, per modality subset matched by name, and the mean over the 15 subsets).")
    parser.add_argument("folders", nargs="*", metavar="EVAL_FOLDER",
                        help="an nnUNetv2_evaluate_missing output folder; one column each")
    parser.add_argument("--run", nargs="+", action="append", default=[], metavar=("LABEL", "FOLDER"),
                        help="one column named LABEL from one or more folders (folds or splits); repeatable")
    parser.add_argument("--dataset", required=True, help="brats2018, brats2020, brats2024 or fets2024 "
                                                         "(the keys of the numbers file)")
    parser.add_argument("--metric", choices=METRICS, default="dice")
    parser.add_argument("--convention", choices=("ours", "paper"), default="ours",
                        help="'paper': recompute our numbers in the papers' convention where our files allow")
    parser.add_argument("--labels", default=None,
                        help="reference labels of every evaluated case (e.g. $nnUNet_raw/DatasetXXX/labelsTr), for "
                             "RFNet's ET post-processing with --convention paper")
    parser.add_argument("--dataset-json", default=None,
                        help="the dataset.json naming the regions (default: the one beside --labels)")
    parser.add_argument("--combine", choices=("pool", "mean"), default="pool",
                        help="several folders in one --run: pool their cases (folds; default) or average their "
                             "means (overlapping test sets such as RFNet's three BraTS 2018 splits)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these papers' methods, e.g. MST-KDNet SMU-Net")
    parser.add_argument("--numbers", default=DEFAULT_NUMBERS, help="the papers' numbers (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables instead of plain text")
    args = parser.parse_args(argv)
    for run in args.run:
        if len(run) < 2:
            parser.error(f"--run {' '.join(run)}: give a label and at least one folder")
    if not args.folders and not args.run:
        parser.error("give at least one evaluation folder (positional or --run)")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        tables, datasets, unavailable = load_paper_numbers(args.numbers)
        if args.dataset not in datasets:
            raise ComparisonError(f"unknown --dataset {args.dataset!r}; {args.numbers} knows {', '.join(datasets)}")
        runs = [make_run(None, [folder], args.combine) for folder in args.folders]
        runs += [make_run(run[0], run[1:], args.combine) for run in args.run]
        labels = [run.label for run in runs]
        if len(set(labels)) != len(labels):
            raise ComparisonError(f"two columns are named alike ({', '.join(labels)}); name them with --run LABEL ...")
        shown = [t for t in tables if t.dataset == args.dataset and t.metric == args.metric]
        known = {m for t in shown for methods in t.values.values() for m in methods}
        unknown = sorted(set(args.methods or ()) - known)
        if unknown:
            raise ComparisonError(f"--methods {', '.join(unknown)}: not in the {args.metric} tables of "
                                  f"{args.dataset} (they have {', '.join(sorted(known)) or 'none'})")
        keys = {t.convention_key for t in shown}
        dataset_json = None
        if args.convention == "paper" and "rfnet" in keys and args.labels:
            path = args.dataset_json or os.path.join(os.path.dirname(os.path.normpath(args.labels)), "dataset.json")
            try:
                with open(path, encoding="utf-8") as f:
                    dataset_json = json.load(f)
            except OSError:
                raise ComparisonError(f"cannot read {path}; pass the dataset's dataset.json with "
                                      f"--dataset-json") from None
        for run in runs:
            run.records = [convert(e, keys, args.convention, args.labels, dataset_json) for e in run.evaluations]
        text = compare(runs, tables, datasets, unavailable, args.dataset, args.metric, args.combine,
                       args.convention, dataset_json is not None, args.markdown, args.methods)
    except ComparisonError as e:
        sys.exit(f"paper_comparison: error: {e}")
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
