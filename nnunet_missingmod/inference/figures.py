"""Pictures of a case under every subset of modalities: what a table of Dice cannot show.

One figure per case and model (:func:`case_figure`): a slice of every modality, the reference, and
the prediction under each subset, the tumour compartments in the colours the BraTS community uses
(edema green, necrosis / non-enhancing core red, enhancing tumour yellow). One figure per case
comparing models (:func:`comparison_figure`): a row per model, a column per subset. The slice is
the axial slice with the most tumour in the reference.

Label maps are in the dataset's label values; colours are given per label (or region) name, so
that any dataset whose labels are named like BraTS's gets them and others get a fixed palette.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

# The BraTS colours, by the label or region names dataset.json uses (ours and nnU-Net's BraTS
# conversions). A region dataset's label map holds regions_class_order's value of the innermost
# region: whole tumour only = edema, tumour core only = necrosis, enhancing.
BRATS_COLOURS = {"edema": (0.0, 0.8, 0.0), "whole_tumor": (0.0, 0.8, 0.0),
                 "necrosis": (0.9, 0.1, 0.1), "non_enhancing_and_necrosis": (0.9, 0.1, 0.1),
                 "tumor_core": (0.9, 0.1, 0.1), "enhancing_tumor": (1.0, 0.9, 0.0), "enhancing": (1.0, 0.9, 0.0)}
BRATS_NAMES = {"whole_tumor": "edema", "tumor_core": "necrosis / non-enhancing", "enhancing_tumor": "enhancing"}
FALLBACK_COLOURS = [(0.0, 0.8, 0.0), (0.9, 0.1, 0.1), (1.0, 0.9, 0.0), (0.2, 0.5, 1.0), (0.8, 0.3, 0.9)]


def label_colours(dataset_json: Mapping) -> dict[int, tuple[str, tuple]]:
    """``{label map value: (name, RGB)}`` for a dataset.json (label or region datasets)."""
    labels = {k: v for k, v in dataset_json["labels"].items() if k not in ("background", "ignore")}
    order = dataset_json.get("regions_class_order")
    values = dict(zip(labels, order)) if order else {k: int(v) for k, v in labels.items()}
    fallback = iter(FALLBACK_COLOURS * 4)
    return {int(values[name]): (BRATS_NAMES.get(name, name), BRATS_COLOURS.get(name.lower()) or next(fallback))
            for name in labels}


def tumour_slice(reference: np.ndarray) -> int:
    """Index along the first axis (axial in nnU-Net's z, y, x order) with the most foreground."""
    return int(np.argmax((reference > 0).reshape(reference.shape[0], -1).sum(1)))


def overlay(image: np.ndarray, labels: np.ndarray, colours: Mapping[int, tuple], alpha: float = 0.55) -> np.ndarray:
    """A grey image with labels painted over it, RGB in [0, 1]."""
    low, high = np.percentile(image, (1, 99)) if image.any() else (0.0, 1.0)
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for value, (_, colour) in colours.items():
        where = labels == value
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour)
    return rgb


def _save(figure, path: str) -> None:
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial.png"
    figure.savefig(partial, dpi=110, bbox_inches="tight")
    plt.close(figure)
    os.replace(partial, path)


def _legend(axis, colours: Mapping[int, tuple]) -> None:
    from matplotlib.patches import Patch
    axis.legend(handles=[Patch(color=c, label=name) for name, c in colours.values()], loc="center", fontsize=8,
                frameon=False)
    axis.axis("off")


def case_figure(images: np.ndarray, modality_names: Sequence[str], reference: np.ndarray,
                predictions: Mapping[str, np.ndarray], dataset_json: Mapping, path: str, title: str = "") -> str:
    """``images`` (M, z, y, x), ``reference`` and each subset's prediction (z, y, x) label maps."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    z = tumour_slice(reference)
    colours = label_colours(dataset_json)
    background = images[int(np.argmax([np.percentile(i, 99) for i in images]))][z]
    panels = [(name, images[m][z], None) for m, name in enumerate(modality_names)]
    panels.append(("reference", background, reference[z]))
    panels += [(subset, background, prediction[z]) for subset, prediction in predictions.items()]
    columns = 6
    rows = -(-(len(panels) + 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows))
    axes = np.atleast_2d(axes)
    for axis, (name, image, label_map) in zip(axes.flat, panels):
        if label_map is None:
            axis.imshow(image, cmap="gray")
        else:
            axis.imshow(overlay(image, label_map, colours))
        axis.set_title(name, fontsize=8)
        axis.axis("off")
    _legend(axes.flat[len(panels)], colours)
    for axis in list(axes.flat)[len(panels) + 1:]:
        axis.axis("off")
    if title:
        figure.suptitle(f"{title} (slice {z})", fontsize=10)
    _save(figure, path)
    return path


def comparison_figure(background: np.ndarray, reference: np.ndarray,
                      predictions: Mapping[str, Mapping[str, np.ndarray]], dataset_json: Mapping,
                      path: str, title: str = "") -> str:
    """A row per model (``predictions[model][subset]``), a column per subset, the reference first."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    z = tumour_slice(reference)
    colours = label_colours(dataset_json)
    models = list(predictions)
    subsets = list(predictions[models[0]])
    figure, axes = plt.subplots(len(models), len(subsets) + 1,
                                figsize=(1.6 * (len(subsets) + 1), 1.75 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        axes[row, 0].imshow(overlay(background[z], reference[z], colours))
        axes[row, 0].set_ylabel(model, fontsize=7, rotation=0, ha="right", va="center")
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        for column, subset in enumerate(subsets, start=1):
            axes[row, column].imshow(overlay(background[z], predictions[model][subset][z], colours))
            axes[row, column].axis("off")
            if row == 0:
                axes[row, column].set_title(subset.replace("+", "+\n"), fontsize=6)
    axes[0, 0].set_title("reference", fontsize=6)
    if title:
        figure.suptitle(f"{title} (slice {z})", fontsize=9)
    _save(figure, path)
    return path
