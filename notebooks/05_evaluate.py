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
# `lung_stats.csv`, and how a 2D model segments a whole scan: another scanner's, then yours.

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
from lungseg_utils import (LungsegError, bce_dice_loss, check_hu, dice_coef, iou_coef,  # used by this notebook's
                           preprocess_slice, read_slice, resize_image, window_hu)  # #@save cells

import json
import numbers
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage, stats

from lungseg.checks import check_evaluation_settings, check_models_fit_data, check_settings, choose_models_dir
from lungseg.data import dataset_calibration, pixel_area_mm2  # 01's HU calibration; the pixel area of lung_stats.csv
from lungseg.report import config_table, describe_device, repo_path, write_json  # each run documents itself
from lungseg.runner import ensure_inputs  # runs 01 and 02 first if their outputs are missing
from lungseg.scans import Scan, mask_overlay, predict_scans, read_scan, scan_measurements, segment_scan  # whole scans

# %% [markdown]
# ## Parameters
# `MODELS_DIR`: empty means `OUTPUT_DIR/models` when both models are there (you trained them in
# 03/04), else the trained models committed in the repository's `models/` folder.
# `PREDICT_DIR`: your own CT, a DICOM series folder, a NIfTI file, or slices (TIFF in HU, 16-bit PNG
# holding HU+1024, DICOM); empty means `SCAN`.
# `PREDICT_MODEL`: `"unet"`, `"resunet"`, or empty for the one with the better test Dice.
# `SCAN`: a DICOM series from another scanner, relative to the repository, for "From slices to a scan"
# (a folder that is not there: a demonstration series written from test slices).

# %% tags=["parameters"]
OUTPUT_DIR = "outputs"
MODELS_DIR = ""
MODELS = ["unet", "resunet"]
THRESHOLD = 0.5
PREDICT_DIR = ""
PREDICT_MODEL = ""
SCAN = "../shared/data/external-ct/cip-copdgene-64/ct-64Dicom"
SEED = 0

# %% [markdown]
# ## The models
# A model is its `.keras` file and, beside it, the JSON record of how it was trained: its
# preprocessing (image size, HU window), which slices it trained and validated on, its best epoch.

# %%
#@save
def load_trained_model(path):
    """Load ``<name>.keras`` and the record it was trained with (``<name>.json`` beside it)."""
    from lungseg.checks import explain_load_error, read_model_record  # missing, damaged, too new: what to do

    path = Path(path)
    record = read_model_record(path)  # <name>.json: image size, HU window, slices, best epoch
    try:
        model = keras.saving.load_model(path, compile=False)  # for inference and scoring: no optimizer state
    except Exception as error:  # Keras reports a truncated zip as "file not found", among others
        raise explain_load_error(path, error) from None
    model.compile(loss=bce_dice_loss, metrics=[dice_coef, iou_coef])
    return model, record

# %%
output_dir = REPO_ROOT / OUTPUT_DIR
evaluation_dir, figures_dir = output_dir / "evaluation", output_dir / "figures"
check_evaluation_settings(MODELS, PREDICT_MODEL, PREDICT_DIR)
models_dir = choose_models_dir(MODELS_DIR, output_dir, MODELS, REPO_ROOT)  # yours (03/04), else the committed ones
models, records = {}, {}
for name in MODELS:
    models[name], records[name] = load_trained_model(models_dir / f"{name}.keras")
ensure_inputs("05", OUTPUT_DIR)
dataset = json.loads((output_dir / "data" / "dataset.json").read_text())
check_models_fit_data(records, dataset, models_dir)  # real-CT models are not scored on phantoms
synthetic = dataset["synthetic"] or any(record["synthetic"] for record in records.values())
pixel_area = pixel_area_mm2(Path(dataset["root"]) / "lung_stats.csv")
spacing_mm = float(np.sqrt(pixel_area))
config_table({"models": models_dir, "MODELS": MODELS, "THRESHOLD": THRESHOLD, "PREDICT_DIR": PREDICT_DIR, "SCAN": repo_path(REPO_ROOT / SCAN) if SCAN else "",
              "data": dataset["source"] + lu.data_label(synthetic), "pixel spacing (mm)": round(spacing_mm, 4),
              "device": describe_device()})

# %% [markdown]
# ## The test slices at native resolution
# Read straight from the original files, calibrated to standard HU as in 02, with their original
# masks. A slice that one of the models trained or validated on is no test of it; if the split has changed since the models were
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

# %%
probability = predict_probabilities(models[MODELS[-1]], images[0], records[MODELS[-1]])[0]
unsure = np.mean((probability > 0.1) & (probability < 0.9))
print(f"{names[0]}: a {probability.shape[0]}x{probability.shape[1]} probability map; {unsure:.2%} of its pixels "
      "lie between 0.1 and 0.9")

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
# Why HD95 beside Dice: a true mask moved sideways by 3 pixels (2.5 mm) keeps a Dice of 0.97;
# HD95 says how far off its boundary is.

# %%
moved = np.roll(masks[0], 3, axis=1)
pd.Series(score_slice(masks[0], moved, spacing_mm)).round(3).to_frame("true mask vs itself moved 3 px").T

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
# A score is only as good as the mask it is scored against. 01's audit (`audit_mask`) looked at each
# mask for signs that it is wrong (lung on the air outside the body, one lung missing, ...).
# The scores over all test slices and over those whose masks look sound, side by side, with the
# flagged slices named: nothing is dropped silently.

# %%
audit = pd.read_csv(output_dir / "data" / "label_audit.csv").fillna("").set_index("name").loc[names].reset_index()
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
write_json(evaluation_dir / "evaluation.json", {
    "data": dataset["source"] + lu.data_label(synthetic), "synthetic": synthetic, "models_dir": str(models_dir),
    "test_slices": len(names), "test_names": names, "threshold": THRESHOLD, "comparison": comparison.to_dict(),
    "flagged_labels": flagged, "dice_by_labels": by_labels.to_dict(orient="index"),
    "paired_dice": paired, "winner_by_mean_dice": winner, "difference_significant": significant,
    "reference_style_test_metrics": reference_style.to_dict(orient="index"), "summary": summary.to_dict(orient="records")})
print("wrote", *sorted(p.name for p in evaluation_dir.iterdir()))

# %% [markdown]
# ## Look at the predictions
# Four test slices, each model's mask over the truth: missed lung in blue, extra lung in red (at a
# Dice of 0.98 two binary masks side by side look the same).

# %%
shown = np.linspace(0, len(names) - 1, min(4, len(names))).astype(int)
rows = [[window_hu(images[i], -1000, 400)] + [lu.error_overlay(window_hu(images[i], -1000, 400), masks[i],
                                                                predictions[m][False][i]) for m in MODELS] for i in shown]
lu.show_pairs(rows, ["CT slice"] + [f"{m}: red extra, blue missed" for m in MODELS], [names[i] for i in shown],
              title="Test slices at native resolution", path=figures_dir / "predicted_mask_visualization.png",
              synthetic=synthetic, size=3.4);

# %% [markdown]
# ## Where do the models fail?
# The three test slices with the lowest Dice for each model; false positives in red, false
# negatives in blue.

# %%
rows, titles = [], []
for name in MODELS:
    worst = dice[name].nsmallest(3)
    rows.append([lu.error_overlay(window_hu(images[names.index(n)], -1000, 400), masks[names.index(n)],
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
# ## From slices to a scan
# Your CT is a **volume**: a DICOM series (one file per slice) or one NIfTI file, a few hundred axial
# slices. A 2D model meets it one slice at a time, in four steps: read the slices in HU, put them in
# order and in the orientation of the training slices, predict each slice, and count the lung
# voxels times the voxel volume. Here on `SCAN`: a COPD patient's chest CT from another scanner
# (Chest Imaging Platform, 4 mm slices; see `SCAN` above), or, where it is missing, a
# **demonstration** series written from 8 test slices of different patients (not anatomy along z).

# %%
import pydicom
from lungseg.dicom import write_dicom_series  # writes slices in HU as a DICOM series

chosen = PREDICT_MODEL or winner
scan_dir = REPO_ROOT / SCAN if SCAN and (REPO_ROOT / SCAN).is_dir() else output_dir / "demo_series"
if scan_dir.name == "demo_series" and not scan_dir.is_dir():
    write_dicom_series(images[:8], scan_dir, pixel_spacing_mm=(spacing_mm, spacing_mm), slice_spacing_mm=5.0,
                       slope=1.0, intercept=-1024.0, description="DEMO: 8 test slices of different patients")
headers = [pydicom.dcmread(f) for f in sorted(scan_dir.iterdir()) if f.suffix.lower() == ".dcm"]
headers.sort(key=lambda h: float(h.ImagePositionPatient[2]))  # axial: by position along the body, not file name
volume = np.stack([h.pixel_array * float(h.RescaleSlope) + float(h.RescaleIntercept) for h in headers])  # HU
row_mm, column_mm = (float(v) for v in headers[0].PixelSpacing)
slice_mm = float(np.median(np.diff([float(h.ImagePositionPatient[2]) for h in headers])))
print(f"{repo_path(scan_dir)}: {volume.shape[0]} slices of {volume.shape[1]}x{volume.shape[2]}, "
      f"{volume.min():.0f}..{volume.max():.0f} HU, voxels {row_mm:.2f} x {column_mm:.2f} x {slice_mm:.2f} mm")
orientation = [round(float(v)) for v in headers[0].ImageOrientationPatient]
print("orientation (rows, columns):", orientation, "= the training slices' (front at the top, the patient's right on "
      "the left)" if orientation == [1, 0, 0, 0, 1, 0] else "is not the training slices': read_scan below turns it")

# %% [markdown]
# Predict every slice, exactly as the test slices above, and measure: lung voxels x voxel volume.

# %%
probabilities = np.stack(lu.predict_probabilities(models[chosen], list(volume), records[chosen]))
mask = probabilities >= THRESHOLD
print(f"{chosen}: {mask.sum() * row_mm * column_mm * slice_mm / 1000:,.0f} mL of lung in {mask.any(axis=(1, 2)).sum()} "
      f"of {len(mask)} slices")

# %%
middle_row = int(np.argmax(mask.sum(axis=(0, 2))))  # the coronal plane through the most lung
coronal = window_hu(volume[::-1, middle_row, :], -1000, 400)  # head at the top
axial = int(np.argmax(mask.sum(axis=(1, 2))))
figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
axes[0].imshow(mask_overlay(window_hu(volume[axial], -1000, 400), mask[axial]))
axes[0].set_title(f"axial slice {axial + 1} of {len(volume)}")
axes[1].imshow(mask_overlay(coronal, mask[::-1, middle_row, :]), aspect=slice_mm / column_mm)
axes[1].set_title("coronal (head at the top), rebuilt from the slices")
for axis in axes:
    axis.set_xticks([]), axis.set_yticks([])
lu.save_figure(figure, figures_dir / "05_scan.png", synthetic);

# %% [markdown]
# A 2D model sees one slice at a time, so on a whole scan it can mark bowel gas below the lungs or
# air beside the body. A volume shows what a slice cannot: the lungs are the large connected
# air-filled organs inside the body. `lungseg.scans` does what a product needs beyond the four
# steps: any DICOM series or NIfTI in any orientation, connected regions kept only when they are
# inside the body and hold lung tissue (`keep_lungs`), right and left lung (`split_lungs`), and
# the measurements, LAA-950 (the emphysema index) among them.

# %%
scan = read_scan(scan_dir)  # the same slices, read and checked by lungseg.scans
labels = segment_scan(models[chosen], scan, records[chosen])  # 0 background, 1 right lung, 2 left lung
pd.DataFrame([scan_measurements(scan, labels)], index=[chosen]).drop(columns=["name", "kind"]).round(1)

# %% [markdown]
# ## Lung is anatomy, not darkness
# People segment lungs mostly because something is wrong in them, and a lung mask keeps diseased
# lung: a tumour inside the pleura is lung tissue gone dense. A model trained on clear lungs has
# learnt that lung is *dark*, and leaves every dense lesion out; Hofmanninger et al. (2020) showed
# that this is "primarily a data diversity problem, not a methodology problem". Below, two 30 mm
# tumours (+40 HU) are written into this scan's lung: one deep inside it, one against the chest
# wall. The model alone, then with the 3D step, which fills what the lung encloses.

# %%
lung = labels > 0
voxel_mm = (float(np.mean(scan.slice_thickness_mm)), *scan.pixel_spacing_mm)  # (slice, row, column)
zz, yy, xx = np.indices(lung.shape)
def ball(centre, diameter_mm=30.0):
    return sum(((axis - c) * mm) ** 2 for axis, c, mm in zip((zz, yy, xx), centre, voxel_mm)) <= (diameter_mm / 2) ** 2
depth = ndimage.distance_transform_edt(lung, sampling=voxel_mm)  # mm from the lung's edge
deep = np.unravel_index(np.argmax(depth), lung.shape)  # the point deepest inside the lung
k = deep[0]
edge_rows, edge_columns = np.nonzero(lung[k])
side = int(np.argmin(edge_columns))  # the right lung's outermost point on that slice: the chest wall
on_wall = (k, edge_rows[side], edge_columns[side] + round(10 / voxel_mm[2]))  # 10 mm inside the pleura
tumours = {"deep inside": ball(deep) & lung, "on the chest wall": ball(on_wall) & lung}
print({name: f"{tumour.sum() * np.prod(voxel_mm) / 1000:.1f} mL" for name, tumour in tumours.items()})

# %% [markdown]
# Write them in at +40 HU (soft tissue, with a scanner's noise), segment the diseased scan both ways,
# and count how much of each tumour is called lung.

# %%
sick = scan.hu.copy()
for tumour in tumours.values():
    sick[tumour] = 40 + np.random.default_rng(SEED).normal(0, 15, tumour.sum())
diseased = Scan(scan.name, scan.kind, sick, scan.pixel_spacing_mm, scan.slice_thickness_mm, scan.affine, scan.orientation)
alone = segment_scan(models[chosen], diseased, records[chosen], postprocess=False) > 0  # the model, slice by slice
with_3d = segment_scan(models[chosen], diseased, records[chosen]) > 0  # and the 3D step
pd.DataFrame({name: {"kept by the model": alone[tumour].mean(), "kept with the 3D step": with_3d[tumour].mean()}
              for name, tumour in tumours.items()}).T.round(2)

# %%
figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for axis, found, title in [(axes[0], alone, "the model alone"), (axes[1], with_3d, "with the 3D step")]:
    axis.imshow(mask_overlay(window_hu(sick[k], -1000, 400), found[k].astype(np.uint8)))
    axis.contour(sum(tumours.values())[k], [0.5], colors="red", linewidths=1)
    axis.set_title(f"{title}: tumours in red"), axis.set_xticks([]), axis.set_yticks([])
lu.save_figure(figure, figures_dir / "05_tumours.png", synthetic);

# %% [markdown]
# The tumour that the lung encloses comes back: a hole in the lung in 3D is lung. The one on the
# chest wall does not: nothing closes the lung's outline over it, and the model took its density
# for the chest wall. Teaching the network with lesions pasted into its training lungs (02's
# `LESIONS`) raised the share kept on held-out Kaggle slices but lowered the COPD chest's Dice from
# 0.978 to 0.92, so it is off by default; [RESULTS.md](../RESULTS.md) has both.

# %% [markdown]
# ## Another scanner
# Every test score above comes from one collection, and a model can score 0.98 on all of it and still
# fail elsewhere (**domain shift**). The Kaggle slices are stored at about 0.8x their HU, so their
# lung sits near -690; this COPD patient's, in standard HU, near -950. Models trained on the stored numbers
# found 306 of this scan's 4,554 mL of lung; trained on calibrated HU (01) with intensity
# augmentation (02) they find it all (Dice 0.98; every volume, both models:
# [RESULTS.md](../RESULTS.md)). Without that scan (the demonstration series), the histogram compares
# a Kaggle slice as stored with test slices in calibrated HU: the same shift. (The CIP scan is the
# CIP authors' 8x downsample of a whole chest: 64x64 pixels of 4.17 mm.) Calibrated, the Kaggle lung
# moves next to the COPD lung; what gap remains is emphysema and breathing, not scale.

# %%
stored = read_slice(test.image_path.iloc[0])
figure, axis = plt.subplots(figsize=(7, 3.2))
lung = lu.read_mask(test.mask_path.iloc[0]) > 0
axis.hist(stored[lung], bins=np.arange(-1100, 0, 10), alpha=0.5, density=True, label="Kaggle slice, lung as stored")
axis.hist(lu.to_standard_hu(stored, calibration)[lung], bins=np.arange(-1100, 0, 10), alpha=0.5, density=True,
          label="the same, calibrated (01)")
axis.hist(scan.hu[labels > 0], bins=np.arange(-1100, 0, 10), alpha=0.5, density=True, label=f"{scan_dir.name}, lung in HU")
axis.set_xlabel("value"), axis.set_yticks([]), axis.legend(), axis.set_title("The same organ: stored scale, and calibrated")
lu.save_figure(figure, figures_dir / "05_other_scanner.png", synthetic);

# %% [markdown]
# ## Your own scans
# One call segments every scan in a folder or file (DICOM series, NIfTI, slices) and writes a mask
# (`<name>_mask.nii.gz` on the input's grid, 1 right lung, 2 left lung), a preview and a row of
# `measurements.csv`; from a shell, `bash scripts/predict.sh INPUT [OUTPUT_DIR]` does the same. An
# input it cannot use is named in one line, and it never replaces your files. Set `PREDICT_DIR` to
# your CT; empty, it segments `SCAN`. More: [docs/own-scans.md](../docs/own-scans.md).

# %%
scans_input = Path(PREDICT_DIR).expanduser() if PREDICT_DIR else scan_dir
measured = predict_scans(models[chosen], records[chosen], scans_input, output_dir / "predictions" / chosen,
                         model_name=chosen)
measured.drop(columns=["mask", "dicom_seg", "preview", "input"], errors="ignore").round(2).T

# %%
figure, axis = plt.subplots(figsize=(14, 3))
axis.imshow(plt.imread(measured.preview.iloc[0])), axis.axis("off");

# %% [markdown]
# ## What you learned
# - Score at the slices' native 512x512, per slice, with Dice and HD95 together, and compare two models
#   on the same slices with a paired test: a mean alone hides how often one beats the other.
# - In-domain scores do not show generalisation: whole scans from other scanners, measured against other
#   tools' masks, decide which model you use (the Residual U-Net, by RESULTS.md).
# - A 2D model segments a 3D scan slice by slice; the 3D step then keeps what is anatomy (inside the
#   body, above the diaphragm, not pure gas) and fills what the lung encloses.
#
# ## Try this
# 1. Set `THRESHOLD = 0.3`, then `0.7`, and rerun the scores: at 0.3 the masks grow (recall up, precision
#    down), at 0.7 they shrink, and the mean Dice moves by less than 0.01. The models are confident almost
#    everywhere. (A test checks it: `tests/test_exercises.py`.)
# 2. Set `PREDICT_DIR` to a CT of your own (a DICOM series folder or a NIfTI file; in Colab, upload it
#    first, de-identified), and look at its preview. Not for clinical use.
# 3. In "Lung is anatomy, not darkness", grow the deep tumour, `ball(deep, diameter_mm=60.0)`, and
#    rerun: how much does the model alone keep now, and does the 3D step still fill it all?
#
# **Next →** your own scans, with `bash scripts/predict.sh` ([docs/own-scans.md](../docs/own-scans.md)).
