"""DICOM plumbing: whether a compressed file can be decoded here (and which package would), and
writing CT slices in HU as a DICOM series with pydicom (the tests' series: rescale slope/intercept, shuffled
file names, a localizer, uneven spacing), and a mask as a DICOM Segmentation (highdicom)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from lungseg.errors import LungsegError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def check_decodable(dataset, path) -> None:
    """A compressed DICOM file whose decoder is missing raises LungsegError naming the compression
    (transfer syntax) and the packages that decode it, instead of pydicom's multi-line error."""
    from pydicom.pixels import get_decoder

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


# The anatomic codes of the two segments (SNOMED CT, as DICOM's CID 7150 "Segmentation Property
# Categories" and the lung entries of its anatomic context groups give them).
RIGHT_LUNG = ("3341006", "SCT", "Right lung")
LEFT_LUNG = ("44029006", "SCT", "Left lung")


def write_dicom_seg(source_files, frames: np.ndarray, path, model_name: str) -> Path:
    """A DICOM Segmentation object (highdicom) for a CT series: ``frames[k]`` (rows x columns, 0 background,
    1 right lung, 2 left lung) lies on ``source_files[k]``, which it references instance by instance, so a
    viewer (3D Slicer's DICOM module, OHIF, a PACS) shows it on the source frames. Two segments, coded
    as right and left lung; the algorithm identification names lungseg and the model."""
    from importlib.metadata import version

    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    software = f"lungseg, keras {version('keras')}"
    sources = [_complete(pydicom.dcmread(file, stop_before_pixels=True, force=True), file) for file in source_files]
    algorithm = hd.AlgorithmIdentificationSequence(name="lungseg", family=codes.DCM.ArtificialIntelligence,
                                                   version=model_name or "unknown")
    segments = [hd.seg.SegmentDescription(segment_number=number, segment_label=code[2],
                                          segmented_property_category=codes.SCT.AnatomicalStructure,
                                          segmented_property_type=Code(*code),
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                          algorithm_identification=algorithm)
                for number, code in ((1, RIGHT_LUNG), (2, LEFT_LUNG))]
    with warnings.catch_warnings():  # the source's patient name is copied as it is, e.g. "Anonymous"
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=np.asarray(frames, np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
            series_instance_uid=hd.UID(), series_number=int(sources[0].get("SeriesNumber") or 0) + 1000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lungseg",
            manufacturer_model_name=model_name or "lungseg", software_versions=software,
            device_serial_number="none", series_description=f"lungseg {model_name} lungs".strip())
    seg.save_as(path)
    return Path(path)


# Attributes a SEG copies from its source that DICOM lets a file leave empty (type 2) but not out, and
# that real files do leave out (the LIDC slices have no PatientID): empty in the copies read for it.
TYPE_2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")


def _complete(dataset, path):
    """The copy of a source header that a SEG is made from: the instance's UIDs from its file meta where the
    data set leaves them empty, the type 2 attributes present; without a study to belong to, no SEG."""
    meta = getattr(dataset, "file_meta", None)
    for key, meta_key, default in (("SOPClassUID", "MediaStorageSOPClassUID", CT_IMAGE_STORAGE),
                                   ("SOPInstanceUID", "MediaStorageSOPInstanceUID", "")):
        if not str(dataset.get(key) or ""):
            setattr(dataset, key, str(getattr(meta, meta_key, "") or default))
    for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(dataset.get(key) or ""):
            raise ValueError(f"{Path(path).name} has no {key} (anonymised?): a SEG could not be placed in its study")
    if not dataset.get("Modality"):
        dataset.Modality = "CT"  # only CT is segmented (its SOP class said so)
    for key in TYPE_2:
        if key not in dataset:
            setattr(dataset, key, "")
    return dataset
