"""Opening the files a CT slice comes in, with errors that name the file and the fix. ``read_slice``
(notebook 01, in ``lungseg_utils``) shows how each format becomes Hounsfield units and calls these
for the rest: which files are DICOM, decoders, OpenCV's quiet reading, and what a slice must be."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from lungseg.errors import LungsegError


def check_suffix(path, suffixes) -> Path:
    """``path`` as a Path, if its suffix is one of ``suffixes`` or it is DICOM; else a clear error."""
    path = Path(path)
    if path.suffix.lower() not in suffixes and not is_dicom(path):
        raise LungsegError(f"{path}: unsupported file type {path.suffix.lower()!r}; use one of {', '.join(suffixes)}.")
    return path


@contextlib.contextmanager
def named_errors(path):
    """Any error while reading ``path`` (tifffile, pydicom and OpenCV raise many kinds) becomes one
    LungsegError that names the file and what to do."""
    try:
        yield
    except LungsegError:
        raise
    except Exception as error:
        raise LungsegError(f"{path}: unreadable or corrupt image ({type(error).__name__}: {error}). "
                           "Re-download or re-export this file, or remove it together with its mask.") from error


def is_dicom(path) -> bool:
    """A ``.dcm`` file, a file with the DICOM preamble, or a file without a suffix that pydicom reads as an
    image (files of a series often have no suffix, and some no preamble)."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            if handle.read(132)[128:] == b"DICM":
                return True
    except OSError:
        return False
    if path.suffix or path.name.upper() == "DICOMDIR":
        return False
    try:
        import pydicom

        header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        return "Rows" in header and "SOPClassUID" in header
    except Exception:  # not DICOM: pydicom raises many kinds
        return False


def read_dicom(path):
    """A DICOM file with pydicom, also one written without the 128-byte preamble; a compressed one whose
    decoder is missing is named with its transfer syntax and the package to install."""
    import pydicom

    from lungseg.dicom import check_decodable

    dataset = pydicom.dcmread(path, force=True)
    check_decodable(dataset, path)
    return dataset


def read_unchanged(path) -> np.ndarray:
    """``cv2.imread(path, IMREAD_UNCHANGED)`` (all bits kept), without OpenCV's own log lines on a bad file."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if array is None:
        raise OSError("OpenCV could not decode it")
    return array


def read_tiff(path) -> np.ndarray:
    """A TIFF as stored (tifffile); the compressions tifffile needs imagecodecs for (LZW) through OpenCV,
    which keeps the bits too."""
    import tifffile

    try:
        return tifffile.imread(path)
    except ValueError as error:
        if "imagecodecs" not in str(error):
            raise
        return read_unchanged(path)


def check_slice(array, path) -> np.ndarray:
    """What was read must be one 2-D slice (not a colour image, not a stack)."""
    array = np.asarray(array)
    if array.size == 0:
        raise LungsegError(f"{path}: unreadable or corrupt image (no pixel data). Re-download or re-export it.")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise LungsegError(f"{path}: a colour image {array.shape}; a CT slice has one channel in HU.")
    if array.ndim != 2:
        raise LungsegError(f"{path}: expected one 2-D slice, got an array of shape {array.shape}.")
    return array
