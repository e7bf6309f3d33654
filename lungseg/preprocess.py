"""From HU slices to model inputs: windowing, resizing, the split and its manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.data import LungsegError

SPLITS = ("train", "val", "test")


def check_img_size(img_size: int) -> int:
    """The U-Nets halve the resolution four times, so the size must be a multiple of 16."""
    if not isinstance(img_size, (int, np.integer)) or img_size < 16 or img_size % 16:
        raise LungsegError(
            f"IMG_SIZE={img_size!r} cannot be used: the models halve the resolution 4 times, so it "
            "must be a positive multiple of 16 (e.g. 128, 256, 384, 512)."
        )
    return int(img_size)


def window_hu(image: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and scale linearly to [0, 1] (float32).

    The default window (-1000, 400) keeps everything from air to soft tissue distinct and
    maps the padding outside the scanner's field of view (below -2000) to air."""
    if not hu_max > hu_min:
        raise LungsegError(f"HU window ({hu_min}, {hu_max}) is empty: HU_MAX must be greater than HU_MIN.")
    scaled = (image.astype(np.float32) - hu_min) / (hu_max - hu_min)
    return np.clip(scaled, 0.0, 1.0)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a float image: area averaging when shrinking (no aliasing), bilinear when enlarging.
    ``size`` is an int (square) or (height, width)."""
    import cv2

    height, width = (size, size) if np.isscalar(size) else size
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32), (int(width), int(height)), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a binary mask and keep it binary: resize the 0/1 values like an image
    (the fraction of lung under each new pixel), then threshold at 0.5."""
    return (resize_image(mask.astype(np.float32), size) >= 0.5).astype(np.uint8)


def preprocess_slice(image_hu: np.ndarray, img_size: int, hu_min: float, hu_max: float) -> np.ndarray:
    """HU slice -> model input (img_size x img_size, float32 in [0, 1]): window, then resize."""
    return resize_image(window_hu(image_hu, hu_min, hu_max), img_size)


def make_split(names, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> pd.DataFrame:
    """Assign each slice to train/val/test, deterministically for a given seed.

    Names are sorted first, so the split depends only on the set of names and the seed.
    Each slice is its own group (the file names carry no patient id)."""
    names = sorted(names)
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise LungsegError(f"SPLIT={tuple(fractions)} must be three fractions (train, val, test) summing to 1.")
    n_val = int(round(fractions[1] * len(names)))
    n_test = int(round(fractions[2] * len(names)))
    n_train = len(names) - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise LungsegError(
            f"SPLIT={tuple(fractions)} on {len(names)} slices gives {n_train}/{n_val}/{n_test} "
            "train/val/test slices; every part needs at least one. Use larger fractions or more data."
        )
    order = np.random.default_rng(seed).permutation(len(names))
    split = np.empty(len(names), dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train:n_train + n_val]] = "val"
    split[order[n_train + n_val:]] = "test"
    return pd.DataFrame({"name": names, "split": split})


def load_arrays(path: str | Path, img_size: int | None = None) -> dict[str, np.ndarray]:
    """Load the arrays written by 02_preprocess and check them.

    Returns x_train, y_train, x_val, y_val, x_test, y_test: images float32 (N, S, S, 1) in
    [0, 1] and masks uint8 (N, S, S, 1) in {0, 1}."""
    path = Path(path)
    if not path.is_file():
        raise LungsegError(f"{path} is missing: run notebooks/02_preprocess first (with the same OUTPUT_DIR).")
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for split in SPLITS:
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None or y is None:
            raise LungsegError(f"{path}: x_{split}/y_{split} missing; re-run notebooks/02_preprocess.")
        size = x.shape[1] if x.ndim == 4 else None
        problems = []
        if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] != 1 or x.dtype != np.float32:
            problems.append(f"x_{split} is {x.dtype} {x.shape}, expected float32 (N, S, S, 1)")
        if y.shape != x.shape or y.dtype != np.uint8:
            problems.append(f"y_{split} is {y.dtype} {y.shape}, expected uint8 {x.shape}")
        if img_size is not None and size != img_size:
            problems.append(f"images are {size} px but IMG_SIZE={img_size}")
        if problems:
            raise LungsegError(f"{path}: " + "; ".join(problems) + ". Re-run notebooks/02_preprocess "
                               "with the same IMG_SIZE and OUTPUT_DIR.")
    return arrays
