import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from nnunet_missingmod.masking import MASK_KEY, UNMASKED_IMAGE_KEY, ModalityMaskingTransform, all_subsets
from nnunet_missingmod.modalities import available_modalities


def _sample(transform, channels=4, shape=(6, 7, 8)):
    image = torch.randn(channels, *shape) + 5  # no accidental zeros
    return image.clone(), transform(image=image, segmentation=torch.zeros(1, *shape, dtype=torch.int16))


@pytest.mark.parametrize("mode", ["uniform", "independent"])
def test_masked_channels_are_exactly_zero_and_mask_matches_detection(mode):
    np.random.seed(0)
    t = ModalityMaskingTransform(4, mode=mode, drop_probability=0.7)
    for _ in range(200):
        original, out = _sample(t)
        mask = out[MASK_KEY][0]
        assert mask.any(), "never all missing"
        assert torch.all(out["image"][~mask] == 0)
        assert torch.equal(out["image"][mask], original[mask])
        assert torch.equal(available_modalities(out["image"][None])[0], mask)


def test_uniform_mode_draws_every_subset_with_equal_probability():
    np.random.seed(1)
    t = ModalityMaskingTransform(4)
    subsets = all_subsets(4)
    counts = dict.fromkeys(subsets, 0)
    n = 6000
    for _ in range(n):
        mask = t.get_parameters(image=None)["masks"][0]
        counts[tuple(np.flatnonzero(mask.numpy()))] += 1
    assert set(counts) == set(subsets) and min(counts.values()) > 0
    assert chisquare(list(counts.values())).pvalue > 1e-3


def test_independent_mode_is_the_conditional_bernoulli_distribution():
    np.random.seed(2)
    p = 0.5
    t = ModalityMaskingTransform(3, mode="independent", drop_probability=p)
    n = 6000
    masks = torch.stack([t.get_parameters(image=None)["masks"][0] for _ in range(n)])
    assert masks.any(1).all()
    # P(kept) conditioned on at least one kept: (1 - p) / (1 - p^3)
    expected = (1 - p) / (1 - p ** 3)
    assert np.allclose(masks.float().mean(0).numpy(), expected, atol=0.03)


def test_allowed_subsets_restrict_the_draw():
    np.random.seed(3)
    t = ModalityMaskingTransform(4, subsets=[(0,), (1, 3)])
    drawn = {tuple(np.flatnonzero(t.get_parameters(image=None)["masks"][0].numpy())) for _ in range(100)}
    assert drawn == {(0,), (1, 3)}


@pytest.mark.parametrize("mode", ["uniform", "independent"])
def test_views_are_pairwise_different_and_unmasked_image_is_kept(mode):
    np.random.seed(4)
    t = ModalityMaskingTransform(4, mode=mode, num_views=2, keep_unmasked=True)
    for _ in range(100):
        original, out = _sample(t)
        masks = out[MASK_KEY]
        assert masks.shape == (2, 4) and not torch.equal(masks[0], masks[1])
        assert torch.equal(out[UNMASKED_IMAGE_KEY], original)
        assert torch.equal(available_modalities(out["image"][None])[0], masks[0])


@pytest.mark.parametrize("mode", ["uniform", "independent"])
def test_deterministic_under_a_seed(mode):
    def draws():
        np.random.seed(123)
        t = ModalityMaskingTransform(4, mode=mode)
        return [t.get_parameters(image=None)["masks"] for _ in range(20)]
    first, second = draws(), draws()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert len({tuple(m.flatten().tolist()) for m in first}) > 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least two"):
        ModalityMaskingTransform(1)
    with pytest.raises(ValueError, match="mode"):
        ModalityMaskingTransform(4, mode="sometimes")
    with pytest.raises(ValueError, match="outside"):
        ModalityMaskingTransform(4, subsets=[(4,)])
    with pytest.raises(ValueError, match="num_views"):
        ModalityMaskingTransform(2, num_views=4)
    with pytest.raises(RuntimeError, match="expects 4 image channels"):
        ModalityMaskingTransform(4)(image=torch.ones(3, 2, 2, 2))
