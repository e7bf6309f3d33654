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
from lungseg_utils import IMAGE_SUFFIXES, check_hu, read_slice


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


def read_nifti(path) -> Scan:
    """A NIfTI volume in HU (its scaling applied), in the model's orientation whatever the file's."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(path)
        data = image.get_fdata(dtype=np.float32)
    except Exception as error:
        raise LungsegError(f"{path}: unreadable NIfTI ({type(error).__name__}: {error}). Re-export it.") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise LungsegError(f"{path}: a 4-D NIfTI of shape {data.shape} ({data.shape[3]} volumes, e.g. the phases of a "
                           "4-D CT); lungseg segments one. Save one volume and give that, e.g. in Python: "
                           f"nib.save(nib.load('{path.name}').slicer[..., 0], 'one.nii.gz').")
    if data.ndim != 3:
        raise LungsegError(f"{path}: a NIfTI of shape {data.shape}; a CT volume has three dimensions.")
    affine, notes = image.affine.copy(), []
    unit = image.header.get_xyzt_units()[0]
    if unit in ("meter", "micron"):  # NIfTI's units: lungseg measures in mm
        scale = 1000.0 if unit == "meter" else 0.001
        affine[:3] *= scale
        notes.append(f"{path}: its header gives its positions in {unit}s; they are taken as such "
                     f"({unit}s x {scale:g} = mm).")
    axes = affine[:3, :3]
    voxel_mm3 = abs(np.linalg.det(axes)) if np.all(np.isfinite(axes)) else 0.0
    if voxel_mm3 < 1e-6:
        raise LungsegError(f"{path}: its affine (voxel to world) is {'singular' if np.all(np.isfinite(axes)) else 'not finite'}"
                           ", so its voxels have no size or place. Re-export it with its geometry (e.g. dcm2niix).")
    hu, zooms, orientation = to_model_axes(data, affine)
    name = path.name[: -len(next(s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s)))]
    if not int(image.header["qform_code"]) and not int(image.header["sform_code"]):
        notes.append(f"{path}: no qform or sform code, so its orientation is not known: right and left (labels 1 "
                     "and 2) are a guess. Export it with its orientation (e.g. dcm2niix).")
    directions = axes / np.linalg.norm(axes, axis=0)
    if np.abs(directions.T @ directions - np.eye(3)).max() > 1e-3:  # sheared, e.g. a gantry tilt kept in the affine
        notes.append(f"{path}: its affine is sheared (a gantry tilt?): volumes use the true voxel volume, "
                     f"{voxel_mm3:.3f} mm³.")
    thickness = voxel_mm3 / (zooms[0] * zooms[1])  # along the slice normal, not the length of the third axis
    return Scan(name, "volume", hu, (float(zooms[1]), float(zooms[0])), np.full(hu.shape[0], float(thickness)),
                affine, orientation, str(path), notes)


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
                str(kept[0][0].parent), notes, [path for path, _ in kept], grid)



# Which files make which scans: a NIfTI file is a volume; DICOM files are grouped by Series Instance
# UID and the largest series is the volume (`series` picks another); TIFF, PNG and single DICOM
# files are slices. Other files in a folder (notes, checksums) are passed over; a JPEG is refused,
# since 8 bits cannot hold HU.


NOT_HU_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _refuse(message):
    def read():
        raise LungsegError(message)
    return read


def read_image_slice(path) -> Scan:
    """A TIFF, 16-bit PNG or single DICOM slice as a one-slice Scan (DICOM knows its pixel spacing)."""
    path = Path(path)
    spacing, notes = None, []
    if is_dicom(path):
        import pydicom

        spacing = dicom_pixel_spacing(pydicom.dcmread(path, stop_before_pixels=True), path, notes=notes)
    return Scan(path.name, "slice", read_slice(path)[None], spacing, source=str(path), notes=notes)


def series_tag(uid: str) -> str:
    """A short name for a series: the last 6 digits of its Series Instance UID (the name of a folder's
    series when it holds several; a patient's name or ID never goes into a file name)."""
    return "series" + "".join(ch for ch in uid if ch.isdigit())[-6:]


def find_scans(input_path, series: str | None = None, pixel_spacing_mm: float | None = None, exclude=()) -> list:
    """The scans in ``input_path`` (a slice, a NIfTI file, or a folder, searched with its subfolders, of
    DICOM files, slices or NIfTI files; a CD's DICOMDIR index and the files in ``exclude`` are passed
    over) as (source, read) pairs: ``read()`` returns a Scan or raises LungsegError naming the file."""
    import pydicom

    path = Path(input_path).expanduser()
    if not path.exists():
        raise LungsegError(f"{path} does not exist. Give a CT slice, a NIfTI file, or a folder of DICOM files or slices.")
    exclude = {Path(p).resolve() for p in exclude}
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.resolve() not in exclude)
    scans, dicoms = [], {}
    for file in files:
        suffix = file.suffix.lower()
        if file.name.upper() == "DICOMDIR":  # a CD's index of its files, not an image
            continue
        if file.name.lower().endswith(NIFTI_SUFFIXES):
            scans.append((file, lambda file=file: read_nifti(file)))
        elif is_dicom(file):
            try:
                header = pydicom.dcmread(file, stop_before_pixels=True, force=True)
            except Exception as error:
                scans.append((file, _refuse(f"{file}: unreadable DICOM ({type(error).__name__}). Re-export it.")))
                continue
            modality, sop_class = header.get("Modality"), str(header.get("SOPClassUID") or "")
            if (modality and modality != "CT") or (not modality and sop_class and sop_class not in CT_IMAGE_STORAGE):
                scans.append((file, _refuse(f"{file}: a {modality or 'non-CT'} image, not CT: the models segment CT in HU.")))
                continue
            if int(header.get("NumberOfFrames") or 1) > 1:
                scans.append((file, _refuse(f"{file}: an enhanced multi-frame CT ({header.NumberOfFrames} frames in one "
                                            "file), which lungseg does not read: convert it to NIfTI (e.g. dcm2niix) "
                                            "or to single-frame DICOM, and give that.")))
                continue
            dicoms.setdefault(str(header.get("SeriesInstanceUID") or "unknown"), []).append((file, header))
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
            scans.append((file, _refuse(f"{file}: not a CT file lungseg reads (DICOM, NIfTI, TIFF, 16-bit PNG).")))
    if series is not None and series not in dicoms:
        raise LungsegError(f"--series {series}: no such series in {path}; found {', '.join(dicoms) or 'no DICOM series'}.")
    volumes = {uid: files for uid, files in dicoms.items() if len(files) > 1}
    if series is not None or volumes:
        chosen = series or max(volumes, key=lambda uid: len(volumes[uid]))
        name = (path.resolve().name if path.is_dir() else path.stem) or "scan"  # "." is named after its folder
        if len(dicoms) > 1:  # a folder of several series: each its own name, so that --series adds, never replaces
            name = f"{name}_{series_tag(chosen)}"
        others = [f"{path}: also holds series {uid} ({len(files)} files), not segmented; series={uid!r} "
                  f"(--series {uid}) chooses it." for uid, files in dicoms.items() if uid != chosen]

        def read(files=dicoms[chosen]):
            scan = read_dicom_series(files, name, pixel_spacing_mm)
            scan.notes += others
            return scan
        scans.append((path, read))
    else:  # single DICOM slices, each its own series
        singles = [file for files in dicoms.values() for file, _ in files]
        note = (f"{path}: {len(singles)} DICOM files, each with its own Series Instance UID: segmented as separate "
                "slices. If they are one scan, export them as one series (or as NIfTI).") if len(singles) > 2 else None

        def read_single(file, first):
            scan = read_image_slice(file)
            scan.notes += [note] if note and first else []
            return scan
        scans += [(file, lambda file=file, first=(k == 0): read_single(file, first)) for k, file in enumerate(singles)]
    if not scans:
        raise LungsegError(f"{path}: holds no CT files (DICOM, NIfTI, TIFF or 16-bit PNG). Point INPUT at a DICOM "
                           "series folder, a NIfTI file, or a folder of slices.")
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
    if scan.kind != "volume":
        return None
    check_hu(scan.hu, scan.source or scan.name)  # first the plain check: air and tissue at all
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
