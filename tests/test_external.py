"""Lungs on any chest CT: the Kaggle slices' HU calibration, the intensity augmentation, the 3D step
that keeps only what can be lung, and the external benchmark's arithmetic. On real data: the
Kaggle slices, and the CT volumes from other collections in ../shared/data/external-ct (which
measure generalisation only; nothing here tunes anything to them)."""

import importlib.util
import json
import subprocess

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
import tensorflow as tf

import lungseg_utils as lu
from lungseg import scans
from lungseg.data import dataset_calibration
from lungseg.checks import check_augmentation
from lungseg.synthetic import make_phantom
from lungseg_utils import LungsegError

from conftest import REPO_ROOT
from notebook_code import definitions

_01 = definitions("01_download", "tissue_peaks", "fit_hu_calibration")  # 01's cells, as a learner reads them
tissue_peaks, fit_hu_calibration = _01["tissue_peaks"], _01["fit_hu_calibration"]
add_gas_pockets = definitions("02_preprocess", "add_gas_pockets")["add_gas_pockets"]

EXTERNAL = REPO_ROOT.parent / "shared" / "data" / "external-ct"
TOTALSEG, CIP = EXTERNAL / "totalsegmentator-examples", EXTERNAL / "cip-copdgene-64"
COMMITTED = REPO_ROOT / "models" / "resunet.keras"


def _external():
    if not EXTERNAL.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")


def _benchmark():
    spec = importlib.util.spec_from_file_location("external", REPO_ROOT / "benchmarks" / "external.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- calibration
def test_the_kaggle_slices_are_stored_at_about_0_8_times_hu(real_data, real_names):
    peaks = tissue_peaks(lu.read_slice(real_data / "2d_images" / n) for n in real_names[::4])
    assert -830 < peaks["outside air"] < -770 and -95 < peaks["fat"] < -65 and 15 < peaks["soft tissue"] < 45
    calibration = fit_hu_calibration(peaks)
    assert 1.2 < calibration["scale"] < 1.3 and abs(calibration["offset"]) < 20
    calibrated = [lu.to_standard_hu(lu.read_slice(real_data / "2d_images" / n), calibration) for n in real_names[::8]]
    again = fit_hu_calibration(tissue_peaks(calibrated))  # calibrated slices need no more calibration
    assert again["scale"] == pytest.approx(1.0, abs=0.03) and abs(again["offset"]) < 10


def test_standard_hu_data_are_left_as_they_are():
    rng = np.random.default_rng(1)
    calibration = fit_hu_calibration(tissue_peaks(make_phantom(rng)[0] for _ in range(6)))  # phantoms: standard HU
    assert calibration["scale"] == pytest.approx(1.0, abs=0.02) and abs(calibration["offset"]) < 5


def test_no_calibration_without_anchors():
    flat = [np.full((128, 128), 40, np.int16)]  # no air, no fat: nothing to fit
    calibration = fit_hu_calibration(tissue_peaks(flat))
    assert (calibration["scale"], calibration["offset"]) == (1.0, 0.0) and "left as they are" in calibration["note"]


def test_outputs_of_an_older_01_are_refused_with_the_fix():
    with pytest.raises(LungsegError, match="Run 01_download again"):
        dataset_calibration({"source": "folder", "synthetic": False})
    assert dataset_calibration({"hu_calibration": {"scale": 1.25, "offset": 1.0}})["scale"] == 1.25


# --------------------------------------------------------------------------- intensity augmentation
def test_hu_scale_keeps_water_scales_air_and_leaves_the_mask():
    width = 1400.0
    water, air = 1000 / width, 0.15  # windowed (-1000, 400): water 0 HU, and air at -790 HU
    images = np.full((16, 32, 32, 1), water, np.float32)
    images[:, :16] = air
    masks = np.zeros((16, 32, 32, 1), np.uint8)
    masks[:, 20:] = 1
    augmenter = lu.make_augmenter(rotation_degrees=0, flip_left_right=False, hu_scale=0.2, seed=3)
    new_images, new_masks = lu.augment_pair(tf.constant(images), tf.constant(masks), augmenter)
    new_images = new_images.numpy()
    np.testing.assert_allclose(new_images[:, 16:], water, atol=1e-6)  # water is the pivot
    air_hu = new_images[:, 0, 0, 0] * width - 1000
    factors = air_hu / (air * width - 1000)
    assert factors.min() >= 0.8 - 1e-4 and factors.max() <= 1.2 + 1e-4 and factors.std() > 0.05  # one factor per slice
    np.testing.assert_array_equal(new_masks.numpy(), masks)


def test_the_default_intensity_augmentation_runs_in_tf_data_and_keeps_masks_binary(real_data, real_names):
    image = lu.preprocess_slice(lu.read_slice(real_data / "2d_images" / real_names[0]), 64, -1000, 400)
    mask = lu.resize_mask(lu.read_mask(real_data / "2d_masks" / real_names[0]), 64)
    augmenter = lu.make_augmenter(rotation_degrees=10.0, flip_left_right=True, hu_scale=0.15, hu_shift=50.0,
                                  noise_hu=20.0, blur_sigma=1.0, seed=0)
    data = tf.data.Dataset.from_tensor_slices((np.repeat(image[None, ..., None], 8, 0),
                                               np.repeat(mask[None, ..., None], 8, 0))).batch(8)
    x, y = next(iter(data.map(lambda a, b: lu.augment_pair(a, b, augmenter))))
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    assert set(np.unique(y.numpy())) <= {0, 1} and not np.allclose(x.numpy()[0], x.numpy()[1])


def test_gas_pockets_go_into_soft_tissue_away_from_the_lungs_and_leave_the_mask(real_data, real_names):
    image = lu.preprocess_slice(lu.read_slice(real_data / "2d_images" / real_names[3]), 256, -1000, 400)
    mask = lu.resize_mask(lu.read_mask(real_data / "2d_masks" / real_names[3]), 256)
    with_gas = add_gas_pockets(image, mask, np.random.default_rng(0), count=(3, 3))
    changed = np.abs(with_gas - image) > 0.05
    assert changed.sum() > 30 and 0 <= with_gas.min() and with_gas.max() <= 1
    assert not (changed & mask.astype(bool)).any()  # never on the lung
    assert np.median(with_gas[changed]) * 1400 - 1000 < -850  # gas
    assert np.median(image[changed]) * 1400 - 1000 > -300  # where there was tissue
    np.testing.assert_array_equal(add_gas_pockets(image, mask, np.random.default_rng(0), count=(3, 3)), with_gas)


def test_gas_pockets_never_go_into_bone(real_data, real_names):
    rng, pockets = np.random.default_rng(1), 0
    for name in real_names[:12]:
        image = lu.preprocess_slice(lu.read_slice(real_data / "2d_images" / name), 256, -1000, 400)
        mask = lu.resize_mask(lu.read_mask(real_data / "2d_masks" / name), 256)
        changed = np.abs(add_gas_pockets(image, mask, rng) - image) > 0.05
        bone = ndimage.binary_dilation(image * 1400 - 1000 > 300)  # bone, and the blur of its edge
        assert not (changed & bone).any(), name
        pockets += ndimage.label(changed)[1]
    assert pockets >= 12  # every slice got at least one: a pocket with no room shrinks rather than vanishes


@pytest.mark.parametrize("key, value", [("hu_scale", 1.5), ("blur_sigma", 2.0), ("noise_hu", -1.0), ("hu_shift", "50"),
                                        ("gas_pockets", 1.5)])
def test_augmentation_settings_that_cannot_work_are_refused(key, value):
    with pytest.raises(LungsegError, match=key.upper()):
        check_augmentation({key: value})


# --------------------------------------------------------------------------- the 3D step
@pytest.fixture(scope="module")
def cip_scan():
    _external()
    return scans.find_scans(CIP / "ct-64Dicom")[0][1]()


def _reference_in_model_axes(scan):
    """CIP's reference lung mask on the scan's grid, in the model's axes (what a perfect model gives)."""
    benchmark = _benchmark()
    reference, affine = benchmark.read_reference(CIP / "wholeLung-64.nrrd")
    grid = scans.from_model_axes(np.zeros(scan.hu.shape, np.uint8), scan.orientation)
    on_grid = benchmark.onto_grid(reference, affine, grid.shape, scan.affine)
    import nibabel as nib

    back = nib.orientations.ornt_transform(scan.orientation, nib.orientations.axcodes2ornt(scans.MODEL_AXES))
    return nib.orientations.apply_orientation(on_grid, back).transpose(2, 1, 0).astype(np.uint8)


def test_the_3d_step_removes_gas_below_and_air_beside_real_lungs_and_keeps_both_lungs(cip_scan):
    scan = cip_scan
    lungs = _reference_in_model_axes(scan)
    assert lungs.sum() > 10_000
    with_lung = np.flatnonzero(lungs.any(axis=(1, 2)))
    below = with_lung[0] - 3  # a slice under the lungs: abdomen
    hu = scan.hu.copy()
    zz, yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    pocket = ((zz - below) / 2.5) ** 2 + ((yy - 28) / 5) ** 2 + ((xx - 40) / 5) ** 2 <= 1  # stomach gas
    assert (hu[pocket] > -200).mean() > 0.9  # it lies in soft tissue
    hu[pocket] = -1000 + np.random.default_rng(0).normal(0, 15, pocket.sum())
    outside = np.zeros_like(pocket)
    outside[with_lung[5]:with_lung[5] + 6, 1:4, 1:6] = True  # air beside the body, inside the field of view
    assert (hu[outside] < -900).all()
    scan = scans.Scan(scan.name, "volume", hu, scan.pixel_spacing_mm, scan.slice_thickness_mm, scan.affine,
                   scan.orientation)
    kept = scans.keep_lungs(lungs | pocket | outside, scan)
    assert not kept[pocket].any() and not kept[outside].any()
    np.testing.assert_array_equal(kept, lungs)  # every lung voxel stays
    labels = scans.split_lungs(kept)
    assert (labels == 1).sum() > 0.3 * kept.sum() and (labels == 2).sum() > 0.3 * kept.sum()


def test_the_3d_step_drops_lung_like_specks_and_keeps_large_parts(cip_scan):
    lungs = _reference_in_model_axes(cip_scan)
    z = np.flatnonzero(lungs.any(axis=(1, 2)))[30]
    separate = lungs.copy()
    separate[z] = 0  # the lungs cut in two at one slice: both parts are large, both stay
    np.testing.assert_array_equal(scans.keep_lungs(separate, cip_scan), separate)
    hu = cip_scan.hu.copy()
    speck = np.zeros_like(lungs)
    body = np.argwhere((hu[z] > -200) & ~lungs[z].astype(bool))
    row, column = body[len(body) // 2]
    speck[z, row:row + 2, column:column + 2] = 1  # a lung-like speck in soft tissue
    hu[speck.astype(bool)] = -850
    scan = scans.Scan("speck", "volume", hu, cip_scan.pixel_spacing_mm, cip_scan.slice_thickness_mm)
    np.testing.assert_array_equal(scans.keep_lungs(lungs | speck, scan), lungs)
    assert scans.keep_lungs(np.zeros_like(lungs), scan).sum() == 0


@pytest.mark.parametrize("columns, cuts_lungs", [((2, 62), False), ((8, 56), True)])
def test_a_body_wider_than_the_field_of_view_keeps_its_lungs(cip_scan, columns, cuts_lungs):
    from scipy import ndimage

    lungs = _reference_in_model_axes(cip_scan)
    crop = (slice(None), slice(None), slice(*columns))  # the image's side edges cut the body (and the lungs)
    hu, lungs = cip_scan.hu[crop].copy(), lungs[crop]
    scan = scans.Scan("wide", "volume", hu, cip_scan.pixel_spacing_mm, cip_scan.slice_thickness_mm)
    with_lung = np.flatnonzero(lungs.any(axis=(1, 2)))
    assert (hu[:, :, [0, -1]] > -500).any(axis=1).all()  # tissue runs off both side edges on every slice
    assert lungs[:, :, [0, -1]].any() == cuts_lungs
    old_inside = np.stack([ndimage.binary_fill_holes(h > -500) for h in hu])  # the rule before: the outline never closed
    assert (old_inside[lungs > 0].mean() < 0.5) == cuts_lungs  # under it, lungs cut by the edge were not inside the body
    outside = np.zeros_like(lungs)
    outside[with_lung[5]:with_lung[5] + 6, 1:3, 1:4] = True  # air in the corner, outside the body
    assert (hu[outside.astype(bool)] < -900).all()
    kept = scans.keep_lungs(lungs | outside, scan)
    np.testing.assert_array_equal(kept, lungs)  # both lungs kept whole, the air outside dropped


def _filled_by_definition(mask):
    """What the 3D fill must give, by its definition: the mask with the parts of its complement (6-connected)
    that lie within the mask's bounding box and touch none of its faces filled."""
    from lungseg.anatomy import _bounding_box

    box = _bounding_box(mask)
    holes, count = ndimage.label(~mask[box])
    opened = np.zeros(count + 1, bool)
    for axis in range(3):
        for end in (0, -1):
            opened[np.take(holes, end, axis=axis)] = True
    opened[0] = True
    filled = mask.copy()
    filled[box] |= ~opened[holes]
    return filled


def test_the_3d_fill_fills_exactly_the_holes_the_mask_encloses(cip_scan):
    """The fill follows only the slices' own holes in 3D; it must give what labelling the whole complement gives."""
    from lungseg.anatomy import _fill_enclosed

    lungs = _reference_in_model_axes(cip_scan).astype(bool)
    rng = np.random.default_rng(0)
    carved = lungs.copy()
    grid = np.indices(lungs.shape)
    for centre in np.argwhere(lungs)[rng.choice(np.count_nonzero(lungs), 40, replace=False)]:
        radius = rng.uniform(1, 4)  # tumours and cavities: inside a lung, or reaching its outline (then open)
        carved &= ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) > radius ** 2
    z, y, x = np.argwhere(lungs).mean(axis=0).astype(int)
    carved[z:, y, x] = False  # a shaft from a cavity through to the top of the lung: open
    filled = _fill_enclosed(carved)
    np.testing.assert_array_equal(filled, _filled_by_definition(carved))
    assert 0 < np.count_nonzero(filled & ~carved) < np.count_nonzero(lungs & ~carved)  # some holes filled, not all
    hollow = np.ones((9, 9, 9), bool)
    hollow[2:7, 2:7, 2:7] = False  # a cavity spanning five slices, closed, then opened to a side, the top, the bottom
    for opening in (None, (4, 4, slice(0, 3)), (slice(0, 3), 4, 4), (slice(6, 9), 4, 4)):
        shape = hollow.copy()
        if opening is not None:
            shape[opening] = False
        np.testing.assert_array_equal(_fill_enclosed(shape), _filled_by_definition(shape))
    for _ in range(200):  # small random volumes: many thin walls and tunnels
        volume = rng.random(tuple(rng.integers(2, 12, 3))) < rng.uniform(0.4, 0.9)
        np.testing.assert_array_equal(_fill_enclosed(volume), _filled_by_definition(volume))


def test_a_scan_slice_is_cleaned_as_clean_mask_cleans_it(real_data, real_names):
    """The scan path cleans each slice within its mask's bounding box; the pixels must be clean_mask's."""
    from lungseg.segmenting import _clean_slice

    rng = np.random.default_rng(1)
    for name in real_names[:20]:
        mask = (lu.read_mask(real_data / "2d_masks" / name) > 0).astype(np.uint8)
        for _ in range(6):  # specks outside, vessels and cysts inside, of every size around the limits
            y, x, size = int(rng.integers(0, 500)), int(rng.integers(0, 500)), int(rng.integers(1, 22))
            mask[y:y + size, x:x + size] ^= 1
        np.testing.assert_array_equal(_clean_slice(mask), lu.clean_mask(mask))
    assert not _clean_slice(np.zeros((64, 64), np.uint8)).any()


def test_no_lungs_found_on_the_abdomen_series(tmp_path):
    _external()
    model, record = lu.load_trained_model(COMMITTED)
    lines = []
    table = scans.predict_scans(model, record, TOTALSEG / "example_ct_dicom", tmp_path / "out", log=lines.append)
    assert "no lungs found" in table.note.iloc[0] and table.lung_volume_ml.iloc[0] < 20
    assert any("no lungs found" in line and "chest CT" in line for line in lines)
    saved = json.loads((tmp_path / "out" / "measurements.json").read_text())
    assert "no lungs found" in saved["measurements"][0]["note"]


@pytest.mark.parametrize("source, reference", [
    ("totalsegmentator-examples/example_ct.nii.gz", "totalsegmentator-examples/example_ct.nii.gz"),
    ("totalsegmentator-examples/example_ct_dicom", "totalsegmentator-examples/example_seg_dicom.nii.gz"),
    ("cip-copdgene-64/ct-64Dicom", None)])
def test_predict_sh_gives_a_mask_on_the_inputs_grid_for_each_external_volume(tmp_path, source, reference):
    _external()
    output = tmp_path / "OUT"
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "predict.sh"), str(EXTERNAL / source), str(output),
                           "--model", str(COMMITTED), "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    mask_file = next(output.glob("*_mask.nii.gz"))
    mask = nib.load(mask_file)
    if reference:  # the same grid as the input (or as the reference of the same series)
        expected = nib.load(EXTERNAL / reference)
        assert mask.shape == expected.shape
        np.testing.assert_allclose(np.abs(mask.affine[:3, :3]), np.abs(expected.affine[:3, :3]), atol=1e-3)
        if source.endswith(".nii.gz"):
            np.testing.assert_allclose(mask.affine, expected.affine, atol=1e-4)
    else:  # CIP: 79 DICOM slices of 64 x 64
        assert sorted(mask.shape) == [64, 64, 79]
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


# --------------------------------------------------------------------------- the benchmark's arithmetic
def test_the_benchmark_compares_masks_in_world_coordinates():
    benchmark = _benchmark()
    affine = np.diag([2.0, 2.0, 3.0, 1.0])  # 2 x 2 x 3 mm voxels: 12 uL
    ours = np.zeros((20, 20, 10), bool)
    ours[5:10, 5:10, 2:6] = True  # 100 voxels on slices 2..5
    # the reference on a flipped grid with its own origin: the same cube, plus a slice more of lung
    flipped = np.diag([-2.0, 2.0, 3.0, 1.0])
    flipped[0, 3] = 38.0  # x = 38 - 2i: i = 19 - (our i)
    reference = np.zeros((20, 20, 10), bool)
    reference[19 - 9:19 - 4, 5:10, 2:7] = True  # our cube and slice 6
    on_grid = benchmark.onto_grid(reference, flipped, ours.shape, affine)
    assert on_grid.sum() == 125 and on_grid[5:10, 5:10, 2:7].all()
    hu = np.full(ours.shape, -900.0)
    hu[5:10, 5:10, 2] = -980.0  # a quarter of our lung (25 of 100 voxels) below -950
    result = benchmark.compare(ours, on_grid, hu, affine)
    assert result["dice"] == pytest.approx(2 * 100 / 225)
    assert result["lung_ml"] == pytest.approx(100 * 12 / 1000) and result["reference_ml"] == pytest.approx(1.5)
    assert result["false_lung_ml"] == 0.0 and result["slices_with_reference_lung"] == 5
    assert result["laa950_percent"] == pytest.approx(25.0) and result["reference_laa950_percent"] == pytest.approx(20.0)
    ours[0:5, 0:5, 8] = True  # "lung" on a slice where the reference has none
    assert benchmark.compare(ours, on_grid, hu, affine)["false_lung_ml"] == pytest.approx(25 * 12 / 1000)
    assert benchmark.compare(ours, on_grid, hu, affine)["dice"] == pytest.approx(2 * 100 / 225)
