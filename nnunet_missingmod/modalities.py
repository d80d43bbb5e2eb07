"""The modality vocabulary: names, aliases, subsets and availability.

Modalities are known by the names in dataset.json ``channel_names``, never by index. A subset is
written as names joined by ``+`` in dataset order (``T1ce+FLAIR``). Everything works for any
number M of channels (2^M - 1 non-empty subsets).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the converters' commands need none of it
    import torch

# Canonical name -> the spellings seen in the wild (BraTS 2018-2021, BraTS 2023+, MSD, nnU-Net's
# own conversion scripts). Matching is case-insensitive.
ALIASES: Mapping[str, tuple[str, ...]] = {
    "T1": ("t1", "t1n", "t1w"),
    "T1ce": ("t1ce", "t1c", "t1gd", "t1-gd", "t1_gd", "t1post"),
    "T2": ("t2", "t2w"),
    "FLAIR": ("flair", "t2f", "t2flair", "t2-flair", "t2_flair"),
}
_CANONICAL_BY_ALIAS = {alias: canonical for canonical, aliases in ALIASES.items() for alias in aliases}

SUBSET_SEPARATOR = "+"


def canonical_name(name: str) -> str:
    """``'t1c'`` -> ``'T1ce'``; a name with no known alias is returned unchanged."""
    return _CANONICAL_BY_ALIAS.get(name.strip().lower(), name.strip())


@dataclass(frozen=True)
class Modalities:
    """The ordered channel names of a dataset, and everything derived from them."""

    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.names) == 0:
            raise ValueError("a dataset needs at least one channel in channel_names")
        keys = [canonical_name(n).lower() for n in self.names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"channel_names {list(self.names)} name the same modality twice (aliases count as one)")

    @classmethod
    def from_dataset_json(cls, dataset_json: Union[Mapping, str, os.PathLike]) -> "Modalities":
        """From a dataset.json dict or file; channels ordered by their integer key."""
        if not isinstance(dataset_json, Mapping):
            with open(dataset_json) as f:
                dataset_json = json.load(f)
        channels = dataset_json.get("channel_names", dataset_json.get("modality"))
        if not channels:
            raise ValueError("dataset.json has no 'channel_names'")
        return cls(tuple(channels[k] for k in sorted(channels, key=int)))

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def index(self, name: str) -> int:
        """Channel index of ``name``, accepting any alias and any case."""
        wanted = canonical_name(name).lower()
        for i, own in enumerate(self.names):
            if canonical_name(own).lower() == wanted:
                return i
        raise ValueError(f"unknown modality {name!r}; this dataset has {', '.join(self.names)}")

    # --- subsets -------------------------------------------------------------------------------

    def subsets(self) -> list[tuple[int, ...]]:
        """All 2^M - 1 non-empty subsets as sorted channel-index tuples: singles, pairs, ..., all."""
        channels = range(len(self))
        return [s for k in range(1, len(self) + 1) for s in itertools.combinations(channels, k)]

    def subset_name(self, subset: Iterable[int]) -> str:
        """``(1, 3)`` -> ``'T1ce+FLAIR'`` (dataset order)."""
        indices = sorted(set(subset))
        if not indices:
            raise ValueError("a subset must contain at least one modality")
        return SUBSET_SEPARATOR.join(self.names[i] for i in indices)

    def parse_subset(self, text: str) -> tuple[int, ...]:
        """``'FLAIR+t1c'`` -> ``(1, 3)``. Also accepts ``,`` as separator and ``all``."""
        if text.strip().lower() == "all":
            return tuple(range(len(self)))
        parts = [p for p in text.replace(",", SUBSET_SEPARATOR).split(SUBSET_SEPARATOR) if p.strip()]
        if not parts:
            raise ValueError(f"empty modality subset {text!r}")
        return tuple(sorted({self.index(p) for p in parts}))

    def parse_names(self, text: str) -> tuple[int, ...]:
        """A comma (or ``+``) separated list of names -> channel indices, e.g. for ``--missing``."""
        return self.parse_subset(text)

    def mask(self, subset: Iterable[int]) -> np.ndarray:
        """Boolean availability vector of length M."""
        m = np.zeros(len(self), dtype=bool)
        m[list(subset)] = True
        return m

    def subset_from_mask(self, mask: Sequence[bool]) -> tuple[int, ...]:
        if len(mask) != len(self):
            raise ValueError(f"mask has {len(mask)} entries, the dataset has {len(self)} modalities")
        return tuple(i for i, present in enumerate(mask) if present)


def available_modalities(x: torch.Tensor) -> torch.Tensor:
    """Which channels are present in a batch ``(B, C, *spatial)``: a ``(B, C)`` bool tensor.

    A channel that is exactly 0 everywhere in the patch is missing. A patch where every channel is
    zero (entirely outside the head) counts as all present, so that no sample is ever "empty".
    """
    present = x.detach().flatten(2).ne(0).any(-1)
    nothing = ~present.any(1, keepdim=True)
    return present | nothing
