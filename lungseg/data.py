"""Finding image/mask pairs and verifying every one of them (the checks 01_download runs).

Reading slices in HU is taught in 01_download and shared through ``lungseg_utils``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungseg.errors import LungsegError
from lungseg_utils import IMAGE_SUFFIXES, check_hu, read_mask, read_slice

# Layouts we recognise, as (images folder, masks folder) relative to a data root.
KAGGLE_LAYOUT = [("2d_images", "2d_masks")]
TRAIN_TEST_LAYOUT = [("Train/Images", "Train/Masks"), ("Test/Images", "Test/Masks")]


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
    stats = read_lung_stats(csv_path)
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
    stats = read_lung_stats(stats_csv)
    if not {"lung_area_mm2", "lung_area_px"} <= set(stats.columns):
        raise LungsegError(f"{stats_csv}: expected columns lung_area_px and lung_area_mm2; is this lung_stats.csv? "
                           "Replace it with the one from the Kaggle download, or delete it.")
    ratio = (stats.lung_area_mm2 / stats.lung_area_px).median()
    return float(ratio)


def read_lung_stats(csv_path) -> pd.DataFrame:
    """``lung_stats.csv`` as a table; an empty or unparsable file is named, with the fix."""
    try:
        return pd.read_csv(csv_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise LungsegError(f"{csv_path}: empty or not a CSV table ({type(error).__name__}: {error}). It is optional: "
                           "replace it with the lung_stats.csv of the Kaggle download, or delete it.") from None


# --------------------------------------------------------------------------- calibration
def dataset_calibration(dataset: dict) -> dict:
    """The HU calibration that 01_download recorded in ``dataset.json`` (``lu.to_standard_hu`` applies it)."""
    calibration = dataset.get("hu_calibration")
    if not isinstance(calibration, dict) or not {"scale", "offset"} <= set(calibration):
        raise LungsegError("outputs/data/dataset.json has no HU calibration: it was written by an older "
                           "01_download. Run 01_download again (it takes seconds).")
    return calibration


# --------------------------------------------------------------------------- splits
def kfold_split(names, fold: int, folds: int = 5, val_fraction: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """Fold ``fold`` of a k-fold cross-validation: scikit-learn's ``KFold`` makes ``folds`` test parts
    (every slice is tested exactly once over the folds); the validation slices, which pick the
    epoch, come from the rest. Sorted names and ``seed`` make it deterministic."""
    from sklearn.model_selection import KFold, train_test_split

    names = sorted(names)
    if not (isinstance(folds, int) and 2 <= folds <= len(names)) or fold not in range(folds if isinstance(folds, int) else 0):
        raise LungsegError(f"fold {fold!r} of {folds!r} folds: the folds must be an integer 2..{len(names)} and the "
                           "fold one of 0..folds-1.")
    train_val, test = list(KFold(folds, shuffle=True, random_state=seed).split(names))[fold]
    train, val = train_test_split(train_val, test_size=round(val_fraction * len(names)), random_state=seed)
    part_of = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}
    return pd.DataFrame({"name": names, "split": [part_of[index] for index in range(len(names))]})


def read_split_manifest(path, names) -> pd.DataFrame:
    """A saved split (CSV with columns name, split), for 02's ``SPLIT_MANIFEST``: it must give each of
    ``names`` exactly one of train/val/test, and name no other slice."""
    path = Path(path)
    if not path.is_file():
        raise LungsegError(f"SPLIT_MANIFEST={str(path)!r} does not exist: give a CSV with columns name, split "
                           "(e.g. a split_manifest.csv written by 02), or leave it empty to split with SPLIT.")
    manifest = pd.read_csv(path)
    if not {"name", "split"} <= set(manifest.columns) or not manifest.split.isin(["train", "val", "test"]).all():
        raise LungsegError(f"{path}: a split manifest has columns name and split, each split train, val or test.")
    if manifest.name.duplicated().any() or set(manifest.name) != set(names):
        raise LungsegError(f"{path}: names {len(set(manifest.name) ^ set(names))} slices that are not exactly these "
                           f"{len(set(names))} pairs (or names one twice): make it from these data.")
    if not {"train", "val"} <= set(manifest.split):
        raise LungsegError(f"{path}: has no train or no val slices; both are needed to train.")
    return manifest[["name", "split"]].sort_values("name", ignore_index=True)


def benchmark_settings(environ=None) -> tuple[str, bool]:
    """02's two settings that only the benchmark changes (``benchmarks/crossval.py``, through the runner's
    ``-p SPLIT_MANIFEST`` / ``-p TRAIN_ON_FLAGGED``), kept out of the lesson's Parameters cell: a saved split
    to use (``$LUNGSEG_SPLIT_MANIFEST``, a CSV relative to the repository) and whether the masks that 01's
    audit flags may train (``$LUNGSEG_TRAIN_ON_FLAGGED``)."""
    import os

    environ = os.environ if environ is None else environ
    flagged = environ.get("LUNGSEG_TRAIN_ON_FLAGGED", "True")
    if flagged not in ("True", "False"):
        raise LungsegError(f"LUNGSEG_TRAIN_ON_FLAGGED={flagged!r}: use True or False (-p TRAIN_ON_FLAGGED False).")
    return environ.get("LUNGSEG_SPLIT_MANIFEST", ""), flagged == "True"
