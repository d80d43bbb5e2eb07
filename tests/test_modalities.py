import numpy as np
import pytest
import torch

from nnunet_missingmod.modalities import Modalities, available_modalities, canonical_name

BRATS = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}}


def test_names_come_from_channel_names_in_key_order():
    m = Modalities.from_dataset_json({"channel_names": {"1": "T2", "0": "T1"}})
    assert m.names == ("T1", "T2")


@pytest.mark.parametrize("num", [2, 3, 4, 5])
def test_subsets_are_all_non_empty_ones_in_paper_order(num):
    m = Modalities(tuple(f"M{i}" for i in range(num)))
    subsets = m.subsets()
    assert len(subsets) == 2 ** num - 1 == len(set(subsets))
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)  # singles, pairs, ..., all
    assert subsets[-1] == tuple(range(num))


def test_subset_names_round_trip_in_dataset_order():
    m = Modalities.from_dataset_json(BRATS)
    assert m.subset_name((3, 1)) == "T1ce+FLAIR"
    assert m.parse_subset("FLAIR+T1ce") == (1, 3)
    assert m.parse_subset("all") == (0, 1, 2, 3)
    for s in m.subsets():
        assert m.parse_subset(m.subset_name(s)) == s
    assert [m.subset_name(s) for s in m.subsets()[:4]] == ["T1", "T1ce", "T2", "FLAIR"]


@pytest.mark.parametrize("alias, canonical", [
    ("t1n", "T1"), ("T1w", "T1"), ("t1c", "T1ce"), ("T1C", "T1ce"), ("t1gd", "T1ce"),
    ("t2w", "T2"), ("T2W", "T2"), ("t2f", "FLAIR"), ("Flair", "FLAIR"), ("T2F", "FLAIR")])
def test_aliases(alias, canonical):
    assert canonical_name(alias) == canonical


def test_aliases_resolve_against_other_datasets_spellings():
    nnunet_brats21 = Modalities.from_dataset_json({"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}})
    brats24 = Modalities.from_dataset_json({"channel_names": {"0": "T1", "1": "T1C", "2": "T2W", "3": "T2F"}})
    assert nnunet_brats21.parse_names("t1ce,FLAIR") == brats24.parse_names("T1ce,FLAIR") == (1, 3)
    assert brats24.subset_name(brats24.parse_subset("flair+t1c")) == "T1C+T2F"


def test_unknown_and_duplicate_names_are_refused():
    m = Modalities.from_dataset_json(BRATS)
    with pytest.raises(ValueError, match="unknown modality 'PD'.*T1, T1ce, T2, FLAIR"):
        m.parse_subset("T1+PD")
    with pytest.raises(ValueError, match="empty"):
        m.parse_subset("+")
    with pytest.raises(ValueError, match="twice"):
        Modalities(("T1", "t1n"))


def test_mask_and_back():
    m = Modalities.from_dataset_json(BRATS)
    assert m.mask((1, 3)).tolist() == [False, True, False, True]
    assert m.subset_from_mask(np.array([False, True, False, True])) == (1, 3)


def test_available_modalities_from_zero_channels():
    x = torch.randn(3, 4, 5, 6, 7)
    x[0, 1] = 0
    x[1, [0, 2, 3]] = 0
    x[2] = 0  # outside the head: counts as all present
    assert available_modalities(x).tolist() == [
        [True, False, True, True], [False, True, False, False], [True, True, True, True]]
