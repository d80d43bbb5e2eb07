"""Reports of the all-subset evaluation: per-case CSV, summary JSON, Markdown table, heat map and,
where the records carry calibration, a reliability diagram.

Input is a flat list of records ``{"case", "subset", "region", "dice", "hd95"[, "lesion_dice",
"lesion_hd95"][, "ece", "brier", "bins"]}`` (one per case, subset and region; a metric may be None
where it is undefined, as calibration for ETpp) plus the subset order (singles first ... full set
last) and the region order.
Every file is written to a temporary file beside it and moved into place with ``os.replace``, so
a crash or an interrupted run never leaves a half-written report that looks complete.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import uuid
from typing import Iterator, Optional, Sequence

import numpy as np

from nnunet_missingmod.inference.hausdorff import DESCRIPTIONS
from nnunet_missingmod.inference.metrics import short_region_name

KEYS = ("case", "subset", "region")
METRICS = ("dice", "hd95", "lesion_dice", "lesion_hd95", "ece", "brier")  # legacy pair first; the others if scored
MEAN_ROW = "Mean"
REPORT_FILES = ("per_case.csv", "summary.json", "table.md", "heatmap.png", "reliability.png")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` (same file system, so ``os.replace`` is atomic) that
    replaces ``path`` when the block succeeds and is removed when it fails."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _mean(values: list) -> Optional[float]:
    return float(np.mean(values)) if values else None


def summarize(records: Sequence[dict], subsets: Sequence[str], regions: Sequence[str]) -> dict:
    """Mean over cases per subset and region, and the mean over subsets per region.

    Returns ``{"subsets": [...], "regions": [...], "per_subset": {subset: {region: {"dice",
    "hd95", "n_cases"}}}, "mean_over_subsets": {region: {"dice", "hd95", "n_subsets"}}}``. The mean
    over subsets is the mean of the subset means, as the papers' "Avg" column. An empty cell has
    ``None`` means and ``n_cases`` 0. Records of unknown subsets or regions, and a case scored twice
    for one subset and region, raise ValueError: dropping or double-counting them would skew the
    means without a trace.
    """
    subsets, regions = list(subsets), list(regions)
    if not subsets or not regions:
        raise ValueError(f"nothing to summarise: subsets {subsets}, regions {regions}")
    metrics = record_metrics(records)
    values = {(s, r): {m: [] for m in metrics} for s in subsets for r in regions}
    seen = set()
    for record in records:
        key = (record["subset"], record["region"])
        if key not in values:
            raise ValueError(f"record of subset {key[0]!r} / region {key[1]!r} is outside the subsets "
                             f"{subsets} and regions {regions}")
        if (record["case"], *key) in seen:
            raise ValueError(f"case {record['case']!r} is scored twice for {key[0]} / {key[1]}")
        seen.add((record["case"], *key))
        for m in metrics:
            if record[m] is not None and record[m] != "":  # undefined here (calibration of ETpp)
                values[key][m].append(float(record[m]))

    per_subset = {s: {r: {**{m: _mean(values[s, r][m]) for m in metrics}, "n_cases": len(values[s, r]["dice"])}
                      for r in regions} for s in subsets}
    mean_over_subsets = {}
    for r in regions:
        cells = [per_subset[s][r] for s in subsets if per_subset[s][r]["n_cases"]]
        mean_over_subsets[r] = {**{m: _mean([c[m] for c in cells if c[m] is not None]) for m in metrics},
                                "n_subsets": len(cells)}
    return {"subsets": subsets, "regions": regions, "per_subset": per_subset, "mean_over_subsets": mean_over_subsets}


def record_metrics(records: Sequence[dict]) -> list[str]:
    """The metrics the records carry (every record the same ones; ``dice`` and ``hd95`` at least)."""
    metrics = [m for m in METRICS if records and m in records[0]] or ["dice", "hd95"]
    for record in records:
        lacking = [m for m in metrics if m not in record] + [m for m in ("dice", "hd95") if m not in record]
        extra = [m for m in METRICS if m in record and m not in metrics]
        if lacking or extra:
            raise ValueError(f"record {record} has other metrics than the first record ({metrics})")
    return metrics


def write_per_case_csv(records: Sequence[dict], path: str) -> None:
    """One row per case, subset and region: ``case,subset,region,dice,hd95[,lesion_dice,lesion_hd95]``
    (full float precision, so the CSV reproduces the summary exactly)."""
    with atomic_path(path) as tmp, open(tmp, "x", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*KEYS, *record_metrics(records)], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def write_summary_json(summary: dict, path: str) -> None:
    """The summary of ``summarize`` as JSON (it carries the subset and region order)."""
    with atomic_path(path) as tmp, open(tmp, "x") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")


def _cell(value: Optional[float], scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.2f}"


def _metric_table(summary: dict, dice_key: str, hd95_key: str, heads=("Dice {} (%)", "HD95 {} (mm)"),
                  scales=(100, 1), regions: Optional[Sequence[str]] = None) -> list[str]:
    """A row per subset, Dice (%) then HD95 (mm) per region (or two other metrics), a bold Mean row."""
    regions = list(summary["regions"] if regions is None else regions)
    short = [short_region_name(r) for r in regions]
    header = ["Subset"] + [heads[0].format(s) for s in short] + [heads[1].format(s) for s in short]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]

    def row(name: str, cells: dict, bold: bool = False) -> str:
        values = ([_cell(cells[r][dice_key], scales[0]) for r in regions]
                  + [_cell(cells[r][hd95_key], scales[1]) for r in regions])
        if bold:
            name, values = f"**{name}**", [f"**{v}**" for v in values]
        return "| " + " | ".join([name] + values) + " |"

    lines += [row(s, summary["per_subset"][s]) for s in summary["subsets"]]
    lines.append(row(MEAN_ROW, summary["mean_over_subsets"], bold=True))
    return lines


def markdown_table(summary: dict, title: Optional[str] = None) -> str:
    """The papers' layout (legacy Dice and HD95, ETpp where scored), then the lesion-wise table."""
    lines = [f"## {title}", ""] if title else []
    lines += _metric_table(summary, "dice", "hd95")
    counts = sorted({c["n_cases"] for s in summary["per_subset"].values() for c in s.values()})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    conventions = summary.get("conventions")
    hd95_note = ("HD95 in mm (373.13 when exactly one of prediction and reference is empty)." if conventions is None
                 else f"HD95 in mm, {DESCRIPTIONS[conventions['hd95']]} ({conventions['hd95_one_empty']:g} when "
                      f"exactly one of prediction and reference is empty).")
    lines += ["", f"Mean over {n} cases per subset; {MEAN_ROW} = mean over the {len(summary['subsets'])} subsets. "
                  f"Dice in %, {hd95_note}"
                  + (" ETpp: ET with a predicted ET under the RFNet threshold counted as none."
                     if any(short_region_name(r) == "ETpp" for r in summary["regions"]) else "")]
    first = summary["per_subset"][summary["subsets"][0]][summary["regions"][0]]
    if "lesion_dice" in first:
        penalty = 374 if conventions is None else conventions["lesion_penalty_hd95"]
        distance = "" if conventions is None else f"; HD95 {DESCRIPTIONS[conventions['lesion_hd95']]}"
        lines += ["", "Lesion-wise (BraTS 2023+ GLI: reference lesions merged within 3 dilations, lesions of at most "
                      f"50 mm^3 ignored, a missed or false positive lesion scores Dice 0 and HD95 {penalty:g} mm"
                      f"{distance}):", ""]
        lines += _metric_table(summary, "lesion_dice", "lesion_hd95")
    if "ece" in first:
        calibrated = [r for r in summary["regions"] if summary["mean_over_subsets"][r]["ece"] is not None]
        bins = "" if conventions is None else f"{conventions['calibration_bins']} equal-width bins, "
        lines += ["", f"Calibration of each region's probability ({bins}voxels of the brain: non-zero in any "
                      "modality of the full case; ECE: expected calibration error, 0 is calibrated; Brier: mean "
                      "squared error of the probability; both x 100, lower is better; reliability.png):", ""]
        lines += _metric_table(summary, "ece", "brier", heads=("ECE {} (x100)", "Brier {} (x100)"), scales=(100, 100),
                               regions=calibrated)
    return "\n".join(lines) + "\n"


def write_markdown_table(summary: dict, path: str, title: Optional[str] = None) -> str:
    """Write ``markdown_table`` to ``path`` and return it (the command prints it)."""
    text = markdown_table(summary, title)
    with atomic_path(path) as tmp, open(tmp, "x") as f:
        f.write(text)
    return text


def write_heatmap(summary: dict, path: str) -> None:
    """PNG with Dice (colours fixed to [0, 1]) and HD95 (own scale, 0 to its maximum) per subset
    and region, the Mean row last. Lower HD95 is better, so its colour map is reversed and good
    cells look alike in both panels.

    Matplotlib is imported here, and the figure drawn on an explicit Agg canvas without pyplot, so
    importing this module costs nothing and a caller's interactive backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    subsets, regions = summary["subsets"], summary["regions"]
    rows = [summary["per_subset"][s] for s in subsets] + [summary["mean_over_subsets"]]
    labels = list(subsets) + [MEAN_ROW]
    columns = [short_region_name(r) for r in regions]

    def grid(metric: str) -> np.ndarray:
        return np.array([[np.nan if row[r][metric] is None else row[r][metric] for r in regions] for row in rows],
                        dtype=float)

    label_width = max(len(s) for s in labels)
    fig = Figure(figsize=(2 * (1.2 + 0.8 * len(regions)) + 0.09 * label_width, 1.4 + 0.32 * len(labels)), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    hd = grid("hd95")
    hd_max = float(np.nanmax(hd)) if np.isfinite(hd).any() and np.nanmax(hd) > 0 else 1.0
    panels = [(axes[0], grid("dice"), "Dice", "viridis", 1.0, "{:.2f}"),
              (axes[1], hd, "HD95 (mm)", "viridis_r", hd_max, "{:.1f}")]
    for ax, values, name, cmap, vmax, fmt in panels:
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto",
                          interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
        for (i, j), v in np.ndenumerate(values):
            if np.isnan(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="grey")
                continue
            luminance = np.dot(image.cmap(image.norm(v))[:3], (0.299, 0.587, 0.114))
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="black" if luminance > 0.5 else "white")
        ax.axhline(len(labels) - 1.5, color="white", linewidth=2)
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.tick_params(length=0)
        ax.set_title(name)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_reports(records: Sequence[dict], subsets: Sequence[str], regions: Sequence[str], output_folder: str,
                  title: Optional[str] = None, conventions: Optional[dict] = None) -> dict:
    """Write ``per_case.csv``, ``summary.json``, ``table.md`` and ``heatmap.png`` into
    ``output_folder`` (created if needed) and return the summary. ``conventions`` (the scoring's,
    ``Conventions.as_dict()``) go into the summary and the table's notes."""
    os.makedirs(output_folder, exist_ok=True)
    summary = summarize(records, subsets, regions)
    if conventions is not None:
        summary["conventions"] = dict(conventions)
    write_per_case_csv(records, os.path.join(output_folder, "per_case.csv"))
    write_markdown_table(summary, os.path.join(output_folder, "table.md"), title=title)
    write_heatmap(summary, os.path.join(output_folder, "heatmap.png"))
    if any(r.get("bins") for r in records):
        from nnunet_missingmod.inference.calibration import write_reliability_diagram
        shown = [s for s in subsets if "+" not in s] + [max(subsets, key=lambda s: s.count("+"))]
        write_reliability_diagram(records, list(dict.fromkeys(shown)),
                                  [r for r in regions if any(x.get("bins") for x in records if x["region"] == r)],
                                  os.path.join(output_folder, "reliability.png"))
    # Last: the driver treats an existing summary.json as a finished evaluation.
    write_summary_json(summary, os.path.join(output_folder, "summary.json"))
    return summary
