"""Summary means, CSV round trip, the Markdown table, the heat map, atomic writes."""

import csv
import json
import os

import numpy as np
import pytest

from nnunet_missingmod.inference.reports import (REPORT_FILES, summarize, write_heatmap, write_markdown_table,
                                                 write_per_case_csv, write_reports, write_summary_json)

SUBSETS = ["T1ce", "FLAIR", "T1ce+FLAIR"]
REGIONS = ["whole_tumor", "tumor_core", "enhancing_tumor"]
# (case, subset) -> dice, hd95 per region (WT, TC, ET)
SCORES = {
    ("c1", "T1ce"): [(0.80, 4.0), (0.70, 6.0), (0.60, 8.01)],
    ("c2", "T1ce"): [(0.60, 6.0), (0.50, 10.0), (0.00, 373.13)],
    ("c1", "FLAIR"): [(0.90, 2.0), (0.40, 20.0), (0.30, 30.0)],
    ("c2", "FLAIR"): [(0.70, 4.0), (0.20, 40.0), (1.00, 0.0)],
    ("c1", "T1ce+FLAIR"): [(0.95, 1.0), (0.85, 3.0), (0.75, 5.0)],
    ("c2", "T1ce+FLAIR"): [(0.85, 3.0), (0.75, 5.0), (0.65, 7.0)],
}


def make_records():
    return [{"case": case, "subset": subset, "region": region, "dice": d, "hd95": h}
            for (case, subset), values in SCORES.items() for region, (d, h) in zip(REGIONS, values)]


def test_summary_means_per_subset_and_over_subsets():
    summary = summarize(make_records(), SUBSETS, REGIONS)
    assert summary["subsets"] == SUBSETS and summary["regions"] == REGIONS
    per = summary["per_subset"]
    assert per["T1ce"]["whole_tumor"] == {"dice": pytest.approx(0.70), "hd95": pytest.approx(5.0), "n_cases": 2}
    assert per["T1ce"]["enhancing_tumor"]["hd95"] == pytest.approx((8.01 + 373.13) / 2)
    assert per["FLAIR"]["tumor_core"]["dice"] == pytest.approx(0.30)
    assert per["T1ce+FLAIR"]["enhancing_tumor"]["dice"] == pytest.approx(0.70)
    mean = summary["mean_over_subsets"]
    assert mean["whole_tumor"]["dice"] == pytest.approx((0.70 + 0.80 + 0.90) / 3)
    assert mean["enhancing_tumor"]["dice"] == pytest.approx((0.30 + 0.65 + 0.70) / 3)
    assert mean["enhancing_tumor"]["hd95"] == pytest.approx((190.57 + 15.0 + 6.0) / 3)
    assert mean["tumor_core"]["n_subsets"] == 3
    assert json.loads(json.dumps(summary)) == summary  # plain JSON types only


def test_summary_mean_over_subsets_is_the_mean_of_subset_means_and_skips_empty_cells():
    records = make_records() + [{"case": "c3", "subset": "T1ce", "region": r, "dice": 0.1, "hd95": 50.0}
                                for r in REGIONS]
    summary = summarize(records, SUBSETS + ["T2"], REGIONS)
    assert summary["per_subset"]["T1ce"]["whole_tumor"]["n_cases"] == 3
    assert summary["per_subset"]["T2"]["whole_tumor"] == {"dice": None, "hd95": None, "n_cases": 0}
    expected = np.mean([np.mean([0.8, 0.6, 0.1]), 0.80, 0.90])  # T1ce counts once, not per case
    assert summary["mean_over_subsets"]["whole_tumor"]["dice"] == pytest.approx(expected)
    assert summary["mean_over_subsets"]["whole_tumor"]["n_subsets"] == 3


def test_summary_refuses_unknown_and_duplicate_records():
    with pytest.raises(ValueError, match="outside the subsets"):
        summarize(make_records(), SUBSETS[:2], REGIONS)
    with pytest.raises(ValueError, match="scored twice"):
        summarize(make_records() + make_records()[:1], SUBSETS, REGIONS)


def test_csv_round_trip(tmp_path):
    records = make_records()
    records[0]["dice"] = 0.1 + 0.2  # needs full precision
    write_per_case_csv(records, tmp_path / "per_case.csv")
    with open(tmp_path / "per_case.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["case", "subset", "region", "dice", "hd95"]
        back = [{**row, "dice": float(row["dice"]), "hd95": float(row["hd95"])} for row in reader]
    assert back == records


def test_markdown_table_rows_in_order_with_the_mean_row(tmp_path):
    summary = summarize(make_records(), SUBSETS, REGIONS)
    text = write_markdown_table(summary, tmp_path / "table.md", title="Model X on imagesTs")
    assert (tmp_path / "table.md").read_text() == text
    lines = text.splitlines()
    assert lines[0] == "## Model X on imagesTs"
    header = next(line for line in lines if line.startswith("| Subset"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Subset", "Dice WT (%)", "Dice TC (%)", "Dice ET (%)", "HD95 WT (mm)", "HD95 TC (mm)", "HD95 ET (mm)"]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Subset")]
    assert [r.split("|")[1].strip() for r in rows] == SUBSETS + ["**Mean**"]
    assert rows[0] == "| T1ce | 70.00 | 60.00 | 30.00 | 5.00 | 8.00 | 190.57 |"
    assert rows[-1] == "| **Mean** | **80.00** | **56.67** | **55.00** | **3.33** | **14.00** | **70.52** |"


def test_heatmap_is_a_readable_png(tmp_path):
    import matplotlib.image

    subsets = ["T1", "T1ce", "T2", "FLAIR", "T1+T1ce", "T1+T2", "T1+FLAIR", "T1ce+T2", "T1ce+FLAIR", "T2+FLAIR",
               "T1+T1ce+T2", "T1+T1ce+FLAIR", "T1+T2+FLAIR", "T1ce+T2+FLAIR", "T1+T1ce+T2+FLAIR"]
    rng = np.random.default_rng(0)
    records = [{"case": c, "subset": s, "region": r, "dice": float(rng.random()), "hd95": float(rng.random() * 80)}
               for c in ("a", "b") for s in subsets for r in REGIONS]
    path = tmp_path / "heatmap.png"
    write_heatmap(summarize(records, subsets, REGIONS), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 600
    assert image[..., :3].std() > 0.1  # not a blank canvas
    assert os.listdir(tmp_path) == ["heatmap.png"]


def with_calibration(records):
    """Calibration on every region but the last (as ETpp has none), from bins of a few voxels."""
    from nnunet_missingmod.inference.calibration import calibration_scores
    rng = np.random.default_rng(0)
    for record in records:
        p = rng.random(50)
        record.update(calibration_scores(p, rng.random(50) < p, np.ones(50, dtype=bool))
                      if record["region"] != REGIONS[-1] else {"ece": None, "brier": None, "bins": None})
    return records


def test_write_reports_writes_all_five_atomically(tmp_path):
    out = tmp_path / "eval"
    summary = write_reports(with_calibration(make_records()), SUBSETS, REGIONS, out, title="t")
    assert sorted(os.listdir(out)) == sorted(REPORT_FILES)  # and no temporary files
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["subsets"] == SUBSETS and summary["regions"] == REGIONS
    # calibration: a mean where defined, None (n/a, blank) where not; a table of its own
    assert summary["per_subset"]["T1ce"]["enhancing_tumor"]["ece"] is None
    assert 0 < summary["mean_over_subsets"]["whole_tumor"]["ece"] < 1
    table = (out / "table.md").read_text()
    assert "| Subset | ECE WT (x100) | ECE TC (x100) | Brier WT (x100) | Brier TC (x100) |" in table
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert rows[0].keys() >= {"ece", "brier"} and "bins" not in rows[0]
    assert {r["ece"] for r in rows if r["region"] == "enhancing_tumor"} == {""}
    # A writer that fails leaves the previous file in place and no temporary file behind.
    before = (out / "summary.json").read_text()
    with pytest.raises(TypeError):
        write_summary_json({"subsets": SUBSETS, "bad": object()}, out / "summary.json")
    assert (out / "summary.json").read_text() == before
    assert sorted(os.listdir(out)) == sorted(REPORT_FILES)
