"""Reading your CT: which files in a folder make which scans, and each scan as a :class:`Scan` in HU,
turned the way the model saw its training slices. Takes a path; gives ``(source, read)`` pairs
(:func:`find_scans`) or one Scan (:func:`read_scan`); :func:`check_air` then checks that the values are HU.

Two things matter before a 2D model can segment a volume:

1. **Hounsfield units.** DICOM stores raw numbers; RescaleSlope and RescaleIntercept turn them into
   HU. A model trained on HU sees nothing in unconverted numbers, so anything that cannot be HU is
   refused.
2. **Geometry.** A volume's voxels sit in the patient through its affine (NIfTI) or its Image
   Position / Orientation (DICOM). The slices are ordered along the slice normal (not by file name),
   spaced by their real positions (not SliceThickness), and turned the way the model saw its
   training slices: axial, the patient's right on the image's left, front at the top. The mask is
   turned back (:func:`from_model_axes`), so that it lies on the input voxel for voxel.

(``nibabel`` reads NIfTI, ``pydicom`` DICOM.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from lungseg.errors import LungsegError
from lungseg.files import is_dicom
from lungseg_utils import IMAGE_SUFFIXES, PNG_HU_OFFSET, check_hu, read_slice


@dataclass
class Scan:
    """A CT slice or volume in HU as the model sees it: ``hu[slice, row, column]``, rows from front to
    back, columns from the patient's right to left; with its voxel size and how to put a mask back."""
    name: str
    kind: str  # "slice" or "volume"
    hu: np.ndarray
    pixel_spacing_mm: tuple | None  # (row, column) spacing; None when the file does not say (TIFF, PNG)
    slice_thickness_mm: np.ndarray | None = None  # per slice, from the real positions (volumes)
    affine: np.ndarray | None = None  # the input's NIfTI affine (RAS), for the mask file
    orientation: np.ndarray | None = None  # the input's axes, as nibabel's io_orientation gives them
    source: str = ""
    notes: list = field(default_factory=list)
    source_files: list = field(default_factory=list)  # a DICOM series' files in slice order: the mask's frames
    grid: np.ndarray | None = None  # a series with missing slices: each file's slice index on the even grid
    nifti_forms: tuple | None = None  # (qform, code, sform, code) of a NIfTI whose two disagree: the mask keeps both
    no_seg: str = ""  # why no DICOM Segmentation can be written for this series, if it cannot
    voxel_size_known: bool = True  # False: a volume whose voxel size no file gave (segmented, never measured)
    cut_mm2: float = 0.0  # lung on the field of view's edge in the network's masks, where the 3D step dropped it all


NIFTI_SUFFIXES = (".nii", ".nii.gz")
MODEL_AXES = ("L", "P", "S")  # nibabel axis codes of (column, row, slice) as the model was trained


def to_model_axes(data: np.ndarray, affine: np.ndarray):
    """Reorient a volume (array axes as its affine says) to hu[slice, row, column] in MODEL_AXES."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(orientation, nib.orientations.axcodes2ornt(MODEL_AXES))
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zooms = zooms[np.argsort(transform[:, 0])]  # in the order (column, row, slice)
    hu = nib.orientations.apply_orientation(data, transform).transpose(2, 1, 0)
    return hu, zooms, orientation


def from_model_axes(mask: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """The inverse of the reorientation: a mask[slice, row, column] back into the input's own array axes."""
    import nibabel as nib

    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(MODEL_AXES), orientation)
    return nib.orientations.apply_orientation(mask.transpose(2, 1, 0), transform)


class NotCT(LungsegError):
    """A file in a folder that is no CT to segment (a lung mask or label map beside the scan): said, not counted
    as a problem, when it was found in a folder."""


def _load_nifti(path: Path, notes: list):
    """nibabel's image; a plain .nii named .nii.gz (not gzipped) is read as what it is, and said."""
    import nibabel as nib

    try:
        return nib.load(path)
    except Exception as error:
        with open(path, "rb") as file:
            start = file.read(348)
        if path.name.lower().endswith(".gz") and not start.startswith(b"\x1f\x8b") and len(start) == 348:
            try:
                image = nib.Nifti1Image.from_bytes(path.read_bytes())
            except Exception:
                pass
            else:
                notes.append(f"{path}: named .nii.gz but not gzipped, a plain .nii: read as it is. Rename it to "
                             f"{path.name[:-3]} (or gzip it).")
                return image
        raise LungsegError(f"{path}: unreadable NIfTI ({type(error).__name__}: {error}). Re-export it.") from None


def _label_map(data: np.ndarray) -> list | None:
    """The values of a volume that holds a few small whole numbers (a mask or label map, not CT), else None."""
    sample = data[::4, ::4, ::4]
    if not sample.size or sample.min() < 0 or len(np.unique(sample)) > 20 or np.any(sample != np.round(sample)):
        return None
    values = np.unique(data)  # a CT in HU has air below 0 and thousands of values
    return values.tolist() if len(values) <= 20 and values.min() >= 0 and np.all(values == np.round(values)) else None


def _volume_scan(data: np.ndarray, affine: np.ndarray, path: Path, name: str, notes: list, kind: str) -> Scan:
    """A volume (array axes as ``affine`` says, mm) as a Scan in the model's orientation: one volume, finite
    values (NaN outside the field of view is air), a real voxel size."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise LungsegError(f"{path}: a 4-D {kind} of shape {data.shape} ({data.shape[3]} volumes, e.g. the phases of a "
                           "4-D CT); lungseg segments one. Save one volume and give that, e.g. in Python: "
                           f"nib.save(nib.load('{path.name}').slicer[..., 0], 'one.nii.gz').")
    if data.ndim != 3:
        raise LungsegError(f"{path}: a {kind} of shape {data.shape}; a CT volume has three dimensions.")
    values = _label_map(data)
    if values is not None:
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise NotCT(f"{path}: a mask or label map (values {shown}), not a CT in HU: passed over.")
    bad = ~np.isfinite(data)
    if bad.any():  # NaN (or inf) where the scanner saw nothing: outside the field of view, air
        if bad.mean() > 0.5:
            raise LungsegError(f"{path}: {bad.mean():.0%} of its voxels are not finite (NaN or infinite), so it holds "
                               "no CT to segment. Re-export it.")
        data = np.where(bad, np.float32(-1024.0), data)
        notes.append(f"{path}: {bad.sum():,} voxels ({bad.mean():.1%}) are NaN or infinite (outside the field of "
                     "view?): taken as air, -1024 HU.")
    axes = affine[:3, :3]
    voxel_mm3 = abs(np.linalg.det(axes)) if np.all(np.isfinite(axes)) else 0.0
    if voxel_mm3 < 1e-6:
        raise LungsegError(f"{path}: its affine (voxel to world) is {'singular' if np.all(np.isfinite(axes)) else 'not finite'}"
                           ", so its voxels have no size or place. Re-export it with its geometry (e.g. dcm2niix).")
    hu, zooms, orientation = to_model_axes(data, affine)
    directions = axes / np.linalg.norm(axes, axis=0)
    if np.abs(directions.T @ directions - np.eye(3)).max() > 1e-3:  # sheared, e.g. a gantry tilt kept in the affine
        notes.append(f"{path}: its affine is sheared (a gantry tilt?): volumes use the true voxel volume, "
                     f"{voxel_mm3:.3f} mm³.")
    thickness = voxel_mm3 / (zooms[0] * zooms[1])  # along the slice normal, not the length of the third axis
    return Scan(name, "volume", hu, (float(zooms[1]), float(zooms[0])), np.full(hu.shape[0], float(thickness)),
                affine, orientation, str(path), notes)


def read_nifti(path) -> Scan:
    """A NIfTI volume in HU (its scaling applied), in the model's orientation whatever the file's."""
    import nibabel as nib

    path, notes = Path(path), []
    image = _load_nifti(path, notes)
    try:
        data = image.get_fdata(dtype=np.float32)
    except Exception as error:
        raise LungsegError(f"{path}: unreadable NIfTI ({type(error).__name__}: {error}). Re-export it.") from None
    affine = image.affine.copy()
    (qform, qcode), (sform, scode) = image.get_qform(coded=True), image.get_sform(coded=True)
    qcode, scode = int(image.header["qform_code"]), int(image.header["sform_code"])
    unit = image.header.get_xyzt_units()[0]
    scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)  # NIfTI's units: lungseg measures in mm
    if scale != 1.0:
        affine[:3] *= scale
        notes.append(f"{path}: its header gives its positions in {unit}s; they are taken as such "
                     f"({unit}s x {scale:g} = mm).")
    forms = None
    if qcode and scode and qform is not None and sform is not None and not np.allclose(qform, sform, atol=1e-3):
        notes.append(f"{path}: its qform ({''.join(nib.aff2axcodes(qform))}, origin "
                     f"{', '.join(f'{v:.1f}' for v in qform[:3, 3])}) and sform ({''.join(nib.aff2axcodes(sform))}, "
                     f"origin {', '.join(f'{v:.1f}' for v in sform[:3, 3])}) disagree: the sform is used, as nibabel "
                     "uses it, and the mask file keeps both. Check which one your viewer shows.")
        forms = (np.diag([scale] * 3 + [1.0]) @ qform, qcode, np.diag([scale] * 3 + [1.0]) @ sform, scode)
    if not qcode and not scode:
        notes.append(f"{path}: no qform or sform code, so its orientation is not known: right and left (labels 1 "
                     "and 2) are a guess. Export it with its orientation (e.g. dcm2niix).")
    name = path.name[: -len(next(s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s)))]
    scan = _volume_scan(data, affine, path, name, notes, "NIfTI")
    scan.nifti_forms = forms
    return scan


NRRD_SUFFIXES = (".nrrd", ".nhdr")


def read_nrrd(path) -> Scan:
    """An NRRD volume (pynrrd), as 3D Slicer and the Chest Imaging Platform write it: its space directions and
    origin give the geometry (left-posterior-superior or right-anterior-superior)."""
    import nrrd

    path, notes = Path(path), []
    try:
        data, header = nrrd.read(str(path))
    except Exception as error:
        raise LungsegError(f"{path}: unreadable NRRD ({type(error).__name__}: {error}). Re-export it.") from None
    space = str(header.get("space", "")).lower()
    flips = {"left-posterior-superior": [-1, -1, 1], "lps": [-1, -1, 1], "right-anterior-superior": [1, 1, 1],
             "ras": [1, 1, 1]}
    directions = header.get("space directions")
    if space not in flips or directions is None:
        raise LungsegError(f"{path}: an NRRD without a patient space (space {header.get('space')!r}) or space "
                           "directions, so its voxels have no size or place. Save it from 3D Slicer, or as NIfTI.")
    directions = np.asarray([d for d in directions if d is not None and not np.all(np.isnan(np.asarray(d, float)))],
                            float)
    if data.ndim != 3 or directions.shape != (3, 3):
        raise LungsegError(f"{path}: an NRRD of shape {data.shape}; a CT volume has three spatial dimensions.")
    units = [str(u).strip().lower() for u in header.get("space units", ["mm"] * 3)]
    if any(u not in ("mm", "") for u in units):
        raise LungsegError(f"{path}: its space units are {units}; lungseg reads millimetres. Save it in mm.")
    affine = np.eye(4)
    affine[:3, :3] = directions.T  # columns: the array axes
    affine[:3, 3] = np.asarray(header.get("space origin", [0, 0, 0]), float)
    affine = np.diag(flips[space] + [1]) @ affine  # to RAS, as NIfTI's affine
    name = path.name[: -len(next(s for s in NRRD_SUFFIXES if path.name.lower().endswith(s)))]
    return _volume_scan(np.asarray(data, np.float32), affine, path, name, notes, "NRRD")


CT_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, enhanced CT


def dicom_pixel_spacing(header, source, pixel_spacing_mm: float | None = None, notes: list | None = None):
    """(row, column) spacing in mm: PixelSpacing; else ImagerPixelSpacing (said); else ``pixel_spacing_mm``
    (said); else None. A wrong pixel size would put every volume off by its square."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = header.get(key)
        if value and len(value) == 2 and all(float(v) > 0 for v in value):
            if key != "PixelSpacing" and notes is not None:
                notes.append(f"{source}: no PixelSpacing; its {key} ({float(value[0]):g} x {float(value[1]):g} mm) is used.")
            return float(value[0]), float(value[1])
    if pixel_spacing_mm:
        if notes is not None:
            notes.append(f"{source}: no PixelSpacing; --pixel-spacing {pixel_spacing_mm:g} mm is used.")
        return float(pixel_spacing_mm), float(pixel_spacing_mm)
    return None


def read_dicom_series(files, name: str, pixel_spacing_mm: float | None = None) -> Scan:
    """One DICOM series as a volume in HU. ``files``: (path, header) pairs of one Series Instance UID.
    Localizers (scouts) are left out, slices ordered along the slice normal and spaced by their Image
    Position (Patient), RescaleSlope/Intercept applied. One slice left: a slice, not a volume."""
    notes = []
    def frame(header):
        return tuple(np.round(np.asarray(header.get("ImageOrientationPatient") or [1, 0, 0, 0, 1, 0], float), 3)), \
            header.get("Rows"), header.get("Columns")
    common = pd.Series([frame(h) for _, h in files]).value_counts().index[0]
    kept = []
    for path, header in files:
        if "LOCALIZER" in [str(v).upper() for v in header.get("ImageType") or []] or frame(header) != common:
            notes.append(f"{path}: a localizer (scout) or an image of another orientation or size: left out.")
        else:
            kept.append((path, header))
    missing = [str(path) for path, header in kept if header.get("ImagePositionPatient") is None]
    if missing and len(kept) > 1:
        raise LungsegError(f"{missing[0]}: no Image Position (Patient), so its slices cannot be placed. Export the "
                           "series with its geometry, or as NIfTI.")
    bits = int(kept[0][1].get("BitsStored") or 16)
    if bits <= 8:
        raise LungsegError(f"{kept[0][0]}: {bits}-bit pixels (BitsStored {bits}: a lossy or screen export), which cannot "
                           "hold Hounsfield units (HU, -1024 to over +1000). Export the series as the scanner wrote it "
                           "(16-bit), or as NIfTI (dcm2niix).")
    no_seg = ""
    if any(header.get("ImageOrientationPatient") is None for _, header in kept):
        notes.append(f"{kept[0][0]}: no Image Orientation (Patient), so the slices are taken as axial, the patient's "
                     "right on the image's left: right and left (labels 1 and 2) are a guess. Export the series with "
                     "its geometry.")
        no_seg = ("the series has no Image Orientation (Patient), which a DICOM Segmentation must state for its "
                  "frames")
    row_direction, column_direction = np.array(common[0][:3]), np.array(common[0][3:])
    normal = np.cross(row_direction, column_direction)
    origins = np.array([np.asarray(h.get("ImagePositionPatient") or [0, 0, 0], float) for _, h in kept])
    order = np.argsort(origins @ normal, kind="stable")
    kept, origins = [kept[i] for i in order], origins[order]
    positions = origins @ normal
    gaps = np.diff(positions)
    if len(gaps) and gaps.min() < 0.01:
        first = int(np.argmin(gaps))
        raise LungsegError(f"{kept[first][0]} and {kept[first + 1][0]}: two slices of series {name} at the same position "
                           f"({positions[first]:.2f} mm along the slice normal); a series has one slice per position. "
                           "Remove the duplicate (or choose one series with --series).")
    grid = None  # where the mask file's slices lie, when the spacing is uneven: None = as the files lie
    if len(gaps) and gaps.max() - gaps.min() > 0.01 * np.median(gaps) + 0.01:
        steps = gaps / gaps.min()
        if np.all(np.abs(steps - np.round(steps)) <= 0.01 * np.round(steps)):  # missing slices of an even series
            grid = np.concatenate([[0], np.cumsum(np.round(steps).astype(int))])
            notes.append(f"{name}: {grid[-1] + 1 - len(grid)} slice(s) missing ({gaps.min():.2f} mm apart, gaps up to "
                         f"{gaps.max():.2f} mm): volumes use each slice's real position; the mask file keeps the "
                         "spacing, with an empty slice at each missing position.")
        else:
            notes.append(f"{name}: uneven slice spacing ({gaps.min():.2f}..{gaps.max():.2f} mm): volumes use each "
                         "slice's real position; the mask file's affine has the mean spacing.")
    slices = []
    for path, header in kept:
        slices.append(read_slice(path))  # stored values * RescaleSlope + RescaleIntercept: HU
    spacing = dicom_pixel_spacing(kept[0][1], kept[0][0], pixel_spacing_mm, notes)  # (between rows, between columns)
    if spacing is None and len(kept) > 1:
        raise LungsegError(f"{kept[0][0]}: no PixelSpacing (nor ImagerPixelSpacing), so the lungs cannot be measured "
                           "in mL. Give the pixel size with --pixel-spacing MM, or export the series with its geometry.")
    if len(kept) == 1:
        notes.append(f"{kept[0][0]}: a series of one slice: segmented as a slice.")
        return Scan(kept[0][0].name, "slice", slices[0][None], spacing, source=str(kept[0][0]), notes=notes)
    step = (origins[-1] - origins[0]) / (len(kept) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_direction * spacing[1], column_direction * spacing[0], step, origins[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's patient axes are LPS, NIfTI's RAS
    hu, zooms, orientation = to_model_axes(np.stack(slices, axis=-1).transpose(1, 0, 2), affine)
    thickness = np.full(hu.shape[0], zooms[2])
    if orientation[2, 0] == 2:  # axial slices: each keeps its real spacing (half the gaps to its neighbours)
        neighbours = np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1]]])
        thickness = neighbours if orientation[2, 1] == 1 else neighbours[::-1]  # the model's slices go up (S)
    return Scan(name, "volume", hu, (float(zooms[1]), float(zooms[0])), thickness, affine, orientation,
                str(kept[0][0].parent), notes, [path for path, _ in kept], grid, no_seg=no_seg)



# Which files make which scans: a NIfTI file is a volume; DICOM files are grouped by Series Instance
# UID and the largest series is the volume (`series` picks another); TIFF, PNG and single DICOM
# files are slices. Other files in a folder (notes, checksums) are passed over; a JPEG is refused,
# since 8 bits cannot hold HU.


NOT_HU_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _refuse(message):
    def read():
        raise LungsegError(message)
    return read


def _tiff_pages(path) -> int:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return len(tiff.series[0].shape) == 3 and tiff.series[0].shape[0] or 1
    except Exception:
        return 1  # read_slice names what is wrong with it


def read_tiff_stack(path) -> Scan:
    """A multi-page TIFF (a stack of slices, as Fiji saves one) as a volume: pages taken as axial slices from
    the feet up, the patient's right on the image's left (a guess, said). Its voxel size comes from Fiji's
    metadata (spacing and resolution in mm or microns); without one it is segmented, not measured."""
    import tifffile

    path, notes = Path(path), []
    with tifffile.TiffFile(path) as tiff:
        stack = tiff.series[0].asarray()
        meta, page = tiff.imagej_metadata or {}, tiff.pages[0]
        resolution = [page.tags.get(key) for key in ("YResolution", "XResolution")]
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise LungsegError(f"{path}: a TIFF of shape {stack.shape}; a stack of CT slices is (pages, rows, columns).")
    hu = stack.astype(np.float32)
    check_hu(hu, path)
    unit = str(meta.get("unit", "")).lower().replace("\\u00b5", "u").replace("µ", "u")
    per_mm = {"mm": 1.0, "micron": 1000.0, "um": 1000.0, "cm": 0.1}.get(unit)
    spacing = None
    if per_mm and meta.get("spacing") and all(r is not None for r in resolution):
        rows, columns = (r.value[1] / r.value[0] / per_mm for r in resolution)  # pixels per unit -> mm per pixel
        spacing = (float(rows), float(columns), float(meta["spacing"]) / per_mm)
    notes.append(f"{path}: a TIFF stack of {len(hu)} pages, taken as axial slices from the feet up, the patient's "
                 "right on the image's left: right and left (labels 1 and 2) are a guess.")
    known = spacing is not None and all(0 < v < 50 for v in spacing)
    if not known:
        spacing = (1.0, 1.0, 1.0)
        notes.append(f"{path}: no voxel size (Fiji's spacing and resolution), so the lungs are segmented but not "
                     "measured. Save the scan as NIfTI or DICOM with its geometry (e.g. dcm2niix from the DICOM).")
    affine = np.diag([-spacing[1], -spacing[0], spacing[2], 1.0])  # columns to the left, rows to the back, pages up
    hu_model, zooms, orientation = to_model_axes(hu.transpose(2, 1, 0), affine)
    scan = Scan(path.stem, "volume", hu_model, (float(zooms[1]), float(zooms[0])), np.full(len(hu), float(zooms[2])),
                affine, orientation, str(path), notes)
    scan.voxel_size_known = known
    return scan


def read_image_slice(path) -> Scan:
    """A TIFF, 16-bit PNG or single DICOM slice as a one-slice Scan (DICOM knows its pixel spacing)."""
    path = Path(path)
    spacing, notes = None, []
    if is_dicom(path):
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True)
        bits = int(header.get("BitsStored") or 16)
        if bits <= 8:
            raise LungsegError(f"{path}: {bits}-bit pixels (BitsStored {bits}: a lossy or screen export), which cannot "
                               "hold Hounsfield units (HU). Export the slice as the scanner wrote it (16-bit).")
        spacing = dicom_pixel_spacing(header, path, notes=notes)
    hu = read_slice(path)
    if path.suffix.lower() == ".png":
        floor = float(np.mean(hu == PNG_HU_OFFSET))
        if floor > 0.3 and np.mean(hu > -200) < 0.02:  # lung, fat and air all at the floor; tissue as dark as lung
            raise LungsegError(f"{path}: {floor:.0%} of its pixels are 0 (-1024 HU once read) and almost none is soft "
                               "tissue: the PNG looks clipped at 0, HU saved without the +1024, so every negative "
                               "value (lung, fat, air) was lost. Save it again as a 16-bit PNG of HU+1024, e.g. "
                               "np.clip(hu + 1024, 0, 65535).astype(np.uint16), or as int16 TIFF.")
    return Scan(path.name, "slice", hu[None], spacing, source=str(path), notes=notes)


def series_tag(uid: str) -> str:
    """A short name for a series: the last 6 digits of its Series Instance UID (the name of a folder's
    series when it holds several; a patient's name or ID never goes into a file name)."""
    return "series" + "".join(ch for ch in uid if ch.isdigit())[-6:]


# DICOM objects that are not CT images a user may keep beside a series: passed over with a note.
NOT_IMAGES = {"SEG": "a DICOM Segmentation", "RTSTRUCT": "an RT structure set", "SR": "a structured report",
              "RTDOSE": "an RT dose", "RTPLAN": "an RT plan", "KO": "a key-object selection",
              "PR": "a presentation state", "REG": "a registration", "DOC": "an encapsulated document"}


def _passed_over(header) -> str | None:
    """Why a DICOM file in a folder is no CT image to segment (a SEG, a scout, a dose screen ...), or None."""
    modality, sop_class = str(header.get("Modality") or ""), str(header.get("SOPClassUID") or "")
    image_type = [str(v).upper() for v in header.get("ImageType") or []]
    if modality in NOT_IMAGES:
        return f"{NOT_IMAGES[modality]} ({modality}), not a CT image"
    if modality == "CT" and sop_class and sop_class not in CT_IMAGE_STORAGE:
        return "a secondary capture (a dose screen or a screenshot), not a CT image"
    if "LOCALIZER" in image_type:
        return "a localizer (scout), not a cross-section"
    return None


def _with_notes(read, notes):
    def read_noted():
        scan = read()
        scan.notes += notes
        return scan
    return read_noted if notes else read


def _one_series(singles: list, path) -> list | None:
    """Single-slice DICOM files, each with its own Series Instance UID, that are one scan: one Frame of
    Reference, one orientation and size, each at its own position (files as (path, header) pairs); or None."""
    def key(header):
        return (str(header.get("FrameOfReferenceUID") or ""),
                tuple(np.round(np.asarray(header.get("ImageOrientationPatient") or [], float), 3)),
                header.get("Rows"), header.get("Columns"))
    keys = {key(h) for _, h in singles}
    if len(singles) < 3 or len(keys) != 1 or not next(iter(keys))[0] or not next(iter(keys))[1]:
        return None
    positions = [tuple(np.round(np.asarray(h.get("ImagePositionPatient") or [np.nan] * 3, float), 2)) for _, h in singles]
    if any(np.isnan(p).any() for p in positions) or len(set(positions)) != len(positions):
        return None
    return singles


def find_scans(input_path, series: str | None = None, pixel_spacing_mm: float | None = None, exclude=()) -> list:
    """The scans in ``input_path`` (a slice, a NIfTI file, or a folder, searched with its subfolders, of
    DICOM files, slices or NIfTI files; a CD's DICOMDIR index and the files in ``exclude`` are passed
    over) as (source, read) pairs: ``read()`` returns a Scan or raises LungsegError naming the file.

    In a folder, what is not a CT image to segment (a SEG, RTSTRUCT or SR beside the series, a scout, a
    dose screen) is passed over with a note, a file read twice (the same SOP Instance UID: a CD copied
    twice) is read once, and single-slice files that each carry their own series UID but share a Frame
    of Reference are read as one scan."""
    import pydicom

    path = Path(input_path).expanduser()
    if not path.exists():
        raise LungsegError(f"{path} does not exist. Give a CT slice, a NIfTI file, or a folder of DICOM files or slices.")
    exclude = {Path(p).resolve() for p in exclude}
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.resolve() not in exclude)
    scans, dicoms, passed, instances, duplicates = [], {}, {}, {}, []
    for file in files:
        suffix = file.suffix.lower()
        if file.name.upper() == "DICOMDIR":  # a CD's index of its files, not an image
            continue
        if file.name.lower().endswith(NIFTI_SUFFIXES):
            scans.append((file, lambda file=file: read_nifti(file)))
        elif file.name.lower().endswith(NRRD_SUFFIXES):
            scans.append((file, lambda file=file: read_nrrd(file)))
        elif is_dicom(file):
            try:
                header = pydicom.dcmread(file, stop_before_pixels=True, force=True)
            except Exception as error:
                scans.append((file, _refuse(f"{file}: unreadable DICOM ({type(error).__name__}). Re-export it.")))
                continue
            modality, sop_class = header.get("Modality"), str(header.get("SOPClassUID") or "")
            why = _passed_over(header)
            if why and path.is_dir():
                passed.setdefault(why, []).append(file)
                continue
            if why or (modality and modality != "CT") or (not modality and sop_class and sop_class not in CT_IMAGE_STORAGE):
                what = why or f"a {modality or 'non-CT'} image, not CT"
                scans.append((file, _refuse(f"{file}: {what}: the models segment CT in HU.")))
                continue
            if int(header.get("NumberOfFrames") or 1) > 1:
                scans.append((file, _refuse(f"{file}: an enhanced multi-frame CT ({header.NumberOfFrames} frames in one "
                                            "file), which lungseg does not read: convert it to NIfTI (e.g. dcm2niix) "
                                            "or to single-frame DICOM, and give that.")))
                continue
            instance = str(header.get("SOPInstanceUID") or "")
            if instance and instance in instances:  # the same image twice (a CD copied twice, "IMG0001 (1).dcm")
                duplicates.append((file, instances[instance]))
                continue
            instances[instance] = file
            dicoms.setdefault(str(header.get("SeriesInstanceUID") or "unknown"), []).append((file, header))
        elif suffix in (".tif", ".tiff") and _tiff_pages(file) > 1:
            scans.append((file, lambda file=file: read_tiff_stack(file)))
        elif suffix in IMAGE_SUFFIXES:
            scans.append((file, lambda file=file: read_image_slice(file)))
        elif suffix == ".zip":
            folder = file.with_suffix("")
            scans.append((file, _refuse(f"{file}: a zip archive; lungseg reads the files, not the archive. Extract it "
                                        f"and give the folder: python -m zipfile -e '{file}' '{folder}' (in a notebook, "
                                        "with ! in front), then predict.sh on that folder.")))
        elif suffix in NOT_HU_SUFFIXES:
            scans.append((file, _refuse(f"{file}: a {suffix[1:].upper()} image has 8 bits and cannot hold Hounsfield "
                                        "units (HU). Export the CT as DICOM, NIfTI, int16 TIFF or 16-bit PNG (HU+1024).")))
        elif path.is_file():
            scans.append((file, _refuse(f"{file}: not a CT file lungseg reads (DICOM, NIfTI, NRRD, TIFF, 16-bit PNG).")))
    notes = [f"{path}: {len(found)} file(s) passed over, {why} (e.g. {found[0].relative_to(path)})."
             for why, found in passed.items()]
    if duplicates:
        notes.append(f"{path}: {len(duplicates)} file(s) hold an image already read (the same SOP Instance UID, e.g. "
                     f"{duplicates[0][0].relative_to(path)} = {duplicates[0][1].relative_to(path)}): each read once.")
    if series is not None and series not in dicoms:
        raise LungsegError(f"--series {series}: no such series in {path}; found {', '.join(dicoms) or 'no DICOM series'}.")
    volumes = {uid: files for uid, files in dicoms.items() if len(files) > 1}
    if series is None and not volumes and (joined := _one_series([f for files in dicoms.values() for f in files], path)):
        notes.append(f"{path}: {len(joined)} DICOM files, each with its own Series Instance UID, share one Frame of "
                     "Reference and lie at their own positions: read as one scan.")
        dicoms = volumes = {str(joined[0][1].get("FrameOfReferenceUID")): joined}
    if series is not None or volumes:
        chosen = series or max(volumes, key=lambda uid: len(volumes[uid]))
        name = (path.resolve().name if path.is_dir() else path.stem) or "scan"  # "." is named after its folder
        if len(dicoms) > 1:  # a folder of several series: each its own name, so that --series adds, never replaces
            name = f"{name}_{series_tag(chosen)}"
        others = [f"{path}: also holds series {uid} ({len(files)} files), not segmented; series={uid!r} "
                  f"(--series {uid}) chooses it." for uid, files in dicoms.items() if uid != chosen]
        scans.append((path, _with_notes(lambda files=dicoms[chosen]: read_dicom_series(files, name, pixel_spacing_mm),
                                        others)))
    else:  # single DICOM slices, each its own series
        singles = [file for files in dicoms.values() for file, _ in files]
        if len(singles) > 2:
            notes.append(f"{path}: {len(singles)} DICOM files, each with its own Series Instance UID and no shared "
                         "Frame of Reference and positions: segmented as separate slices. If they are one scan, "
                         "export them as one series (or as NIfTI).")
        scans += [(file, lambda file=file: read_image_slice(file)) for file in singles]
    if not scans:
        found = "; ".join(notes) if notes else ""
        raise LungsegError(f"{path}: holds no CT files (DICOM, NIfTI, NRRD, TIFF or 16-bit PNG){': ' + found if found else ''}."
                           " Point INPUT at a DICOM series folder, a NIfTI file, or a folder of slices.")
    scans[0] = (scans[0][0], _with_notes(scans[0][1], notes))  # said once, with the first scan
    return scans


def read_scan(input_path, series: str | None = None, pixel_spacing_mm: float | None = None) -> Scan:
    """The one scan in ``input_path`` (a DICOM series folder, a NIfTI file, a slice), read as :func:`find_scans`
    reads each; a folder of several scans is refused with a pointer to :func:`predict_scans`."""
    found = find_scans(input_path, series, pixel_spacing_mm)
    if len(found) > 1:
        raise LungsegError(f"{input_path} holds {len(found)} scans: give one, or segment them all with predict_scans "
                           "(bash scripts/predict.sh).")
    return found[0][1]()


# Before a volume is segmented, its values are checked against the one thing every CT shows: the air
# around the patient reads -1000 HU. The outside air is what is dark and connected to the image's
# border, without the padding outside the scanner's field of view (a constant, e.g. -3024 or -2048,
# or a band far below the air); its most common value is the air's reading, and the brightest of
# several slices' readings is the volume's. An offset of 1024 (HU stored as HU+1024, or the rescale
# intercept applied twice) puts the air near +24 or -2048, and the models would find no lung, so it
# is refused with the fix; a scale is said.


def outside_air_hu(hu: np.ndarray, slices: int = 9) -> float | None:
    """The value the air around the patient reads in a volume hu[slice, row, column]: the brightest reading
    of up to ``slices`` slices of its middle 60% (a slice whose field of view the body fills shows only
    padding, which is darker than air), or None where no slice shows outside air."""
    picks = np.unique(np.linspace(0.2 * (len(hu) - 1), 0.8 * (len(hu) - 1), min(slices, len(hu))).round().astype(int))
    readings = [reading for reading in (_outside_air_of_slice(hu[k]) for k in picks) if reading is not None]
    return max(readings) if readings else None


def _outside_air_of_slice(image: np.ndarray, gap_hu: float = 200.0) -> float | None:
    image = np.asarray(image, np.float32)
    if image.min() == image.max():  # a blank slice (padding, a gap in the scout) shows no air
        return None
    padding = image == image.min()
    if padding.mean() < 0.01:  # a constant fill outside the field of view, or none
        padding[:] = False
    values = image[~padding]
    dark = (image < (np.percentile(values, 2) + np.percentile(values, 98)) / 2) & ~padding
    regions, _ = ndimage.label(dark)
    seeds = ndimage.binary_dilation(padding)
    seeds[[0, -1]], seeds[:, [0, -1]] = True, True
    touching = np.unique(regions[seeds & dark])
    air = np.sort(image[np.isin(regions, touching[touching > 0])])
    gaps = np.flatnonzero(np.diff(air) > gap_hu)  # padding in a band of its own, below the air
    air = air[gaps[-1] + 1:] if len(gaps) else air
    if air.size < 0.01 * image.size:
        return None
    counts, edges = np.histogram(air, bins=np.arange(air[0], air[-1] + 2 * 10.0, 20.0))
    return float(edges[np.argmax(counts)] + 10.0)


def check_air(scan: Scan) -> str | None:
    """Refuse a volume whose outside air reads about 1024 HU off -1000 (naming the fix); return a note
    where it reads otherwise off (a scale), None where it reads as CT air or cannot be found."""
    try:
        check_hu(scan.hu, scan.source or scan.name)  # first the plain check: air and tissue at all
    except LungsegError:
        if scan.hu.dtype in (np.uint8, np.int8, bool) or float(np.max(scan.hu)) < 600:
            raise  # 8 bits, or no tissue above +600 (HU+1024 puts soft tissue near +1064)
        air = outside_air_hu(scan.hu)  # values off by 1024 fail it without padding: say the fix, not "convert"
        if air is not None and abs(air - 24) <= 220:
            raise LungsegError(f"{scan.source or scan.name}: the air around the patient reads {air:+.0f} HU, where CT "
                               "air is -1000: the values look like HU+1024 (stored values without the rescale "
                               "intercept). Subtract 1024 (DICOM: RescaleIntercept -1024; NIfTI: scl_inter -1024; a "
                               "PNG is read as HU+1024 already) and run again.") from None
        raise
    if scan.kind != "volume":
        return None
    air = outside_air_hu(scan.hu)
    if air is None or abs(air + 1000) <= 120:
        return None
    seen = f"{scan.source or scan.name}: the air around the patient reads {air:+.0f} HU, where CT air is -1000"
    if abs(air - 24) <= 220:
        raise LungsegError(f"{seen}: the values look like HU+1024 (stored values without the rescale intercept). "
                           "Subtract 1024 (DICOM: RescaleIntercept -1024; NIfTI: scl_inter -1024) and run again.")
    if abs(air + 2048) <= 220:
        raise LungsegError(f"{seen}: the values look like HU-1024 (the rescale intercept applied twice). Add 1024 "
                           "(give the files as the scanner wrote them, or set the intercept to 0) and run again.")
    if -2000 < air < 0:
        return (f"{seen}: the values look scaled by {air / -1000:.2f} (the Kaggle slices are stored at about 0.8x; "
                f"01_download calibrates them). Multiply them by {-1000 / air:.2f} for HU-based measurements to hold.")
    raise LungsegError(f"{seen}: these values are not HU. Convert the scan to HU (DICOM: RescaleSlope and "
                       "RescaleIntercept) and run again.")
