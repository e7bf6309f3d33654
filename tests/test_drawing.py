"""02's changes drawn afresh for every batch (SliceDrawer, called by 03's make_dataset): gas pockets
only in soft tissue away from the lung, lesions only inside the mask, a coarser grid that keeps a
slice's brightness and loses its detail; new draws in every batch and every epoch, the same ones
again from the same seed, and the saved arrays and the masks never changed. On real Kaggle slices."""

import numpy as np
import pytest
from scipy import ndimage

import lungseg_utils as lu
from lungseg.checks import check_augmentation
from lungseg_utils import LungsegError, SliceDrawer, coarsen, make_dataset, make_drawer


def _arrays(real_data, names, size=128):
    images = np.stack([lu.preprocess_slice(lu.read_slice(real_data / "2d_images" / n), size, -1000, 400) for n in names])
    masks = np.stack([lu.resize_mask(lu.read_mask(real_data / "2d_masks" / n), size) for n in names])
    return images[..., None].astype(np.float32), masks[..., None].astype(np.uint8)


def test_gas_pockets_in_a_batch_lie_in_soft_tissue_away_from_the_lung(real_data, real_names):
    images, masks = _arrays(real_data, real_names[:8])
    drawn = SliceDrawer(gas_pockets=1.0, seed=3)(images, masks)
    for before, after, mask in zip(images[..., 0], drawn[..., 0], masks[..., 0]):
        changed = np.abs(after - before) > 0.05
        assert changed.sum() > 5  # every slice got its pockets (share 1)
        assert not (changed & ndimage.binary_dilation(mask.astype(bool), iterations=2)).any()  # never at the lung
        assert not (changed & ndimage.binary_dilation(before * 1400 - 1000 > 300)).any()  # never in bone
        assert np.median(before[changed]) * 1400 - 1000 > -300  # where there was tissue


def test_lesions_in_a_batch_change_only_the_lung(real_data, real_names):
    images, masks = _arrays(real_data, real_names[8:14])
    drawn = SliceDrawer(lesions=1.0, seed=1)(images, masks)
    changed = np.abs(drawn - images) > 1e-6
    assert changed.any(axis=(1, 2, 3)).all()
    assert not (changed & (masks == 0)).any()  # nothing outside the mask


def test_a_coarser_grid_keeps_the_slice_and_loses_its_detail(real_data, real_names):
    image = _arrays(real_data, real_names[:1], size=256)[0][0, ..., 0]
    rng = np.random.default_rng(0)
    detail = lambda picture: np.abs(np.diff(picture, axis=1)).mean()  # noqa: E731  mean step between neighbours
    previous = detail(image)
    for factor in (2, 4, 8):
        coarse = coarsen(image, rng, factor=(factor, factor))
        assert coarse.shape == image.shape and 0 <= coarse.min() and coarse.max() <= 1
        assert abs(coarse.mean() - image.mean()) < 0.01  # the same brightness
        assert detail(coarse) < previous  # less detail at every step
        previous = detail(coarse)


def test_a_drawer_draws_anew_every_call_and_repeats_with_its_seed(real_data, real_names):
    images, masks = _arrays(real_data, real_names[:4])
    kept = images.copy()
    drawer = SliceDrawer(0.5, 0.0, 0.3, seed=7)
    first, second = drawer(images, masks), drawer(images, masks)
    assert not np.array_equal(first, second)
    again = SliceDrawer(0.5, 0.0, 0.3, seed=7)
    np.testing.assert_array_equal(again(images, masks), first)
    np.testing.assert_array_equal(images, kept)  # the given arrays are untouched
    assert make_drawer({"gas_pockets": 0.0, "lesions": 0.0, "hu_min": -1000, "hu_max": 400}) is None  # nothing to draw


def test_the_pipeline_gives_every_slice_a_new_change_each_epoch_and_leaves_the_arrays(real_data, real_names):
    images, masks = _arrays(real_data, real_names[:6])
    kept_images, kept_masks = images.copy(), masks.copy()
    data = make_dataset(images, masks, 3, training=True, seed=0, drawer=SliceDrawer(gas_pockets=1.0, seed=0))
    epochs = []
    for _ in range(2):
        seen = {}
        for xs, ys in data:
            for x, y in zip(xs.numpy(), ys.numpy()):
                index = next(i for i in range(6) if np.array_equal(masks[i], y))  # masks pass unchanged
                assert not np.array_equal(x, images[index])  # every slice changed (share 1)
                seen[index] = x
        assert sorted(seen) == list(range(6))
        epochs.append(seen)
    assert all(not np.array_equal(epochs[0][i], epochs[1][i]) for i in range(6))  # a new draw each epoch
    np.testing.assert_array_equal(images, kept_images)
    np.testing.assert_array_equal(masks, kept_masks)
    validation = np.concatenate([x.numpy() for x, _ in make_dataset(images, masks, 3, drawer=SliceDrawer(resolution=1.0))])
    np.testing.assert_array_equal(validation, images)  # validation data is never drawn on


@pytest.mark.parametrize("value", [1.5, -0.1, "0.3"])
def test_a_resolution_share_that_cannot_work_is_refused(value):
    with pytest.raises(LungsegError, match="RESOLUTION"):
        check_augmentation({"resolution": value})
