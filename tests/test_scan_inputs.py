"""Your own scans as users have them (issue 39, items 5 and 6): a folder with more than the CT in it, files
written in ways lungseg once refused or misread. Each case is built from real data (the CIP chest of
../shared, the Kaggle slices) and run through ``predict_scans``, the path of ``scripts/predict.sh``."""

from __future__ import annotations

import shutil

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from lungseg import scans

from conftest import REPO_ROOT

CIP_FOLDER = REPO_ROOT.parent / "shared" / "data" / "external-ct" / "cip-copdgene-64"
CIP_ML = 4_557  # the CIP chest's lung as the committed Residual U-Net measures it from its DICOM series (about)


def _predict(committed, source, output, **options):
    lines = []
    model, record = committed
    table = scans.predict_scans(model, record, source, output, model_name="resunet", log=lines.append, **options)
    return table, "\n".join(lines)


@pytest.fixture(scope="module")
def cip_series(tmp_path_factory):
    """A copy of the CIP chest's DICOM series (79 real slices) and its lung volume through the usual path."""
    if not CIP_FOLDER.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")
    folder = tmp_path_factory.mktemp("cip") / "chest"
    shutil.copytree(CIP_FOLDER / "ct-64Dicom", folder)
    return folder


@pytest.fixture(scope="module")
def cip_volume(cip_series):
    """The CIP chest as an array in its own axes (int16 HU) and its RAS affine."""
    scan = scans.find_scans(cip_series)[0][1]()
    return scans.from_model_axes(scan.hu, scan.orientation).astype(np.int16), scan.affine


@pytest.fixture(scope="module")
def reference_ml(committed, cip_series, tmp_path_factory):
    table, _ = _predict(committed, cip_series, tmp_path_factory.mktemp("reference"))
    return float(table.iloc[-1].lung_volume_ml)


def _copy(folder, target):
    shutil.copytree(folder, target)
    return target


def _rewrite(path, **values):
    dataset = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(dataset, key, value)
    dataset.save_as(path)


# ---------------------------------------------------------------------------------------- the folder as users have it
def test_objects_beside_the_series_are_passed_over_and_never_offered(committed, cip_series, reference_ml, tmp_path):
    folder = _copy(cip_series, tmp_path / "with-others")
    files = sorted(folder.iterdir())
    report = folder / "report.dcm"  # a structured report: the CT's header with the SR's modality and class
    shutil.copy(files[0], report)
    _rewrite(report, Modality="SR", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11", SeriesInstanceUID=generate_uid(),
             SOPInstanceUID=generate_uid())
    scout = folder / "scout.dcm"  # a localizer in a series of its own: never a --series choice
    shutil.copy(files[40], scout)
    _rewrite(scout, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesInstanceUID=generate_uid(),
             SOPInstanceUID=generate_uid())
    dose = folder / "dose.dcm"  # a dose screen: Modality CT, stored as a secondary capture
    shutil.copy(files[1], dose)
    _rewrite(dose, SOPClassUID="1.2.840.10008.5.1.4.1.1.7", SeriesInstanceUID=generate_uid(),
             SOPInstanceUID=generate_uid())
    table, said = _predict(committed, folder, tmp_path / "out")
    assert table.attrs["problems"] == [] and len(table) == 1
    assert "1 file(s) passed over, a structured report (SR), not a CT image (e.g. report.dcm)" in said
    assert "a localizer (scout), not a cross-section (e.g. scout.dcm)" in said
    assert "a secondary capture (a dose screen or a screenshot), not a CT image (e.g. dose.dcm)" in said
    assert "also holds series" not in said  # the scout is not offered as a series to segment
    assert table.iloc[-1].lung_volume_ml == pytest.approx(reference_ml, rel=1e-6)
    table, said = _predict(committed, report, tmp_path / "alone")  # given alone, it is refused, with the reason
    assert table.attrs["problems"] and "a structured report (SR), not a CT image" in table.attrs["problems"][0]


def test_an_image_copied_twice_is_read_once(committed, cip_series, reference_ml, tmp_path):
    folder = _copy(cip_series, tmp_path / "copied")
    first = sorted(folder.iterdir())[10]
    shutil.copy(first, folder / f"{first.stem} (1){first.suffix}")
    table, said = _predict(committed, folder, tmp_path / "out")
    assert table.attrs["problems"] == []
    assert "1 file(s) hold an image already read (the same SOP Instance UID" in said and "each read once" in said
    assert table.iloc[-1].lung_volume_ml == pytest.approx(reference_ml, rel=1e-6)


def test_slices_each_with_their_own_series_uid_are_one_scan_when_they_share_a_frame_of_reference(
        committed, cip_series, reference_ml, tmp_path):
    folder = _copy(cip_series, tmp_path / "split")
    for path in folder.iterdir():
        _rewrite(path, SeriesInstanceUID=generate_uid())
    table, said = _predict(committed, folder, tmp_path / "out")
    assert len(table) == 1 and table.attrs["problems"] == []
    assert "79 DICOM files, each with its own Series Instance UID, share one Frame of Reference" in said
    assert table.iloc[-1].lung_volume_ml == pytest.approx(reference_ml, rel=1e-6)
    for path in folder.iterdir():  # without a shared Frame of Reference they stay slices, and the fix is named
        _rewrite(path, FrameOfReferenceUID=generate_uid())
    table, said = _predict(committed, folder, tmp_path / "slices")
    assert len(table) == 79 and "no shared Frame of Reference and positions: segmented as separate slices" in said


def test_a_series_without_orientation_says_its_sides_are_a_guess_and_why_it_has_no_seg(committed, cip_series,
                                                                                       tmp_path):
    folder = _copy(cip_series, tmp_path / "no-orientation")
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        del dataset.ImageOrientationPatient
        dataset.save_as(path)
    table, said = _predict(committed, folder, tmp_path / "out")
    assert table.attrs["problems"] == [] and table.iloc[-1].lung_volume_ml > 3000
    assert "no Image Orientation (Patient), so the slices are taken as axial" in said and "are a guess" in said
    assert ("no DICOM Segmentation written: the series has no Image Orientation (Patient), which a DICOM "
            "Segmentation must state for its frames; no-orientation_mask.nii.gz holds the labels") in said
    assert "AttributeError" not in said


def test_an_8_bit_dicom_is_refused_as_such(committed, cip_series, tmp_path):
    folder = _copy(cip_series, tmp_path / "eight-bit")
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        pixels = np.clip((dataset.pixel_array.astype(np.float32) - 24) / 8, 0, 255).astype(np.uint8)  # a window
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
        dataset.PixelData = pixels.tobytes()
        dataset.RescaleIntercept, dataset.RescaleSlope = 0, 1
        dataset.save_as(path)
    table, _ = _predict(committed, folder, tmp_path / "out")
    assert len(table.attrs["problems"]) == 1
    assert "8-bit pixels (BitsStored 8" in table.attrs["problems"][0] and "if it is a PNG" not in table.attrs["problems"][0]


# ---------------------------------------------------------------------------------------------- files, read right
def test_nrrd_is_read_and_a_label_map_beside_it_is_passed_over(committed, reference_ml, tmp_path):
    if not CIP_FOLDER.is_dir():
        pytest.skip("../shared/data/external-ct is not beside the repository")
    folder = tmp_path / "nrrd"
    folder.mkdir()
    shutil.copy(CIP_FOLDER / "ct-64.nrrd", folder)
    shutil.copy(CIP_FOLDER / "wholeLung-64.nrrd", folder)
    table, said = _predict(committed, folder, tmp_path / "out")
    assert table.attrs["problems"] == [] and table.name.tolist() == ["ct-64"]
    assert "wholeLung-64.nrrd: a mask or label map (values 0, 1), not a CT in HU: passed over." in said
    assert table.iloc[-1].lung_volume_ml == pytest.approx(reference_ml, rel=0.01)  # the same chest as the DICOM
    mask = nib.load(table.iloc[-1]["mask"])
    assert mask.shape == tuple(int(v) for v in __import__("nrrd").read_header(str(CIP_FOLDER / "ct-64.nrrd"))["sizes"])
    table, _ = _predict(committed, folder / "wholeLung-64.nrrd", tmp_path / "alone")  # given alone: refused
    assert table.attrs["problems"] and "not a CT in HU" in table.attrs["problems"][0]


def test_nan_outside_the_field_of_view_is_air(committed, cip_volume, reference_ml, tmp_path):
    data, affine = cip_volume
    values = data.astype(np.float32)
    values[:, :3] = np.nan  # three rows of the field of view, in every slice
    nib.save(nib.Nifti1Image(values, affine), tmp_path / "nan.nii.gz")
    table, said = _predict(committed, tmp_path / "nan.nii.gz", tmp_path / "out")
    assert table.attrs["problems"] == []
    assert "are NaN or infinite (outside the field of view?): taken as air, -1024 HU" in said
    assert table.iloc[-1].lung_volume_ml == pytest.approx(reference_ml, rel=0.03)


def test_a_plain_nii_named_nii_gz_is_read_and_the_rename_said(committed, cip_volume, reference_ml, tmp_path):
    data, affine = cip_volume
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "plain.nii")
    (tmp_path / "plain.nii").rename(tmp_path / "plain.nii.gz")
    table, said = _predict(committed, tmp_path / "plain.nii.gz", tmp_path / "out")
    assert table.attrs["problems"] == [] and "named .nii.gz but not gzipped, a plain .nii" in said
    assert table.iloc[-1].lung_volume_ml == pytest.approx(reference_ml, rel=0.01)


def test_disagreeing_qform_and_sform_are_named_and_the_mask_keeps_both(committed, cip_volume, tmp_path):
    data, affine = cip_volume
    image = nib.Nifti1Image(data, affine)
    mirrored = np.diag([-1.0, 1, 1, 1]) @ affine  # the qform mirrors the sform left-right
    image.set_qform(mirrored, 1)
    image.set_sform(affine, 2)
    nib.save(image, tmp_path / "forms.nii.gz")
    table, said = _predict(committed, tmp_path / "forms.nii.gz", tmp_path / "out")
    codes = "".join(nib.aff2axcodes(mirrored)), "".join(nib.aff2axcodes(affine))
    assert f"its qform ({codes[0]}" in said and f"and sform ({codes[1]}" in said and codes[0] != codes[1]
    assert "disagree: the sform is used" in said and "keeps both" in said
    written = nib.load(table.iloc[-1]["mask"])
    assert np.allclose(written.get_qform(), mirrored, atol=1e-3) and int(written.header["qform_code"]) == 1
    assert np.allclose(written.get_sform(), affine, atol=1e-3) and int(written.header["sform_code"]) == 2


def test_hu_plus_1024_without_padding_gets_the_subtract_1024_fix(committed, cip_volume, tmp_path):
    data, affine = cip_volume
    shifted = np.clip(data, -1024, None).astype(np.int32) + 1024  # no padding: the air is the darkest value
    nib.save(nib.Nifti1Image(shifted.astype(np.int16), affine), tmp_path / "plus1024.nii.gz")
    table, _ = _predict(committed, tmp_path / "plus1024.nii.gz", tmp_path / "out")
    problem = table.attrs["problems"][0]
    assert "look like HU+1024" in problem and "Subtract 1024" in problem and "if it is a PNG" not in problem


def test_a_png_clipped_at_0_is_refused_with_the_fix(committed, real_data, real_names, slices, tmp_path):
    hu = slices[0]
    cv2.imwrite(str(tmp_path / "clipped.png"), np.clip(hu, 0, 65535).astype(np.uint16))  # HU without +1024
    cv2.imwrite(str(tmp_path / "right.png"), np.clip(hu.astype(np.int32) + 1024, 0, 65535).astype(np.uint16))
    table, _ = _predict(committed, tmp_path, tmp_path / "out")
    assert table.name.tolist() == ["right.png"] and table.iloc[-1].lung_pixels > 10_000
    assert len(table.attrs["problems"]) == 1 and "clipped.png" in table.attrs["problems"][0]
    assert "looks clipped at 0, HU saved without the +1024" in table.attrs["problems"][0]


def test_a_multi_page_tiff_is_read_as_a_volume_and_measured_only_with_its_voxel_size(committed, cip_series,
                                                                                     reference_ml, tmp_path):
    import tifffile

    scan = scans.find_scans(cip_series)[0][1]()  # hu[slice, row, column], slices from the feet up
    rows, columns = scan.pixel_spacing_mm
    tifffile.imwrite(tmp_path / "fiji.tif", scan.hu.astype(np.float32), imagej=True,
                     resolution=(1 / columns, 1 / rows), metadata={"spacing": float(scan.slice_thickness_mm[0]),
                                                                  "unit": "mm"})
    table, said = _predict(committed, tmp_path / "fiji.tif", tmp_path / "out")
    assert table.attrs["problems"] == [] and table.attrs["flagged"] == []
    assert "a TIFF stack of 79 pages, taken as axial slices from the feet up" in said
    assert table.iloc[-1].lung_volume_ml == pytest.approx(reference_ml, rel=0.01)
    tifffile.imwrite(tmp_path / "plain.tif", scan.hu.astype(np.int16))  # no voxel size: segmented, not measured
    table, said = _predict(committed, tmp_path / "plain.tif", tmp_path / "plain")
    assert len(table.attrs["flagged"]) == 1 and np.isnan(table.iloc[-1].lung_volume_ml)
    assert table.iloc[-1].note.startswith("no voxel size in the file, so not measured")
    assert (tmp_path / "plain" / "plain_mask.nii.gz").is_file() and table.iloc[-1].lung_pixels > 10_000


# ------------------------------------------------------------------------------------ a field of view that cuts lung
def test_a_field_of_view_that_cuts_the_lungs_is_flagged_not_measured(committed, cip_volume, reference_ml, tmp_path):
    data, affine = cip_volume  # axis 0 runs from the patient's right to left
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "whole.nii.gz")
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, :3] @ [8, 0, 0] + affine[:3, 3]  # columns 8..55: both lungs cut at their sides
    nib.save(nib.Nifti1Image(data[8:56], cropped), tmp_path / "cut.nii.gz")
    table, said = _predict(committed, tmp_path, tmp_path / "out")
    rows = table.set_index("name")
    assert rows.loc["whole"].lung_volume_ml == pytest.approx(reference_ml, rel=0.01)  # the chest held whole: measured
    assert np.isnan(rows.loc["cut"].lung_volume_ml) and rows.loc["cut"].note.startswith(
        "the field of view cuts the lungs, so not measured: lung runs onto the edge of the image over")
    assert table.attrs["flagged"] == [f"{tmp_path / 'cut.nii.gz'}: {rows.loc['cut'].note}"]
    assert (tmp_path / "out" / "cut_mask.nii.gz").is_file() and rows.loc["cut"].lung_pixels > 1000  # the mask is kept


def test_a_round_field_of_view_that_cuts_the_lungs_is_flagged_not_called_lung_free(committed, cip_volume, tmp_path):
    data, affine = cip_volume
    x, y = np.mgrid[: data.shape[0], : data.shape[1]]
    for radius in (40, 26):  # padding (-3024) outside a disc: wider than the chest, then through both lungs
        disc = (x - (data.shape[0] - 1) / 2) ** 2 + (y - (data.shape[1] - 1) / 2) ** 2 <= radius**2
        nib.save(nib.Nifti1Image(np.where(disc[:, :, None], data, -3024).astype(np.int16), affine),
                 tmp_path / f"disc{radius}.nii.gz")
    table, _ = _predict(committed, tmp_path, tmp_path / "out")
    rows = table.set_index("name")
    assert rows.loc["disc40"].lung_volume_ml > 4000 and not isinstance(rows.loc["disc40"].note, str)
    assert rows.loc["disc26"].note.startswith("the field of view cuts the lungs, so not measured")  # not "no lungs"
    assert len(table.attrs["flagged"]) == 1
