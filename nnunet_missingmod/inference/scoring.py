"""What one prediction scores, in every convention the community reports.

Per region of the dataset: the legacy Dice and HD95 (``metrics``: both empty 1 / 0 mm, one empty
0 and the HD95 convention's penalty, 373.13 mm for ``medpy``, 374 mm for ``brats2023``) and the
BraTS 2023+ lesion-wise Dice and HD95 (``lesion_wise``, HD95 as the 2023 script). Beside the
regions, where the dataset has an enhancing tumour region: **ETpp**, the RFNet-family
post-processed ET (a predicted ET of fewer than ``et_min_voxels`` voxels counts as no ET). As in
RFNet's ``softmax_output_dice_class4`` (``predict.py``; mmFormer and M2FTrans have the same code),
only the ET score changes: whole tumour and tumour core keep the predicted ET, and the reference
is untouched. The conventions are one frozen record, stored with every evaluation, so records
made under other conventions are never mixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from nnunet_missingmod.inference import calibration, hausdorff, lesion_wise
from nnunet_missingmod.inference.metrics import dice, short_region_name

POSTPROCESSED_SUFFIX = "_postprocessed"


@dataclass(frozen=True)
class Conventions:
    et_min_voxels: int = 500  # ETpp: RFNet's threshold (predicted ET voxels, original resolution)
    lesion_dilation: int = lesion_wise.GLI_DILATION  # BraTS 2023+ GLI: 3 dilations of the reference
    lesion_min_volume: float = lesion_wise.MIN_LESION_VOLUME_MM3  # reference lesions this small (mm^3) are ignored
    lesion_penalty_hd95: float = lesion_wise.HD95_PENALTY  # a missed or false lesion's HD95, mm
    lesion_hd95: str = lesion_wise.HD95_CONVENTION  # the 2023 script's surfel-weighted HD95
    hd95: str = hausdorff.DEFAULT_CONVENTION  # the legacy HD95: "medpy" (the papers') or "brats2023"
    hd95_one_empty: float | None = None  # None: the legacy convention's own penalty (hausdorff.ONE_EMPTY)
    calibration_bins: int = calibration.NUM_BINS  # ECE: equal-width bins of the region probability
    calibration_voxels: str = calibration.VOXELS  # which voxels calibration counts (calibration.py)

    def __post_init__(self):
        for field, value in (("hd95", self.hd95), ("lesion_hd95", self.lesion_hd95)):
            if value not in hausdorff.CONVENTIONS:
                raise ValueError(f"{field} convention {value!r} is not one of {', '.join(hausdorff.CONVENTIONS)}")
        if self.hd95_one_empty is None:
            object.__setattr__(self, "hd95_one_empty", hausdorff.ONE_EMPTY[self.hd95])

    def as_dict(self) -> dict:
        return asdict(self)


def enhancing_region(regions: Mapping[str, Sequence[int]]) -> str | None:
    """The dataset's enhancing tumour region by name (``enhancing_tumor``, ``ET``, ...), if any."""
    return next((name for name in regions if short_region_name(name) == "ET"), None)


def scored_regions(regions: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """The dataset's regions, and ETpp after ET where the dataset has an ET region."""
    scored = {name: tuple(labels) for name, labels in regions.items()}
    et = enhancing_region(regions)
    if et is not None:
        scored[et + POSTPROCESSED_SUFFIX] = tuple(regions[et])
    return scored


def etpp_threshold_note(spacing: Sequence[float], min_voxels: int) -> str | None:
    """A warning where RFNet's voxel threshold means another volume than it does on BraTS' 1 mm grid.

    The rule counts voxels in the original geometry; on 4 mm voxels, 500 of them are 32 cm^3, larger
    than most enhancing tumours, and ETpp turns to 0 for every case. Returns None within a factor of
    2 of 1 mm^3 per voxel, else the note with the threshold that keeps RFNet's volume."""
    voxel = float(np.prod(spacing))
    if 0.5 <= voxel <= 2.0:
        return None
    same_volume = max(1, round(min_voxels / voxel))
    return (f"ETpp counts a predicted ET of fewer than {min_voxels} voxels as none (RFNet's rule, set on BraTS' "
            f"1 mm grid, i.e. {min_voxels} mm^3); this dataset's voxels are {voxel:.3g} mm^3 (median spacing "
            f"{' x '.join(f'{s:.3g}' for s in spacing)} mm), so the rule removes any ET under {min_voxels * voxel:.0f} "
            f"mm^3. --et_min_voxels {same_volume} keeps RFNet's volume; the ET column is unaffected.")


def postprocess_enhancing_tumor(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """RFNet's ET post-processing: fewer than ``min_voxels`` predicted voxels -> no ET at all."""
    return mask if np.count_nonzero(mask) >= min_voxels else np.zeros_like(mask)


def score_prediction(prediction: np.ndarray, reference: np.ndarray, regions: Mapping[str, Sequence[int]],
                     spacing: Sequence[float], conventions: Conventions = Conventions()) -> dict[str, dict]:
    """``{region: {"dice", "hd95", "lesion_dice", "lesion_hd95"}}`` for ``scored_regions(regions)``.

    ``spacing`` in mm, in the arrays' axis order. Only the prediction is post-processed for ETpp,
    as RFNet does; the reference is never changed."""
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction and reference differ in shape: {prediction.shape} vs {reference.shape}")
    scores = {}
    for name, labels in scored_regions(regions).items():
        predicted, expected = np.isin(prediction, labels), np.isin(reference, labels)
        if name.endswith(POSTPROCESSED_SUFFIX):
            kept = postprocess_enhancing_tumor(predicted, conventions.et_min_voxels)
            if kept is predicted:  # large enough: ETpp is ET, and costs nothing more
                scores[name] = dict(scores[name[:-len(POSTPROCESSED_SUFFIX)]])
                continue
            predicted = kept
        lesions = lesion_wise.lesion_wise_scores(predicted, expected, spacing, conventions.lesion_dilation,
                                                 conventions.lesion_min_volume, conventions.lesion_penalty_hd95,
                                                 conventions.lesion_hd95)
        legacy_hd95 = hausdorff.hd95(predicted, expected, spacing, conventions.hd95, conventions.hd95_one_empty)
        scores[name] = {"dice": dice(predicted, expected), "hd95": legacy_hd95,
                        "lesion_dice": lesions.dice, "lesion_hd95": lesions.hd95}
    return scores
