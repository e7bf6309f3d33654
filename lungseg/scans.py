"""Your own CT scans: read a DICOM series, a NIfTI volume or slices in HU, segment them slice by slice
with a trained model, judge the mask in 3D, split it into right and left lung, and write the mask,
a preview and the measurements. ``bash scripts/predict.sh INPUT [OUTPUT_DIR]`` calls
:func:`predict_scans`; notebook 05 shows the idea in a few cells, this module does it for any scan.

Three things matter before a 2D model can segment a volume:

1. **Hounsfield units.** DICOM stores raw numbers; RescaleSlope and RescaleIntercept turn them into
   HU. A model trained on HU sees nothing in unconverted numbers, so anything that cannot be HU is
   refused.
2. **Geometry.** A volume's voxels sit in the patient through its affine (NIfTI) or its Image
   Position / Orientation (DICOM). The slices are ordered along the slice normal (not by file name),
   spaced by their real positions (not SliceThickness), and turned the way the model saw its
   training slices: axial, the patient's right on the image's left, front at the top. The mask is
   turned back, so that it lies on the input voxel for voxel.
3. **Right and left lung.** Labels 1 = right lung, 2 = left lung; the patient's left-right axis comes
   from the geometry, a lung's side from the body's midline (:func:`split_lungs`, :func:`body_midline`).

(``nibabel`` reads NIfTI, ``pydicom`` DICOM.)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage

from lungseg.checks import check_settings
from lungseg.errors import LungsegError
from lungseg.files import is_dicom
from lungseg.report import library_versions
from lungseg_utils import (IMAGE_SUFFIXES, check_hu, clean_mask, preprocess_slice, read_slice, resize_image, show_pairs,
                           window_hu)


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


# Segmenting a scan is segmenting its slices, in batches, as notebook 05 does for the test slices.
# A 2D model sees one slice at a time, so below the lungs it may mark gas in the stomach and bowel,
# and beside the body the air by the arms or hips; and where disease fills the lung it may leave out
# what no longer looks dark. A volume shows what a slice cannot, so a volume's mask is judged in 3D
# by anatomy, as lungmask does, on its connected regions (SciPy's `ndimage.label`):
# - lung lies inside the body: in each slice, what tissue (above -500 HU) encloses, the outline closed
#   along the image's edges where the body runs off them (a patient wider than the field of view);
# - lung holds vessels and walls: it is not pure gas (its median lies above -970 HU, darker than any
#   training lung);
# - lung lies above the diaphragm: a region half of whose voxels have another lung region straight
#   above them (in the same column of the volume, higher up), with tissue between the two (denser
#   than -300 HU over most of the gap: a diaphragm, not a slice of lung the model missed), lies
#   below the diaphragm: the stomach under the left dome, the colon under the bases;
# - a region smaller than a tenth of the largest is a speck, not a lung;
# - what the lung encloses is lung: holes in 3D (a nodule, a tumour, a cavity that the model left
#   out but the lung surrounds) are filled. The mediastinum is never enclosed: it runs on into the
#   neck and the abdomen.
# A volume with under 20 mL of lung left is reported as "no lungs found". Then the lung voxels are
# told right from left. These rules and their numbers were set from anatomy and the Kaggle slices,
# before the external volumes were looked at.


def split_lungs(mask: np.ndarray, midline: float | None = None, min_lung_share: float = 0.15) -> np.ndarray:
    """Label a lung mask[slice, row, column] (columns from the patient's right to left): 1 right, 2 left.

    Each connected region gets its side from where it lies against the body's ``midline`` (a column; see
    :func:`body_midline`), or, without one, against the middle of the lungs' width. A region crossing that
    line (two lungs that touch) is cut at the column with the fewest lung voxels near it; a region with less
    than ``min_lung_share`` of it on the other side (5% without a midline) is one lung, however large, and
    gets the side where most of it lies (one lung after a pneumonectomy, reaching over the midline)."""
    mask = np.asarray(mask).astype(bool)
    labels = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return labels
    profile = mask.sum(axis=(0, 1))
    columns = np.flatnonzero(profile)
    low, high = columns[0], columns[-1]
    if midline is None:
        middle, half_band = (low + high) / 2, 0.2 * (high - low)
    else:
        middle, half_band = float(midline), 0.1 * (high - low)
    band = np.arange(max(0, round(middle - half_band)), min(mask.shape[2] - 1, round(middle + half_band)) + 1)
    split = band[np.lexsort((np.abs(band - middle), profile[band]))[0]]  # fewest voxels, then central
    whole = _bounding_box(mask)  # all of the mask lies in it
    regions, _ = ndimage.label(mask[whole])
    inner = labels[whole]  # a view: labelling it labels `labels`
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        inside = regions[box] == index
        column = np.arange(whole[2].start + box[2].start, whole[2].start + box[2].stop)[None, None, :]
        right_share = np.count_nonzero(inside & (column < split)) / np.count_nonzero(inside)
        crossing = min(right_share, 1 - right_share) >= (0.05 if midline is None else min_lung_share)
        side = np.where(column < split, 1, 2) if crossing else 1 if right_share >= 0.5 else 2
        inner[box][inside] = np.broadcast_to(side, inside.shape)[inside]
    return labels


def body_midline(hu: np.ndarray, lung: np.ndarray, slices: int = 9) -> float | None:
    """The column of the body's midline in a volume hu[slice, row, column]: the median, over up to ``slices``
    slices with lung, of the middle of what the tissue encloses (:func:`inside_body`); None without lung."""
    with_lung = np.flatnonzero(np.asarray(lung).any(axis=(1, 2)))
    if not with_lung.size:
        return None
    centres = []
    for k in with_lung[np.unique(np.linspace(0, len(with_lung) - 1, min(slices, len(with_lung))).round().astype(int))]:
        body_columns = np.flatnonzero(inside_body(hu[k]).any(axis=0))
        if body_columns.size:
            centres.append((body_columns[0] + body_columns[-1]) / 2)
    return float(np.median(centres)) if centres else None


def inside_body(hu: np.ndarray, tissue_hu: float = -500.0) -> np.ndarray:
    """What a slice's tissue (above ``tissue_hu``) encloses. Where the body runs off the image (a patient
    wider than the field of view), its outline is closed along that edge, between the first and the
    last tissue pixel on it: the air left open to the image's edge is outside, the rest inside."""
    tissue = hu > tissue_hu
    closed = tissue.copy()
    for edge in (closed[0], closed[-1], closed[:, 0], closed[:, -1]):  # views: closing them closes `closed`
        present = np.flatnonzero(edge)
        if len(present):
            edge[present[0]:present[-1] + 1] = True
    air, _ = ndimage.label(~closed)
    outside = np.zeros(air.max() + 1, bool)
    outside[np.concatenate([air[0], air[-1], air[:, 0], air[:, -1]])] = True
    outside[0] = False  # label 0: the closed outline and the tissue
    return ~outside[air]


def keep_lungs(mask: np.ndarray, scan: Scan, min_share: float = 0.1, gas_hu: float = -970.0,
               under_share: float = 0.5, fill: bool = True) -> np.ndarray:
    """The connected regions of a volume's mask[slice, row, column] (slices going up) that can be lung,
    by the rules above, with the holes that they enclose filled. Counted slice by slice, so a large
    scan needs little memory beyond its labels; within the mask's bounding box, where all of it lies
    (only "inside the body" looks at whole slices)."""
    if not np.any(mask):
        return np.asarray(mask).astype(np.uint8)
    box = _bounding_box(mask)
    regions, found = ndimage.label(mask[box])
    hu = scan.hu[box]
    volume, inside, gas = np.zeros(found + 1), np.zeros(found + 1), np.zeros(found + 1)  # mL per region
    voxel_ml = scan.slice_thickness_mm[box[0]] * np.prod(scan.pixel_spacing_mm) / 1000
    for k in np.flatnonzero(np.any(regions, axis=(1, 2))):  # the slices with lung found
        labels = regions[k]
        volume += np.bincount(labels.ravel(), minlength=found + 1) * voxel_ml[k]
        inside += np.bincount(labels[inside_body(scan.hu[box[0].start + k])[box[1:]]], minlength=found + 1) * voxel_ml[k]
        gas += np.bincount(labels[hu[k] <= gas_hu], minlength=found + 1) * voxel_ml[k]
    lung_like = (inside >= 0.5 * volume) & (gas < 0.5 * volume)
    lung_like[0] = False  # label 0 is the background
    keep = lung_like & (volume >= min_share * volume[lung_like].max(initial=0))
    under = _under_other_regions(regions, np.flatnonzero(keep), hu)
    for index, share in under.items():
        if share >= under_share:
            keep[index] = False
    keep &= volume >= min_share * volume[keep].max(initial=0)
    kept = np.zeros(np.shape(mask), bool)
    kept[box] = keep[regions]
    return (_fill_enclosed(kept) if fill else kept).astype(np.uint8)


def _under_other_regions(regions: np.ndarray, indices, hu: np.ndarray, tissue_hu: float = -300.0) -> dict:
    """For each region in ``indices``: the share of its voxels that lie under another of these regions
    with tissue between: in the same (row, column), the other region starts higher up, and the slices
    between the two are mostly denser than ``tissue_hu`` (a diaphragm; not a slice of lung that the
    model missed)."""
    boxes = ndimage.find_objects(regions)
    extent = {}
    for index in indices:  # each region's lowest and highest slice in every (row, column)
        box = boxes[index - 1]
        inside = regions[box] == index
        present = inside.any(axis=0)
        top, bottom = np.full(regions.shape[1:], -1, np.int32), np.full(regions.shape[1:], regions.shape[0], np.int32)
        top[box[1:]] = np.where(present, box[0].stop - 1 - np.argmax(inside[::-1], axis=0), -1)
        bottom[box[1:]] = np.where(present, box[0].start + np.argmax(inside, axis=0), regions.shape[0])
        extent[index] = top, bottom
    shares = {}
    for index in indices:
        box = boxes[index - 1]
        top = extent[index][0][box[1:]]
        rows = slice(box[0].start, regions.shape[0])  # from this region up to the top of the scan
        tissue = _count_up(hu[rows][(slice(None),) + box[1:]] > tissue_hu)
        under = np.zeros(top.shape, bool)
        for other in indices:
            if other == index:
                continue
            bottom = extent[other][1][box[1:]]
            gap = bottom - top - 1
            above = (top >= 0) & (bottom < regions.shape[0]) & (gap >= 1)
            low, high = np.clip(top + 1 - box[0].start, 0, None), np.clip(bottom - box[0].start, 0, None)
            dense = np.take_along_axis(tissue, high[None], 0)[0] - np.take_along_axis(tissue, low[None], 0)[0]
            under |= above & (dense >= 0.5 * np.maximum(gap, 1))
        inside = regions[box] == index
        shares[index] = float(np.count_nonzero(inside & under[None]) / np.count_nonzero(inside))
    return shares


def _count_up(dense: np.ndarray) -> np.ndarray:
    """counts[j] = how many of dense[:j] are true in each (row, column): a cumulative sum along the slices
    with a zero slice first, added slice by slice (numpy's cumsum along the first axis of a large boolean
    array took 0.6 s against 0.25 s on a 133-slice scan)."""
    counts = np.zeros((len(dense) + 1,) + dense.shape[1:], np.int32)
    for j, plane in enumerate(dense):
        np.add(counts[j], plane, out=counts[j + 1])
    return counts


def _fill_enclosed(mask: np.ndarray) -> np.ndarray:
    """The mask with every hole that it encloses in 3D filled: the connected parts of its complement,
    within the mask's bounding box, that touch no face of that box."""
    if not mask.any():
        return mask
    box = _bounding_box(mask)
    holes, count = ndimage.label(~mask[box])
    if not count:
        return mask
    open_to_outside = np.zeros(count + 1, bool)
    for axis in range(3):
        for end in (0, -1):
            open_to_outside[np.unique(np.take(holes, end, axis=axis))] = True
    filled = mask.copy()
    filled[box] |= ~open_to_outside[holes]
    return filled


def _bounding_box(mask: np.ndarray) -> tuple:
    ranges = []
    for axes in ((1, 2), (0, 2), (0, 1)):
        present = np.flatnonzero(np.any(mask, axis=axes))
        ranges.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(ranges)


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


# What is measured must be a human lung's size. Set from physiology: an adult's lungs hold up to
# about 9 L at full inspiration (total lung capacity; the tallest adults), a third more where
# emphysema over-inflates them; no lung is longer than 40 cm in any direction (apex to base about
# 30 cm, a chest about 35 cm across); a newborn's lungs hold about 150 mL. A volume outside these
# bounds means the voxel size is wrong (a file that lost its geometry, a slice spacing mistyped),
# and it is flagged, never reported.
MAX_LUNG_ML, MAX_LUNG_EXTENT_MM, MIN_WHOLE_LUNGS_ML = 12_000.0, 400.0, 150.0
IMPLAUSIBLE = "not a human lung's size at this voxel size, so not measured"


def implausible_lungs(scan: Scan, labels: np.ndarray, volume_ml: float) -> str | None:
    """Why the lungs in labels[slice, row, column] cannot be a human's at the scan's voxel size, or None."""
    lung = labels > 0
    if scan.kind != "volume" or not lung.any():
        return None
    spacing = (float(np.mean(scan.slice_thickness_mm)),) + tuple(scan.pixel_spacing_mm)
    box = _bounding_box(lung)
    extent = [float(scan.slice_thickness_mm[box[0]].sum()), (box[1].stop - box[1].start) * spacing[1],
              (box[2].stop - box[2].start) * spacing[2]]
    whole = not lung[0].any() and not lung[-1].any()  # lung-free slices below and above: the lungs lie whole in it
    if volume_ml > MAX_LUNG_ML:
        why = f"{volume_ml:,.0f} mL of lung, more than any human lung holds (up to about {MAX_LUNG_ML / 1000:.0f} L)"
    elif max(extent) > MAX_LUNG_EXTENT_MM:
        why = f"lungs {max(extent):,.0f} mm long, where no lung reaches {MAX_LUNG_EXTENT_MM:.0f} mm"
    elif whole and NO_LUNG_ML <= volume_ml < MIN_WHOLE_LUNGS_ML:  # below NO_LUNG_ML: stray voxels, "no lungs found"
        why = (f"whole lungs (lung-free slices above and below) of {volume_ml:,.1f} mL, less than a newborn's "
               f"(about {MIN_WHOLE_LUNGS_ML:.0f} mL)")
    else:
        return None
    voxels = f"{spacing[1]:g} x {spacing[2]:g} x {spacing[0]:g} mm"
    if np.allclose(spacing, 1.0):
        check = f"the voxels are {voxels}, NIfTI's default when a file lost its geometry (e.g. made from PNG slices)"
    else:
        check = f"the voxels are {voxels} (rows x columns x slices): check the pixel spacing and the slice spacing"
    return f"{IMPLAUSIBLE}: {why}; {check}. Re-export the scan with its geometry (e.g. dcm2niix)."


NO_LUNG_ML = 20.0  # less lung than this in a volume: "no lungs found"


_NETWORKS = weakref.WeakKeyDictionary()  # model -> its forward pass, traced once for any batch size


def _network(model):
    """``model(x, training=False)`` as one traced function. It computes what ``model.predict`` computes for
    the same batches, without predict's set-up on every call and its new trace for every new batch size
    (the last, shorter batch of each scan); a folder of scans traces it once."""
    import tensorflow as tf

    if model not in _NETWORKS:
        _NETWORKS[model] = tf.function(lambda x: model(x, training=False),
                                       input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
    return _NETWORKS[model]


def prepare_network(model, settings: dict, batch_size: int = 8) -> None:
    """Trace the model's forward pass and set up its kernels for a full batch now (about a second), so
    that no scan pays for it."""
    size = settings["img_size"]
    _network(model)(np.zeros((batch_size, size, size, 1), np.float32))


def _scan_probabilities(model, slices, settings: dict, batch_size: int) -> list:
    """As ``lungseg_utils.predict_probabilities`` (the same inputs, in the same batches), through :func:`_network`."""
    network = _network(model)
    batch = np.stack([preprocess_slice(np.asarray(s), settings["img_size"], settings["hu_min"], settings["hu_max"])
                      for s in slices])[..., None]
    probabilities = np.concatenate([network(batch[i:i + batch_size]).numpy() for i in range(0, len(batch), batch_size)])
    return [resize_image(p, np.shape(s)) for p, s in zip(probabilities[..., 0], slices)]


def segment_scan(model, scan: Scan, settings: dict, threshold: float = 0.5, postprocess: bool = True,
                 batch_size: int = 8, progress: bool = False) -> np.ndarray:
    """Labels[slice, row, column] for a Scan: 0 background, 1 right lung, 2 left lung (a slice: 1 lung)."""
    from tqdm import tqdm

    check_settings(settings)
    check_hu(scan.hu, scan.source or scan.name)
    masks = np.zeros(scan.hu.shape, np.uint8)
    with tqdm(total=len(scan.hu), desc=scan.name, unit="slice", disable=not progress or scan.kind == "slice") as bar:
        for start in range(0, len(scan.hu), 4 * batch_size):
            chunk = list(scan.hu[start:start + 4 * batch_size])
            for offset, probability in enumerate(_scan_probabilities(model, chunk, settings, batch_size)):
                mask = (probability >= threshold).astype(np.uint8)
                masks[start + offset] = clean_mask(mask) if postprocess else mask
            bar.update(len(chunk))
    if scan.kind == "slice":
        return masks
    lungs = keep_lungs(masks, scan) if postprocess else masks
    return split_lungs(lungs, body_midline(scan.hu, lungs))


def scan_measurements(scan: Scan, labels: np.ndarray, pixel_spacing_mm: float | None = None) -> dict:
    """Lung size (area in mm² for a slice; volumes in mL, right and left, for a volume) and density:
    mean HU, PD05/PD15/PD95 (HU percentiles) and LAA-950 (% of lung voxels below -950 HU, the
    emphysema index; PD15 is its density counterpart)."""
    spacing = scan.pixel_spacing_mm or ((pixel_spacing_mm, pixel_spacing_mm) if pixel_spacing_mm else None)
    pixel_area = spacing[0] * spacing[1] if spacing else np.nan
    lung = labels > 0
    row = {"name": scan.name, "kind": scan.kind, "slices": len(scan.hu), "lung_pixels": int(lung.sum())}
    if scan.kind == "slice":
        row["area_mm2"] = lung.sum() * pixel_area
        if not lung.any():
            row["note"] = "no lung found: is this a chest CT slice in HU?"
    else:
        def millilitres(part):
            return float((part.sum(axis=(1, 2)) * scan.slice_thickness_mm).sum() * pixel_area / 1000)
        row.update(lung_volume_ml=millilitres(lung), right_volume_ml=millilitres(labels == 1),
                   left_volume_ml=millilitres(labels == 2))
        implausible = implausible_lungs(scan, labels, row["lung_volume_ml"])
        if implausible:  # flagged, never reported as a result
            row.update(lung_volume_ml=np.nan, right_volume_ml=np.nan, left_volume_ml=np.nan, note=implausible)
        elif row["lung_volume_ml"] < NO_LUNG_ML:
            row["note"] = f"no lungs found ({row['lung_volume_ml']:.1f} mL): is this a chest CT?"
        elif min(row["right_volume_ml"], row["left_volume_ml"]) == 0:
            found, missing = ("right", "left") if row["left_volume_ml"] == 0 else ("left", "right")
            row["note"] = (f"one lung found, the {found}; the {missing} lung is 0 mL (after a pneumonectomy, a "
                           f"collapsed lung, or a scan of one side): check the mask")
    inside = scan.hu[lung].astype(np.float64)
    percentiles = np.percentile(inside, [5, 15, 95]) if inside.size else [np.nan] * 3
    row.update(mean_hu=inside.mean() if inside.size else np.nan, pd05_hu=percentiles[0], pd15_hu=percentiles[1],
               pd95_hu=percentiles[2], laa950_percent=100 * np.mean(inside < -950) if inside.size else np.nan,
               pixel_spacing_mm=" x ".join(f"{v:g}" for v in spacing) if spacing else "unknown",
               slice_spacing_mm=float(np.mean(scan.slice_thickness_mm)) if scan.kind == "volume" else np.nan)
    return row


# The whole path for a user, as one function (and one command, `bash scripts/predict.sh INPUT
# [OUTPUT_DIR]`, which calls it): for each scan a mask (`<name>_mask.nii.gz` for a volume, with the
# input's affine and array orientation; `<name>_mask.png` for a slice), a preview, and a row of
# `measurements.csv` / `measurements.json`. An input it cannot use is named in one line and the rest
# go on. It replaces only files it wrote itself (listed in `measurements.json`), never yours.


LABEL_COLOURS = {1: (0.1, 1.0, 0.2), 2: (0.2, 0.5, 1.0)}  # right lung green, left lung blue


def mask_overlay(image01: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with each label tinted (1 green, 2 blue)."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    for label, colour in LABEL_COLOURS.items():
        rgb[labels == label] = 0.55 * rgb[labels == label] + 0.45 * np.array(colour)
    return rgb


def write_scan_outputs(scan: Scan, labels: np.ndarray, outputs, model_name: str = "", log=print) -> dict:
    """The mask file (NIfTI for a volume, PNG for a slice; for a DICOM series also a DICOM Segmentation on
    its source frames) and a preview PNG; returns their paths."""
    import cv2

    name, written = scan.name, {}
    if scan.kind == "volume":
        import nibabel as nib

        mask_path = outputs.path(f"{name}_mask.nii.gz")
        on_input = from_model_axes(labels, scan.orientation).astype(np.uint8)  # the input's array axes
        mask, affine = on_input, scan.affine
        if scan.grid is not None:  # missing slices: the mask on the even grid, empty where no slice was
            mask = np.zeros(on_input.shape[:2] + (scan.grid[-1] + 1,), np.uint8)
            mask[:, :, scan.grid] = on_input
            affine = scan.affine.copy()
            affine[:3, 2] *= (len(scan.grid) - 1) / scan.grid[-1]  # the mean step -> the series' own step
        image = nib.Nifti1Image(mask, affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, mask_path)
        if scan.source_files:  # (column, row, slice) of the series -> one frame (row, column) per source file
            from lungseg.dicom import write_dicom_seg

            seg_path = outputs.path(f"{name}_seg.dcm")
            try:
                write_dicom_seg(scan.source_files, on_input.transpose(2, 1, 0), seg_path, model_name)
                written["dicom_seg"] = str(seg_path)
            except Exception as error:  # a series highdicom cannot reference: the NIfTI mask holds the same labels
                seg_path.unlink(missing_ok=True)
                log(f"{scan.source}: no DICOM Segmentation written ({type(error).__name__}: "
                    f"{' '.join(str(error).split())[:200]}); {mask_path.name} holds the same labels.")
                written["dicom_seg"] = ""
    else:
        mask_path = outputs.path(f"{name}_mask.png")
        cv2.imwrite(str(mask_path), (labels[0] > 0).astype(np.uint8) * 255)
    with_lung = np.flatnonzero(labels.any(axis=(1, 2))) if labels.any() else np.arange(len(labels))
    shown = with_lung[np.linspace(0, len(with_lung) - 1, min(6, len(with_lung))).astype(int)]
    pictures = [mask_overlay(window_hu(scan.hu[k], -1000, 400), labels[k]) for k in shown]
    title = f"{name}: right lung green, left lung blue" if scan.kind == "volume" else f"{name}: predicted lung"
    figure = show_pairs([pictures], [f"slice {k + 1} of {len(labels)}" for k in shown], title=title,
                        path=outputs.path(f"{name}_preview.png"), size=2.4)
    plt.close(figure)
    return {"mask": str(mask_path), **written, "preview": str(outputs.folder / f"{name}_preview.png")}


def predict_scans(model, settings: dict, input_path, output_dir, *, threshold: float = 0.5, postprocess: bool = True,
                  batch_size: int = 8, series: str | None = None, pixel_spacing_mm: float | None = None,
                  progress: bool = False, model_name: str = "", log=print) -> pd.DataFrame:
    """Segment the lungs in your CT (see find_scans for what ``input_path`` may be) and write, into
    ``output_dir``, each scan's mask and preview and ``measurements.csv``/``.json``. Returns the
    measurements (with rows of earlier runs into the same folder); ``.attrs["problems"]`` lists the
    inputs that could not be used, ``.attrs["flagged"]`` the scans whose lungs cannot be a human's at their
    voxel size (segmented, not measured), ``.attrs["segmented"]`` counts the scans of this call."""
    from lungseg.outputs import OutputFolder  # never replaces your files; records each scan as it is written

    outputs = OutputFolder(output_dir)
    record = {"model": model_name or model.name, "threshold": threshold, "postprocess": postprocess,
              "settings": {key: settings.get(key) for key in ("img_size", "hu_min", "hu_max", "epochs", "base_filters",
                                                                "best_val_dice", "model_file")},
              "labels": {"0": "background", "1": "right lung", "2": "left lung (volumes)"},
              "versions": library_versions()}
    rows, problems, flagged = [], [], []
    try:
        for source, read in find_scans(input_path, series, pixel_spacing_mm, exclude=outputs.own_files()):
            try:
                scan = read()
                air = check_air(scan)  # refuses values about 1024 off HU; says a scale
                scan.notes += [air] if air else []
                for note in scan.notes:
                    log(" ".join(note.split()))
                labels = segment_scan(model, scan, settings, threshold, postprocess, batch_size, progress)
                lung_hu = scan.hu[labels > 0]
                if lung_hu.size and not -1000 <= lung_hu.mean() <= -200 and settings.get("synthetic"):
                    raise LungsegError(f"{source}: the lung found has a mean of {lung_hu.mean():.0f} HU, which no lung "
                                       "has, and the model learnt SYNTHETIC phantoms, not real CT: use a model trained "
                                       "on the real slices (the committed ones in models/, or 03/04 run on them).")
                if lung_hu.size and not -1000 <= lung_hu.mean() <= -200:
                    raise LungsegError(f"{source}: the lung found has a mean of {lung_hu.mean():.0f} HU, which no lung "
                                       "has: its values are not HU. Convert it to HU (a 16-bit PNG holds HU+1024; "
                                       "DICOM needs its rescale slope and intercept).")
                scan.name = outputs.name_for(scan.name, source)  # two patients' chest.nii.gz: chest, chest-2
                rows.append({**scan_measurements(scan, labels, pixel_spacing_mm),
                             **write_scan_outputs(scan, labels, outputs, record["model"], log),
                             "input": str(Path(source).resolve())})
                if "note" in rows[-1]:
                    log(f"{source}: {rows[-1]['note']}")
                if str(rows[-1].get("note", "")).startswith(IMPLAUSIBLE):
                    flagged.append(f"{source}: {rows[-1]['note']}")
            except LungsegError as error:
                problems.append(" ".join(str(error).split()))  # one line per input
                log(f"not segmented: {problems[-1]}")
            except Exception as error:  # what no check foresaw stays one scan's line; the next scans still run
                problems.append(" ".join(f"{source}: an unexpected {type(error).__name__} ({error}). The other scans "
                                         "are not affected; please report it with this line.".split()))
                log(f"not segmented: {problems[-1]}")
            if rows:
                outputs.save(rows, {**record, "problems": problems})  # each scan recorded as soon as it is done
        table = outputs.save(rows, {**record, "problems": problems})
    finally:
        outputs.close()
    segmented = len(rows)
    table.attrs.update(problems=problems, segmented=segmented, flagged=flagged,
                       slices=int(sum(row["slices"] for row in rows)))
    return table


def read_scan(input_path, series: str | None = None, pixel_spacing_mm: float | None = None) -> Scan:
    """The one scan in ``input_path`` (a DICOM series folder, a NIfTI file, a slice), read as :func:`find_scans`
    reads each; a folder of several scans is refused with a pointer to :func:`predict_scans`."""
    found = find_scans(input_path, series, pixel_spacing_mm)
    if len(found) > 1:
        raise LungsegError(f"{input_path} holds {len(found)} scans: give one, or segment them all with predict_scans "
                           "(bash scripts/predict.sh).")
    return found[0][1]()
