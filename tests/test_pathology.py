"""Diseased lung is lung, bowel gas is not: the training-time lesions of 02 (off by default), the pathology benchmark's
lesions (built by other code) and its arithmetic, and the 3D step's anatomy on the real CIP chest
(../shared/data/external-ct, which measures only: nothing here tunes anything to it). Accuracy
targets live in benchmarks/pathology.py, not here."""

import importlib.util

import numpy as np
import pytest
from scipy import ndimage

import lungseg_utils as lu
from lungseg import scans

from conftest import REPO_ROOT
from notebook_code import definitions

add_lesions = definitions("02_preprocess", "add_lesions")["add_lesions"]
CIP = REPO_ROOT.parent / "shared" / "data" / "external-ct" / "cip-copdgene-64"


def _pathology():
    spec = importlib.util.spec_from_file_location("pathology", REPO_ROOT / "benchmarks" / "pathology.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slice(real_data, name, size=256):
    image = lu.preprocess_slice(lu.read_slice(real_data / "2d_images" / name), size, -1000, 400)
    return image, lu.resize_mask(lu.read_mask(real_data / "2d_masks" / name), size)


# --------------------------------------------------------------------------- 02's training lesions
def test_training_lesions_lie_only_inside_the_lung_at_the_hu_asked(real_data, real_names):
    for k, name in enumerate(real_names[:6]):
        image, mask = _slice(real_data, name)
        changed_any = False
        for seed in range(3):
            with_lesions = add_lesions(image, mask, np.random.default_rng(seed), hu_range=(30, 30), count=(2, 2),
                                       texture_hu=0.0, radius_px=(10, 12))
            changed = np.abs(with_lesions - image) > 1e-6
            assert not (changed & ~mask.astype(bool)).any()  # never outside the lung
            assert 0 <= with_lesions.min() and with_lesions.max() <= 1
            core = np.abs(with_lesions - image) > 0.4  # lung (about -850 HU) turned into a lesion
            if core.sum() > 20:  # the lesions' inside: 30 HU, give or take noise
                changed_any = True
                assert abs(np.median(with_lesions[core]) * 1400 - 1000 - 30) < 15
        assert changed_any, name
    again = add_lesions(image, mask, np.random.default_rng(2), hu_range=(30, 30), count=(2, 2), texture_hu=0.0,
                        radius_px=(10, 12))
    np.testing.assert_array_equal(again, with_lesions)  # seeded: the same lesions


def test_training_lesions_touch_the_lungs_edge_when_asked(real_data, real_names):
    image, mask = _slice(real_data, real_names[10])
    edge = mask.astype(bool) & ~ndimage.binary_erosion(mask.astype(bool), iterations=2)
    touching = [np.any((np.abs(add_lesions(image, mask, np.random.default_rng(s), count=(1, 1), on_edge=1.0,
                                           radius_px=(6, 8)) - image) > 0.02) & edge) for s in range(8)]
    assert all(touching)


# --------------------------------------------------------------------------- the benchmark's lesions
@pytest.fixture(scope="module")
def cip():
    if not CIP.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")
    benchmark = _pathology()
    hu, lung, affine = benchmark.cip_volume(REPO_ROOT.parent / "shared" / "data")
    return benchmark, hu, lung, affine, benchmark.world_mm(hu.shape, affine)


EXPECTED_HU = {"consolidation": 35, "mass_chest_wall": 40, "mass_mediastinum": 40, "nodules": 30, "atelectasis": 30}


@pytest.mark.parametrize("kind", ["consolidation", "mass_chest_wall", "mass_mediastinum", "nodules", "patchy",
                                  "ground_glass", "atelectasis", "cavity"])
def test_benchmark_lesions_lie_inside_the_reference_lung_at_their_hu(cip, kind):
    benchmark, hu, lung, affine, xyz = cip
    where, value = benchmark.lesion(kind, lung, xyz, hu, 4.17, np.random.default_rng(0))
    assert where.sum() > 20 and not (where & ~lung).any()
    ct = benchmark.with_lesion(hu, where, value, lung)
    np.testing.assert_array_equal(ct[~lung], hu[~lung])  # nothing outside the lung changes
    if kind in EXPECTED_HU:
        assert abs(np.median(ct[where]) - EXPECTED_HU[kind]) < 5
    elif kind == "patchy":
        assert -200 - 45 < np.percentile(ct[where], 5) and np.percentile(ct[where], 95) < 80 + 45
    elif kind == "ground_glass":
        assert -660 < np.median(ct[where]) < -560 and (ct[where] >= hu[where] - 1e-3).all()  # vessels kept
    elif kind == "cavity":
        assert (ct[where] < -900).mean() > 0.15 and (ct[where] > 0).mean() > 0.4  # air inside a wall


def test_benchmark_masses_sit_on_the_pleura(cip):
    benchmark, hu, lung, affine, xyz = cip
    for kind in ("mass_chest_wall", "mass_mediastinum"):
        where, _ = benchmark.lesion(kind, lung, xyz, hu, 4.17, np.random.default_rng(0))
        assert (where & ~ndimage.binary_erosion(lung)).any()  # part of it is on the lung's surface
        assert 8 < where.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000 < 34  # at most a 40 mm ball (33.5 mL)


def test_benchmark_scores_on_hand_made_volumes():
    benchmark = _pathology()
    reference = np.zeros((4, 10, 10), bool)
    reference[1:3, 2:8, 2:8] = True  # 72 voxels on slices 1, 2
    lesion = np.zeros_like(reference)
    lesion[1:3, 2:4, 2:8] = True  # 24 of them
    predicted = reference & ~lesion
    predicted[1:3, 2:3, 2:8] = True  # half the lesion called lung
    predicted[3, 0:2, 0:2] = True  # false lung on a slice without reference lung: not in the Dice
    result = benchmark.scores(predicted, reference, lesion)
    assert result["kept_share"] == pytest.approx(0.5) and result["lesion_voxels"] == 24
    assert result["dice"] == pytest.approx(2 * 60 / (60 + 72))
    one_slice = benchmark.scores(predicted[1], reference[1], lesion[1])  # a 2D slice is scored the same way
    assert one_slice["kept_share"] == pytest.approx(0.5) and one_slice["dice"] == pytest.approx(2 * 30 / 66)


def test_a_kaggle_slice_is_placed_as_the_volumes_are():
    benchmark = _pathology()
    xyz = benchmark.slice_world_mm((512, 512), 0.8)
    assert xyz[0, 10, 0] < xyz[0, 0, 0]  # columns run to the patient's left (-x in RAS)
    assert xyz[10, 0, 1] < xyz[0, 0, 1]  # rows run to the back (-y)
    lung = np.zeros((512, 512), bool)
    lung[100:400, 60:220] = lung[100:400, 290:450] = True
    halves = benchmark.sides(lung, xyz)
    assert halves["right"][:, :256].sum() == lung[:, :256].sum() and not halves["right"][:, 256:].any()


# --------------------------------------------------------------------------- the 3D step's anatomy
@pytest.fixture(scope="module")
def cip_scan():
    if not CIP.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")
    return scans.find_scans(CIP / "ct-64Dicom")[0][1]()


def _reference(scan):
    from test_external import _reference_in_model_axes
    return _reference_in_model_axes(scan)


def test_the_3d_step_keeps_a_dense_region_inside_real_lungs(cip_scan):
    lungs = _reference(cip_scan)
    hu = cip_scan.hu.copy()
    inner = ndimage.distance_transform_edt(lungs) >= 3
    z, row, column = np.argwhere(inner)[len(np.argwhere(inner)) // 2]
    zz, yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    tumour = ((zz - z) ** 2 + (yy - row) ** 2 + (xx - column) ** 2 <= 2.2 ** 2) & lungs.astype(bool)
    hu[tumour] = 40  # a solid tumour inside the lung
    scan = scans.Scan("tumour", "volume", hu, cip_scan.pixel_spacing_mm, cip_scan.slice_thickness_mm)
    model_mask = lungs & ~tumour  # what a model that takes lung for darkness gives
    kept = scans.keep_lungs(model_mask, scan)
    assert tumour.sum() > 20 and kept[tumour].all()
    np.testing.assert_array_equal(kept, lungs)  # nothing else added, nothing lost
    assert not scans.keep_lungs(model_mask, scan, fill=False)[tumour].any()


def test_the_3d_step_drops_a_gas_tube_below_real_lungs(cip_scan):
    lungs = _reference(cip_scan).astype(bool)
    base = np.flatnonzero(lungs.any(axis=(1, 2)))[0]
    top = base + 10  # the scan cropped to the lung bases, as an abdominal scan shows them: small lungs
    lungs, hu = lungs[:top], cip_scan.hu[:top].copy()
    # a colon-like tube of gas mottled with stool (not "pure gas": its median is the stool's), under the
    # left lung's dome, with the diaphragm's tissue between, running down through the abdomen
    footprint = lungs[base + 8] & (np.arange(hu.shape[2]) > hu.shape[2] // 2)[None, :]
    rows, columns = np.nonzero(ndimage.binary_erosion(footprint, iterations=2))
    row, column = int(np.median(rows)), int(np.median(columns))
    tube = np.zeros_like(lungs)
    tube[1:base, row - 2:row + 3, column - 2:column + 3] = True
    assert (hu[tube] > -200).mean() > 0.9  # it lies in soft tissue
    rng = np.random.default_rng(0)
    hu[tube] = np.where(rng.random(tube.sum()) < 0.45, -1000 + rng.normal(0, 20, tube.sum()), -500)
    assert np.median(hu[tube]) > -970
    scan = scans.Scan("colon", "volume", hu, cip_scan.pixel_spacing_mm, cip_scan.slice_thickness_mm[:top])
    largest = np.bincount(ndimage.label(lungs)[0].ravel())[1:].max()
    assert tube.sum() > 0.1 * largest  # as large as a lung base: the size rule alone keeps it
    kept = scans.keep_lungs(lungs | tube, scan)
    assert not kept[tube].any()
    np.testing.assert_array_equal(kept, scans.keep_lungs(lungs, scan))  # the lungs as without the tube
    assert kept.sum() > 0.99 * lungs.sum()
    assert scans.keep_lungs(lungs | tube, scan, under_share=1.01)[tube].all()  # without the rule it would stay


def test_measurements_give_the_share_of_dense_lung_that_a_mask_holds(cip):
    """HAA and consolidation in measurements.csv, on the benchmark's lesions in the real COPD chest: with the
    reference mask (which keeps the lesion) each share rises by the lesion's voxels in its band; with a mask that
    leaves the lesion out it does not rise."""
    from lungseg.measuring import CONSOLIDATION_HU, HAA_HU, scan_measurements
    from lungseg.reading import Scan

    benchmark, hu, lung, affine, xyz = cip

    def measured(ct, mask):
        scan = Scan("cip", "volume", np.moveaxis(ct, 2, 0), (4.17, 4.17), np.full(ct.shape[2], 4.0))
        return scan_measurements(scan, np.moveaxis(mask, 2, 0).astype(np.uint8))

    clear = measured(hu, lung)
    assert clear["consolidation_percent"] < 1 and clear["haa_percent"] < 10  # a COPD chest: dark lung (vessels: HAA)
    for kind, key, band in (("consolidation", "consolidation_percent", CONSOLIDATION_HU),
                            ("ground_glass", "haa_percent", HAA_HU)):
        where, value = benchmark.lesion(kind, lung, xyz, hu, 4.17, np.random.default_rng(0))
        ct = benchmark.with_lesion(hu, where, value, lung)
        in_band = (ct >= band[0]) & (ct <= band[1])
        expected = 100 * np.count_nonzero(in_band & lung) / np.count_nonzero(lung)
        kept = measured(ct, lung)
        assert kept[key] == pytest.approx(expected, abs=0.01) and kept[key] > clear[key] + 2, kind
        assert measured(ct, lung & ~where)[key] < clear[key] + 1, kind  # a mask without the lesion misses it
