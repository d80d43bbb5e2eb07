"""Finding the cases of a raw image folder and reading them with some modalities missing.

nnU-Net matches channel files by pattern and silently re-indexes a case that lacks one (the
FLAIR file would be read as T2). Here every file is tied to its channel index, absent channels
are known by name, and they are filled with zeros in memory: no fake file is ever written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from nnunet_missingmod.modalities import Modalities

GEOMETRY_TOLERANCE = 1e-3  # relative, for spacing, origin and direction


class CaseError(ValueError):
    """A case that cannot be read as asked; the message names the case and the file."""


@dataclass
class RawCase:
    """The channel files of one case, by channel index; absent channels have no entry."""

    case_id: str
    files: dict[int, str]
    label_file: str | None = None
    forced_missing: tuple[int, ...] = field(default=())

    def missing(self, num_channels: int) -> tuple[int, ...]:
        """Channels that will be zero: absent files plus those the user declared missing."""
        return tuple(sorted(set(range(num_channels)) - set(self.files) | set(self.forced_missing)))


def find_cases(folder: str, file_ending: str, modalities: Modalities) -> dict[str, RawCase]:
    """``CASE_XXXX<file_ending>`` files of ``folder`` grouped by case; refuses unknown channels."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"input folder {folder} does not exist")
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending) + "$")
    cases: dict[str, RawCase] = {}
    for name in sorted(os.listdir(folder)):
        match = pattern.match(name)
        if match is None:
            continue
        channel = int(match["channel"])
        path = os.path.join(folder, name)
        if channel >= len(modalities):
            raise CaseError(f"{path}: channel {channel:04d} does not exist; the model knows "
                            f"{len(modalities)} channels ({', '.join(modalities.names)})")
        cases.setdefault(match["case"], RawCase(match["case"], {})).files[channel] = path
    return cases


def attach_labels(cases: dict[str, RawCase], label_folder: str, file_ending: str) -> None:
    """Give every case its reference segmentation; a case without one is an error."""
    for case in cases.values():
        path = os.path.join(label_folder, case.case_id + file_ending)
        if not os.path.isfile(path):
            raise CaseError(f"case {case.case_id} has no label: expected {path}")
        case.label_file = path


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.allclose(a, b, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE)


def _check_geometry(reference: tuple[str, tuple, dict], other: tuple[str, tuple, dict], case_id: str,
                    what: str = "does not match"):
    """``(file, spatial shape, properties)`` of two images: the same grid, or a CaseError naming both."""
    ref_file, ref_shape, ref_props = reference
    file, shape, props = other
    problems = []
    if tuple(ref_shape) != tuple(shape):
        problems.append(f"shape {tuple(shape)} vs {tuple(ref_shape)}")
    if not _same(ref_props["spacing"], props["spacing"]):
        problems.append(f"spacing {props['spacing']} vs {ref_props['spacing']}")
    ref_geometry, geometry = ref_props.get("sitk_stuff"), props.get("sitk_stuff")
    if ref_geometry is not None and geometry is not None:
        for key in ("origin", "direction"):
            if not _same(ref_geometry[key], geometry[key]):
                problems.append(f"{key} {geometry[key]} vs {ref_geometry[key]}")
    if problems:
        raise CaseError(f"case {case_id}: {file} {what} {ref_file}: " + "; ".join(problems))


def header_geometry(path: str, reader) -> tuple[tuple, dict]:
    """A file's spatial shape (z, y, x) and nnU-Net-style properties, from its header alone where
    SimpleITK can read it (NIfTI, NRRD, MHA, ...); otherwise the plans' ``reader`` reads the file."""
    import SimpleITK as sitk
    header = sitk.ImageFileReader()
    header.SetFileName(path)
    try:
        header.ReadImageInformation()
    except RuntimeError:
        try:
            image, props = reader.read_images([path])
        except Exception as e:
            raise CaseError(f"cannot read {path}: {e}") from e
        return tuple(image.shape[1:]), props
    size = tuple(header.GetSize())[::-1]
    spacing = tuple(header.GetSpacing())
    return size, {"spacing": spacing[::-1], "sitk_stuff": {"spacing": spacing, "origin": header.GetOrigin(),
                                                            "direction": header.GetDirection()}}


def check_case(case: RawCase, modalities: Modalities, reader) -> None:
    """Before anything is predicted: the case keeps a modality, its present files (and its label,
    if it has one) are readable and share one grid. Reads headers only where it can."""
    present = [c for c in range(len(modalities)) if c not in case.missing(len(modalities))]
    if not present:
        declared = f" (--missing {', '.join(modalities.names[c] for c in case.forced_missing)})" \
            if case.forced_missing else ""
        raise CaseError(f"case {case.case_id}: every modality is missing{declared}; files found: "
                        f"{sorted(case.files.values()) or 'none'}")
    try:
        grids = [(case.files[c], *header_geometry(case.files[c], reader)) for c in present]
    except CaseError as e:
        raise CaseError(f"case {case.case_id}: {e}") from None
    for other in grids[1:]:
        _check_geometry(grids[0], other, case.case_id)
    if case.label_file is not None:
        try:
            label = (case.label_file, *header_geometry(case.label_file, reader))
        except CaseError as e:
            raise CaseError(f"case {case.case_id}: label: {e}") from None
        _check_geometry(grids[0], label, case.case_id, what="(the label) does not match")


def read_case(case: RawCase, modalities: Modalities, reader) -> tuple[np.ndarray, dict, tuple[int, ...]]:
    """The case as a ``(M, *spatial)`` float32 array with its missing channels all zero.

    ``reader`` is an nnU-Net image reader (the plans' ``image_reader_writer``). Returns the array,
    the reader's properties (of the first present file) and the missing channel indices.
    """
    missing = case.missing(len(modalities))
    present = [c for c in range(len(modalities)) if c not in missing]
    if not present:
        declared = f" (--missing {', '.join(modalities.names[c] for c in case.forced_missing)})" \
            if case.forced_missing else ""
        raise CaseError(f"case {case.case_id}: every modality is missing{declared}; files found: "
                        f"{sorted(case.files.values()) or 'none'}")
    loaded = []
    for channel in present:
        try:
            image, props = reader.read_images([case.files[channel]])
        except Exception as e:  # the readers raise bare RuntimeErrors; name the file
            raise CaseError(f"case {case.case_id}: cannot read {case.files[channel]}: {e}") from e
        if image.shape[0] != 1:
            raise CaseError(f"case {case.case_id}: {case.files[channel]} holds {image.shape[0]} channels, expected 1")
        if not np.isfinite(image).all():
            raise CaseError(f"case {case.case_id}: {case.files[channel]} holds {np.count_nonzero(~np.isfinite(image))} "
                            f"NaN or infinite values; nnU-Net's normalisation would turn the whole channel into NaN")
        loaded.append((case.files[channel], image, props))
        _check_geometry(*((f, i.shape[1:], p) for f, i, p in (loaded[0], loaded[-1])), case.case_id)
    data = np.zeros((len(modalities), *loaded[0][1].shape[1:]), dtype=np.float32)
    for channel, (_, image, _) in zip(present, loaded):
        data[channel] = image[0]
    return data, loaded[0][2], missing


def defined_label_values(dataset_json: dict) -> set[int]:
    """Every label value dataset.json defines (regions list their labels; background included)."""
    return {int(v) for value in dataset_json["labels"].values() for v in np.atleast_1d(value)}


def check_labels(case: RawCase, reference: np.ndarray, defined: set[int]) -> None:
    unknown = [int(v) if float(v).is_integer() else v for v in np.unique(reference).tolist() if v not in defined]
    if unknown:
        raise CaseError(f"case {case.case_id}: {case.label_file} holds label(s) {unknown} that dataset.json does not "
                        f"define (it defines {sorted(defined)})")


def check_case_data(case: RawCase, modalities: Modalities, reader, defined_labels: set[int]) -> None:
    """Everything :func:`check_case` cannot see in headers: every file decodes, images hold one
    channel of finite values on one grid, the label matches them and holds only defined values.
    Reads the whole case, as the evaluation will."""
    raw, _, _ = read_case(case, modalities, reader)
    reference, _ = read_label(case, reader, raw.shape[1:])
    check_labels(case, reference, defined_labels)


def read_label(case: RawCase, reader, image_shape: tuple[int, ...]) -> tuple[np.ndarray, dict]:
    """The reference segmentation ``(*spatial)``; it must match the images' shape."""
    try:
        seg, props = reader.read_seg(case.label_file)
    except Exception as e:
        raise CaseError(f"case {case.case_id}: cannot read label {case.label_file}: {e}") from e
    if tuple(seg.shape[1:]) != tuple(image_shape):
        raise CaseError(f"case {case.case_id}: label {case.label_file} has shape {tuple(seg.shape[1:])}, "
                        f"the images {tuple(image_shape)}")
    return seg[0], props
