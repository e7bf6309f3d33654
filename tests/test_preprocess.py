"""Windowing, resizing, the split, and augmentation."""

import numpy as np

from conftest import split_sizes
import pytest

from lungseg_utils import (LungsegError, augment_pair, make_augmenter, make_dataset, preprocess_slice,
                           read_mask, read_slice, resize_mask, window_hu)
from lungseg.checks import check_img_size
from notebook_code import definitions

split_slices = definitions("02_preprocess", "split_slices")["split_slices"]  # 02's cell, as a learner reads it


def test_window_maps_the_hu_range_to_unit_interval():
    hu = np.array([[-3000, -1000, -300], [400, 2000, 50]], np.int16)
    np.testing.assert_allclose(window_hu(hu, -1000, 400), [[0, 0, 0.5], [1, 1, 1050 / 1400]], atol=1e-6)
    with pytest.raises(LungsegError, match="HU_MAX must be greater"):
        window_hu(hu, 400, -1000)


def test_preprocessed_real_slice(real_data, real_names):
    image = preprocess_slice(read_slice(real_data / "2d_images" / real_names[0]), 256, -1000, 400)
    assert image.shape == (256, 256) and image.dtype == np.float32
    assert 0.0 <= image.min() < 0.1 and 0.5 < image.max() <= 1.0


@pytest.mark.parametrize("size", [64, 128, 256, 384])
def test_resized_masks_stay_binary_and_keep_their_area(real_data, real_names, size):
    for name in real_names[:5]:
        mask = read_mask(real_data / "2d_masks" / name)
        small = resize_mask(mask, size)
        assert small.shape == (size, size) and small.dtype == np.uint8
        assert set(np.unique(small)) <= {0, 1}
        assert small.mean() == pytest.approx(mask.mean(), abs=0.01)


def test_split_is_deterministic_and_complete(real_names):
    first, again = split_slices(real_names, seed=0), split_slices(list(reversed(real_names)), seed=0)
    assert first.equals(again)  # depends on the names and the seed only, not their order
    assert first.split.value_counts().to_dict() == split_sizes(len(real_names))
    assert sorted(first.name) == sorted(real_names)
    other = split_slices(real_names, seed=1)
    assert not first.split.equals(other.split)


def test_split_that_leaves_a_part_empty():
    with pytest.raises(LungsegError, match="every part needs at least one"):
        split_slices([f"s{i}.tif" for i in range(5)], (0.9, 0.05, 0.05))
    with pytest.raises(LungsegError, match="summing to 1"):
        split_slices(["a", "b", "c"], (0.5, 0.5, 0.5))


@pytest.mark.parametrize("size", [0, 50, 100, 250, -16, 25.6])
def test_image_sizes_the_models_cannot_use(size):
    with pytest.raises(LungsegError, match="multiple of 16"):
        check_img_size(size)


def test_augmentation_moves_image_and_mask_together(real_data, real_names):
    mask = resize_mask(read_mask(real_data / "2d_masks" / real_names[3]), 128)[None, ..., None]
    image = mask.astype(np.float32)  # an image equal to its mask: any misalignment would show
    new_images, new_masks = augment_pair(np.repeat(image, 6, axis=0), np.repeat(mask, 6, axis=0),
                                         make_augmenter(rotation_degrees=15.0, flip_left_right=True, seed=0))
    new_images, new_masks = new_images.numpy(), new_masks.numpy()
    assert new_masks.dtype == np.uint8 and set(np.unique(new_masks)) <= {0, 1}
    assert len({m.tobytes() for m in new_masks}) == 6  # six different transforms
    for new_image, new_mask in zip(new_images, new_masks):
        assert np.mean((new_image >= 0.5) != new_mask) == 0.0
        assert new_mask.mean() == pytest.approx(mask.mean(), abs=0.02)


def test_augmentation_is_random_but_reproducible(real_data, real_names):
    image = preprocess_slice(read_slice(real_data / "2d_images" / real_names[0]), 64, -1000, 400)[None, ..., None]
    mask = resize_mask(read_mask(real_data / "2d_masks" / real_names[0]), 64)[None, ..., None]
    images, masks = np.repeat(image, 4, axis=0), np.repeat(mask, 4, axis=0)
    a = augment_pair(images, masks, make_augmenter(seed=3))[0].numpy()
    b = augment_pair(images, masks, make_augmenter(seed=3))[0].numpy()
    c = augment_pair(images, masks, make_augmenter(seed=4))[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert make_augmenter(rotation_degrees=0.0, flip_left_right=False) is None


def test_left_right_flip_mirrors_image_and_mask(real_data, real_names):
    image = preprocess_slice(read_slice(real_data / "2d_images" / real_names[0]), 64, -1000, 400)[None, ..., None]
    mask = resize_mask(read_mask(real_data / "2d_masks" / real_names[0]), 64)[None, ..., None]
    images, masks = augment_pair(np.repeat(image, 16, axis=0), np.repeat(mask, 16, axis=0),
                                 make_augmenter(rotation_degrees=0.0, flip_left_right=True, seed=0))
    mirrored = [np.array_equal(x, image[0, :, ::-1]) and np.array_equal(y, mask[0, :, ::-1])
                for x, y in zip(images.numpy(), masks.numpy())]
    unchanged = [np.array_equal(x, image[0]) and np.array_equal(y, mask[0]) for x, y in zip(images.numpy(), masks.numpy())]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)


def test_intensity_augmentation_changes_the_image_alone_by_the_hu_asked(real_data, real_names):
    image = preprocess_slice(read_slice(real_data / "2d_images" / real_names[0]), 64, -1000, 400)[None, ..., None]
    mask = resize_mask(read_mask(real_data / "2d_masks" / real_names[0]), 64)[None, ..., None]
    images, masks = np.repeat(image, 16, axis=0), np.repeat(mask, 16, axis=0)
    soft = (image > 0.05) & (image < 0.95)  # pixels the window does not clip, where a shift shows in full
    shifted, shifted_masks = augment_pair(images, masks, make_augmenter(0.0, False, hu_shift=70.0, seed=0))
    shifts = [float(np.median(s[soft[0]] - image[0][soft[0]])) * 1400 for s in shifted.numpy()]
    assert max(abs(x) for x in shifts) <= 70.0 + 1e-3 and np.std(shifts) > 10  # up to ±70 HU, different per slice
    np.testing.assert_array_equal(shifted_masks.numpy(), masks)
    noisy, noisy_masks = augment_pair(images, masks, make_augmenter(0.0, False, noise_hu=28.0, seed=0))
    assert np.std((noisy.numpy() - images)[:, soft[0]]) * 1400 == pytest.approx(28.0, rel=0.1)
    np.testing.assert_array_equal(noisy_masks.numpy(), masks)
    contrast, _ = augment_pair(images, masks, make_augmenter(0.0, False, hu_contrast=0.2, seed=0))
    assert 0.0 <= contrast.numpy().min() and contrast.numpy().max() <= 1.0  # clipped to the window, as windowing does
    assert not np.array_equal(contrast.numpy()[0], contrast.numpy()[1])
    wide, _ = augment_pair(images, masks, make_augmenter(0.0, False, hu_shift=70.0, hu_window=(-1400, 1400), seed=0))
    assert np.abs(wide.numpy() - images)[:, soft[0]].max() * 2800 <= 70.0 + 1e-3  # HU turned into the window's units


def _small_arrays(real_data, names, size=32):
    images = np.stack([preprocess_slice(read_slice(real_data / "2d_images" / n), size, -1000, 400) for n in names])
    masks = np.stack([resize_mask(read_mask(real_data / "2d_masks" / n), size) for n in names])
    return images[..., None], masks[..., None]


def test_training_pipeline_without_augmentation_yields_the_slices_unchanged(real_data, real_names):
    images, masks = _small_arrays(real_data, real_names[:6])
    seen = [(x.numpy(), y.numpy()) for xs, ys in make_dataset(images, masks, 4, training=True,
                                                               augmenter=make_augmenter(0.0, False, False))
            for x, y in zip(xs, ys)]
    assert len(seen) == 6
    for x, y in seen:  # every pair is one of the inputs, image and mask still together
        index = next(i for i in range(6) if np.array_equal(images[i], x))
        np.testing.assert_array_equal(masks[index], y)


def test_training_pipeline_with_augmentation_changes_the_slices(real_data, real_names):
    images, masks = _small_arrays(real_data, real_names[:6])
    augmenter = make_augmenter(rotation_degrees=10.0, flip_left_right=True, seed=0)
    seen = [x.numpy() for xs, _ in make_dataset(images, masks, 6, training=True, augmenter=augmenter) for x in xs]
    assert sum(any(np.array_equal(image, x) for image in images) for x in seen) < 6
    # validation data is never augmented, even when an augmenter is given
    val = [x.numpy() for xs, _ in make_dataset(images, masks, 6, augmenter=augmenter) for x in xs]
    np.testing.assert_array_equal(np.stack(val), images)
