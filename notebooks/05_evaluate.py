# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Evaluate: which model wins, where it fails, and how to use it on your scans
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lungseg/lungseg/blob/main/notebooks/05_evaluate.ipynb)
#
# Both models are scored on the held-out **test** slices of the split manifest, which neither
# training nor model selection has seen. Masks are scored at the slices' **original 512x512
# resolution**: the predicted probabilities are resized back before thresholding and compared with
# the original masks, because that is the resolution a radiologist or a lung measurement works at.
# Then: a paired comparison of the two models, the worst slices, lung measurements as in
# `lung_stats.csv`, and predictions on your own scans. Cells marked `#@save` are also in
# `lungseg_utils.py`, for your own code.

# %%
# Colab: fetch the repository and the packages Colab lacks. Elsewhere this only finds the repository.
import os, subprocess, sys  # noqa: E401
from pathlib import Path
REPOSITORY = "https://github.com/lungseg/lungseg"
if "google.colab" in sys.modules:
    if not Path("/content/lungseg").is_dir():
        subprocess.run(f"git clone -q {REPOSITORY} /content/lungseg && pip install -q pydicom papermill jupytext",
                       shell=True, check=True)
    os.chdir("/content/lungseg/notebooks")
REPO_ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lungseg_utils.py").is_file())
sys.path.insert(0, str(REPO_ROOT))  # for lungseg_utils.py and lungseg/
from lungseg.runner import describe_runtime; print(describe_runtime())  # noqa: E402,E702

# %%
import lungseg_utils as lu  # first: it also quiets TensorFlow's start-up messages
from lungseg_utils import (IMAGE_SUFFIXES, LungsegError, bce_dice_loss, check_hu, dice_coef,  # used by this
                           iou_coef, is_dicom, library_versions, preprocess_slice, read_slice, resize_image,  # notebook's
                           show_pairs, window_hu, write_json)  # #@save cells

import json
import numbers
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage, stats

from lungseg.data import dataset_calibration, pixel_area_mm2  # 01's HU calibration; the pixel area of lung_stats.csv
from lungseg.runner import ensure_inputs  # runs 01 and 02 first if their outputs are missing

# %% [markdown]
# ## Parameters
# `MODELS_DIR`: empty means `OUTPUT_DIR/models` when both models are there (you trained them in
# 03/04), else the trained models committed in the repository's `models/` folder.
# `PREDICT_DIR`: your own CT, a DICOM series folder, a NIfTI file, or slices (TIFF in HU, 16-bit PNG
# holding HU+1024, DICOM); empty means a demonstration on a series built from test slices.
# `PREDICT_MODEL`: `"unet"`, `"resunet"`, or empty for the one with the better test Dice.
# `OTHER_SCANNER`: a chest CT from another collection, for the section "Another scanner" (empty: skipped).

# %% tags=["parameters"]
OUTPUT_DIR = "outputs"
MODELS_DIR = ""
MODELS = ["unet", "resunet"]
THRESHOLD = 0.5
PREDICT_DIR = ""
PREDICT_MODEL = ""
OTHER_SCANNER = "../shared/data/external-ct/cip-copdgene-64/ct-64Dicom"  # relative to the repository
SEED = 0

# %% [markdown]
# ## The models
# A model is its `.keras` file and, beside it, the JSON record of how it was trained: its
# preprocessing (image size, HU window), which slices it trained and validated on, its best epoch.

# %%
#@save
def load_trained_model(path):
    """Load ``<name>.keras`` and the record it was trained with (``<name>.json`` beside it)."""
    path = Path(path)
    for needed in (path, path.with_suffix(".json")):
        if not needed.is_file():
            raise LungsegError(f"{needed} is missing: train the model first (notebooks 03_unet / 04_resunet), "
                               "or use the committed models in the repository's models/ folder.")
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        check_settings(record, path.with_suffix(".json"))
    except ValueError as error:  # not JSON, or not a model's record
        raise LungsegError(f"{path.with_suffix('.json')}: not a model record ({error}). It is written with the "
                           "model by 03/04: train again, or copy both files from the repository's models/.") from None
    try:
        model = keras.saving.load_model(path, compile=False)  # for inference and scoring: no optimizer state
    except Exception as error:  # Keras reports a truncated zip as "file not found", among others
        from lungseg.portable import saved_by  # the Keras version that wrote the file, if it says

        if saved_by(path) and saved_by(path) != keras.__version__:
            raise LungsegError(f"{path}: saved by Keras {saved_by(path)}, which this Keras {keras.__version__} cannot "
                               f"read ({type(error).__name__}). Upgrade Keras (pip install -U keras), or use the "
                               "repository's committed models, which load on Keras 3.8 and newer.") from None
        raise LungsegError(f"{path}: cannot be loaded as a Keras model ({type(error).__name__}); the file may be "
                           "truncated or damaged (an interrupted copy or download). Train again (03/04), or copy "
                           "it again with its .json from the repository's models/.") from None
    model.compile(loss=bce_dice_loss, metrics=[dice_coef, iou_coef])
    return model, record


def check_settings(settings, name="settings") -> None:
    """A model's record must say how its input was made: image size and HU window."""
    missing = [key for key in ("img_size", "hu_min", "hu_max") if not isinstance(settings, dict) or key not in settings]
    if missing:
        raise LungsegError(f"{name} lacks {', '.join(missing)}: give the model's record (the .json written beside "
                           "its .keras; load_trained_model returns it), which says how its input was made.")

# %%
output_dir = REPO_ROOT / OUTPUT_DIR
evaluation_dir, figures_dir = output_dir / "evaluation", output_dir / "figures"
if PREDICT_MODEL and PREDICT_MODEL not in MODELS:
    raise LungsegError(f"PREDICT_MODEL={PREDICT_MODEL!r} is not one of MODELS={MODELS}; use one of them or ''.")
if PREDICT_DIR and not Path(PREDICT_DIR).expanduser().exists():
    raise LungsegError(f"PREDICT_DIR={PREDICT_DIR!r} does not exist ({Path(PREDICT_DIR).expanduser().resolve()}). "
                       "Point it at your CT (a DICOM series folder, a NIfTI file, slices), or leave it empty.")
if MODELS_DIR:
    models_dir = REPO_ROOT / Path(MODELS_DIR).expanduser()
elif all((output_dir / "models" / f"{name}.keras").is_file() for name in MODELS):
    models_dir = output_dir / "models"
else:
    models_dir = REPO_ROOT / "models"
    print(f"No trained models in {lu.repo_path(output_dir / 'models')}: using the committed ones in "
          f"{lu.repo_path(models_dir)}.")
models, records = {}, {}
for name in MODELS:
    models[name], records[name] = load_trained_model(models_dir / f"{name}.keras")
ensure_inputs("05", OUTPUT_DIR)
dataset = json.loads((output_dir / "data" / "dataset.json").read_text())
real_ct_models = [name for name, record in records.items() if not record["synthetic"]]
if dataset["synthetic"] and real_ct_models:  # a score of real-CT models on ellipses would mean nothing
    raise LungsegError(f"The data are SYNTHETIC phantoms, and {', '.join(real_ct_models)} in {lu.repo_path(models_dir)} "
                       "learnt real CT: scoring them on phantoms measures nothing. Get the real data (01_download, "
                       "DATA_SOURCE), or train on the phantoms first (03_unet, 04_resunet) to evaluate those models here.")
synthetic = dataset["synthetic"] or any(record["synthetic"] for record in records.values())
pixel_area = pixel_area_mm2(Path(dataset["root"]) / "lung_stats.csv")
spacing_mm = float(np.sqrt(pixel_area))
lu.config_table({"models": models_dir, "MODELS": MODELS, "THRESHOLD": THRESHOLD, "PREDICT_DIR": PREDICT_DIR,
                 "data": dataset["source"] + lu.data_label(synthetic), "pixel spacing (mm)": round(spacing_mm, 4),
                 "device": lu.describe_device()})

# %% [markdown]
# ## The test slices at native resolution
# Read straight from the original files, calibrated to standard HU as in 02, with their original masks. A slice that one of the
# models trained or validated on is no test of it; if the split has changed since the models were
# trained (another `SPLIT_SEED`, more data), such slices are left out, and said so.

# %%
# NBVAL_CHECK_OUTPUT
test = pd.read_csv(output_dir / "data" / "pairs.csv").merge(pd.read_csv(output_dir / "data" / "split_manifest.csv"),
                                                            on="name").query("split == 'test'")
seen = set().union(*(set(r.get("training_slices", [])) | set(r.get("validation_slices", [])) for r in records.values()))
if test.name.isin(seen).any():
    print(f"{int(test.name.isin(seen).sum())} of {len(test)} test slices were used to train or validate these "
          "models: left out. Re-run 02 with the models' SPLIT_SEED, or retrain them (03, 04), to test on all.")
    test = test[~test.name.isin(seen)]
if test.empty:
    raise LungsegError("No test slice is left that the models have not trained or validated on: retrain them "
                       "(03, 04) on this split, or re-run 02 with the split they were trained on.")
names = list(test.name)
calibration = dataset_calibration(dataset)  # 01's: these slices' stored values -> standard HU
images = [lu.to_standard_hu(read_slice(p), calibration) for p in test.image_path]
masks = [lu.read_mask(p) for p in test.mask_path]
print(f"test slices: {len(names)}, shapes: {sorted({m.shape for m in masks})}")

# %% [markdown]
# ## From a slice in HU to a mask
# Exactly the preprocessing the model was trained with (read from its record): window, resize to
# the model's size, predict; then the probabilities are resized back to the slice's own size
# *before* thresholding, so the mask boundary is as smooth as the original image allows. Slices of
# any size; an image that cannot be HU is refused.

# %%
#@save
def predict_probabilities(model, slices_hu, settings: dict, batch_size: int = 8) -> list:
    """Lung probability maps at each slice's own size. ``slices_hu``: one 2-D array in HU, or a
    list / 3-D array of them; ``settings``: the model's record (img_size, hu_min, hu_max)."""
    check_settings(settings)
    slices = [slices_hu] if _one_slice(slices_hu) else list(slices_hu)
    if not slices:
        raise LungsegError("No slices given to predict on.")
    for index, image in enumerate(slices):
        if np.ndim(image) != 2 or min(np.shape(image)) < 16:  # e.g. an (H, W, 3) image read as H slices
            raise LungsegError(f"slice {index} has shape {np.shape(image)}: give 2-D slices in HU with one channel, "
                               "(H, W), as one array, a list of them (any sizes) or a 3-D array (N, H, W).")
        check_hu(np.asarray(image), f"slice {index}")
    return _probabilities(model, slices, settings, batch_size)


def _probabilities(model, slices, settings: dict, batch_size: int) -> list:
    batch = np.stack([preprocess_slice(np.asarray(s), settings["img_size"], settings["hu_min"], settings["hu_max"])
                      for s in slices])[..., None]
    probabilities = model.predict(batch, batch_size=batch_size, verbose=0)[..., 0]
    return [resize_image(p, np.shape(s)) for p, s in zip(probabilities, slices)]


def predict_masks(model, slices_hu, settings: dict, threshold: float = 0.5, postprocess: bool = False,
                  batch_size: int = 8):
    """Binary lung masks (uint8 0/1) at the input size: one 2-D slice in, one mask out; a list or
    3-D array in, a list out. ``postprocess``: :func:`clean_mask`."""
    masks = [(p >= threshold).astype(np.uint8) for p in predict_probabilities(model, slices_hu, settings, batch_size)]
    if postprocess:
        masks = [clean_mask(m) for m in masks]
    return masks[0] if _one_slice(slices_hu) else masks


def _one_slice(slices_hu) -> bool:
    return isinstance(slices_hu, np.ndarray) and slices_hu.ndim == 2

# %% [markdown]
# ## Scores
# Per slice: Dice, IoU, precision, recall and HD95, the 95th percentile of the distances between
# the predicted and true lung boundaries in mm (a boundary off by a few pixels barely moves Dice
# but shows here). Pooled Dice counts all pixels of all slices together. Post-processing
# (`clean_mask`) drops islands smaller than 1% of the largest region and fills small holes
# (vessels), while larger holes stay: the reference masks leave out e.g. cysts, and filling *every*
# hole, tried first, lowered the worst slice's Dice from 0.95 to 0.93.

# %%
#@save
def overlap_scores(truth: np.ndarray, prediction: np.ndarray) -> dict:
    """Dice, IoU, precision and recall of two binary masks (both empty: all 1)."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    tp, fp, fn = np.count_nonzero(truth & prediction), np.count_nonzero(~truth & prediction), np.count_nonzero(truth & ~prediction)
    if tp + fp + fn == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}


def hd95(truth: np.ndarray, prediction: np.ndarray, spacing_mm: float = 1.0) -> float:
    """95th percentile of the distances from each mask's boundary pixels to the other's boundary, in
    mm (both empty: 0; one empty: inf)."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    if not truth.any() or not prediction.any():
        return 0.0 if truth.any() == prediction.any() else float("inf")
    edges = [mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3)), border_value=0) for mask in (truth, prediction)]
    to_truth, to_prediction = (ndimage.distance_transform_edt(~edge, sampling=spacing_mm) for edge in edges)
    return float(np.percentile(np.concatenate([to_truth[edges[1]], to_prediction[edges[0]]]), 95))


def score_slice(truth, prediction, spacing_mm: float) -> dict:
    return {**overlap_scores(truth, prediction), "hd95_mm": hd95(truth, prediction, spacing_mm)}


def pooled_dice(truths, predictions) -> float:
    """Dice over all pixels of all slices together (large lungs weigh more than small ones)."""
    tp = sum(np.count_nonzero(t.astype(bool) & p.astype(bool)) for t, p in zip(truths, predictions))
    total = sum(np.count_nonzero(t) + np.count_nonzero(p) for t, p in zip(truths, predictions))
    return 2 * tp / total if total else 1.0


def clean_mask(mask, min_component_fraction: float = 0.01, max_hole_fraction: float = 0.001) -> np.ndarray:
    """Drop islands smaller than ``min_component_fraction`` of the largest region; fill holes no
    larger than ``max_hole_fraction`` of the slice (at 512x512: up to 262 pixels, vessels). A hole
    is a region of background that does not reach the slice's edge."""
    mask = np.asarray(mask).astype(bool)
    labels, found = ndimage.label(mask)
    if found > 1:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_component_fraction * sizes[1:].max()
        keep[0] = False  # label 0 is the background
        mask = keep[labels]
    background, found = ndimage.label(~mask)
    if found > 1:
        sizes = np.bincount(background.ravel())
        fill = sizes <= max_hole_fraction * mask.size
        edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
        fill[0] = False
        fill[edge] = False  # background that reaches the edge is outside, not a hole
        mask = mask | fill[background]
    return mask.astype(np.uint8)

# %% [markdown]
# Each model at native resolution, without and with post-processing, its inference timed end to
# end (windowing, resizing, network, resizing back, thresholding); and, for reference, at the
# model's own resolution, which is what the training curves show.

# %%
rows, predictions, speed, at_model_size = [], {}, {}, {}
for name, model in models.items():
    record = records[name]
    started = time.perf_counter()
    raw = [(p >= THRESHOLD).astype(np.uint8) for p in predict_probabilities(model, images, record)]
    speed[name] = len(names) / (time.perf_counter() - started)
    predictions[name] = {False: raw, True: [clean_mask(m) for m in raw]}
    for post, predicted in predictions[name].items():
        rows += [{"model": name, "resolution": "native", "postprocessed": post, "name": n, **score_slice(t, p, spacing_mm)}
                 for n, t, p in zip(names, masks, predicted)]
    size = record["img_size"]  # the slices and masks as the model saw them in training (as 02 made them)
    x = np.stack([preprocess_slice(i, size, record["hu_min"], record["hu_max"]) for i in images])[..., None]
    y = np.stack([lu.resize_mask(m, size) for m in masks])[..., None]
    at_model_size[name] = x, y
    small = model.predict(x, verbose=0)[..., 0] >= THRESHOLD
    rows += [{"model": name, "resolution": f"model ({size} px)", "postprocessed": False, "name": n,
              **score_slice(t[..., 0], p, spacing_mm * m.shape[0] / size)} for n, m, t, p in zip(names, masks, y, small)]
per_slice = pd.DataFrame(rows)
scores = ["dice", "iou", "precision", "recall", "hd95_mm"]
grouped = per_slice.groupby(["model", "resolution", "postprocessed"])
summary = grouped[scores].mean().add_suffix("_mean").join(grouped[scores].std().add_suffix("_std"))
summary["dice_min"] = grouped.dice.min()
summary = summary.reset_index()
summary["pooled_dice"] = [pooled_dice(masks, predictions[r.model][r.postprocessed]) if r.resolution == "native"
                          else np.nan for r in summary.itertuples()]
summary.round(4)

# %% [markdown]
# ## The test loss, as the reference notebook reported it
# Keras' `evaluate` at model resolution: the BCE + Dice loss and the per-image Dice and IoU averaged
# over the slices. (The reference Kaggle notebook reported Dice 0.9650 and IoU 0.9317 this way, on
# its own split.)

# %%
reference_style = pd.DataFrame({name: model.evaluate(*at_model_size[name], verbose=0, return_dict=True)
                                for name, model in models.items()}).T
reference_style.round(4)

# %% [markdown]
# ## U-Net vs Residual U-Net
# The headline numbers side by side (native resolution, no post-processing), with size and speed.
# A difference of means on a few dozen slices can be noise, so the per-slice Dice scores are
# compared in pairs (same slice, two models): the mean difference with a 95% bootstrap confidence
# interval, and a Wilcoxon signed-rank test. If the interval contains 0, the data do not show a winner.

# %%
#@save
def paired_comparison(a, b, seed: int = 0, resamples: int = 10000) -> dict:
    """Per-slice scores of two models on the same slices: mean difference (a - b), its 95%
    bootstrap confidence interval, and the Wilcoxon signed-rank test's p-value."""
    difference = np.asarray(a, float) - np.asarray(b, float)
    means = difference[np.random.default_rng(seed).integers(0, len(difference), (resamples, len(difference)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    p_value = float(stats.wilcoxon(difference).pvalue) if np.any(difference != 0) else 1.0
    return {"mean_difference": float(difference.mean()), "ci95_low": float(low), "ci95_high": float(high),
            "wilcoxon_p": p_value, "slices": int(len(difference)),
            "a_better_slices": int((difference > 0).sum()), "b_better_slices": int((difference < 0).sum())}

# %%
native = summary[(summary.resolution == "native") & ~summary.postprocessed].set_index("model")
comparison = pd.DataFrame({name: pd.Series({
    "Dice (mean)": native.dice_mean[name], "Dice (std)": native.dice_std[name], "Dice (worst slice)": native.dice_min[name],
    "IoU (mean)": native.iou_mean[name], "pooled Dice": native.pooled_dice[name], "HD95 mm (mean)": native.hd95_mm_mean[name],
    "parameters": records[name]["parameters"], "training s": records[name]["training_seconds"],
    "s per epoch": records[name]["seconds_per_epoch"], "best epoch": records[name]["best_epoch"],
    "inference slices/s": speed[name]}, dtype=object) for name in MODELS})  # object: counts stay integers
comparison.map(lambda value: f"{value:,}" if isinstance(value, numbers.Integral) else f"{value:.4f}")

# %%
dice = per_slice[(per_slice.resolution == "native") & ~per_slice.postprocessed].pivot(index="name", columns="model",
                                                                                        values="dice")
paired = paired_comparison(dice[MODELS[0]], dice[MODELS[-1]], seed=SEED) if len(MODELS) == 2 else {}
winner = max(MODELS, key=lambda name: native.dice_mean[name])
pd.Series(paired, name=f"{MODELS[0]} minus {MODELS[-1]}, per-slice Dice").to_frame()

# %%
significant = bool(paired) and (paired["ci95_low"] > 0 or paired["ci95_high"] < 0)
if significant:
    sign = 1 if winner == MODELS[0] else -1  # the interval of "winner minus the other"
    low, high = sorted([sign * paired["ci95_low"], sign * paired["ci95_high"]])
    print(f"{winner} is better: its per-slice Dice is higher by {abs(paired['mean_difference']):.4f} "
          f"(95% CI {low:+.4f}..{high:+.4f}, Wilcoxon p={paired['wilcoxon_p']:.3g}).")
elif paired:
    print(f"No clear winner: the mean difference {paired['mean_difference']:+.4f} has a 95% CI of "
          f"{paired['ci95_low']:+.4f}..{paired['ci95_high']:+.4f}, which contains 0. "
          f"{winner} has the higher mean on these slices.")

# %% [markdown]
# ## Does post-processing help?
# Mean per-slice Dice, HD95 and worst-slice Dice at native resolution, without and with
# `clean_mask`. Small false-positive islands barely move Dice but inflate HD95, which is where
# post-processing earns its keep.

# %%
summary[summary.resolution == "native"].pivot(index="model", columns="postprocessed",
                                              values=["dice_mean", "hd95_mm_mean", "dice_min"]).round(4)

# %% [markdown]
# ## All slices, and the slices with sound labels
# A score is only as good as the mask it is scored against. 01's audit (`audit_mask`) looks at each
# test mask for signs that it is wrong (lung on the air outside the body, one lung missing, ...).
# The scores over all test slices and over those whose masks look sound, side by side, with the
# flagged slices named: nothing is dropped silently.

# %%
audit = lu.audit_labels(test)
flagged = dict(zip(audit.name[audit.flagged], audit.reasons[audit.flagged]))
print(f"flagged test masks: {len(flagged)} of {len(audit)}" + "".join(f"\n  {n}: {r}" for n, r in flagged.items()))
raw_scores = per_slice[(per_slice.resolution == "native") & ~per_slice.postprocessed]
sound_scores = raw_scores[~raw_scores.name.isin(flagged)]
by_labels = pd.DataFrame({"Dice, all slices": raw_scores.groupby("model").dice.mean(),
                          "Dice, sound labels": sound_scores.groupby("model").dice.mean(),
                          "worst Dice, all": raw_scores.groupby("model").dice.min(),
                          "worst Dice, sound labels": sound_scores.groupby("model").dice.min()}).loc[MODELS]
by_labels.round(4)

# %% [markdown]
# ## Save the numbers
# Per-slice rows, the summary, the comparison and the paired test, as CSV and JSON.

# %%
evaluation_dir.mkdir(parents=True, exist_ok=True)
per_slice.to_csv(evaluation_dir / "per_slice.csv", index=False)
summary.to_csv(evaluation_dir / "summary.csv", index=False)
comparison.to_csv(evaluation_dir / "comparison.csv")
lu.write_json(evaluation_dir / "evaluation.json", {
    "data": dataset["source"] + lu.data_label(synthetic), "synthetic": synthetic, "models_dir": str(models_dir),
    "test_slices": len(names), "test_names": names, "threshold": THRESHOLD, "comparison": comparison.to_dict(),
    "flagged_labels": flagged, "dice_by_labels": by_labels.to_dict(orient="index"),
    "paired_dice": paired, "winner_by_mean_dice": winner, "difference_significant": significant,
    "reference_style_test_metrics": reference_style.to_dict(orient="index"), "summary": summary.to_dict(orient="records")})
print("wrote", *sorted(p.name for p in evaluation_dir.iterdir()))

# %% [markdown]
# ## Look at the predictions
# CT slice, true mask and each model's predicted mask, for four test slices.

# %%
shown = np.linspace(0, len(names) - 1, min(4, len(names))).astype(int)
rows = [[window_hu(images[i], -1000, 400), masks[i]] + [predictions[m][False][i] for m in MODELS] for i in shown]
lu.show_pairs(rows, ["CT slice", "true mask"] + [f"{m} prediction" for m in MODELS], [names[i] for i in shown],
              title="Test slices at native resolution", path=figures_dir / "predicted_mask_visualization.png",
              synthetic=synthetic);

# %% [markdown]
# ## Where do the models fail?
# The three test slices with the lowest Dice for each model; false positives in red, false
# negatives in blue.

# %%
#@save
def error_overlay(image01: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with false positives in red and false negatives in blue."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    rgb[prediction.astype(bool) & ~truth.astype(bool)] = [1.0, 0.1, 0.1]
    rgb[truth.astype(bool) & ~prediction.astype(bool)] = [0.1, 0.4, 1.0]
    return rgb

# %%
rows, titles = [], []
for name in MODELS:
    worst = dice[name].nsmallest(3)
    rows.append([error_overlay(window_hu(images[names.index(n)], -1000, 400), masks[names.index(n)],
                               predictions[name][False][names.index(n)]) for n in worst.index])
    titles.append(name + ": " + ", ".join(f"{d:.3f}" for d in worst))
lu.show_pairs(rows, ["worst", "2nd worst", "3rd worst"][:len(rows[0])], titles, size=3.4,
              title="Errors on the worst slices (red: false positive, blue: false negative)",
              path=figures_dir / "worst_slices_errors.png", synthetic=synthetic);

# %% [markdown]
# ## Per-slice Dice, and how training went
# A strip plot shows every test slice; the training curves of both models together.

# %%
figure, axis = plt.subplots(figsize=(6, 3.5))
for position, name in enumerate(MODELS):
    values = dice[name].to_numpy()
    axis.boxplot(values, positions=[position], widths=0.5, showfliers=False)
    axis.scatter(position + np.random.default_rng(SEED).uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.7)
axis.set_xticks(range(len(MODELS)), MODELS), axis.set_ylabel("Dice per test slice (native)"), axis.grid(alpha=0.3)
lu.save_figure(figure, figures_dir / "dice_per_slice.png", synthetic);

# %%
lu.plot_history({name: pd.read_csv(models_dir / f"{name}_history.csv") for name in MODELS},
                path=figures_dir / "training_curves.png", synthetic=synthetic);

# %% [markdown]
# ## Lung measurements
# The data set was made to *measure* lungs: area (mm²), mean density and the 5th/95th percentile
# densities (PD05, PD95) per slice. Here they are computed from the predicted masks (with
# post-processing) and from the true masks, which give exactly the values of `lung_stats.csv`.

# %%
#@save
def lung_measurements(image_hu: np.ndarray, mask: np.ndarray, pixel_area_mm2: float) -> dict:
    """Lung area (mm²), mean HU, and the 5th/95th percentile density (PD05/PD95) inside the mask."""
    inside = image_hu[mask.astype(bool)].astype(np.float64)
    if inside.size == 0:
        return {"area_mm2": 0.0, "mean_hu": np.nan, "pd05_hu": np.nan, "pd95_hu": np.nan}
    return {"area_mm2": inside.size * pixel_area_mm2, "mean_hu": inside.mean(),
            "pd05_hu": np.percentile(inside, 5), "pd95_hu": np.percentile(inside, 95)}

# %%
rows = []
for name in MODELS:
    for slice_name, image, truth, predicted in zip(names, images, masks, predictions[name][True]):
        rows.append({"model": name, "name": slice_name,
                     **{f"true_{k}": v for k, v in lung_measurements(image, truth, pixel_area).items()},
                     **{f"predicted_{k}": v for k, v in lung_measurements(image, predicted, pixel_area).items()}})
measurements = pd.DataFrame(rows)
errors = {}
for quantity in ("area_mm2", "mean_hu", "pd05_hu", "pd95_hu"):
    measurements[f"error_{quantity}"] = measurements[f"predicted_{quantity}"] - measurements[f"true_{quantity}"]
    errors[quantity] = measurements[f"error_{quantity}"].abs().groupby(measurements.model).mean()
measurements["relative_error_area"] = measurements.error_area_mm2 / measurements.true_area_mm2
measurements.to_csv(evaluation_dir / "lung_measurements.csv", index=False)
errors = pd.DataFrame(errors).add_prefix("mean |error| ")
errors["mean |relative error| area"] = measurements.relative_error_area.abs().groupby(measurements.model).mean()
errors.round(3)

# %%
figure, axis = plt.subplots(figsize=(5, 5))
for name in MODELS:
    part = measurements[measurements.model == name]
    axis.scatter(part.true_area_mm2 / 100, part.predicted_area_mm2 / 100, s=14, label=name, alpha=0.8)
limits = [0, measurements[["true_area_mm2", "predicted_area_mm2"]].max().max() / 100 * 1.05]
axis.plot(limits, limits, "k--", lw=1), axis.set_xlim(limits), axis.set_ylim(limits)
axis.set_xlabel("true lung area (cm²)"), axis.set_ylabel("predicted lung area (cm²)"), axis.legend()
axis.set_title("Lung area per test slice")
lu.save_figure(figure, figures_dir / "lung_area_scatter.png", synthetic);

# %% [markdown]
# ## Your own scans
# Your CT is most likely a **volume**: a folder of DICOM files (one series) or a NIfTI file
# (`.nii`, `.nii.gz`), not a single slice. Three things matter before a 2D model can segment it:
#
# 1. **Hounsfield units.** DICOM stores raw numbers; `RescaleSlope` and `RescaleIntercept` turn
#    them into HU. A model trained on HU sees nothing in unconverted numbers (the most common
#    "my mask is all zero" report of other lung tools), so anything that cannot be HU is refused.
# 2. **Geometry.** A volume's voxels sit in the patient through its *affine* (NIfTI) or its
#    Image Position / Orientation (DICOM). The slices must be ordered along the slice normal (not
#    by file name), spaced by their real positions (not `SliceThickness`), and shown as the model
#    saw its training slices: axial, patient's right on the image's left, front at the top. Files
#    in any orientation are turned that way for the model, and the mask is turned back, so that it
#    lies on your scan voxel for voxel.
# 3. **Right and left lung.** The mask is labelled 1 = right lung, 2 = left lung. The patient's
#    left-right axis comes from the geometry; each connected lung region goes to the side it lies
#    on, split at the column between the lungs with the fewest lung voxels. Where the two lungs
#    touch (one region crossing that column), the region is cut there.
#
# Reading a scan returns its slices in HU in that orientation, with what is needed to write the
# mask back (`nibabel`, the field's library for NIfTI; `pydicom` for DICOM).

# %%
#@save
from dataclasses import dataclass, field


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


NIFTI_SUFFIXES = (".nii", ".nii.gz")
MODEL_AXES = ("L", "P", "S")  # nibabel axis codes of (column, row, slice) as the model was trained


def _to_model_axes(data: np.ndarray, affine: np.ndarray):
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
    if data.ndim != 3:
        raise LungsegError(f"{path}: a NIfTI of shape {data.shape}; a CT volume has three dimensions.")
    axes = image.affine[:3, :3]
    voxel_mm3 = abs(np.linalg.det(axes)) if np.all(np.isfinite(axes)) else 0.0
    if voxel_mm3 < 1e-6:
        raise LungsegError(f"{path}: its affine (voxel to world) is {'singular' if np.all(np.isfinite(axes)) else 'not finite'}"
                           ", so its voxels have no size or place. Re-export it with its geometry (e.g. dcm2niix).")
    hu, zooms, orientation = _to_model_axes(data, image.affine)
    name = path.name[: -len(next(s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s)))]
    notes = []
    if not int(image.header["qform_code"]) and not int(image.header["sform_code"]):
        notes.append(f"{path}: no qform or sform code, so its orientation is not known: right and left (labels 1 "
                     "and 2) are a guess. Export it with its orientation (e.g. dcm2niix).")
    directions = axes / np.linalg.norm(axes, axis=0)
    if np.abs(directions.T @ directions - np.eye(3)).max() > 1e-3:  # sheared, e.g. a gantry tilt kept in the affine
        notes.append(f"{path}: its affine is sheared (a gantry tilt?): volumes use the true voxel volume, "
                     f"{voxel_mm3:.3f} mm³.")
    thickness = voxel_mm3 / (zooms[0] * zooms[1])  # along the slice normal, not the length of the third axis
    return Scan(name, "volume", hu, (float(zooms[1]), float(zooms[0])), np.full(hu.shape[0], float(thickness)),
                image.affine, orientation, str(path), notes)


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
    import pydicom

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
        twin = kept[int(np.argmin(gaps)) + 1][0]
        raise LungsegError(f"{twin}: at the same position as another slice of series {name}; a series has one slice "
                           "per position. Remove the duplicate (or choose one series with --series).")
    if len(gaps) and gaps.max() - gaps.min() > 0.01 * np.median(gaps) + 0.01:
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
    hu, zooms, orientation = _to_model_axes(np.stack(slices, axis=-1).transpose(1, 0, 2), affine)
    thickness = np.full(hu.shape[0], zooms[2])
    if orientation[2, 0] == 2:  # axial slices: each keeps its real spacing (half the gaps to its neighbours)
        neighbours = np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1]]])
        thickness = neighbours if orientation[2, 1] == 1 else neighbours[::-1]  # the model's slices go up (S)
    return Scan(name, "volume", hu, (float(zooms[1]), float(zooms[0])), thickness, affine, orientation,
                str(kept[0][0].parent), notes)

# %% [markdown]
# Which files make which scans: a NIfTI file is a volume; DICOM files are grouped by Series Instance
# UID and the largest series is the volume (`series` picks another); TIFF, PNG and single DICOM
# files are slices. Other files in a folder (notes, checksums) are passed over; a JPEG is refused,
# since 8 bits cannot hold HU.

# %%
#@save
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

# %% [markdown]
# Segmenting a scan is segmenting its slices, in batches, exactly as for the test slices above.
# A 2D model sees one slice at a time, so below the lungs it may mark gas in the stomach and bowel,
# and beside the body the air by the arms or hips. A volume shows what a slice cannot: the lungs are
# the large connected air-filled organs inside the body. So a volume's mask is judged in 3D, as
# lungmask does: connected regions (SciPy's `ndimage.label`) are kept only if they lie inside the
# body, hold lung tissue (not pure gas: their median is above -970 HU; lung, even emphysematous,
# has vessels and walls) and are at least a tenth of the largest one. A volume with under 20 mL of
# lung left is reported as "no lungs found". Then the lung voxels are told right from left.

# %%
#@save
def split_lungs(mask: np.ndarray) -> np.ndarray:
    """Label a lung mask[slice, row, column] (columns from the patient's right to left): 1 right, 2 left.
    The split column is the one with the fewest lung voxels in the middle 40% of the lungs' width; a
    connected region lying (95%) on one side gets that side, one crossing it (touching lungs) is cut there."""
    mask = np.asarray(mask).astype(bool)
    labels = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return labels
    profile = mask.sum(axis=(0, 1))
    columns = np.flatnonzero(profile)
    low, high = columns[0], columns[-1]
    band = np.arange(low + int(0.3 * (high - low)), high - int(0.3 * (high - low)) + 1)
    split = band[np.lexsort((np.abs(band - (low + high) / 2), profile[band]))[0]]  # fewest voxels, then central
    regions, _ = ndimage.label(mask)
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        inside = regions[box] == index
        column = np.arange(box[2].start, box[2].stop)[None, None, :]
        right_share = np.count_nonzero(inside & (column < split)) / np.count_nonzero(inside)
        side = 1 if right_share >= 0.95 else 2 if right_share <= 0.05 else np.where(column < split, 1, 2)
        labels[box][inside] = np.broadcast_to(side, inside.shape)[inside]
    return labels


def keep_lungs(mask: np.ndarray, scan: Scan, min_share: float = 0.1, gas_hu: float = -970.0) -> np.ndarray:
    """The connected regions of a volume's mask[slice, row, column] that can be lung: mostly inside the
    body (each slice's outline of tissue above -500 HU, holes filled), not pure gas (less than half of
    the region at or below ``gas_hu``: its median lies above) and at least ``min_share`` of the largest
    such region's volume. Counted slice by slice, so a large scan needs little memory beyond its labels."""
    regions, found = ndimage.label(mask)
    if not found:
        return mask.astype(np.uint8)
    volume, inside, gas = np.zeros(found + 1), np.zeros(found + 1), np.zeros(found + 1)  # mL per region
    voxel_ml = scan.slice_thickness_mm * np.prod(scan.pixel_spacing_mm) / 1000
    for k in np.flatnonzero(np.any(mask, axis=(1, 2))):  # the slices with lung found
        labels = regions[k]
        volume += np.bincount(labels.ravel(), minlength=found + 1) * voxel_ml[k]
        inside += np.bincount(labels[ndimage.binary_fill_holes(scan.hu[k] > -500)], minlength=found + 1) * voxel_ml[k]
        gas += np.bincount(labels[scan.hu[k] <= gas_hu], minlength=found + 1) * voxel_ml[k]
    lung_like = (inside >= 0.5 * volume) & (gas < 0.5 * volume)
    lung_like[0] = False  # label 0 is the background
    keep = lung_like & (volume >= min_share * volume[lung_like].max(initial=0))
    return keep[regions].astype(np.uint8)


NO_LUNG_ML = 20.0  # less lung than this in a volume: "no lungs found"


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
            for offset, probability in enumerate(_probabilities(model, chunk, settings, batch_size)):
                mask = (probability >= threshold).astype(np.uint8)
                masks[start + offset] = clean_mask(mask) if postprocess else mask
            bar.update(len(chunk))
    if scan.kind == "slice":
        return masks
    return split_lungs(keep_lungs(masks, scan) if postprocess else masks)


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
        if row["lung_volume_ml"] < NO_LUNG_ML:
            row["note"] = f"no lungs found ({row['lung_volume_ml']:.1f} mL): is this a chest CT?"
    inside = scan.hu[lung].astype(np.float64)
    percentiles = np.percentile(inside, [5, 15, 95]) if inside.size else [np.nan] * 3
    row.update(mean_hu=inside.mean() if inside.size else np.nan, pd05_hu=percentiles[0], pd15_hu=percentiles[1],
               pd95_hu=percentiles[2], laa950_percent=100 * np.mean(inside < -950) if inside.size else np.nan,
               pixel_spacing_mm=" x ".join(f"{v:g}" for v in spacing) if spacing else "unknown",
               slice_spacing_mm=float(np.mean(scan.slice_thickness_mm)) if scan.kind == "volume" else np.nan)
    return row

# %% [markdown]
# The whole path for a user, as one function (and one command, `bash scripts/predict.sh INPUT
# [OUTPUT_DIR]`, which calls it): for each scan a mask (`<name>_mask.nii.gz` for a volume, with the
# input's affine and array orientation; `<name>_mask.png` for a slice), a preview, and a row of
# `measurements.csv` / `measurements.json`. An input it cannot use is named in one line and the rest
# go on. It replaces only files it wrote itself (listed in `measurements.json`), never yours.

# %%
#@save
LABEL_COLOURS = {1: (0.1, 1.0, 0.2), 2: (0.2, 0.5, 1.0)}  # right lung green, left lung blue


def mask_overlay(image01: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with each label tinted (1 green, 2 blue)."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    for label, colour in LABEL_COLOURS.items():
        rgb[labels == label] = 0.55 * rgb[labels == label] + 0.45 * np.array(colour)
    return rgb


def write_scan_outputs(scan: Scan, labels: np.ndarray, outputs) -> dict:
    """The mask file (NIfTI for a volume, PNG for a slice) and a preview PNG; returns their paths."""
    import cv2

    name = scan.name
    if scan.kind == "volume":
        import nibabel as nib

        mask_path = outputs.path(f"{name}_mask.nii.gz")
        image = nib.Nifti1Image(from_model_axes(labels, scan.orientation).astype(np.uint8), scan.affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, mask_path)
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
    return {"mask": str(mask_path), "preview": str(outputs.folder / f"{name}_preview.png")}


def predict_scans(model, settings: dict, input_path, output_dir, *, threshold: float = 0.5, postprocess: bool = True,
                  batch_size: int = 8, series: str | None = None, pixel_spacing_mm: float | None = None,
                  progress: bool = False, model_name: str = "", log=print) -> pd.DataFrame:
    """Segment the lungs in your CT (see find_scans for what ``input_path`` may be) and write, into
    ``output_dir``, each scan's mask and preview and ``measurements.csv``/``.json``. Returns the
    measurements (with rows of earlier runs into the same folder); ``.attrs["problems"]`` lists the
    inputs that could not be used, ``.attrs["segmented"]`` counts the scans of this call."""
    from lungseg.outputs import OutputFolder  # never replaces your files; records each scan as it is written

    outputs = OutputFolder(output_dir)
    record = {"model": model_name or model.name, "threshold": threshold, "postprocess": postprocess,
              "settings": {key: settings.get(key) for key in ("img_size", "hu_min", "hu_max", "epochs", "base_filters",
                                                                "best_val_dice", "model_file")},
              "labels": {"0": "background", "1": "right lung", "2": "left lung (volumes)"},
              "versions": library_versions()}
    rows, problems = [], []
    try:
        for source, read in find_scans(input_path, series, pixel_spacing_mm, exclude=outputs.own_files()):
            try:
                scan = read()
                for note in scan.notes:
                    log(" ".join(note.split()))
                labels = segment_scan(model, scan, settings, threshold, postprocess, batch_size, progress)
                lung_hu = scan.hu[labels > 0]
                if lung_hu.size and not -1000 <= lung_hu.mean() <= -200:
                    raise LungsegError(f"{source}: the lung found has a mean of {lung_hu.mean():.0f} HU, which no lung "
                                       "has: its values are not HU. Convert it to HU (a 16-bit PNG holds HU+1024; "
                                       "DICOM needs its rescale slope and intercept).")
                scan.name = outputs.name_for(scan.name, source)  # two patients' chest.nii.gz: chest, chest-2
                rows.append({**scan_measurements(scan, labels, pixel_spacing_mm),
                             **write_scan_outputs(scan, labels, outputs), "input": str(Path(source).resolve())})
                if "note" in rows[-1]:
                    log(f"{source}: {rows[-1]['note']}")
            except LungsegError as error:
                problems.append(" ".join(str(error).split()))  # one line per input
                log(f"not segmented: {problems[-1]}")
            if rows:
                outputs.save(rows, {**record, "problems": problems})  # each scan recorded as soon as it is done
        table = outputs.save(rows, {**record, "problems": problems})
    finally:
        outputs.close()
    segmented = len(rows)
    table.attrs.update(problems=problems, segmented=segmented)
    return table

# %% [markdown]
# ### Try it
# With `PREDICT_DIR` set, your scans (a DICOM series folder, NIfTI files, or slices) are segmented
# with `PREDICT_MODEL` (default: the model with the higher mean Dice above). Without it, as a
# **demonstration**, we write a DICOM series from eight test slices, 5 mm apart, stored with a rescale
# slope and intercept as scanners do. They come from different patients, so along z this "volume" is
# not anatomy: it shows the volume path (geometry, HU, right/left labels, volumes in mL), not a scan.

# %%
from lungseg.dicom import write_dicom_series  # writes slices in HU as a DICOM series (pydicom)

chosen = PREDICT_MODEL or winner
if PREDICT_DIR:
    scans_input = Path(PREDICT_DIR).expanduser()
else:
    scans_input = output_dir / "demo_series"
    if not scans_input.is_dir():
        write_dicom_series(images[:8], scans_input, pixel_spacing_mm=(spacing_mm, spacing_mm), slice_spacing_mm=5.0,
                           slope=1.0, intercept=-1024.0, description="DEMO: 8 test slices of different patients")
    print(f"DEMO series: {len(list(scans_input.iterdir()))} DICOM files in {lu.repo_path(scans_input)} (test slices, not a "
          "real volume)")
measured = lu.predict_scans(models[chosen], records[chosen], scans_input, output_dir / "predictions" / chosen,
                            model_name=chosen)
print(f"model: {chosen}")
measured.drop(columns=["mask", "preview", "input"]).round(2).T

# %%
figure, axis = plt.subplots(figsize=(14, 3))
axis.imshow(plt.imread(measured.preview.iloc[0])), axis.axis("off");

# %% [markdown]
# ## Another scanner
# Every score above comes from slices of one collection, and a model can score 0.98 on every one of
# them and still fail elsewhere. The Kaggle slices were stored at about 0.8x their HU (01): the
# first models, trained on those numbers, learnt that lung is about -690 and took the darker lung
# of standard scans for outside air. On a COPD patient's whole-chest CT from the Chest Imaging
# Platform they found 306 of its 4,554 mL of lung (Dice 0.10). This is **domain shift**, and only
# data from elsewhere shows it. Below: the lung's values in a Kaggle slice as stored and in that
# scan, and the scan segmented by today's models (trained on calibrated HU with intensity
# augmentation). The scan ships with the Chest Imaging Platform's tests
# (github.com/acil-bwh/ChestImagingPlatform, `Testing/Data/Input/ct-64Dicom`); set `OTHER_SCANNER` to
# its folder, or to any chest CT. All the volumes, for both models: README, Results.

# %%
other = REPO_ROOT / OTHER_SCANNER if OTHER_SCANNER else None
if other is None or not other.exists():
    print(f"OTHER_SCANNER {OTHER_SCANNER!r} is not here: section skipped (see above where to get the scan).")
else:
    scan = lu.find_scans(other)[0][1]()
    labels = lu.segment_scan(models[chosen], scan, records[chosen])
    row = lu.scan_measurements(scan, labels)
    print(f"{chosen} on {other.name}: {row['lung_volume_ml']:,.0f} mL of lung, LAA-950 {row['laa950_percent']:.1f}%, "
          f"PD15 {row['pd15_hu']:.0f} HU")
    stored = read_slice(test.image_path.iloc[0])
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].hist(stored[lu.read_mask(test.mask_path.iloc[0]) > 0], bins=np.arange(-1100, 0, 10), color="grey")
    axes[0].set_title("Kaggle slice, lung as stored"), axes[0].set_xlabel("stored value")
    axes[1].hist(scan.hu[labels > 0], bins=np.arange(-1100, 0, 10), color="steelblue")
    axes[1].set_title("other scanner, lung in HU"), axes[1].set_xlabel("HU")
    k = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    axes[2].imshow(lu.mask_overlay(lu.window_hu(scan.hu[k], -1000, 400), labels[k]))
    axes[2].set_title(f"{chosen}, slice {k + 1} of {len(labels)}"), axes[2].axis("off")
    lu.save_figure(figure, figures_dir / "05_other_scanner.png");

