"""How far to trust a prediction: calibration of each region's probability, per case and subset.

A model that lost T1ce should be less sure of its enhancing tumour, and say so. For each region
(whole tumour, tumour core, enhancing tumour; or each label of a label-based dataset) the voxel's
probability of belonging to it is compared with whether it does:

- **ECE**, the expected calibration error: the voxels are put into ``NUM_BINS`` equal-width bins of
  that probability on [0, 1]; ECE = sum over bins of (share of voxels in the bin) x |mean
  probability in the bin - share of them inside the region|. 0 is perfectly calibrated.
- **Brier score**: the mean over voxels of (probability - 1 if inside else 0)^2; it mixes
  calibration and sharpness, and rewards a confident right answer.

Which voxels count: the brain, every voxel where the full case (all modalities, whatever the
subset) has a non-zero image. The air around the head is predicted background with probability
~0 and is background, so counting it would push every model's ECE and Brier towards 0 in
proportion to the head's share of the field of view; the same voxels for every subset keep the
subsets comparable. Even in the brain, healthy tissue dominates, so the per-bin counts are kept
(``bins``) for reliability diagrams, where the confident-tumour bins show what the means hide.

The region probability is nnU-Net's own: the sigmoid of the region's output for region-based
training (BraTS), the sum of the softmax probabilities of the region's labels otherwise.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

NUM_BINS = 10
# ECE and Brier are written with 10 decimals, more than any comparison needs; that they do not depend
# on where a case was scored comes from the export's single torch thread (evaluate_missing.ExportAndScore).
DECIMALS = 10
VOXELS = "brain"  # what the docs call the counted voxels: non-zero in any modality of the full case


def region_probabilities(probabilities: np.ndarray, regions: Mapping[str, Sequence[int]], label_manager
                         ) -> dict[str, np.ndarray]:
    """``{region: probability map}`` from nnU-Net's probabilities ``(C, *spatial)``: the region's
    own channel (region-based training, channels in ``label_manager.foreground_regions`` order) or
    the sum of its labels' channels (``label_manager.all_labels`` order)."""
    maps = {}
    if label_manager.has_regions:
        channels = {tuple(sorted(np.atleast_1d(r).tolist())): i for i, r in enumerate(label_manager.foreground_regions)}
        for name, labels in regions.items():
            key = tuple(sorted(labels))
            if key not in channels:
                raise ValueError(f"region {name} {key} is none of the network's output regions {sorted(channels)}")
            maps[name] = probabilities[channels[key]]
    else:
        channels = {int(label): i for i, label in enumerate(label_manager.all_labels)}
        for name, labels in regions.items():
            maps[name] = sum(probabilities[channels[int(label)]] for label in labels)
    return maps


def reliability_bins(probability: np.ndarray, truth: np.ndarray, voxels: np.ndarray,
                     num_bins: int = NUM_BINS) -> dict[str, list]:
    """Per bin of the probability: the number of counted voxels, the sum of their probabilities
    and the number inside the region. Sums (not means), so that cases pool by adding them."""
    return _bins(*_counted(probability, truth, voxels), num_bins)


def _counted(probability: np.ndarray, truth: np.ndarray, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(probability)[voxels].astype(np.float64), np.asarray(truth, dtype=bool)[voxels]


def _bins(p: np.ndarray, inside: np.ndarray, num_bins: int) -> dict[str, list]:
    index = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)  # 1.0 in the last bin
    return {"count": np.bincount(index, minlength=num_bins).tolist(),
            "probability": np.bincount(index, weights=p, minlength=num_bins).tolist(),
            "inside": np.bincount(index, weights=inside, minlength=num_bins).astype(np.int64).tolist()}


def expected_calibration_error(bins: Mapping[str, Sequence[float]]) -> Optional[float]:
    """ECE from :func:`reliability_bins` (of one case, or of several added together); None without voxels."""
    count = np.asarray(bins["count"], dtype=np.float64)
    if count.sum() == 0:
        return None
    filled = count > 0
    gap = np.abs(np.asarray(bins["probability"])[filled] - np.asarray(bins["inside"])[filled]) / count[filled]
    return float(np.sum(count[filled] / count.sum() * gap))


def pooled(bins: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list]:
    """The bins of several cases added together (every voxel counted once)."""
    return {key: np.sum([np.asarray(b[key], dtype=np.float64) for b in bins], axis=0).tolist()
            for key in ("count", "probability", "inside")}


def calibration_scores(probability: np.ndarray, truth: np.ndarray, voxels: np.ndarray,
                       num_bins: int = NUM_BINS) -> dict:
    """``{"ece", "brier", "bins"}`` of one region of one prediction (ECE and Brier None without voxels)."""
    p, inside = _counted(probability, truth, voxels)
    bins = _bins(p, inside, num_bins)
    ece = expected_calibration_error(bins)
    return {"ece": None if ece is None else round(ece, DECIMALS),
            "brier": round(float(np.mean((p - inside) ** 2)), DECIMALS) if p.size else None, "bins": bins}


def write_reliability_diagram(records: Sequence[dict], subsets: Sequence[str], regions: Sequence[str],
                              path: str) -> None:
    """PNG, one panel per region: observed share inside the region against the mean probability,
    per bin, pooled over cases, for the full set and each single modality (the subsets given, in
    order); the diagonal is perfect calibration, the legend gives each curve's pooled ECE."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nnunet_missingmod.inference.metrics import short_region_name
    from nnunet_missingmod.inference.reports import atomic_path

    fig = Figure(figsize=(3.4 * len(regions), 3.6), dpi=120)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(regions), sharey=True))
    for ax, region in zip(axes, regions):
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        for subset in subsets:
            bins = [r["bins"] for r in records if r["subset"] == subset and r["region"] == region and r.get("bins")]
            if not bins:
                continue
            total = pooled(bins)
            count = np.asarray(total["count"])
            filled = count > 0
            mean_probability = np.asarray(total["probability"])[filled] / count[filled]
            observed = np.asarray(total["inside"])[filled] / count[filled]
            ece = expected_calibration_error(total)
            ax.plot(mean_probability, observed, marker="o", markersize=3, linewidth=1.2,
                    label=f"{subset} (ECE {100 * ece:.2f}%)")
        ax.set_title(short_region_name(region))
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability")
        ax.legend(fontsize=6, loc="upper left")
    axes[0].set_ylabel("share of voxels inside the region")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
