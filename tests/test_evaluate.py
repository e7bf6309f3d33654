"""Scores on hand-made masks, lung measurements against lung_stats.csv, and inference on real slices,
DICOM, PNG and bad input."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lungseg_utils import (LungsegError, clean_mask, hd95, overlap_scores, paired_comparison,
                           pooled_dice, predict_masks, predict_probabilities, preprocess_slice,
                           read_mask, read_slice, resize_mask, score_slice)


def _square(top, left, size=20, shape=(64, 64)):
    mask = np.zeros(shape, np.uint8)
    mask[top:top + size, left:left + size] = 1
    return mask


def test_overlap_scores_by_hand():
    truth, prediction = _square(10, 10), _square(10, 20)  # 20x20 squares overlapping on 20x10
    scores = overlap_scores(truth, prediction)
    assert scores["dice"] == pytest.approx(0.5)
    assert scores["iou"] == pytest.approx(200 / 600)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    empty = np.zeros_like(truth)
    assert overlap_scores(empty, empty) == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    assert overlap_scores(truth, empty)["dice"] == 0.0 and overlap_scores(truth, empty)["precision"] == 0.0
    assert overlap_scores(empty, prediction)["recall"] == 0.0


def test_hd95_on_shapes_with_known_distance():
    truth = _square(20, 20)
    assert hd95(truth, truth) == 0.0
    # The same square moved 3 pixels right: every boundary distance is 0..3 pixels; the 95th
    # percentile is 3 pixels, i.e. 3 x spacing in mm.
    assert hd95(truth, _square(20, 23), spacing_mm=0.8) == pytest.approx(3 * 0.8)
    # Two single pixels 7 apart: every distance is 7.
    assert hd95(_square(10, 10, size=1), _square(10, 17, size=1), spacing_mm=0.5) == pytest.approx(3.5)
    empty = np.zeros_like(truth)
    assert hd95(empty, empty) == 0.0 and hd95(truth, empty) == float("inf")


def test_pooled_dice_weighs_pixels_not_slices():
    big, small = _square(0, 0, 40), _square(0, 0, 4)
    assert pooled_dice([big, small], [big, np.zeros_like(small)]) == pytest.approx(2 * 1600 / (1616 + 1600))


def test_paired_comparison_finds_a_real_difference_and_no_false_one():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.95, 0.99, 40)
    clear = paired_comparison(a, a - 0.01, seed=0)
    assert clear["mean_difference"] == pytest.approx(0.01) and clear["ci95_low"] > 0 and clear["wilcoxon_p"] < 0.001
    noise = paired_comparison(a, a + rng.normal(0, 0.01, 40), seed=0)
    assert noise["ci95_low"] < 0 < noise["ci95_high"]


def test_post_processing_drops_islands_fills_small_holes_keeps_large_ones():
    mask = _square(5, 5, 30) | _square(5, 50, 10) | _square(50, 50, 2)  # lungs of 900 and 100 px, an island of 4
    mask[10:12, 10:12] = 0  # a vessel: 4 px
    mask[20:30, 20:30] = 0  # a cyst: 100 px
    cleaned = clean_mask(mask, min_component_fraction=0.01, max_hole_fraction=0.01)  # holes up to 40 px
    assert cleaned[50, 50] == 0  # 4 px < 1% of 900 px: dropped
    assert cleaned[5:15, 50:60].all()  # 100 px >= 1% of 900 px: kept, a small third lung piece survives
    assert cleaned[10, 10] == 1 and cleaned[25, 25] == 0  # the vessel is filled, the cyst is not
    assert clean_mask(np.zeros((8, 8))).sum() == 0


def test_holes_are_the_background_that_does_not_reach_the_edge(real_data, real_names):
    """With every island kept and any hole size allowed, clean_mask is SciPy's binary_fill_holes."""
    rng = np.random.default_rng(0)
    masks = [(rng.random((int(rng.integers(8, 60)), int(rng.integers(8, 60)))) < rng.uniform(0.3, 0.8)) for _ in range(50)]
    real = read_mask(real_data / "2d_masks" / real_names[0]).astype(bool)
    real[100:110, 100:110] ^= True  # a hole in a lung, or a speck outside it
    for mask in masks + [real, ~real]:
        np.testing.assert_array_equal(clean_mask(mask, 0.0, 1.0), ndimage.binary_fill_holes(mask))


def test_lung_measurements_reproduce_lung_stats(real_data, real_names):
    from notebook_code import definitions

    lung_measurements = definitions("05_evaluate", "lung_measurements")["lung_measurements"]  # 05's cell
    stats = pd.read_csv(real_data / "lung_stats.csv").set_index("img_id")
    for name in real_names[:10]:
        values = lung_measurements(read_slice(real_data / "2d_images" / name),
                                   read_mask(real_data / "2d_masks" / name), 0.703125)
        row = stats.loc[name]
        assert values["area_mm2"] == pytest.approx(row.lung_area_mm2)
        assert values["mean_hu"] == pytest.approx(row.lung_mean_hu)
        assert values["pd05_hu"] == pytest.approx(row.lung_pd05_hu)
        assert values["pd95_hu"] == pytest.approx(row.lung_pd95_hu)


def test_inference_on_real_slices(trained_unet, real_data, real_arrays):
    model, settings = trained_unet
    names = real_arrays["names_test"][:4]
    slices = [read_slice(real_data / "2d_images" / n) for n in names]
    masks = predict_masks(model, slices, settings)
    assert [m.shape for m in masks] == [(512, 512)] * 4
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks)
    # The probabilities are brought back to 512x512 before thresholding.
    for mask, probability in zip(masks, predict_probabilities(model, slices, settings)):
        np.testing.assert_array_equal(mask, probability >= 0.5)
    # The network saw what it saw in training: at 64 px the masks agree with the predictions on
    # the arrays of 02 on nearly every pixel (only resampling at the boundary differs).
    direct = model.predict(real_arrays["x_test"][:4], verbose=0)[..., 0] >= 0.5
    for mask, low in zip(masks, direct):
        assert np.mean(resize_mask(mask, 64) == low) > 0.98
    # And it segments lungs: Dice against the true masks at native resolution.
    truths = [read_mask(real_data / "2d_masks" / n) for n in names]
    assert np.mean([score_slice(t, m, 0.8385)["dice"] for t, m in zip(truths, masks)]) > 0.85
    # One slice of another size in, one mask of that size out.
    cropped = slices[0][50:450, 20:500]
    assert predict_masks(model, cropped, settings).shape == cropped.shape


def test_inference_settings_come_from_the_model_record(trained_unet, real_data, real_arrays):
    model, settings = trained_unet
    image = read_slice(real_data / "2d_images" / real_arrays["names_test"][0])
    shifted = dict(settings, hu_min=-500, hu_max=900)  # another window: other input, other output
    a = predict_probabilities(model, image, settings)[0]
    b = predict_probabilities(model, image, shifted)[0]
    assert np.abs(a - b).mean() > 0.01
    np.testing.assert_allclose(preprocess_slice(image, 64, -1000, 400), real_arrays["x_test"][0, ..., 0], atol=1e-6)


def test_dicom_with_rescale_slope_and_intercept(tmp_path, real_data, real_names):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    hu = read_slice(real_data / "2d_images" / real_names[0]).astype(np.int32)
    slope, intercept = 0.5, -1024.0
    stored = ((hu - intercept) / slope).astype(np.uint16)  # HU = stored * slope + intercept
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID, dataset.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CT"
    dataset.Rows, dataset.Columns = hu.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
    dataset.PixelData = stored.tobytes()
    dataset.save_as(tmp_path / "slice.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_slice(tmp_path / "slice.dcm"), hu)


def test_slices_with_nan_are_refused_where_they_enter(trained_unet, real_data, real_names, tmp_path):
    """A float TIFF in HU with a NaN patch: refused by the reader and by inference, naming the count."""
    import tifffile

    image = read_slice(real_data / "2d_images" / real_names[0]).astype(np.float32)
    image[:10, :10] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", image)
    with pytest.raises(LungsegError, match="nan.tif: 100 pixels are not finite"):
        read_slice(tmp_path / "nan.tif")
    with pytest.raises(LungsegError, match="slice 0: 100 pixels are not finite"):
        predict_masks(*trained_unet[:1], image, trained_unet[1])


def test_predict_masks_takes_the_documented_forms_and_refuses_others(trained_unet, real_data, real_names):
    model, settings = trained_unet
    image = read_slice(real_data / "2d_images" / real_names[0])
    ragged = [image, image[40:460, 10:500], image[:256, :256]]  # slices of different sizes
    masks = predict_masks(model, ragged, settings)
    assert [m.shape for m in masks] == [s.shape for s in ragged]
    assert len(predict_masks(model, np.stack([image, image]), settings)) == 2  # (N, H, W)
    assert predict_masks(model, image, settings).shape == image.shape  # one slice in, one mask out
    with pytest.raises(LungsegError, match=r"slice 0 has shape \(512, 3\): give 2-D slices in HU with one channel"):
        predict_masks(model, np.repeat(image[..., None], 3, axis=-1), settings)  # an RGB-like (H, W, 3) array


def test_05_refuses_to_score_real_ct_models_on_phantoms(tmp_path):
    """No data and the committed models: phantoms are no test of models that learnt real CT."""
    from notebook_code import run_cells

    output = tmp_path / "out"
    run_cells("01_download", {"DATA_SOURCE": "synthetic", "OUTPUT_DIR": str(output), "SYNTHETIC_COUNT": 12})
    run_cells("02_preprocess", {"OUTPUT_DIR": str(output), "IMG_SIZE": 32})
    with pytest.raises(LungsegError, match="SYNTHETIC phantoms, and unet, resunet in models/ learnt real CT.*Set DATA_DIR"):
        run_cells("05_evaluate", {"OUTPUT_DIR": str(output)})
    assert not (output / "evaluation").exists()
