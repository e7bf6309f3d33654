"""DICOM plumbing: whether a compressed file can be decoded here (and which package would), and
writing CT slices in HU as a DICOM series with pydicom (05_evaluate's demonstration of the volume
path, and the tests' series: rescale slope/intercept, shuffled file names, a localizer, uneven spacing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def check_decodable(dataset, path) -> None:
    """A compressed DICOM file whose decoder is missing raises LungsegError naming the compression
    (transfer syntax) and the packages that decode it, instead of pydicom's multi-line error."""
    from pydicom.pixels import get_decoder

    from lungseg_utils import LungsegError

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise LungsegError(f"{path}: compressed as {syntax.name} ({syntax}), which pydicom cannot decode. Convert "
                           "the series to uncompressed DICOM (e.g. gdcmconv --raw) or to NIfTI (dcm2niix).") from None
    if not decoder.is_available:
        needs = "; or ".join(decoder.missing_dependencies)
        raise LungsegError(f"{path}: compressed as {syntax.name} ({syntax}); decoding it needs {needs}. Install one "
                           "(pip install, into the environment lungseg runs in) and run again.")


def write_dicom_series(slices_hu, folder, *, pixel_spacing_mm=(0.8, 0.8), positions_mm=None, slice_spacing_mm=5.0,
                       slope=1.0, intercept=-1024.0, orientation=(1, 0, 0, 0, 1, 0), series_uid=None,
                       file_names=None, modality="CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                       description="") -> list[Path]:
    """Write 2-D slices in HU as one series, one file per slice, stored as (HU - intercept) / slope in 16 bits.

    Slice ``k`` lies at ``positions_mm[k]`` along the normal of ``orientation`` (default ``k *
    slice_spacing_mm``). Returns the paths. The folder must not hold files of the same names."""
    from pydicom.dataset import FileMetaDataset, Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slices = [np.asarray(s) for s in slices_hu]
    positions = list(positions_mm) if positions_mm is not None else [k * slice_spacing_mm for k in range(len(slices))]
    names = list(file_names) if file_names is not None else [f"slice_{k:03d}.dcm" for k in range(len(slices))]
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    row_direction, column_direction = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_direction, column_direction)
    written = []
    for index, (hu, position, name) in enumerate(zip(slices, positions, names)):
        stored = np.round((hu.astype(np.float64) - intercept) / slope)
        signed = stored.min() < 0  # e.g. padding below -1024 HU: scanners then store signed int16
        if stored.min() < -32768 or stored.max() > (32767 if signed else 65535):
            raise ValueError(f"slice {index}: HU {hu.min()}..{hu.max()} do not fit 16 bits with this slope/intercept")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE_STORAGE, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID, dataset.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        dataset.Modality, dataset.ImageType = modality, list(image_type)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        dataset.SeriesDescription, dataset.InstanceNumber = description, index + 1
        dataset.ImageOrientationPatient = [float(v) for v in orientation]
        dataset.ImagePositionPatient = [float(v) for v in position * normal]
        dataset.PixelSpacing = [float(v) for v in pixel_spacing_mm]
        dataset.SliceThickness = float(slice_spacing_mm)
        dataset.Rows, dataset.Columns = hu.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.PixelRepresentation = int(signed)
        dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
        dataset.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
        path = folder / name
        if path.exists():
            raise FileExistsError(f"{path} exists: write the series into a new folder")
        dataset.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
