"""The study's statistics: per-case tables from the evaluations, seed means and spreads, the paired
comparison over cases, the share of the gap to the dedicated ceiling, and the verdict rule: a
difference within the larger seed spread is a tie, and so is one that clears that spread by less
than its own uncertainty (its 95 % interval over the seeds and the test cases together)."""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from typing import Optional

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
    """A trainer's mean Dice over subsets per region: the seeds' values, their mean and spread, and
    (``per_case``, optional) each seed's Dice per test case, averaged over the subsets."""

    per_seed: dict[str, list[float]]  # region -> one value per seed
    per_case: Optional[dict[str, np.ndarray]] = None  # region -> (seeds, cases), cases in sorted order
    mean: dict[str, float] = field(init=False)
    spread: dict[str, float] = field(init=False)  # sample standard deviation over seeds (0 for one seed)

    def __post_init__(self):
        self.mean = {r: float(np.mean(v)) for r, v in self.per_seed.items()}
        self.spread = {r: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for r, v in self.per_seed.items()}


def seed_statistics(tables: list[dict], regions: list[str], short: dict, subset: Optional[str] = None
                    ) -> SeedStatistics:
    """SeedStatistics of one trainer's per-seed tables (``read_per_case``), per case as well; with
    ``subset``, that subset alone (else the mean over subsets, as the papers' "Avg")."""
    per_seed = []  # one pass over each table: {(region, case): [values over the subsets]}
    for table in tables:
        grouped: dict[tuple, list] = {}
        for (case, s, region), value in table.items():
            if subset is None or s == subset:
                grouped.setdefault((region, case), []).append(value)
        per_seed.append(grouped)
    per_case = {}
    for region in regions:
        cases = sorted(c for r, c in per_seed[0] if r == region)
        per_case[short[region]] = np.array([[np.mean(grouped[(region, c)]) for c in cases] for grouped in per_seed])
    # the mean over cases of the per-case means is mean_dice's mean over subsets of the per-subset means
    return SeedStatistics({r: [float(v) for v in values.mean(axis=1)] for r, values in per_case.items()}, per_case)


RESAMPLES = 10000


def seeds_and_cases_interval(method: np.ndarray, reference: np.ndarray, resamples: int = RESAMPLES,
                             seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the difference of two trainers' mean Dice, from their
    (seeds, cases) tables: each resample draws the test cases (the same for both: paired) and each
    trainer's seeds (separate training runs: apart), so the interval covers both the choice of test
    cases and the training run. With one seed it covers the cases only."""
    rng = np.random.default_rng(seed)

    def weights(n: int) -> np.ndarray:  # (resamples, n): how often each item is drawn, over n
        return rng.multinomial(n, np.full(n, 1.0 / n), resamples) / n

    cases = weights(method.shape[1])
    differences = (np.einsum("bs,sc,bc->b", weights(method.shape[0]), method, cases)
                   - np.einsum("bs,sc,bc->b", weights(reference.shape[0]), reference, cases))
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def uncertainty(method: SeedStatistics, reference: SeedStatistics, region: str) -> Optional[tuple[float, float]]:
    """The 95 % interval over seeds and cases of ``method - reference``, where both hold per-case values of
    the same test cases; else None."""
    if method.per_case is None or reference.per_case is None:
        return None
    a, b = method.per_case[region], reference.per_case[region]
    return seeds_and_cases_interval(a, b) if a.shape[1] == b.shape[1] else None


def compare(method: SeedStatistics, reference: SeedStatistics, region: str) -> tuple[float, str]:
    """(difference of seed means, verdict): "tie" when the difference is within the larger of the
    two trainers' seed spreads, or clears it by less than its own uncertainty (its 95 % interval
    over seeds and cases reaches into that spread); else "above" or "below"."""
    difference = method.mean[region] - reference.mean[region]
    threshold = max(method.spread[region], reference.spread[region])
    if abs(difference) <= threshold:
        return difference, "tie"
    interval = uncertainty(method, reference, region)
    if interval is not None and (interval[0] <= threshold if difference > 0 else interval[1] >= -threshold):
        return difference, "tie"
    return difference, "above" if difference > 0 else "below"


def sign_flip_p(differences) -> float:
    """Exact one-sided p of the paired sign-flip test over seeds, in the direction of the mean
    difference: the share of the 2^n sign patterns whose mean is at least as far out. Its least
    value is 2^-n (0.125 for 3 seeds), so 3 seeds alone can never give p < 0.1."""
    d = np.abs(np.asarray(differences, dtype=float))
    observed = abs(float(np.mean(differences)))
    means = [float(np.mean(d * signs)) for signs in itertools.product((1, -1), repeat=len(d))]
    return sum(m >= observed - 1e-12 for m in means) / len(means)


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


def full_subset_statistics(tables: list[dict], full_subset: str, regions: list[str], short: dict) -> SeedStatistics:
    """A trainer's Dice with every modality present: per seed, the mean over cases on the full subset."""
    return seed_statistics(tables, regions, short, subset=full_subset)
