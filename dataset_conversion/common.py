"""What every converter shares: releases and label maps, case discovery, validation, writing, and
the atomic output folder.

The flow is the same for every source (see docs/conversion.md):

1. find the cases from the file names (``discover_named_cases`` or a converter's own finder);
2. check every case, reading every voxel, and report *all* problems at once, naming case and file;
3. only then write, into a hidden temporary folder next to the destination that is renamed into
   place at the end (``AtomicDatasetFolder``), so a failed or interrupted run leaves nothing behind.

The source folder is only ever read.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

# --- the project's nnU-Net convention (SPEC section 3) -----------------------------------------

CHANNELS = ("T1", "T1ce", "T2", "FLAIR")
CHANNEL_NAMES = {str(i): name for i, name in enumerate(CHANNELS)}
# nnU-Net labels: 1 edema, 2 necrosis / non-enhancing core, 3 enhancing tumour (4 resection cavity,
# only with BraTS 2024 --cavity keep). Key order matters to nnU-Net: it is the region order.
TUMOUR_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
TUMOUR_REGIONS_CLASS_ORDER = [1, 2, 3]
CAVITY_LABEL = 4
FILE_ENDING = ".nii.gz"

# Modalities of a case may differ by this much (mm for spacing and origin, cosines for direction).
GEOMETRY_TOLERANCE = 1e-3

MAX_ERRORS_SHOWN = 50


class ConversionError(Exception):
    """A problem the user has to fix; printed without a traceback, exit status 1."""


# --- releases ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Release:
    """One source convention: its label values (mapped to ours) and how its label files are named."""

    key: str                 # value of --release and of dataset.json "source_release"
    title: str               # printed
    to_ours: dict            # source label value -> nnU-Net label value (a bijection)
    label_file: str          # how the release names a case's label file, from the case id
    default_name: str        # default dataset name (DatasetXXX_<name>)

    @property
    def to_source(self) -> dict:
        return {ours: source for source, ours in self.to_ours.items()}

    @property
    def source_labels(self) -> frozenset:
        return frozenset(self.to_ours)


_LEGACY = {0: 0, 1: 2, 2: 1, 4: 3}          # 1 NCR/NET, 2 ED, 4 ET
_GLI2023 = {0: 0, 1: 2, 2: 1, 3: 3}         # 1 NCR, 2 ED, 3 ET
_GLI2024 = {0: 0, 1: 2, 2: 1, 3: 3, 4: 4}   # 1 NETC, 2 SNFH, 3 ET, 4 RC (kept as 4 by --cavity keep)
_MSD = {0: 0, 1: 1, 2: 2, 3: 3}             # 1 edema, 2 non-enhancing, 3 enhancing: already ours

RELEASES = {
    "2018": Release("2018", "BraTS 2018", _LEGACY, "{case}_seg.nii.gz", "BraTS2018"),
    "2019": Release("2019", "BraTS 2019", _LEGACY, "{case}_seg.nii.gz", "BraTS2019"),
    "2020": Release("2020", "BraTS 2020", _LEGACY, "{case}_seg.nii.gz", "BraTS2020"),
    "2021": Release("2021", "BraTS 2021", _LEGACY, "{case}_seg.nii.gz", "BraTS2021"),
    "legacy": Release("legacy", "BraTS 2018-2021 naming (year not recognised from the case ids)", _LEGACY,
                      "{case}_seg.nii.gz", "BraTS"),
    "2023": Release("2023", "BraTS 2023 GLI", _GLI2023, "{case}-seg.nii.gz", "BraTS2023_GLI"),
    "2024": Release("2024", "BraTS 2024 GLI (post-treatment)", _GLI2024, "{case}-seg.nii.gz", "BraTS2024_GLI"),
    "fets": Release("fets", "FeTS 2022/2024", _LEGACY, "{case}_seg.nii.gz", "FeTS2022"),
    "msd": Release("msd", "MSD Task01_BrainTumour", _MSD, "{case}.nii.gz", "MSDBrainTumour"),
}


# --- naming schemes --------------------------------------------------------------------------

@dataclass(frozen=True)
class Naming:
    """File naming of a release family: ``<case><sep><suffix>.nii[.gz]``."""

    name: str
    pattern: "re.Pattern"
    modalities: dict  # file suffix -> index in CHANNELS
    separator: str

    def expected_file(self, case_id: str, channel: int) -> str:
        suffix = next(s for s, c in self.modalities.items() if c == channel)
        return f"{case_id}{self.separator}{suffix}.nii[.gz]"


LEGACY_NAMING = Naming("BraTS 2018-2021 / FeTS (<case>_flair|_t1|_t1ce|_t2|_seg)",
                       re.compile(r"^(?P<case>.+)_(?P<kind>flair|t1ce|t1|t2|seg)\.nii(?:\.gz)?$", re.I),
                       {"t1": 0, "t1ce": 1, "t2": 2, "flair": 3}, "_")
GLI_NAMING = Naming("BraTS 2023/2024 GLI (<case>-t1n|-t1c|-t2w|-t2f|-seg)",
                    re.compile(r"^(?P<case>.+)-(?P<kind>t1n|t1c|t2w|t2f|seg)\.nii(?:\.gz)?$", re.I),
                    {"t1n": 0, "t1c": 1, "t2w": 2, "t2f": 3}, "-")
# The Kaggle copy of BraTS 2020 names case 355's label W39_1998.09.19_Segm.nii.
KAGGLE_LABEL = re.compile(r"^.+_segm\.nii(?:\.gz)?$", re.I)
NIFTI = re.compile(r"\.nii(?:\.gz)?$", re.I)


# --- cases -----------------------------------------------------------------------------------

@dataclass
class Case:
    """One case as found in the source. ``images[c]`` is (path, index in a 4D file or None), or
    None when the channel's file is missing; ``missing`` says which files are."""

    case_id: str
    folder: str
    images: list
    label: Optional[str] = None
    missing: list = field(default_factory=list)
    to_test: bool = False       # forced into imagesTs (FeTS Partition_ID -1) even with a label

    @property
    def is_training(self) -> bool:
        return self.label is not None and not self.to_test


def _skip(name: str) -> bool:
    # dotfiles include the ._* AppleDouble files found in the MSD tarball; __MACOSX likewise.
    return name.startswith(".") or name == "__MACOSX"


def iter_nifti_files(src: str) -> Iterable[tuple]:
    """(folder, file name) of every NIfTI under src, in a stable order."""
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not _skip(d))
        for name in sorted(files):
            if not _skip(name) and NIFTI.search(name):
                yield folder, name


def discover_named_cases(src: str, namings: Sequence[Naming] = (LEGACY_NAMING, GLI_NAMING)):
    """Find cases by file name, in any folder layout (flat, one folder per case, HGG/LGG).

    Returns (naming, cases, errors, notes). Errors are problems that stop the conversion (duplicate
    case ids, a file twice); they are reported together with the per-case checks."""
    if not os.path.isdir(src):
        raise ConversionError(f"source folder {src} does not exist")
    found = {n.name: {} for n in namings}       # naming -> case id -> folder -> kind -> [paths]
    kaggle_labels, unmatched = [], []
    for folder, name in iter_nifti_files(src):
        path = os.path.join(folder, name)
        for naming in namings:
            m = naming.pattern.match(name)
            if m:
                kinds = found[naming.name].setdefault(m["case"], {}).setdefault(folder, {})
                kinds.setdefault(m["kind"].lower(), []).append(path)
                break
        else:
            (kaggle_labels if KAGGLE_LABEL.match(name) else unmatched).append(path)

    used = [n for n in namings if found[n.name]]
    if not used:
        raise ConversionError(f"no case files found in {src}: expected one of " +
                              "; ".join(n.name for n in namings))
    if len(used) > 1:
        examples = "; ".join(f"{n.name}: e.g. case {next(iter(found[n.name]))}" for n in used)
        raise ConversionError(f"{src} mixes naming schemes ({examples}); convert them separately")
    naming = used[0]

    cases, errors, notes = [], [], []
    for case_id in sorted(found[naming.name]):
        by_folder = found[naming.name][case_id]
        if len(by_folder) > 1:
            errors.append(f"case {case_id}: duplicate case id, found in " + " and ".join(sorted(by_folder)))
            continue
        folder, kinds = next(iter(by_folder.items()))
        case = Case(case_id, folder, [None] * len(CHANNELS))
        for kind, paths in kinds.items():
            if len(paths) > 1:
                errors.append(f"case {case_id}: more than one file for '{kind}': " + ", ".join(paths))
                continue
            if kind == "seg":
                case.label = paths[0]
            else:
                case.images[naming.modalities[kind]] = (paths[0], None)
        case.missing = [os.path.join(folder, naming.expected_file(case_id, c))
                        for c in range(len(CHANNELS)) if case.images[c] is None]
        cases.append(case)

    # Kaggle BraTS 2020: a *_Segm.nii next to one case's images and no <case>_seg is its label.
    for path in kaggle_labels:
        here = [c for c in cases if c.folder == os.path.dirname(path)]
        if len(here) == 1 and here[0].label is None:
            here[0].label = path
            notes.append(f"case {here[0].case_id}: label file {path} taken as its segmentation "
                         f"(known quirk of the Kaggle copy of BraTS 2020)")
        else:
            unmatched.append(path)
    for path in unmatched:
        notes.append(f"warning: ignoring {path}: its name matches no modality of {naming.name}")
    return naming, cases, errors, notes


# --- reading and checking --------------------------------------------------------------------

def _read(path: str) -> sitk.Image:
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        raise ConversionError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from None


def _channel(image: sitk.Image, index: Optional[int], path: str) -> sitk.Image:
    """A 3D image, or channel ``index`` of a 4D image (MSD) with its 3D geometry."""
    if index is None:
        if image.GetDimension() != 3:
            raise ConversionError(f"{path} is {image.GetDimension()}D, expected a 3D image")
        return image
    if image.GetDimension() != 4:
        raise ConversionError(f"{path} is {image.GetDimension()}D, expected a 4D image (one volume per modality)")
    if index >= image.GetSize()[3]:
        raise ConversionError(f"{path} has {image.GetSize()[3]} volumes, expected at least {index + 1}")
    out = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image)[index])
    out.SetSpacing(image.GetSpacing()[:3])
    out.SetOrigin(image.GetOrigin()[:3])
    out.SetDirection(tuple(np.array(image.GetDirection()).reshape(4, 4)[:3, :3].ravel()))
    return out


def load_case_images(case: Case) -> list:
    """The case's channels as 3D images, in CHANNELS order (each 4D file read once)."""
    cache = {}
    out = []
    for path, index in case.images:
        if path not in cache:
            cache[path] = _read(path)
        out.append(_channel(cache[path], index, path))
    return out


def geometry(image: sitk.Image) -> dict:
    return {"shape": tuple(image.GetSize()), "spacing": tuple(image.GetSpacing()),
            "origin": tuple(image.GetOrigin()), "direction": tuple(image.GetDirection())}


def geometry_mismatch(image: sitk.Image, reference: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> Optional[str]:
    """None when the two share shape, and spacing, origin and direction within tolerance."""
    a, b = geometry(image), geometry(reference)
    if a["shape"] != b["shape"]:
        return f"shape {a['shape']} differs from {b['shape']}"
    for key in ("spacing", "origin", "direction"):
        if not np.allclose(a[key], b[key], rtol=0, atol=tolerance):
            return f"{key} {tuple(round(v, 6) for v in a[key])} differs from {tuple(round(v, 6) for v in b[key])}"
    return None


def count_nonfinite(path: str) -> int:
    """NaN/inf voxels as stored in a NIfTI file.

    Read with nibabel (installed with nnU-Net), because SimpleITK (ITK 5.4) silently turns NaN and inf
    in NIfTI files into 0 on reading, so they cannot be seen through it."""
    import nibabel

    try:
        image = nibabel.load(path)
    except Exception:  # unreadable files are reported by the SimpleITK read
        return 0
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return 0
    data = np.asanyarray(image.dataobj)
    return int(data.size - np.count_nonzero(np.isfinite(data)))


@dataclass
class CaseCheck:
    case_id: str
    errors: list
    label_values: frozenset = frozenset()


def check_case(case: Case, allowed_labels: Optional[Iterable[int]], tolerance: float = GEOMETRY_TOLERANCE) -> CaseCheck:
    """Every check of one case; reads every voxel. Never raises for a problem of the data."""
    errors = [f"case {case.case_id}: missing file {m}" for m in case.missing]
    if errors:
        return CaseCheck(case.case_id, errors)
    try:
        images = load_case_images(case)
    except ConversionError as e:
        return CaseCheck(case.case_id, [f"case {case.case_id}: {e}"])
    reference_path = case.images[0][0]
    for (path, index), image in zip(case.images, images):
        where = path if index is None else f"{path} (volume {index})"
        problem = geometry_mismatch(image, images[0], tolerance)
        if problem:
            errors.append(f"case {case.case_id}: file {where}: {problem} in {reference_path}")
    for path in dict.fromkeys(p for p, _ in case.images):
        bad = count_nonfinite(path)
        if bad:
            errors.append(f"case {case.case_id}: file {path}: {bad} NaN/inf voxels")
    values = frozenset()
    if case.label is not None:
        try:
            label = _channel(_read(case.label), None, case.label)
        except ConversionError as e:
            return CaseCheck(case.case_id, errors + [f"case {case.case_id}: {e}"])
        problem = geometry_mismatch(label, images[0], tolerance)
        if problem:
            errors.append(f"case {case.case_id}: file {case.label}: {problem} in {reference_path}")
        array = sitk.GetArrayViewFromImage(label)
        bad = count_nonfinite(case.label)
        if bad:
            errors.append(f"case {case.case_id}: file {case.label}: {bad} NaN/inf voxels")
        else:
            uniques = np.unique(array)
            if np.any(uniques != np.round(uniques)):
                errors.append(f"case {case.case_id}: file {case.label}: non-integer label values")
            values = frozenset(int(v) for v in uniques)
            unexpected = sorted(values - set(allowed_labels)) if allowed_labels is not None else []
            if unexpected:
                errors.append(f"case {case.case_id}: file {case.label}: label values {unexpected} are not in "
                              f"the release's set {sorted(allowed_labels)}")
    return CaseCheck(case.case_id, errors, values)


def raise_for_errors(errors: Sequence[str]) -> None:
    if errors:
        shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise ConversionError(f"{len(errors)} problem(s) found, nothing was written:\n  {shown}{more}")


# --- writing ---------------------------------------------------------------------------------

def map_labels(array: np.ndarray, to_ours: dict) -> np.ndarray:
    """Relabel with a lookup table (values were checked before, so every value has an entry)."""
    lut = np.zeros(max(to_ours) + 1, dtype=np.uint8)
    for source, ours in to_ours.items():
        lut[source] = ours
    return lut[array.astype(np.int64)]


def write_case(case: Case, out_folder: str, to_ours: dict) -> str:
    """Write one checked case in nnU-Net raw format; returns the case id.

    Channels that are already .nii.gz 3D files with exactly the first channel's geometry are copied
    byte for byte (fast, lossless). Others (.nii, 4D, geometry off within tolerance) are rewritten
    with the first channel's geometry, so nnU-Net sees one geometry per case."""
    split = "Tr" if case.is_training else "Ts"
    images = load_case_images(case)
    reference = images[0]
    for c, ((path, index), image) in enumerate(zip(case.images, images)):
        target = os.path.join(out_folder, f"images{split}", f"{case.case_id}_{c:04d}{FILE_ENDING}")
        if index is None and path.lower().endswith(".nii.gz") and geometry(image) == geometry(reference):
            shutil.copyfile(path, target)
        else:
            image.CopyInformation(reference)
            sitk.WriteImage(image, target, useCompression=True)
    if case.label is not None:
        source = _read(case.label)
        label = sitk.GetImageFromArray(map_labels(sitk.GetArrayViewFromImage(source), to_ours))
        label.CopyInformation(reference)
        folder = os.path.join(out_folder, f"labels{split}")
        os.makedirs(folder, exist_ok=True)
        sitk.WriteImage(label, os.path.join(folder, f"{case.case_id}{FILE_ENDING}"), useCompression=True)
    return case.case_id


def dataset_labels(keep_cavity: bool = False) -> tuple:
    """(labels, regions_class_order) for dataset.json. A kept cavity is its own region [4], in no
    tumour region (see docs/conversion.md)."""
    labels = json.loads(json.dumps(TUMOUR_LABELS))
    order = list(TUMOUR_REGIONS_CLASS_ORDER)
    if keep_cavity:
        labels["resection_cavity"] = [CAVITY_LABEL]
        order.append(CAVITY_LABEL)
    return labels, order


def write_dataset_json(folder: str, dataset_name: str, release: Release, num_training: int, num_test: int,
                       to_ours: dict, keep_cavity: bool = False, converter: str = "", **extra) -> None:
    """nnU-Net's generate_dataset_json, plus where the data came from (read by the back-conversion)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    from nnunet_missingmod import __version__

    labels, order = dataset_labels(keep_cavity)
    generate_dataset_json(
        folder, channel_names=dict(CHANNEL_NAMES), labels=labels, num_training_cases=num_training,
        file_ending=FILE_ENDING, regions_class_order=order, dataset_name=dataset_name,
        license="see the source release's terms",
        converted_by=f"{converter or 'dataset_conversion'} (nnunet_missingmod {__version__})",
        numTest=num_test, source_release=release.key, source_release_title=release.title,
        # nnU-Net label -> source label, for predictions; source values that were merged are absent.
        source_label_map={str(ours): source for source, ours in sorted(to_ours.items()) if ours or not source},
        **extra)


class AtomicDatasetFolder:
    """``$nnUNet_raw/DatasetXXX_NAME`` built in a hidden temporary folder beside it and renamed into
    place only when everything succeeded. An existing dataset with the same id (any name) is
    replaced only with ``overwrite``; the old one is moved aside first and deleted last."""

    def __init__(self, raw_root: str, dataset_id: int, name: str, overwrite: bool, src: Optional[str] = None):
        if not re.fullmatch(r"[A-Za-z0-9_\-.]+", name):
            raise ConversionError(f"dataset name {name!r}: use letters, digits, '_', '-', '.' only")
        if not 0 < dataset_id < 1000:
            raise ConversionError(f"dataset id {dataset_id}: nnU-Net ids are 1..999")
        self.raw_root, self.overwrite = raw_root, overwrite
        self.name = f"Dataset{dataset_id:03d}_{name}"
        self.final = os.path.join(raw_root, self.name)
        prefix = f"Dataset{dataset_id:03d}_"
        names = os.listdir(raw_root) if os.path.isdir(raw_root) else []
        self.existing = sorted(os.path.join(raw_root, d) for d in names
                               if d.startswith(prefix) and os.path.isdir(os.path.join(raw_root, d)))
        if self.existing and not overwrite:
            raise ConversionError(f"dataset id {dataset_id} already exists: {', '.join(self.existing)}; "
                                  f"pass --overwrite to replace it")
        for old in self.existing:
            if src is not None and (os.path.realpath(src) + os.sep).startswith(os.path.realpath(old) + os.sep):
                raise ConversionError(f"the source folder {src} lies inside {old}, which --overwrite would delete")
        self.tmp = None

    def __enter__(self) -> str:
        os.makedirs(self.raw_root, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".tmp-{self.name}-", dir=self.raw_root)
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            os.makedirs(os.path.join(self.tmp, sub))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        moved = []
        try:
            for old in self.existing:
                aside = tempfile.mkdtemp(prefix=f".old-{os.path.basename(old)}-", dir=self.raw_root)
                os.rename(old, os.path.join(aside, "d"))
                moved.append((old, aside))
            os.rename(self.tmp, self.final)
        except BaseException:
            for old, aside in moved:
                os.rename(os.path.join(aside, "d"), old)
                os.rmdir(aside)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        for old, aside in moved:
            shutil.rmtree(aside, ignore_errors=True)
            print(f"replaced {old} (--overwrite); re-run nnUNetv2_plan_and_preprocess, any preprocessed data "
                  f"of this id is stale")
        return False


def write_json_atomic(data, path: str) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=4, sort_keys=False)
    os.replace(tmp, path)


# --- parallel work ---------------------------------------------------------------------------

class Workers:
    """A process pool (spawn, like nnU-Net: SimpleITK's threads do not survive fork) with a tqdm
    bar; runs in-process for one worker."""

    def __init__(self, num_processes: int):
        self.num_processes = max(1, int(num_processes))
        self.pool = None

    def __enter__(self):
        if self.num_processes > 1:
            self.pool = multiprocessing.get_context("spawn").Pool(self.num_processes)
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        return False

    def map(self, func: Callable, items: Sequence, desc: str) -> list:
        results = map(func, items) if self.pool is None or len(items) < 2 else self.pool.imap(func, items)
        return list(tqdm(results, total=len(items), desc=desc, unit="case", file=sys.stderr))


# --- the converters' common command line and flow ----------------------------------------------

def default_num_processes() -> int:
    return int(os.environ.get("nnUNet_def_n_proc", min(8, os.cpu_count() or 1)))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="the release's folder as downloaded (never modified)")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    parser.add_argument("-n", "--name", default=None, help="dataset name (default: from the release)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing $nnUNet_raw/DatasetXXX_* with the same id")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes(),
                        help="parallel workers (default: $nnUNet_def_n_proc or min(8, CPUs))")


def nnunet_folder(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConversionError(f"${variable} is not set; see nnU-Net's documentation/set_environment_variables.md")
    return os.path.abspath(value)


def check_output_outside_source(src: str, out: str) -> None:
    src, out = os.path.realpath(src), os.path.realpath(out)
    if out == src or out.startswith(src + os.sep):
        raise ConversionError(f"output folder {out} lies inside the source folder {src}, which is never modified")


def check_cases(cases: Sequence[Case], allowed_labels, workers: Workers, discovery_errors: Sequence[str] = ()) -> list:
    """Run check_case on every case; raise with every problem found, else return the CaseChecks."""
    checks = workers.map(functools.partial(check_case, allowed_labels=allowed_labels), cases, desc="checking")
    raise_for_errors(list(discovery_errors) + [e for c in checks for e in c.errors])
    return checks


def write_cases(cases: Sequence[Case], folder: str, to_ours: dict, workers: Workers) -> None:
    workers.map(functools.partial(write_case, out_folder=folder, to_ours=to_ours), cases, desc="writing")
    for sub in ("labelsTs",):
        path = os.path.join(folder, sub)
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


def run_main(func: Callable[[], None]) -> None:
    """Console-script wrapper: ConversionError -> message on stderr and exit status 1."""
    try:
        func()
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted, nothing was written", file=sys.stderr)
        sys.exit(130)


def summarise(folder: str, cases: Sequence[Case]) -> None:
    n_tr = sum(c.is_training for c in cases)
    print(f"wrote {folder}: {n_tr} training case(s) (imagesTr/labelsTr), {len(cases) - n_tr} in imagesTs")
