"""Your own scans, nothing lost and nothing silently wrong: inputs the tests build from real slices
that used to give a wrong result with exit 0, or lose a user's data (issue 'Your own scans')."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

import lungseg_utils as lu
from lungseg import scans, segmenting
from lungseg.dicom import write_dicom_series
from lungseg_utils import LungsegError

from conftest import REPO_ROOT



def _predict(committed, source, output, **options):
    lines = []
    model, record = committed
    table = scans.predict_scans(model, record, source, output, model_name="resunet", log=lines.append, **options)
    return table, "\n".join(lines)


def _series_without(slices, folder, *keys, **replace):
    paths = write_dicom_series(slices, folder, pixel_spacing_mm=(0.7, 0.7), slice_spacing_mm=5.0)
    for path in paths:
        dataset = pydicom.dcmread(path)
        for key in keys:
            delattr(dataset, key)
        for key, value in replace.items():
            setattr(dataset, key, value)
        dataset.save_as(path)
    return folder


def test_dicom_without_pixel_spacing_uses_imager_pixel_spacing_and_says_so(committed, slices, tmp_path):
    reference, _ = _predict(committed, write_dicom_series(slices, tmp_path / "ok", pixel_spacing_mm=(0.7, 0.7),
                                                          slice_spacing_mm=5.0)[0].parent, tmp_path / "out1")
    folder = _series_without(slices, tmp_path / "imager", "PixelSpacing", ImagerPixelSpacing=[0.7, 0.7])
    table, said = _predict(committed, folder, tmp_path / "out2")
    assert "no PixelSpacing; its ImagerPixelSpacing (0.7 x 0.7 mm) is used" in said
    assert table.lung_volume_ml[0] == pytest.approx(reference.lung_volume_ml[0])


def test_dicom_without_any_pixel_spacing_stops_unless_it_is_given(committed, slices, tmp_path):
    folder = _series_without(slices, tmp_path / "none", "PixelSpacing")
    table, said = _predict(committed, folder, tmp_path / "out")
    assert len(table) == 0 and "no PixelSpacing (nor ImagerPixelSpacing)" in table.attrs["problems"][0]
    assert "--pixel-spacing" in table.attrs["problems"][0] and len(said.splitlines()) == 1
    table, said = _predict(committed, folder, tmp_path / "out2", pixel_spacing_mm=0.7)
    assert "--pixel-spacing 0.7 mm is used" in said
    voxels = int((np.asarray(nib.load(tmp_path / "out2" / "none_mask.nii.gz").dataobj) > 0).sum())
    assert table.lung_volume_ml[0] == pytest.approx(voxels * 0.7 * 0.7 * 5.0 / 1000)


def test_a_nifti_with_a_zero_affine_is_one_problem_and_the_other_scans_get_their_rows(committed, slices, tmp_path):
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)
    folder = tmp_path / "scans"
    folder.mkdir()
    nib.save(nib.Nifti1Image(volume, np.diag([-0.8, -0.8, 5.0, 1.0])), folder / "a_good.nii.gz")
    broken = nib.Nifti1Image(volume, np.diag([-0.8, -0.8, 5.0, 1.0]))
    broken.set_sform(np.zeros((4, 4)), code=1)
    broken.set_qform(None, code=0)
    nib.save(broken, folder / "b_zero.nii.gz")
    assert not np.any(nib.load(folder / "b_zero.nii.gz").affine[:3, :3])
    table, said = _predict(committed, folder, tmp_path / "out")
    assert list(table.name) == ["a_good"]
    assert len(table.attrs["problems"]) == 1 and "b_zero.nii.gz: its affine" in table.attrs["problems"][0]
    assert pd.read_csv(tmp_path / "out" / "measurements.csv").name.tolist() == ["a_good"]


def test_a_sheared_nifti_measures_its_true_voxel_volume(committed, slices, tmp_path):
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)
    straight = np.diag([-0.8, -0.8, 5.0, 1.0])
    sheared = straight.copy()
    sheared[1, 2] = 1.7  # a gantry tilt: each slice shifted along y; the third column is 5.28 mm long, |det| unchanged
    nib.save(nib.Nifti1Image(volume, straight), tmp_path / "straight.nii.gz")
    nib.save(nib.Nifti1Image(volume, sheared), tmp_path / "sheared.nii.gz")
    table, said = _predict(committed, tmp_path, tmp_path / "out")
    volumes = table.set_index("name").lung_volume_ml
    assert volumes["sheared"] == pytest.approx(volumes["straight"], rel=1e-6) and volumes["straight"] > 0
    assert "sheared.nii.gz: its affine is sheared" in said and "straight.nii.gz" not in said


def test_a_nifti_in_metres_or_microns_is_measured_in_mm_and_said(committed, slices, tmp_path):
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)
    millimetres = np.diag([-0.8, -0.8, 5.0, 1.0])
    nib.save(nib.Nifti1Image(volume, millimetres), tmp_path / "mm.nii.gz")
    for unit, factor in (("meter", 0.001), ("micron", 1000.0)):
        image = nib.Nifti1Image(volume, np.diag([-0.8 * factor, -0.8 * factor, 5.0 * factor, 1.0]))
        image.header.set_xyzt_units(unit)
        nib.save(image, tmp_path / f"{unit}.nii.gz")
    table, said = _predict(committed, tmp_path, tmp_path / "out")
    volumes = table.set_index("name").lung_volume_ml
    assert volumes["mm"] > 0 and table.attrs["problems"] == []
    assert volumes["meter"] == pytest.approx(volumes["mm"], rel=1e-6)
    assert volumes["micron"] == pytest.approx(volumes["mm"], rel=1e-6)
    assert "positions in meters" in said and "positions in microns" in said
    mask = nib.load(table.set_index("name").loc["meter", "mask"])  # the mask lies where the scan lies, in mm
    np.testing.assert_allclose(mask.affine, millimetres, atol=1e-9)


def test_a_4d_nifti_says_how_to_take_one_volume(tmp_path):
    volume = np.full((8, 8, 4, 3), -1000, np.int16)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "phases.nii.gz")
    with pytest.raises(LungsegError, match=r"phases.nii.gz: a 4-D NIfTI .*\(3 volumes.*slicer\[\.\.\., 0\]"):
        scans.read_nifti(tmp_path / "phases.nii.gz")


def test_a_run_where_every_input_fails_keeps_the_earlier_rows(committed, real_data, real_names, tmp_path):
    output = tmp_path / "out"
    _predict(committed, real_data / "2d_images" / real_names[0], output)
    before = (output / "measurements.csv").read_text()
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    table, _ = _predict(committed, tmp_path / "photo.jpg", output)
    assert table.attrs["segmented"] == 0 and len(table.attrs["problems"]) == 1
    assert (output / "measurements.csv").read_text() == before
    assert [row["name"] for row in json.loads((output / "measurements.json").read_text())["measurements"]] == [real_names[0]]


@pytest.mark.parametrize("name", ["measurements.json", "measurements.csv"])
def test_a_users_own_measurements_files_are_never_taken_for_lungsegs(committed, real_data, real_names, tmp_path, name):
    output = tmp_path / "out"
    output.mkdir()
    mine = '{"outputs": ["measurements.csv", "measurements.json"], "my": "notes"}' if name.endswith("json") else "a,b\n1,2\n"
    (output / name).write_text(mine)
    with pytest.raises(LungsegError, match=f"{name} exists and lungseg did not write it"):
        _predict(committed, real_data / "2d_images" / real_names[0], output)
    assert (output / name).read_text() == mine
    assert sorted(p.name for p in output.iterdir()) == [name]  # refused before anything was segmented


def test_pixel_spacing_must_be_a_finite_positive_number(tmp_path):
    import subprocess

    for value in ("nan", "inf", "0"):
        done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "predict.sh"), str(tmp_path), str(tmp_path / "o"),
                               "--pixel-spacing", value], capture_output=True, text=True)
        assert done.returncode == 2 and f"--pixel-spacing {float(value)}" in done.stderr


def test_two_scans_with_the_same_name_keep_both_results(committed, slices, tmp_path):
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)
    for patient, flip in (("patient1", False), ("patient2", True)):
        (tmp_path / patient).mkdir()
        nib.save(nib.Nifti1Image(volume[::-1] if flip else volume, np.diag([-0.8, -0.8, 5.0, 1.0])),
                 tmp_path / patient / "chest.nii.gz")
    output = tmp_path / "out"
    _predict(committed, tmp_path / "patient1" / "chest.nii.gz", output)
    first = (output / "chest_mask.nii.gz").read_bytes()
    table, _ = _predict(committed, tmp_path / "patient2" / "chest.nii.gz", output)
    assert sorted(table.name) == ["chest", "chest-2"] and (output / "chest_mask.nii.gz").read_bytes() == first
    assert sorted(table.input) == [str((tmp_path / p / "chest.nii.gz").resolve()) for p in ("patient1", "patient2")]
    table, _ = _predict(committed, tmp_path / "patient1" / "chest.nii.gz", output)  # the same input again: its own name
    assert sorted(table.name) == ["chest", "chest-2"]


def test_a_png_whose_values_are_not_hu_plus_1024_does_not_pass_silently(committed, slices, tmp_path):
    import cv2

    hu = slices[0]
    cv2.imwrite(str(tmp_path / "bits.png"), hu.astype(np.int16).view(np.uint16))  # int16 bits stored as uint16
    cv2.imwrite(str(tmp_path / "clipped.png"), np.clip(hu, 0, None).astype(np.uint16))  # HU clipped at 0, no offset
    table, said = _predict(committed, tmp_path, tmp_path / "out")
    bits, clipped = table.attrs["problems"]
    assert "bits.png: the lung found has a mean of" in bits and "which no lung has: its values are not HU" in bits
    assert "clipped.png: " in clipped and "looks clipped at 0" in clipped  # once an empty mask with exit 0
    assert len(table) == 0 and not (tmp_path / "out" / "bits.png_mask.png").exists()


# --------------------------------------------------------------------------- common cases, no longer refused without help
def _one_file(slices, folder, name="IM0001", **dataset_changes):
    path = write_dicom_series(slices[:1], folder, pixel_spacing_mm=(0.7, 0.7), file_names=[name])[0]
    dataset = pydicom.dcmread(path)
    for key, value in dataset_changes.items():
        setattr(dataset, key, value)
    dataset.save_as(path)
    return path


def test_jpeg_ls_and_jpeg_lossless_series_decode(committed, slices, tmp_path):
    from pydicom.pixels.decoders import JPEGExtended12BitDecoder, JPEGLosslessSV1Decoder
    from pydicom.uid import JPEGLSLossless

    assert JPEGLosslessSV1Decoder.is_available and JPEGExtended12BitDecoder.is_available  # pylibjpeg-libjpeg
    plain = write_dicom_series(slices, tmp_path / "plain", pixel_spacing_mm=(0.7, 0.7), slice_spacing_mm=5.0)
    for path in write_dicom_series(slices, tmp_path / "jpegls", pixel_spacing_mm=(0.7, 0.7), slice_spacing_mm=5.0):
        dataset = pydicom.dcmread(path)
        dataset.compress(JPEGLSLossless)
        dataset.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGLSLossless
    np.testing.assert_array_equal(lu.read_slice(path), lu.read_slice(plain[-1]))
    table, said = _predict(committed, tmp_path / "jpegls", tmp_path / "out")
    assert table.kind[0] == "volume" and table.lung_volume_ml[0] > 0 and not table.attrs["problems"]


def test_a_compression_without_its_decoder_names_the_compression_and_the_package(slices, tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("a High-Throughput JPEG 2000 decoder is installed here")
    path = _one_file(slices, tmp_path)
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = HTJ2KLossless
    dataset.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(LungsegError) as error:
        lu.read_slice(path)
    message = str(error.value)
    assert "High-Throughput JPEG 2000" in message and "pylibjpeg-openjpeg" in message and "\n" not in message


def test_a_multi_frame_ct_is_refused_plainly(committed, slices, tmp_path):
    _one_file(slices, tmp_path / "mf", NumberOfFrames=3)
    table, said = _predict(committed, tmp_path / "mf", tmp_path / "out")
    assert len(table) == 0 and "an enhanced multi-frame CT (3 frames in one file)" in table.attrs["problems"][0]
    assert "dcm2niix" in table.attrs["problems"][0]


def test_a_cd_with_dicomdir_nested_folders_and_files_without_preamble(committed, slices, tmp_path):
    cd = tmp_path / "CD"
    paths = write_dicom_series(slices, cd / "PATIENT" / "STUDY" / "SERIES", pixel_spacing_mm=(0.7, 0.7),
                               file_names=["IM1", "IM2", "IM3"])
    for path in paths[1:]:  # written without the 128-byte preamble and DICM prefix
        dataset = pydicom.dcmread(path)
        dataset.preamble = None
        dataset.save_as(path, enforce_file_format=False)
        assert path.read_bytes()[128:132] != b"DICM"
    (cd / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)  # the CD's index: passed over
    table, said = _predict(committed, cd, tmp_path / "out")
    assert list(table.kind) == ["volume"] and table.slices[0] == 3 and not table.attrs["problems"]


def test_files_that_each_carry_their_own_series_uid_are_said(committed, slices, tmp_path):
    for k in range(3):
        write_dicom_series(slices[k:k + 1], tmp_path / "own", positions_mm=[5.0 * k], file_names=[f"IM{k}"])
    table, said = _predict(committed, tmp_path / "own", tmp_path / "out")
    assert list(table.kind) == ["slice"] * 3
    assert said.count("3 DICOM files, each with its own Series Instance UID and no shared Frame of Reference and "
                      "positions: segmented as separate slices") == 1


def test_a_nifti_without_orientation_codes_says_right_and_left_are_a_guess(committed, slices, tmp_path):
    image = nib.Nifti1Image(np.stack(slices, axis=-1).transpose(1, 0, 2), np.diag([-0.8, -0.8, 5.0, 1.0]))
    image.set_sform(None, code=0)
    image.set_qform(None, code=0)
    nib.save(image, tmp_path / "bare.nii")
    table, said = _predict(committed, tmp_path / "bare.nii", tmp_path / "out")
    assert len(table) == 1 and "no qform or sform code" in said and "right and left (labels 1 and 2) are a guess" in said


def test_segmenting_a_folder_into_itself_twice_never_takes_the_outputs_for_inputs(committed, slices, tmp_path):
    folder = tmp_path / "D"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.stack(slices, axis=-1).transpose(1, 0, 2), np.diag([-0.8, -0.8, 5.0, 1.0])),
             folder / "chest.nii.gz")
    first, _ = _predict(committed, folder, folder)
    second, said = _predict(committed, folder, folder)
    assert list(second.name) == ["chest"] and not second.attrs["problems"] and second.attrs["segmented"] == 1


def test_a_second_run_into_the_same_folder_at_once_is_refused(committed, real_data, real_names, tmp_path):
    from lungseg.outputs import OutputFolder

    busy = OutputFolder(tmp_path / "out")  # a run in progress holds the folder
    try:
        with pytest.raises(LungsegError, match="another lungseg run is writing into"):
            _predict(committed, real_data / "2d_images" / real_names[0], tmp_path / "out")
    finally:
        busy.close()
    assert len(_predict(committed, real_data / "2d_images" / real_names[0], tmp_path / "out")[0]) == 1


def test_an_interrupted_run_keeps_the_rows_of_the_scans_it_finished(committed, real_data, real_names, tmp_path,
                                                                   monkeypatch):
    model, record = committed
    network, calls = segmenting._scan_probabilities, []

    def interrupted_later(*args, **kwargs):  # Ctrl-C while the second slice is segmented
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return network(*args, **kwargs)

    monkeypatch.setattr(segmenting, "_scan_probabilities", interrupted_later)
    folder = tmp_path / "two"
    folder.mkdir()
    for name in real_names[:2]:
        (folder / name).write_bytes((real_data / "2d_images" / name).read_bytes())
    with pytest.raises(KeyboardInterrupt):
        scans.predict_scans(model, record, folder, tmp_path / "out", log=lambda line: None)
    monkeypatch.setattr(segmenting, "_scan_probabilities", network)
    assert pd.read_csv(tmp_path / "out" / "measurements.csv").name.tolist() == [real_names[0]]
    saved = json.loads((tmp_path / "out" / "measurements.json").read_text())
    assert f"{real_names[0]}_mask.png" in saved["outputs"]
    table, _ = _predict(committed, folder, tmp_path / "out")  # the re-run is not refused
    assert sorted(table.name) == sorted(real_names[:2]) and not table.attrs["problems"]


def test_a_damaged_measurements_csv_is_refused_before_segmenting(committed, real_data, real_names, tmp_path):
    output = tmp_path / "out"
    _predict(committed, real_data / "2d_images" / real_names[0], output)
    (output / "measurements.csv").write_bytes(b"\xff\xfe\x00broken")
    with pytest.raises(LungsegError, match="measurements.csv is damaged"):
        _predict(committed, real_data / "2d_images" / real_names[1], output)
    assert not (output / f"{real_names[1]}_mask.png").exists()


def test_the_current_folder_is_named_after_itself(committed, slices, tmp_path, monkeypatch):
    folder = tmp_path / "patient7"
    write_dicom_series(slices, folder, pixel_spacing_mm=(0.7, 0.7))
    monkeypatch.chdir(folder)
    table, _ = _predict(committed, ".", tmp_path / "out")
    assert list(table.name) == ["patient7"] and (tmp_path / "out" / "patient7_mask.nii.gz").is_file()
    assert table.input[0] == str(folder.resolve())


def test_an_output_folder_that_cannot_be_written_stops_before_segmenting(committed, real_data, real_names, tmp_path,
                                                                         monkeypatch):
    import os

    output = tmp_path / "readonly"
    output.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(output) else real_access(path, mode))
    with pytest.raises(LungsegError, match="readonly is not writable") as error:  # root may write anywhere: as a user
        _predict(committed, real_data / "2d_images" / real_names[0], output)
    assert "\n" not in str(error.value) and list(output.iterdir()) == []


# --------------------------------------------------------------------------- what cannot be a lung, or HU, is said
CIP = REPO_ROOT.parent / "shared" / "data" / "external-ct" / "cip-copdgene-64" / "ct-64Dicom"  # 4,554 mL of lung


@pytest.fixture(scope="module")
def cip_chest():
    """The CIP chest (a real whole chest CT, 79 slices of 64 x 64) in its own array axes and affine."""
    if not CIP.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")
    scan = scans.find_scans(CIP)[0][1]()
    return scans.from_model_axes(scan.hu, scan.orientation).astype(np.int16), scan.affine


def _nifti(folder, name, values, affine):
    folder.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(values, np.int16), affine), folder / f"{name}.nii.gz")


def test_volumes_that_cannot_be_a_human_lung_are_flagged_not_reported(committed, cip_chest, tmp_path):
    data, affine = cip_chest
    slices_100mm = affine.copy()
    slices_100mm[:3, 2] *= 100 / np.linalg.norm(affine[:3, 2])
    tiny_pixels = slices_100mm.copy()
    tiny_pixels[:3, :2] *= 0.01 / np.linalg.norm(affine[:3, 0])
    for name, grid in (("a_true", affine), ("b_slices_100mm", slices_100mm), ("c_geometry_lost", np.eye(4)),
                       ("d_tiny_pixels", tiny_pixels)):
        _nifti(tmp_path / "in", name, data, grid)
    table, said = _predict(committed, tmp_path / "in", tmp_path / "out")
    rows = table.set_index("name")
    assert rows.lung_volume_ml["a_true"] == pytest.approx(4554, rel=0.05) and pd.isna(rows.note["a_true"])
    flagged = ["b_slices_100mm", "c_geometry_lost", "d_tiny_pixels"]
    assert [f.split("/")[-1].split(".nii")[0] for f in table.attrs["flagged"]] == flagged and not table.attrs["problems"]
    for name in flagged:
        assert rows.note[name].startswith(scans.IMPLAUSIBLE) and f"{name}.nii.gz: {scans.IMPLAUSIBLE}" in said
        assert rows.loc[name, ["lung_volume_ml", "right_volume_ml", "left_volume_ml"]].isna().all()  # never a result
        assert (tmp_path / "out" / f"{name}_mask.nii.gz").is_file()  # the mask is still written: its voxels are right
    assert "more than any human lung holds" in rows.note["b_slices_100mm"]
    assert "the voxels are 1 x 1 x 1 mm, NIfTI's default when a file lost its geometry" in rows.note["c_geometry_lost"]
    assert "no lungs found" not in rows.note["d_tiny_pixels"] and "mm long" in rows.note["d_tiny_pixels"]
    saved = pd.read_csv(tmp_path / "out" / "measurements.csv").set_index("name")
    assert saved.lung_volume_ml.isna().tolist() == [False, True, True, True]


def test_a_few_stray_millilitres_are_no_lungs_not_a_wrong_voxel_size():
    """A scan with no lung (an abdomen) where the model calls a few mL lung: "no lungs found", not "check the
    voxel size", though the stray voxels lie whole in the scan; from 20 mL up, whole lungs under a newborn's
    150 mL mean the voxel size is wrong."""
    if not CIP.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")
    scan = scans.find_scans(CIP)[0][1]()
    voxel_ml = float(np.mean(scan.slice_thickness_mm)) * np.prod(scan.pixel_spacing_mm) / 1000
    for millilitres, expected in ((6, "no lungs found"), (60, scans.IMPLAUSIBLE)):
        labels = np.zeros(scan.hu.shape, np.uint8)
        blob = np.zeros(10 * 32 * 32, np.uint8)
        blob[: round(millilitres / voxel_ml)] = 1
        labels[35:45, 16:48, 16:48] = blob.reshape(10, 32, 32)  # lung-free slices above and below it
        row = scans.scan_measurements(scan, labels)
        assert row["note"].startswith(expected), (millilitres, row["note"])


def test_a_blank_slice_is_segmented_around(committed, cip_chest, tmp_path):
    data, affine = cip_chest
    blank = data.copy()
    blank[:, :, 39] = -1024  # the middle slice, one the air check reads: padding, or a gap in a scout
    _nifti(tmp_path / "in", "blank_slice", blank, affine)
    table, said = _predict(committed, tmp_path / "in", tmp_path / "out")
    assert not table.attrs["problems"] and table.name.tolist() == ["blank_slice"]
    assert table.lung_volume_ml[0] == pytest.approx(4554, rel=0.07)  # one slice of 79 missing from the lungs


def test_one_scans_unexpected_failure_is_one_line_and_the_next_scans_run(committed, cip_chest, tmp_path, monkeypatch):
    data, affine = cip_chest
    for name in ("a_first", "b_breaks", "c_last"):
        _nifti(tmp_path / "in", name, data, affine)
    segment = scans.segment_scan

    def breaks_on_b(model, scan, *args, **kwargs):
        if scan.name.startswith("b_"):
            raise IndexError("index 0 is out of bounds for axis 0 with size 0")
        return segment(model, scan, *args, **kwargs)
    monkeypatch.setattr(scans, "segment_scan", breaks_on_b)
    table, said = _predict(committed, tmp_path / "in", tmp_path / "out")
    assert table.name.tolist() == ["a_first", "c_last"] and len(table.attrs["problems"]) == 1
    problem = table.attrs["problems"][0]
    assert "b_breaks.nii.gz: an unexpected IndexError (index 0 is out of bounds" in problem and "\n" not in problem
    assert f"not segmented: {problem}" in said.splitlines()


def test_a_second_series_of_a_folder_is_added_never_replacing_the_first(committed, slices, tmp_path):
    folder = tmp_path / "two_patients"
    write_dicom_series(slices, folder, pixel_spacing_mm=(0.7, 0.7), series_uid="1.2.826.0.1.111111",
                       file_names=[f"A{k}.dcm" for k in range(6)])
    write_dicom_series(slices[:4], folder, pixel_spacing_mm=(0.7, 0.7), series_uid="1.2.826.0.1.222222",
                       file_names=[f"B{k}.dcm" for k in range(4)])
    first, said = _predict(committed, folder, tmp_path / "out")  # the largest series: A
    assert first.name.tolist() == ["two_patients_series111111"] and "(--series 1.2.826.0.1.222222) chooses it" in said
    mask_a = (tmp_path / "out" / "two_patients_series111111_mask.nii.gz").read_bytes()
    second, _ = _predict(committed, folder, tmp_path / "out", series="1.2.826.0.1.222222")
    assert second.name.tolist() == ["two_patients_series111111", "two_patients_series222222"]
    assert second.slices.tolist() == [6, 4]
    assert (tmp_path / "out" / "two_patients_series111111_mask.nii.gz").read_bytes() == mask_a  # A's left as it was
    assert len(pd.read_csv(tmp_path / "out" / "measurements.csv")) == 2


def test_one_lung_is_measured_as_one_lung(committed, cip_chest, tmp_path):
    """A pneumonectomy, built from the CIP chest: its left lung (as the model finds it) filled with fluid."""
    data, affine = cip_chest
    _nifti(tmp_path / "in", "chest", data, affine)
    both, _ = _predict(committed, tmp_path / "in", tmp_path / "out")
    labels = np.asarray(nib.load(tmp_path / "out" / "chest_mask.nii.gz").dataobj)  # on the input's grid
    fluid = data.copy()
    fluid[labels == 2] = np.random.default_rng(0).normal(20, 15, (labels == 2).sum()).round()
    _nifti(tmp_path / "in2", "pneumonectomy", fluid, affine)
    one, said = _predict(committed, tmp_path / "in2", tmp_path / "out2")
    assert both.left_volume_ml[0] > 1500  # the intact chest: two lungs
    assert one.left_volume_ml[0] == 0 and one.right_volume_ml[0] == pytest.approx(both.right_volume_ml[0], rel=0.1)
    assert one.note[0].startswith("one lung found, the right; the left lung is 0 mL") and "one lung found" in said


def test_a_mask_that_is_not_lung_from_a_phantom_model_blames_the_model_not_the_scan(committed, cip_chest, tmp_path,
                                                                                    monkeypatch):
    data, affine = cip_chest
    _nifti(tmp_path / "in", "chest", data, affine)
    monkeypatch.setattr(scans, "segment_scan", lambda model, scan, *args, **kwargs: (scan.hu > -100).astype(np.uint8))
    model, record = committed
    for synthetic, expected in ((True, "the model learnt SYNTHETIC phantoms"), (False, "its values are not HU")):
        table = scans.predict_scans(model, {**record, "synthetic": synthetic}, tmp_path / "in",
                                    tmp_path / f"out{synthetic}", log=lambda *args: None)
        assert expected in table.attrs["problems"][0] and len(table) == 0


def test_predict_sh_exits_non_zero_when_a_scan_is_flagged(cip_chest, tmp_path):
    import subprocess

    data, _ = cip_chest
    _nifti(tmp_path, "pngs", data, np.eye(4))
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "predict.sh"), str(tmp_path / "pngs.nii.gz"),
                           str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 1 and "1 scan(s) segmented but not measured" in done.stdout
    assert scans.IMPLAUSIBLE in done.stderr
    assert "start-up" in done.stdout and "79 slices, in" in done.stdout  # start-up said apart from the scan's time


def test_values_off_hu_are_told_by_the_air_around_the_patient(committed, cip_chest, tmp_path):
    data, affine = cip_chest
    field_of_view = np.hypot(*np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5, indexing="ij")) <= 31
    padded = np.where(field_of_view[..., None], data, -3024)  # the scanner's padding outside the field of view
    _nifti(tmp_path / "in", "a_true", data, affine)
    _nifti(tmp_path / "in", "b_plus_1024", padded + 1024, affine)  # padding reads -2000, air +24
    _nifti(tmp_path / "in", "c_intercept_twice", data - 1024, affine)  # air -2048
    _nifti(tmp_path / "in", "d_scaled", np.round(data * 0.8), affine)  # as the Kaggle slices are stored
    assert np.min(padded + 1024) == -2000 and np.min(data) < -500 and np.max(data) > 0  # a min/max check passes
    table, said = _predict(committed, tmp_path / "in", tmp_path / "out")
    problems = table.attrs["problems"]
    assert list(table.name) == ["a_true", "d_scaled"] and len(problems) == 2
    assert "b_plus_1024.nii.gz: the air around the patient reads +" in problems[0]
    assert "look like HU+1024" in problems[0] and "Subtract 1024" in problems[0]
    assert "c_intercept_twice.nii.gz: the air around the patient reads -" in problems[1]
    assert "intercept applied twice" in problems[1] and "Add 1024" in problems[1]
    assert "d_scaled.nii.gz: the air around the patient reads -" in said and "look scaled by 0.7" in said
    assert "a_true.nii.gz: the air" not in said
    readings = {name: scans.outside_air_hu(scans.read_nifti(tmp_path / "in" / f"{name}.nii.gz").hu)
                for name in ("a_true", "b_plus_1024", "c_intercept_twice")}
    assert readings["a_true"] == pytest.approx(-1000, abs=60)  # 4 mm pixels: the air's edge blurs into the body
    assert readings["b_plus_1024"] - readings["a_true"] == pytest.approx(1024, abs=60)  # the padding left out
    assert readings["a_true"] - readings["c_intercept_twice"] == pytest.approx(1024, abs=60)


# --------------------------------------------------------------------------- a mask a DICOM viewer opens
def test_a_dicom_series_gets_a_dicom_seg_on_its_source_frames_equal_to_the_nifti_mask(committed, tmp_path):
    import highdicom as hd

    if not CIP.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")
    table, _ = _predict(committed, CIP, tmp_path / "out")
    seg = hd.seg.segread(table.dicom_seg[0])
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: pydicom.dcmread(f, stop_before_pixels=True)
               for f in sorted(CIP.iterdir())}
    assert seg.Modality == "SEG" and seg.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources.values()}
    assert [(s.SegmentNumber, s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in
            seg.SegmentSequence] == [(1, "Right lung", "3341006"), (2, "Left lung", "44029006")]
    assert all(s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "lungseg" and
               s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "resunet" for s in seg.SegmentSequence)
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame lies on the source instance it references
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                   sources[uid].ImagePositionPatient, atol=1e-3)
    order = sorted(sources, key=lambda uid: float(sources[uid].ImagePositionPatient[2]))  # the series going up
    labels = seg.get_pixels_by_source_instance(order, combine_segments=True)  # 0, 1 right, 2 left per source frame
    nifti = np.asarray(nib.load(table["mask"][0]).dataobj).transpose(2, 1, 0)  # (column, row, slice) -> frames
    assert labels.shape == nifti.shape == (79, 64, 64) and (nifti == 1).sum() > 1000 and (nifti == 2).sum() > 1000
    np.testing.assert_array_equal(labels, nifti)  # voxel for voxel


def test_a_nifti_gets_no_dicom_seg(committed, slices, tmp_path):
    nib.save(nib.Nifti1Image(np.stack(slices, axis=-1).transpose(1, 0, 2), np.diag([-0.8, -0.8, 5.0, 1.0])),
             tmp_path / "chest.nii.gz")
    table, _ = _predict(committed, tmp_path / "chest.nii.gz", tmp_path / "out")
    assert "dicom_seg" not in table and not list((tmp_path / "out").glob("*.dcm"))


def test_a_series_lacking_what_a_seg_needs_keeps_its_nifti_mask_and_says_why(committed, slices, tmp_path):
    import highdicom as hd

    plain = write_dicom_series(slices, tmp_path / "plain", pixel_spacing_mm=(0.7, 0.7), slice_spacing_mm=5.0)
    assert "PatientID" not in pydicom.dcmread(plain[0])  # type 2, often left out: written empty in the SEG
    table, said = _predict(committed, plain[0].parent, tmp_path / "out1")
    assert hd.seg.segread(table.dicom_seg[0]).PatientID == "" and "no DICOM Segmentation" not in said
    folder = _series_without(slices, tmp_path / "no_frame", "FrameOfReferenceUID")
    table, said = _predict(committed, folder, tmp_path / "out2")
    assert table.lung_volume_ml[0] > 0 and not table.attrs["problems"] and not list((tmp_path / "out2").glob("*.dcm"))
    assert "no_frame: no DICOM Segmentation written (ValueError: Source images have no Frame Of Reference UID" in said
    assert "no_frame_mask.nii.gz holds the same labels" in said


def test_the_own_scan_path_computes_what_keras_predict_computes(committed, slices):
    model, record = committed
    volume = slices * 3  # 18 slices: two full batches of 8 and a shorter one
    fast = segmenting._scan_probabilities(model, volume, record, batch_size=8)
    keras_predict = lu.predict_probabilities(model, volume, record, batch_size=8)
    assert len(fast) == 18 and all(np.array_equal(a, b) for a, b in zip(fast, keras_predict))  # to the last bit


def test_a_zip_of_dicom_names_the_command_that_extracts_it_and_that_command_works(committed, tmp_path):
    import subprocess
    import sys
    import zipfile

    if not CIP.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")
    with zipfile.ZipFile(tmp_path / "chest.zip", "w") as archive:
        for file in sorted(CIP.iterdir()):
            archive.write(file, f"ct-64Dicom/{file.name}")
    table, _ = _predict(committed, tmp_path / "chest.zip", tmp_path / "out")
    problem = table.attrs["problems"][0]
    assert "chest.zip: a zip archive" in problem and "python -m zipfile -e" in problem
    command = problem.split(": python ")[1].split(" (in a notebook")[0]  # the command, as the user would run it
    subprocess.run([sys.executable, *command.replace("'", "").split()], check=True)
    table, _ = _predict(committed, tmp_path / "chest", tmp_path / "out")
    assert table.slices.iloc[-1] == 79 and table.lung_volume_ml.iloc[-1] > 4000


def test_a_file_named_like_an_option_gets_the_dot_slash_hint(tmp_path):
    import subprocess

    (tmp_path / "-scan.nii.gz").write_bytes(b"")
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "predict.sh"), "-scan.nii.gz"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 2 and "give the file as ./-scan.nii.gz" in done.stderr
