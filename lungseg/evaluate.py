"""Scoring masks (NumPy/SciPy), lung measurements, post-processing, and inference on HU slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from lungseg.data import LungsegError, check_hu
from lungseg.preprocess import preprocess_slice, resize_image


# --------------------------------------------------------------------------- per-slice scores
def overlap_scores(truth: np.ndarray, prediction: np.ndarray) -> dict:
    """Dice, IoU, precision and recall of two binary masks. Conventions for empty masks:
    both empty -> every score 1; precision of an empty prediction, or recall of an empty
    truth, alone -> 0 (nothing right where something was expected)."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    tp = np.count_nonzero(truth & prediction)
    fp = np.count_nonzero(~truth & prediction)
    fn = np.count_nonzero(truth & ~prediction)
    if tp + fp + fn == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3)), border_value=0)


def hd95(truth: np.ndarray, prediction: np.ndarray, spacing_mm: float = 1.0) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask boundaries, in mm.

    Distances from every boundary pixel of each mask to the nearest boundary pixel of the
    other, pooled, 95th percentile. 0 if both masks are empty; inf if only one is."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    if not truth.any() and not prediction.any():
        return 0.0
    if not truth.any() or not prediction.any():
        return float("inf")
    truth_edge, prediction_edge = _surface(truth), _surface(prediction)
    to_truth = ndimage.distance_transform_edt(~truth_edge, sampling=spacing_mm)
    to_prediction = ndimage.distance_transform_edt(~prediction_edge, sampling=spacing_mm)
    distances = np.concatenate([to_truth[prediction_edge], to_prediction[truth_edge]])
    return float(np.percentile(distances, 95))


def score_slice(truth: np.ndarray, prediction: np.ndarray, spacing_mm: float) -> dict:
    return {**overlap_scores(truth, prediction), "hd95_mm": hd95(truth, prediction, spacing_mm)}


def pooled_dice(truths, predictions) -> float:
    """Dice over all pixels of all slices together (large lungs weigh more than small ones)."""
    tp = sum(np.count_nonzero(t.astype(bool) & p.astype(bool)) for t, p in zip(truths, predictions))
    total = sum(np.count_nonzero(t) + np.count_nonzero(p) for t, p in zip(truths, predictions))
    return 2 * tp / total if total else 1.0


def paired_comparison(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 10000) -> dict:
    """Compare per-slice scores of two models on the same slices: mean difference (a - b),
    its 95% bootstrap confidence interval, and the Wilcoxon signed-rank test's p-value."""
    difference = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, len(difference), (resamples, len(difference)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    p_value = float(stats.wilcoxon(difference).pvalue) if np.any(difference != 0) else 1.0
    return {"mean_difference": float(difference.mean()), "ci95_low": float(low), "ci95_high": float(high),
            "wilcoxon_p": p_value, "slices": int(len(difference)),
            "a_better_slices": int((difference > 0).sum()), "b_better_slices": int((difference < 0).sum())}


# --------------------------------------------------------------------------- post-processing and lungs
def clean_mask(mask: np.ndarray, min_component_fraction: float = 0.01, max_hole_fraction: float = 0.001) -> np.ndarray:
    """Post-processing: drop islands smaller than ``min_component_fraction`` of the largest
    region, and fill holes no larger than ``max_hole_fraction`` of the slice (vessels: at 512x512
    the default fills up to 262 pixels, about 180 mm^2).

    Larger holes stay: the reference masks leave out e.g. cysts and the region the two lungs
    enclose at the lung bases, and filling those costs more than it gains (measured in 05)."""
    mask = np.asarray(mask).astype(bool)
    labels, found = ndimage.label(mask)
    if found > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= min_component_fraction * sizes.max()))
    holes, found = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if found:
        sizes = np.bincount(holes.ravel())[1:]
        mask = mask | np.isin(holes, 1 + np.flatnonzero(sizes <= max_hole_fraction * mask.size))
    return mask.astype(np.uint8)


def lung_measurements(image_hu: np.ndarray, mask: np.ndarray, pixel_area_mm2: float) -> dict:
    """Lung area (mm^2), mean HU, and the 5th/95th percentile density (PD05/PD95) inside the mask,
    as ``lung_stats.csv`` defines them."""
    inside = image_hu[mask.astype(bool)].astype(np.float64)
    if inside.size == 0:
        return {"area_mm2": 0.0, "mean_hu": np.nan, "pd05_hu": np.nan, "pd95_hu": np.nan}
    return {"area_mm2": inside.size * pixel_area_mm2, "mean_hu": inside.mean(),
            "pd05_hu": np.percentile(inside, 5), "pd95_hu": np.percentile(inside, 95)}


# --------------------------------------------------------------------------- inference
def predict_probabilities(model, slices_hu, settings: dict, batch_size: int = 8) -> list[np.ndarray]:
    """Lung probability maps at each slice's own size, with exactly the model's preprocessing.

    ``slices_hu``: one 2-D array in HU, or a list/3-D array of them (any sizes). ``settings``:
    the record saved beside the model (``img_size``, ``hu_min``, ``hu_max``)."""
    slices = [slices_hu] if np.ndim(slices_hu) == 2 else list(slices_hu)
    if not slices:
        raise LungsegError("No slices given to predict on.")
    for index, image in enumerate(slices):
        check_hu(np.asarray(image), f"slice {index}")
    size = settings["img_size"]
    batch = np.stack([preprocess_slice(np.asarray(s), size, settings["hu_min"], settings["hu_max"])
                      for s in slices])[..., None]
    probabilities = model.predict(batch, batch_size=batch_size, verbose=0)[..., 0]
    return [resize_image(p, np.shape(s)) for p, s in zip(probabilities, slices)]


def predict_masks(model, slices_hu, settings: dict, threshold: float = 0.5, postprocess: bool = False,
                  batch_size: int = 8):
    """Binary lung masks (uint8 0/1) at the input size for HU slices.

    Probabilities are brought back to each slice's resolution *before* thresholding, so the
    mask boundary is as smooth as the original image allows. One 2-D slice in -> one mask
    out; a list or 3-D array in -> a list of masks out."""
    probabilities = predict_probabilities(model, slices_hu, settings, batch_size)
    masks = [(p >= threshold).astype(np.uint8) for p in probabilities]
    if postprocess:
        masks = [clean_mask(m) for m in masks]
    return masks[0] if np.ndim(slices_hu) == 2 else masks


def summary_rows(per_slice: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean ± std (per-slice average) and worst slice of each score, grouped by ``by``."""
    scores = ["dice", "iou", "precision", "recall", "hd95_mm"]
    grouped = per_slice.groupby(by)[scores]
    table = grouped.mean().add_suffix("_mean").join(grouped.std().add_suffix("_std"))
    table["dice_min"] = per_slice.groupby(by)["dice"].min()
    return table.reset_index()


# --------------------------------------------------------------------------- whole-split evaluation
def load_split_originals(output_dir, split: str = "test") -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Names, original HU slices and original masks (native resolution) of one split of the manifest."""
    from pathlib import Path

    from lungseg.data import read_mask, read_slice

    data = Path(output_dir) / "data"
    for needed, notebook in ((data / "pairs.csv", "01_download"), (data / "split_manifest.csv", "02_preprocess")):
        if not needed.is_file():
            raise LungsegError(f"{needed} is missing: run notebooks/{notebook} first (with the same OUTPUT_DIR).")
    pairs = pd.read_csv(data / "pairs.csv").merge(pd.read_csv(data / "split_manifest.csv"), on="name")
    part = pairs[pairs.split == split]
    return (list(part.name), [read_slice(p) for p in part.image_path], [read_mask(p) for p in part.mask_path])


def score_native(model, settings: dict, names, images_hu, masks, spacing_mm: float,
                 threshold: float = 0.5) -> tuple[pd.DataFrame, dict]:
    """Predict at model resolution, bring probabilities back to each slice's size, threshold, and
    score against the original masks; with and without post-processing (:func:`clean_mask`). Returns per-slice rows and the predicted masks {postprocessed: [masks]}, and
    times the whole inference (pre-processing, network, resizing back, thresholding)."""
    import time

    started = time.perf_counter()
    probabilities = predict_probabilities(model, images_hu, settings)
    raw = [(p >= threshold).astype(np.uint8) for p in probabilities]
    seconds = time.perf_counter() - started
    predictions = {False: raw, True: [clean_mask(m) for m in raw]}
    rows = [{"name": name, "postprocessed": post, **score_slice(truth, predicted, spacing_mm)}
            for post, masks_ in predictions.items() for name, truth, predicted in zip(names, masks, masks_)]
    table = pd.DataFrame(rows)
    table.attrs["inference_seconds"] = seconds
    return table, predictions


def predict_folder(model, settings: dict, inputs, output_dir, postprocess: bool = True) -> pd.DataFrame:
    """Segment the user's slices and save, for each, ``<stem>_mask.png`` (0/255, input size) and
    ``<stem>_overlay.png``. ``inputs``: a folder (TIFF, PNG, DICOM files) or a list of files."""
    from pathlib import Path

    import cv2

    from lungseg.data import IMAGE_SUFFIXES, read_slice
    from lungseg.plotting import mask_overlay
    from lungseg.preprocess import window_hu

    if isinstance(inputs, (str, Path)):
        folder = Path(inputs)
        if not folder.is_dir():
            raise LungsegError(f"PREDICT_DIR={str(folder)!r} is not a folder. Point it at a folder of CT slices.")
        inputs = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not inputs:
            raise LungsegError(f"PREDICT_DIR={str(folder)!r} holds no {', '.join(IMAGE_SUFFIXES)} files.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in map(Path, inputs):
        image = read_slice(path)
        check_hu(image, path)
        mask = predict_masks(model, image, settings, postprocess=postprocess)
        cv2.imwrite(str(output_dir / f"{path.stem}_mask.png"), mask * 255)
        overlay = mask_overlay(window_hu(image, settings["hu_min"], settings["hu_max"]), mask)
        cv2.imwrite(str(output_dir / f"{path.stem}_overlay.png"), (overlay[..., ::-1] * 255).astype(np.uint8))
        rows.append({"input": str(path), "shape": image.shape, "lung_fraction": float(mask.mean()),
                     "mask": str(output_dir / f"{path.stem}_mask.png")})
    return pd.DataFrame(rows)
