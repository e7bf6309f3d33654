"""Reading, pairing and verifying slices: real data, and every kind of bad input."""

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile

from lungseg.data import check_lung_stats, find_pairs, pixel_area_mm2, summarise, verify_pairs
from lungseg_utils import LungsegError, check_hu, read_mask, read_slice


def test_read_slice_keeps_hounsfield_units(real_data, real_names):
    path = real_data / "2d_images" / real_names[0]
    image = read_slice(path)
    assert image.dtype == np.int16 and image.shape == (512, 512)
    assert image.min() < -500 < 0 < image.max()
    np.testing.assert_array_equal(image, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    # What the project guards against: a plain cv2.imread gives 8-bit and loses the HU.
    assert cv2.imread(str(path)).dtype == np.uint8


def test_all_real_pairs_verify(real_data, real_names):
    pairs = find_pairs(real_data)
    assert len(pairs) == len(real_names) >= 217  # 217 shared, 267 in the full Kaggle set
    facts = verify_pairs(pairs)
    assert set(facts.dtype) == {"int16"} and set(facts.height) == {512} and set(facts.width) == {512}
    assert facts.lung_fraction.between(0.07, 0.6).all()
    compared = check_lung_stats(real_data / "lung_stats.csv", facts)
    assert len(compared) == len(pairs)
    assert summarise(facts)["pairs"].item() == len(pairs)
    assert pixel_area_mm2(real_data / "lung_stats.csv") == pytest.approx(0.703125)


def test_masks_read_as_binary(real_data, real_names):
    mask = read_mask(real_data / "2d_masks" / real_names[0])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}


def test_train_test_layout_of_the_reference_project(tmp_path, real_data, real_names):
    for part, names in (("Train", real_names[:3]), ("Test", real_names[3:5])):
        for kind, source in (("Images", "2d_images"), ("Masks", "2d_masks")):
            (tmp_path / part / kind).mkdir(parents=True)
            for name in names:
                shutil.copy(real_data / source / name, tmp_path / part / kind / name)
    pairs = find_pairs(tmp_path)
    assert list(pairs.name) == sorted(real_names[:3]) + sorted(real_names[3:5])
    assert len(verify_pairs(pairs)) == 5


def test_layout_one_folder_down(tmp_path, small_kaggle_folder):
    nested = tmp_path / "outer"
    nested.mkdir()
    shutil.move(small_kaggle_folder, nested / "finding-lungs")
    assert len(find_pairs(nested)) == 6


def test_image_without_mask_is_named(small_kaggle_folder):
    orphan = sorted((small_kaggle_folder / "2d_masks").iterdir())[0]
    orphan.unlink()
    with pytest.raises(LungsegError, match=orphan.name) as error:
        find_pairs(small_kaggle_folder)
    assert "without a file of the same name" in str(error.value)


def test_mask_without_image_is_named(small_kaggle_folder):
    orphan = sorted((small_kaggle_folder / "2d_images").iterdir())[-1]
    orphan.unlink()
    with pytest.raises(LungsegError, match=f"mask.*{orphan.name}"):
        find_pairs(small_kaggle_folder)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(LungsegError, match="does not exist"):
        find_pairs(tmp_path / "nowhere")
    with pytest.raises(LungsegError, match="No data found"):
        find_pairs(tmp_path)
    (tmp_path / "2d_images").mkdir()
    (tmp_path / "2d_masks").mkdir()
    with pytest.raises(LungsegError, match="empty"):
        find_pairs(tmp_path)


def test_mismatched_shape_is_refused(small_kaggle_folder):
    mask_path = sorted((small_kaggle_folder / "2d_masks").iterdir())[0]
    tifffile.imwrite(mask_path, np.zeros((256, 256), np.uint8))
    with pytest.raises(LungsegError, match=f"{mask_path.name}.*shape"):
        verify_pairs(find_pairs(small_kaggle_folder))


def test_non_binary_mask_is_refused(small_kaggle_folder):
    mask_path = sorted((small_kaggle_folder / "2d_masks").iterdir())[1]
    mask = tifffile.imread(mask_path)
    mask[:10, :10] = 128
    tifffile.imwrite(mask_path, mask)
    with pytest.raises(LungsegError, match=f"{mask_path.name}.*not binary"):
        verify_pairs(find_pairs(small_kaggle_folder))


def test_corrupt_tiff_is_named(small_kaggle_folder):
    image_path = sorted((small_kaggle_folder / "2d_images").iterdir())[2]
    image_path.write_bytes(image_path.read_bytes()[:300])  # a truncated file
    with pytest.raises(LungsegError, match=f"{image_path.name}.*unreadable or corrupt"):
        verify_pairs(find_pairs(small_kaggle_folder))


def test_eight_bit_image_is_not_hu(small_kaggle_folder):
    image_path = sorted((small_kaggle_folder / "2d_images").iterdir())[0]
    cv2.imwrite(str(image_path), cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE))  # an 8-bit export
    with pytest.raises(LungsegError, match="8-bit"):
        verify_pairs(find_pairs(small_kaggle_folder))
    with pytest.raises(LungsegError, match="do not look like a CT slice"):
        check_hu(np.linspace(0, 1, 100).reshape(10, 10), "normalised.tif")


def test_lung_stats_that_belong_to_other_masks(small_kaggle_folder):
    facts = verify_pairs(find_pairs(small_kaggle_folder))
    stats = pd.read_csv(small_kaggle_folder / "lung_stats.csv")
    stats.loc[0, "lung_area_px"] += 5
    stats.to_csv(small_kaggle_folder / "lung_stats.csv", index=False)
    with pytest.raises(LungsegError, match=stats.img_id[0]):
        check_lung_stats(small_kaggle_folder / "lung_stats.csv", facts)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "scan.jpg"
    path.write_bytes(b"not really")
    with pytest.raises(LungsegError, match="unsupported file type"):
        read_slice(path)
