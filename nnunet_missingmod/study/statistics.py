"""The study's statistics: per-case tables from the evaluations, seed means and spreads, the paired
comparison over cases, the share of the gap to the dedicated ceiling, and the verdict rule (a
difference within the larger seed spread is a tie)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

import numpy as np


def read_per_case(path: str, metric: str = "dice") -> dict:
    """{(case, subset, region): value} of one evaluation's per_case.csv."""
    with open(path) as f:
        return {(r["case"], r["subset"], r["region"]): float(r[metric]) for r in csv.DictReader(f)}


def mean_over_seeds(tables: list[dict]) -> dict:
    """The per-(case, subset, region) mean of several seeds' tables (the same keys in each)."""
    keys = tables[0].keys()
    for t in tables[1:]:
        if t.keys() != keys:
            raise ValueError("the seeds' evaluations cover different cases, subsets or regions")
    return {k: float(np.mean([t[k] for t in tables])) for k in keys}


def mean_dice(table: dict, region: str) -> float:
    """Mean over subsets of the mean over cases, as the papers' "Avg" column."""
    subsets = sorted({s for _, s, r in table if r == region})
    return float(np.mean([np.mean([v for (c, s, r), v in table.items() if s == subset and r == region])
                          for subset in subsets]))


def paired_difference(method: dict, reference: dict, region: str, resamples: int = 10000, seed: int = 0) -> dict:
    """Mean over cases of (method - reference) Dice, each case's Dice averaged over the subsets,
    with a percentile bootstrap 95% interval over cases."""
    cases = sorted({c for c, _, r in reference if r == region})
    per_case = []
    for case in cases:
        keys = [k for k in reference if k[0] == case and k[2] == region]
        per_case.append(np.mean([method[k] for k in keys]) - np.mean([reference[k] for k in keys]))
    per_case = np.array(per_case)
    rng = np.random.default_rng(seed)
    means = per_case[rng.integers(0, len(per_case), (resamples, len(per_case)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(per_case.mean()), "ci95": (float(low), float(high)), "n_cases": len(per_case)}


@dataclass
class SeedStatistics:
    """A trainer's mean Dice over subsets per region: the seeds' values, their mean and spread."""

    per_seed: dict[str, list[float]]  # region -> one value per seed
    mean: dict[str, float] = field(init=False)
    spread: dict[str, float] = field(init=False)  # sample standard deviation over seeds (0 for one seed)

    def __post_init__(self):
        self.mean = {r: float(np.mean(v)) for r, v in self.per_seed.items()}
        self.spread = {r: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for r, v in self.per_seed.items()}


def compare(method: SeedStatistics, reference: SeedStatistics, region: str) -> tuple[float, str]:
    """(difference of seed means, verdict): "tie" when the difference is within the larger of the
    two trainers' seed spreads, else "above" or "below"."""
    difference = method.mean[region] - reference.mean[region]
    if abs(difference) <= max(method.spread[region], reference.spread[region]):
        return difference, "tie"
    return difference, "above" if difference > 0 else "below"


def gap_closed(method: dict, reference: dict, ceiling: dict, region: str) -> float:
    """The share of the reference's gap to the ceiling that the method closes, on the subsets the
    ceiling covers: (mean method - mean reference) / (mean ceiling - mean reference), each the mean
    over those subsets of the mean over cases."""
    subsets = sorted({s for _, s, r in ceiling if r == region})
    def over(table):
        return np.mean([np.mean([v for (c, s, r), v in table.items() if s == subset and r == region])
                        for subset in subsets])
    gap = over(ceiling) - over(reference)
    return float((over(method) - over(reference)) / gap) if gap > 0 else float("nan")


def share_cell(share: float) -> str:
    return "no gap (the reference is at the ceiling)" if np.isnan(share) else f"{share * 100:.0f} %"


# The bar (issue 14): every method at or above ModalityDropoutTrainer on mean TC and ET (seed means,


def full_subset_statistics(tables: list[dict], full_subset: str, regions: list[str], short: dict) -> SeedStatistics:
    """A trainer's Dice with every modality present: per seed, the mean over cases on the full subset."""
    return SeedStatistics({short[r]: [float(np.mean([v for (c, s, rr), v in table.items() if s == full_subset and rr == r]))
                                      for table in tables] for r in regions})

