"""Your own CT: `scripts/predict.sh` and `scans.predict_scans` on a real DICOM series from another
collection (LIDC-IDRI), on DICOM series and NIfTI volumes the tests build from real Kaggle slices
(rescale slope/intercept, shuffled files, a localizer, uneven spacing, a flipped orientation), and on
the bad input users give."""

import json
import os
import subprocess

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import lungseg_utils as lu
from lungseg import scans
from lungseg.dicom import write_dicom_series
from lungseg_utils import LungsegError

from conftest import REPO_ROOT

LIDC = REPO_ROOT.parent / "shared" / "data" / "lidc-lungmask-testdata"
R231_PER_SLICE = {"lung": 50_644, "right": 32_376, "left": 18_268}  # lungmask's R231 on the LIDC slice (SOURCE.md)
COMMITTED = REPO_ROOT / "models" / "resunet.keras"


def _predict(committed, source, output, **options):
    model, record = committed
    return scans.predict_scans(model, record, source, output, model_name="resunet", log=lambda line: None, **options)


def _said(committed, source, output, **options):
    lines = []
    model, record = committed
    table = scans.predict_scans(model, record, source, output, log=lines.append, **options)
    return table, "\n".join(lines)


# --------------------------------------------------------------------------- the command, on real DICOM from elsewhere
def test_predict_sh_on_the_lidc_series_gives_a_two_slice_volume(tmp_path):
    if not LIDC.is_dir():
        pytest.skip("../shared/data/lidc-lungmask-testdata is not beside the repository")
    output = tmp_path / "OUT"
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "predict.sh"), str(LIDC), str(output),
                           "--model", str(COMMITTED), "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "segmented 1 scan(s)" in done.stdout
    table = pd.read_csv(output / "measurements.csv")
    assert len(table) == 1 and table.kind[0] == "volume" and table.slices[0] == 2
    mask = nib.load(output / "lidc-lungmask-testdata_mask.nii.gz")
    labels = np.asanyarray(mask.dataobj)
    assert labels.shape == (512, 512, 2) and set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_allclose(mask.affine, np.diag([-0.625, -0.625, 1.0, 1.0]))  # LPS positions as RAS, z 0 and 1 mm
    np.testing.assert_array_equal(labels[..., 0], labels[..., 1])  # the two files hold the same slice
    right, left = (labels[..., 0] == 1).sum(), (labels[..., 0] == 2).sum()
    # A check that the path works on real DICOM from another collection, not a target: within 10% of R231.
    assert abs(right + left - R231_PER_SLICE["lung"]) < 0.1 * R231_PER_SLICE["lung"]
    assert abs(right - R231_PER_SLICE["right"]) < 0.1 * R231_PER_SLICE["right"]
    assert abs(left - R231_PER_SLICE["left"]) < 0.1 * R231_PER_SLICE["left"]
    assert table.lung_pixels[0] == (labels > 0).sum()
    np.testing.assert_allclose(table.lung_volume_ml[0], (labels > 0).sum() * 0.625 ** 2 * 1.0 / 1000)
    assert -950 < table.mean_hu[0] < -300 and table.pd05_hu[0] < table.pd15_hu[0] < table.pd95_hu[0]
    assert (output / "lidc-lungmask-testdata_preview.png").stat().st_size > 10_000
    record = json.loads((output / "measurements.json").read_text())
    assert record["model"] == "resunet" and record["settings"]["img_size"] == 256 and not record["problems"]


def test_predict_sh_on_a_single_tiff_and_on_a_nifti(tmp_path, real_data, real_names, slices):
    tiff = real_data / "2d_images" / real_names[0]
    volume = np.stack(slices[:3], axis=-1).transpose(1, 0, 2).astype(np.int16)  # (column, row, slice)
    nib.save(nib.Nifti1Image(volume, np.diag([-0.8, -0.8, 5.0, 1.0])), tmp_path / "chest.nii.gz")
    for source, mask in ((tiff, f"{tiff.name}_mask.png"), (tmp_path / "chest.nii.gz", "chest_mask.nii.gz")):
        done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "predict.sh"), str(source), "out",
                               "--model", str(COMMITTED), "--pixel-spacing", "0.8"], capture_output=True, text=True,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out" / mask).is_file()  # relative OUTPUT_DIR: from the folder the command ran in
    table = pd.read_csv(tmp_path / "out" / "measurements.csv").set_index("name")
    assert list(table.kind) == ["slice", "volume"]  # the second run kept the first run's row
    assert table.area_mm2[tiff.name] == pytest.approx(table.lung_pixels[tiff.name] * 0.64)


# --------------------------------------------------------------------------- DICOM series built from real slices
def test_a_dicom_series_with_slope_intercept_shuffled_files_and_a_localizer(committed, slices, tmp_path):
    series = tmp_path / "series"
    names = [f"IM{n:04d}" for n in (5, 2, 6, 1, 4, 3)]  # no suffix, and file order is not slice order
    write_dicom_series(slices, series, pixel_spacing_mm=(0.7, 0.7), slice_spacing_mm=2.5, slope=0.5, intercept=-2048.0,
                       file_names=names, series_uid="1.2.3.4")
    write_dicom_series([slices[0]], series, orientation=(1, 0, 0, 0, 0, -1), series_uid="1.2.3.4",
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), file_names=["scout.dcm"])
    table, said = _said(committed, series, tmp_path / "out")
    assert "1 file(s) passed over, a localizer (scout), not a cross-section (e.g. scout.dcm)" in said
    row = table.iloc[0]
    assert row.kind == "volume" and row.slices == 6 and row.slice_spacing_mm == pytest.approx(2.5)
    labels = np.asanyarray(nib.load(tmp_path / "out" / "series_mask.nii.gz").dataobj)
    assert labels.shape == (512, 512, 6)
    model, record = committed
    masks = lu.predict_masks(model, slices, record, postprocess=True)  # the slices in HU, in position order
    scan = scans.find_scans(series)[0][1]()
    expected = scans.keep_lungs(np.stack(masks), scan)  # then the 3D step keeps what can be lung
    for k in range(6):
        np.testing.assert_array_equal(labels[..., k].T > 0, expected[k].astype(bool))
    assert row.lung_volume_ml == pytest.approx(sum(m.sum() for m in expected) * 0.7 * 0.7 * 2.5 / 1000)
    assert row.right_volume_ml + row.left_volume_ml == pytest.approx(row.lung_volume_ml)
    assert row.right_volume_ml > 0 and row.left_volume_ml > 0


def test_missing_slices_are_said_and_the_mask_lies_on_the_real_positions(committed, slices, tmp_path):
    positions = [0.0, 2.0, 4.0, 10.0]  # an even series of 2 mm with the slices at 6 and 8 mm missing
    write_dicom_series(slices[:4], tmp_path / "gap", pixel_spacing_mm=(0.7, 0.7), positions_mm=positions)
    table, said = _said(committed, tmp_path / "gap", tmp_path / "out")
    assert "2 slice(s) missing (2.00 mm apart, gaps up to 6.00 mm)" in said and "empty slice at each missing" in said
    image = nib.load(tmp_path / "out" / "gap_mask.nii.gz")
    mask = np.asanyarray(image.dataobj)
    assert mask.shape[2] == 6 and not mask[:, :, [3, 4]].any() and mask[:, :, [0, 1, 2, 5]].any(axis=(0, 1)).all()
    z = [float((image.affine @ [0, 0, k, 1])[2]) for k in range(6)]
    np.testing.assert_allclose(z, [0, 2, 4, 6, 8, 10], atol=1e-6)  # each mask slice at its file's real position
    counts = (mask > 0).sum(axis=(0, 1))[[0, 1, 2, 5]]
    thickness = np.array([2.0, 2.0, 4.0, 6.0])  # half the gaps to each neighbour; the ends their one gap
    assert table.lung_volume_ml[0] == pytest.approx((counts * thickness).sum() * 0.7 * 0.7 / 1000)


def test_uneven_spacing_is_said_and_volumes_use_the_real_positions(committed, slices, tmp_path):
    positions = [0.0, 2.0, 4.0, 7.3]  # not an even series with slices missing
    write_dicom_series(slices[:4], tmp_path / "uneven", pixel_spacing_mm=(0.7, 0.7), positions_mm=positions)
    table, said = _said(committed, tmp_path / "uneven", tmp_path / "out")
    assert "uneven slice spacing (2.00..3.30 mm)" in said and "the mean spacing" in said
    counts = (np.asanyarray(nib.load(tmp_path / "out" / "uneven_mask.nii.gz").dataobj) > 0).sum(axis=(0, 1))
    thickness = np.array([2.0, 2.0, 2.65, 3.3])
    assert len(counts) == 4 and table.lung_volume_ml[0] == pytest.approx((counts * thickness).sum() * 0.49 / 1000)


def test_two_slices_at_one_position_are_both_named(committed, slices, tmp_path):
    write_dicom_series(slices[:3], tmp_path / "twice", positions_mm=[0.0, 5.0, 5.0], file_names=["a.dcm", "b.dcm", "c.dcm"])
    table, _ = _said(committed, tmp_path / "twice", tmp_path / "out")
    problem = table.attrs["problems"][0]
    assert "b.dcm and " in problem and "c.dcm: two slices of series twice at the same position (5.00 mm" in problem


def test_several_series_the_largest_is_used_and_series_chooses(committed, slices, tmp_path):
    folder = tmp_path / "study"
    write_dicom_series(slices[:4], folder, series_uid="1.2.3.100", file_names=[f"a{k}.dcm" for k in range(4)])
    write_dicom_series(slices[4:6], folder, series_uid="1.2.3.200", file_names=[f"b{k}.dcm" for k in range(2)])
    table, said = _said(committed, folder, tmp_path / "out")
    assert table.slices[0] == 4 and "also holds series 1.2.3.200 (2 files)" in said
    assert _predict(committed, folder, tmp_path / "out2", series="1.2.3.200").slices[0] == 2
    with pytest.raises(LungsegError, match="--series 9.9: no such series.*1.2.3.100"):
        _predict(committed, folder, tmp_path / "out3", series="9.9")


# --------------------------------------------------------------------------- NIfTI in another orientation
def test_a_flipped_non_axial_nifti_gives_a_mask_aligned_voxel_for_voxel(committed, slices, tmp_path):
    volume = np.stack(slices[:3], axis=-1).transpose(1, 0, 2).astype(np.int16)
    standard = nib.Nifti1Image(volume, np.diag([-0.8, -0.8, 4.0, 1.0]))  # as a DICOM series converts: L, P, S
    nib.save(standard, tmp_path / "standard.nii.gz")
    turn = np.array([[2, 1], [0, -1], [1, -1]])  # array axes permuted and two flipped: same voxels, other layout
    turned = standard.as_reoriented(turn)
    assert nib.aff2axcodes(turned.affine) != nib.aff2axcodes(standard.affine)
    nib.save(turned, tmp_path / "turned.nii.gz")
    table = _predict(committed, tmp_path, tmp_path / "out")
    masks = {name: nib.load(tmp_path / "out" / f"{name}_mask.nii.gz") for name in ("standard", "turned")}
    np.testing.assert_allclose(masks["turned"].affine, turned.affine)  # written back in the input's own geometry
    assert masks["turned"].shape == turned.shape
    expected = masks["standard"].as_reoriented(turn)
    np.testing.assert_array_equal(np.asanyarray(masks["turned"].dataobj), np.asanyarray(expected.dataobj))
    volumes = table.set_index("name")
    assert volumes.right_volume_ml["turned"] == pytest.approx(volumes.right_volume_ml["standard"])
    assert volumes.left_volume_ml["turned"] == pytest.approx(volumes.left_volume_ml["standard"])
    assert volumes.lung_volume_ml["standard"] == pytest.approx(
        (np.asanyarray(masks["standard"].dataobj) > 0).sum() * 0.8 * 0.8 * 4.0 / 1000)


def test_right_and_left_when_the_lungs_touch():
    mask = np.zeros((2, 40, 60), np.uint8)
    mask[:, 5:35, 5:28] = 1  # the patient's right lung: the image's left
    mask[:, 5:35, 31:50] = 1
    labels = scans.split_lungs(mask)
    assert (labels[:, :, 5:28][mask[:, :, 5:28] > 0] == 1).all() and (labels[:, :, 31:50][mask[:, :, 31:50] > 0] == 2).all()
    mask[:, 15:18, 28:31] = 1  # a bridge: one connected region
    labels = scans.split_lungs(mask)
    assert set(np.unique(labels[:, :, 5:28])) == {0, 1} and set(np.unique(labels[:, :, 32:50])) == {0, 2}
    assert (labels > 0).sum() == mask.sum()


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_are_named_one_line_each_and_the_rest_is_segmented(committed, real_data, real_names, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    hu = lu.read_slice(real_data / "2d_images" / real_names[0])
    (folder / "scan.tif").write_bytes((real_data / "2d_images" / real_names[0]).read_bytes())
    cv2.imwrite(str(folder / "scan.png"), (hu.astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16))
    cv2.imwrite(str(folder / "photo.jpg"), (hu // 16).clip(0, 255).astype(np.uint8))
    cv2.imwrite(str(folder / "export.png"), (hu // 16).clip(0, 255).astype(np.uint8))  # 8-bit
    cv2.imwrite(str(folder / "colour.png"), np.repeat(((hu // 16).clip(0, 255).astype(np.uint8))[..., None], 3, -1))
    (folder / "broken.tif").write_bytes(b"II*\x00garbage")
    write_dicom_series([hu], tmp_path / "mr", modality="MR", file_names=["mr.dcm"])
    (tmp_path / "mr" / "mr.dcm").replace(folder / "mr.dcm")
    (folder / "notes.txt").write_text("not a scan: passed over")
    table, said = _said(committed, folder, tmp_path / "out")
    assert sorted(table.name) == ["scan.png", "scan.tif"]  # the same stem: both kept
    for name in ("scan.png", "scan.tif"):
        mask = cv2.imread(str(tmp_path / "out" / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (512, 512) and set(np.unique(mask)) == {0, 255}
    problems = table.attrs["problems"]
    assert len(problems) == 5 and len(said.splitlines()) == 5
    for expected in ("photo.jpg: a JPG image has 8 bits and cannot hold Hounsfield units",
                     "export.png: an 8-bit image cannot hold Hounsfield units",
                     "colour.png: a colour image", "broken.tif: unreadable or corrupt image",
                     "mr.dcm: a MR image, not CT"):
        assert sum(expected in problem for problem in problems) == 1, expected
    assert pd.read_csv(tmp_path / "out" / "measurements.csv").name.tolist() == table.name.tolist()


def test_a_one_slice_series_is_segmented_as_a_slice(committed, slices, tmp_path):
    write_dicom_series(slices[:1], tmp_path / "one", pixel_spacing_mm=(0.5, 0.5), series_uid="1.2.9")
    write_dicom_series(slices[1:2], tmp_path / "one", series_uid="1.2.9", file_names=["scout.dcm"],
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    table, said = _said(committed, tmp_path / "one", tmp_path / "out")
    assert "1 file(s) passed over, a localizer (scout)" in said  # the scout; the one slice left is a slice
    assert table.kind[0] == "slice" and table.area_mm2[0] == pytest.approx(table.lung_pixels[0] * 0.25)
    assert (tmp_path / "out" / "slice_000.dcm_mask.png").is_file()


def test_outputs_never_replace_a_users_file(committed, real_data, real_names, tmp_path):
    tiff = real_data / "2d_images" / real_names[0]
    output = tmp_path / "out"
    output.mkdir()
    (output / f"{tiff.name}_mask.png").write_bytes(b"the user's own file")
    table = _predict(committed, tiff, output)
    assert table.attrs["problems"] == [f"{output / (tiff.name + '_mask.png')} exists and lungseg did not write it: "
                                       "refusing to overwrite it. Choose another OUTPUT_DIR, or move the file away."]
    assert (output / f"{tiff.name}_mask.png").read_bytes() == b"the user's own file"
    again = tmp_path / "again"
    _predict(committed, tiff, again)
    assert len(_predict(committed, tiff, again)) == 1  # its own earlier outputs are replaced
    with pytest.raises(LungsegError, match="is an existing file, not a folder"):
        _predict(committed, tiff, again / "measurements.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LungsegError, match="holds no CT files"):
        _predict(committed, empty, tmp_path / "out3")
    with pytest.raises(LungsegError, match="does not exist"):
        _predict(committed, tmp_path / "nowhere", tmp_path / "out3")


def test_scans_not_in_hu_are_refused_not_segmented_to_nothing(committed, slices, tmp_path):
    raw = np.stack(slices[:2], axis=-1).transpose(1, 0, 2).astype(np.float32) + 1024  # scanner values, no intercept
    nib.save(nib.Nifti1Image(raw.clip(0, None), np.diag([-0.8, -0.8, 5.0, 1.0])), tmp_path / "raw.nii")
    table = _predict(committed, tmp_path / "raw.nii", tmp_path / "out")
    assert len(table) == 0 and "the values look like HU+1024" in table.attrs["problems"][0]  # the fix, not "convert"
    assert "Subtract 1024" in table.attrs["problems"][0] and "if it is a PNG" not in table.attrs["problems"][0]
    assert "raw.nii" in table.attrs["problems"][0]


def test_the_command_says_what_it_could_not_use_and_exits_1(tmp_path, real_data, real_names):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "scan.tif").write_bytes((real_data / "2d_images" / real_names[0]).read_bytes())
    (folder / "photo.jpeg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "taken").write_text("a file")
    script = str(REPO_ROOT / "scripts" / "predict.sh")
    done = subprocess.run(["bash", script, "mixed", "out", "--model", str(COMMITTED)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 1
    assert "not segmented: " in done.stderr and "photo.jpeg: a JPEG image has 8 bits" in done.stderr
    assert "segmented 1 scan(s)" in done.stdout and "1 input(s) could not be used" in done.stdout
    done = subprocess.run(["bash", script, "mixed", "taken", "--model", str(COMMITTED)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 1 and "OUTPUT_DIR" in done.stderr and "is an existing file, not a folder" in done.stderr
    assert (tmp_path / "taken").read_text() == "a file"
