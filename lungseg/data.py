"""Reading CT slices and lung masks, finding image/mask pairs, and verifying them.

CT slices are kept in Hounsfield units (HU). The Kaggle TIFFs are int16; a plain
``cv2.imread`` would convert them to 8-bit and destroy the HU values, so TIFFs are
read with tifffile (lossless) and PNGs with ``cv2.IMREAD_UNCHANGED``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".dcm")

# Layouts we recognise, as (images folder, masks folder) relative to a data root.
KAGGLE_LAYOUT = [("2d_images", "2d_masks")]
TRAIN_TEST_LAYOUT = [("Train/Images", "Train/Masks"), ("Test/Images", "Test/Masks")]

# A 16-bit PNG cannot hold negative numbers, so by convention it stores HU + 1024.
PNG_HU_OFFSET = -1024


class LungsegError(ValueError):
    """A problem with the user's data or parameters; the message names the file or
    parameter and says how to fix it."""


# --------------------------------------------------------------------------- reading
def read_slice(path: str | Path, *, png_hu_offset: int = PNG_HU_OFFSET) -> np.ndarray:
    """Read one CT slice as a 2-D array in HU.

    - TIFF: read losslessly (int16 HU in the Kaggle set; float HU also accepted).
    - DICOM (``.dcm``): pixel data with RescaleSlope/RescaleIntercept applied -> HU.
    - PNG: must be 16-bit and hold HU + 1024 (``png_hu_offset`` is added back).
    8-bit images cannot hold HU and are refused (see :func:`check_hu`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            array = _read_tiff(path)
        elif suffix == ".dcm":
            array = _read_dicom_hu(path)
        elif suffix == ".png":
            import cv2

            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise OSError("OpenCV could not decode it")
            if array.dtype == np.uint16:
                array = array.astype(np.int32) + png_hu_offset
        else:
            raise LungsegError(
                f"{path}: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}."
            )
    except LungsegError:
        raise
    except Exception as error:  # tifffile/pydicom/cv2 raise many different types
        raise LungsegError(
            f"{path}: unreadable or corrupt image ({type(error).__name__}: {error}). "
            "Re-download or re-export this file, or remove it together with its mask."
        ) from error
    array = np.asarray(array)
    if array.size == 0:
        raise LungsegError(f"{path}: unreadable or corrupt image (no pixel data). Re-download or re-export it.")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise LungsegError(f"{path}: a colour image ({array.shape}); a CT slice has one channel in HU.")
    if array.ndim != 2:
        raise LungsegError(f"{path}: expected one 2-D slice, got an array of shape {array.shape}.")
    return array


def _read_tiff(path: Path) -> np.ndarray:
    """tifffile first (lossless, any dtype); OpenCV with IMREAD_UNCHANGED for compressions that
    tifffile cannot decode without the optional imagecodecs package (e.g. LZW)."""
    import cv2
    import tifffile

    try:
        return tifffile.imread(path)
    except Exception:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise
        return array


def _read_dicom_hu(path: Path) -> np.ndarray:
    import pydicom

    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array.astype(np.float32)
    slope = float(getattr(dataset, "RescaleSlope", 1.0))
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0))
    return pixels * slope + intercept


def read_mask(path: str | Path) -> np.ndarray:
    """Read a lung mask and return it as uint8 {0, 1}; refuse anything non-binary."""
    path = Path(path)
    mask = read_slice(path, png_hu_offset=0)
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1, 255}:
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise LungsegError(
            f"{path}: mask is not binary (values {shown}); masks must hold only 0 and 255 "
            "(or 0 and 1). Re-export it as a binary mask."
        )
    return (mask > 0).astype(np.uint8)


def check_hu(image: np.ndarray, name: str | Path) -> None:
    """Refuse arrays that cannot be CT in HU: 8-bit images, or no air and tissue in range.

    Every real chest CT slice contains air (about -1000 HU, below -500) and soft tissue
    (above -200 HU); an 8-bit or normalised image does not.
    """
    if image.dtype in (np.uint8, np.int8, bool):
        raise LungsegError(
            f"{name}: an 8-bit image cannot hold Hounsfield units (HU). Export the slice as "
            "int16 TIFF, 16-bit PNG holding HU+1024, or DICOM."
        )
    low, high = float(np.min(image)), float(np.max(image))
    if low > -500 or high < -200:
        raise LungsegError(
            f"{name}: values {low:.0f}..{high:.0f} do not look like a CT slice in HU (expected air "
            "below -500 and tissue above -200). Convert it to HU first; if it is a PNG, it must "
            "be 16-bit holding HU+1024."
        )


# --------------------------------------------------------------------------- pairing
def _images_in(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def find_pairs(root: str | Path) -> pd.DataFrame:
    """Find image/mask pairs under ``root`` and return a table (name, image_path, mask_path).

    Two layouts are recognised, also one folder down:
    the Kaggle one (``2d_images/``, ``2d_masks/``) and the Residual U-Net reference
    project's (``Train/Images``, ``Train/Masks``, ``Test/Images``, ``Test/Masks``).
    A mask has the same file name as its image.
    """
    root = Path(root)
    if not root.is_dir():
        raise LungsegError(
            f"Data folder {root} does not exist. Set DATA_DIR (or LUNGSEG_DATA_DIR) to the folder "
            "that holds 2d_images/ and 2d_masks/, or use DATA_SOURCE='kaggle' or 'synthetic'."
        )
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for base in candidates:
        for layout in (KAGGLE_LAYOUT, TRAIN_TEST_LAYOUT):
            if all((base / images).is_dir() and (base / masks).is_dir() for images, masks in layout):
                return _pairs_from_layout(base, layout)
    raise LungsegError(
        f"No data found in {root}: expected 2d_images/ and 2d_masks/ (the Kaggle layout) or "
        "Train/Images, Train/Masks, Test/Images, Test/Masks, there or one folder down. "
        "Point DATA_DIR at such a folder, or use DATA_SOURCE='kaggle' or 'synthetic'."
    )


def _pairs_from_layout(base: Path, layout: list[tuple[str, str]]) -> pd.DataFrame:
    rows = []
    for images_dir, masks_dir in layout:
        images, masks = _images_in(base / images_dir), _images_in(base / masks_dir)
        for kind, only, other in (("image", images.keys() - masks.keys(), masks_dir),
                                  ("mask", masks.keys() - images.keys(), images_dir)):
            if only:
                listed = ", ".join(sorted(only)[:5]) + (" ..." if len(only) > 5 else "")
                folder = base / (images_dir if kind == "image" else masks_dir)
                raise LungsegError(
                    f"{len(only)} {kind}(s) in {folder} without a file of the same name in "
                    f"{base / other}: {listed}. Add the missing files or remove these."
                )
        rows += [(name, str(images[name]), str(masks[name])) for name in sorted(images)]
    if not rows:
        raise LungsegError(f"{base}: the image and mask folders are empty. Put the slices there first.")
    table = pd.DataFrame(rows, columns=["name", "image_path", "mask_path"])
    duplicated = table["name"][table["name"].duplicated()]
    if len(duplicated):
        raise LungsegError(f"{base}: file name {duplicated.iloc[0]} occurs twice; names must be unique.")
    return table


# --------------------------------------------------------------------------- verifying
def verify_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Read every pair and check it; return one row per slice with its facts.

    Checks: the image is a CT slice in HU (:func:`check_hu`), the mask is binary, and both
    have the same shape. Any failure raises :class:`LungsegError` naming the file.
    """
    rows = []
    for pair in pairs.itertuples():
        image = read_slice(pair.image_path)
        check_hu(image, pair.image_path)
        mask = read_mask(pair.mask_path)
        if image.shape != mask.shape:
            raise LungsegError(
                f"{pair.mask_path}: mask shape {mask.shape} differs from its image's {image.shape} "
                f"({pair.image_path}). Each mask must match its slice pixel for pixel."
            )
        rows.append({
            "name": pair.name, "height": image.shape[0], "width": image.shape[1],
            "dtype": str(image.dtype), "hu_min": float(image.min()), "hu_max": float(image.max()),
            "lung_px": int(mask.sum()), "lung_fraction": float(mask.mean()),
        })
    return pd.DataFrame(rows)


def summarise(facts: pd.DataFrame) -> pd.DataFrame:
    """One small table: counts, shapes, dtypes, HU range and lung fraction."""
    shapes = sorted({f"{h}x{w}" for h, w in zip(facts.height, facts.width)})
    return pd.DataFrame({
        "pairs": [len(facts)],
        "shape(s)": [", ".join(shapes)],
        "image dtype(s)": [", ".join(sorted(set(facts.dtype)))],
        "HU min": [facts.hu_min.min()],
        "HU max": [facts.hu_max.max()],
        "lung fraction min": [round(facts.lung_fraction.min(), 3)],
        "lung fraction median": [round(facts.lung_fraction.median(), 3)],
        "lung fraction max": [round(facts.lung_fraction.max(), 3)],
    })


def check_lung_stats(csv_path: str | Path, facts: pd.DataFrame) -> pd.DataFrame:
    """Compare ``lung_stats.csv`` with the masks: lung_area_px must equal the mask's pixel count.

    Returns the rows that were compared (slices present in both); raises on any mismatch.
    """
    stats = pd.read_csv(csv_path)
    if not {"img_id", "lung_area_px"} <= set(stats.columns):
        raise LungsegError(f"{csv_path}: expected columns img_id and lung_area_px; is this lung_stats.csv?")
    merged = facts[["name", "lung_px"]].merge(stats, left_on="name", right_on="img_id")
    bad = merged[merged.lung_area_px != merged.lung_px]
    if len(bad):
        first = bad.iloc[0]
        raise LungsegError(
            f"{csv_path}: {len(bad)} row(s) disagree with the masks, e.g. {first['name']}: "
            f"lung_area_px={first.lung_area_px} but the mask has {first.lung_px} lung pixels. "
            "The csv belongs to other masks: replace it with the matching one or delete it."
        )
    return merged


def pixel_area_mm2(stats_csv: str | Path | None, default: float = 0.703125) -> float:
    """Area of one pixel in mm^2 as ``lung_stats.csv`` implies it (lung_area_mm2 / lung_area_px);
    the Kaggle set's value is 0.703125 mm^2 (0.8385 mm pixels at 512x512)."""
    if stats_csv is None or not Path(stats_csv).is_file():
        return default
    stats = pd.read_csv(stats_csv)
    ratio = (stats.lung_area_mm2 / stats.lung_area_px).median()
    return float(ratio)


def write_json(path: str | Path, record: dict) -> None:
    """Write a JSON record atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
    temporary.replace(path)


def read_json(path: str | Path, *, produced_by: str) -> dict:
    """Read a JSON record that an earlier notebook wrote; say which notebook to run if missing."""
    path = Path(path)
    if not path.is_file():
        raise LungsegError(f"{path} is missing: run {produced_by} first (with the same OUTPUT_DIR).")
    return json.loads(path.read_text())
