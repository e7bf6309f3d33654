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
# # 5. Evaluate: which model wins, and where it fails
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lungseg/lungseg/blob/main/notebooks/05_evaluate.ipynb)
#
# Both models are scored on the held-out **test** slices of the split manifest, which neither
# training nor model selection has seen. Masks are scored at the slices' **original 512x512
# resolution**: the predicted probabilities are resized back before thresholding and compared with
# the original masks, because that is the resolution a radiologist or a lung measurement works at.
# Then: a paired comparison of the two models, the slices where they fail, and lung measurements as in
# `lung_stats.csv`. Whole scans are the next notebook's.

# %%
import os, subprocess, sys  # set-up: in Colab, fetch lungseg and what Colab lacks; everywhere, find lungseg/
if "google.colab" in sys.modules and not os.path.isdir("/content/lungseg"):
    subprocess.run(f"git clone -q https://github.com/lungseg/lungseg /content/lungseg && {sys.executable} -m pip "
                   "install -q pydicom highdicom pynrrd papermill jupytext", shell=True, check=True)
sys.path[:0] = ["/content/lungseg"] if "google.colab" in sys.modules else [os.path.abspath(".."), os.path.abspath("../..")]
from lungseg.notebook import show_config, start
REPO_ROOT = start()  # says the runtime (CPU or GPU) in one line

# %%
import json
import numbers
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage, stats

import lungseg_utils as lu  # the #@save cells of 01-04
from lungseg_utils import (bce_dice_loss, check_hu, dice_coef, iou_coef,  # used by this notebook's #@save cells
                           preprocess_slice, read_slice, resize_image, window_hu)
from lungseg.checks import check_models_fit_data, check_settings, choose_models_dir
from lungseg.data import dataset_calibration, pixel_area_mm2  # 01's HU calibration; the pixel area of lung_stats.csv
from lungseg.errors import LungsegError
from lungseg.report import write_json
from lungseg.runner import ensure_inputs  # runs 01 and 02 first if their outputs are missing

# %% [markdown]
# ## Parameters
# `MODELS_DIR`: empty means `OUTPUT_DIR/models` when both models are there (you trained them in
# 03/04), else the trained models committed in the repository's `models/` folder.

# %% tags=["parameters"]
DATA_DIR = ""  # the data folder, for 01 if it must run first (empty: as 01 decides; see 01's Parameters)
OUTPUT_DIR = "outputs"
MODELS_DIR = ""
MODELS = ["unet", "resunet"]
THRESHOLD = 0.5
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
models_dir = choose_models_dir(MODELS_DIR, output_dir, MODELS, REPO_ROOT)  # yours (03/04), else the committed ones
models, records = {}, {}
for name in MODELS:
    models[name], records[name] = load_trained_model(models_dir / f"{name}.keras")
ensure_inputs("05", OUTPUT_DIR, data_dir=DATA_DIR)
dataset = json.loads((output_dir / "data" / "dataset.json").read_text())
check_models_fit_data(records, dataset, models_dir)  # real-CT models are not scored on phantoms
synthetic = dataset["synthetic"] or any(record["synthetic"] for record in records.values())
pixel_area = pixel_area_mm2(Path(dataset["root"]) / "lung_stats.csv")
spacing_mm = float(np.sqrt(pixel_area))

# %% [markdown]
# ## The test slices at native resolution
# Read straight from the original files, calibrated to standard HU as in 02, with their original
# masks. A slice that one of the models trained or validated on is no test of it; if the split has changed since the models were
# trained (another `SPLIT_SEED`, more data), such slices are left out, and said so.

# %% tags=["nbval-check-output"]
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
# the predicted and true lung boundaries in mm, both directions pooled (medpy's convention; MONAI's
# `HausdorffDistanceMetric` takes the larger of the two directions, which is never smaller) (a boundary off by a few pixels barely moves Dice
# but shows here). Pooled Dice counts all pixels of all slices together. Post-processing
# (`clean_mask`) drops islands smaller than 1% of the largest region and fills small holes
# (vessels), while larger holes stay: the reference masks leave out e.g. cysts, so filling *every*
# hole would add lung that the references do not count.

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
    """95th percentile of the distances from each mask's boundary pixels to the other's boundary, both
    directions pooled (medpy's convention; MONAI takes the larger of the two directed 95th percentiles),
    in mm (both empty: 0; one empty: inf)."""
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
pd.Series(paired, name=f"{MODELS[0]} minus {MODELS[-1]}, per-slice Dice").to_frame()

# %%
significant = bool(paired) and (paired["ci95_low"] > 0 or paired["ci95_high"] < 0)
if paired:
    print(f"{MODELS[0]} minus {MODELS[-1]}, per-slice Dice: {paired['mean_difference']:+.4f} on average "
          f"(95% CI {paired['ci95_low']:+.4f}..{paired['ci95_high']:+.4f}); {MODELS[0]} better on "
          f"{paired['a_better_slices']} slices, {MODELS[-1]} on {paired['b_better_slices']} (Wilcoxon p={paired['wilcoxon_p']:.3g}).")
    print("The mean difference is " + ("not 0" if significant else "too small to tell from 0") + " on these "
          f"{paired['slices']} slices" + (", and the signed ranks lean one way" if paired["wilcoxon_p"] < 0.05 else "") + ".")

# %% [markdown]
# Differences of a thousandth of Dice on one collection's slices do not choose a model. What does is how
# each does on CT it has never seen: the cross-validation over all 217 slices and whole scans from other
# scanners ([RESULTS.md](../RESULTS.md)). There the Residual U-Net finds more of the lung bases of an
# abdominal scan (Dice 0.789 against 0.659) and is ahead on a COPD patient's chest in every training
# measured, so **the Residual U-Net is the model for whole scans** (06, and `scripts/predict.sh`).

# %% [markdown]
# ## Does post-processing help?
# Mean per-slice Dice, HD95 and worst-slice Dice at native resolution, without and with
# `clean_mask`. An island of false lung barely moves Dice but can move HD95 by centimetres, so HD95 is
# where post-processing would show. On these clean test slices both models leave few islands, and the
# table shows small changes either way; on a whole scan, where a 2D model meets bowel gas and air
# beside the body, the 3D step of 06 does this job.

# %%
summary[summary.resolution == "native"].pivot(index="model", columns="postprocessed",
                                              values=["dice_mean", "hd95_mm_mean", "dice_min"]).round(4)

# %% [markdown]
# ## All slices, and the slices with sound labels
# A score is only as good as the mask it is scored against. 01's audit (`audit_mask`) looked at each
# mask for signs that it is wrong (lung on the air outside the body, one lung missing, ...).
# The scores over all test slices and over those whose masks look sound, side by side, with the
# flagged slices named: nothing is dropped silently. Where no test mask is flagged, as in this split,
# the two are one, and the flagged masks are among the slices the models learnt from.

# %%
audit = pd.read_csv(output_dir / "data" / "label_audit.csv").fillna("").set_index("name").loc[names].reset_index()
flagged = dict(zip(audit.name[audit.flagged], audit.reasons[audit.flagged]))
print(f"flagged test masks: {len(flagged)} of {len(audit)}" + "".join(f"\n  {n}: {r}" for n, r in flagged.items()))
everywhere = pd.read_csv(output_dir / "data" / "label_audit.csv").merge(pd.read_csv(output_dir / "data" / "split_manifest.csv"), on="name")
print("flagged masks by part of the split:", everywhere[everywhere.flagged].split.value_counts().to_dict())
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
    "paired_dice": paired, "difference_significant": significant,
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
# The three test slices with the lowest Dice for each model. Blue is lung in the reference that the
# model left out, red what it called lung and the reference does not.

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
# Both models' worst slice holds a large mass against the chest wall of the right lung (on the image's
# left: radiological convention). The reference counts part of it as lung; the models leave it out, in
# blue, because nearly every lung they learnt from is dark, and this tissue is as dense as muscle.
# Lung is anatomy, not darkness: 06 shows what the 3D step gives back and what it cannot
# ([06, "Lung is anatomy, not darkness"](06_your_scan.ipynb)). The other errors lie at the hilum,
# where vessels and bronchi enter the lung and references draw the border in different places.

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
# post-processing) and from the true masks, with the pixel area that `lung_stats.csv` implies, in
# standard HU (01's calibration; `lung_stats.csv`'s densities are of the stored, 0.8x values).

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
# ## This run
# The parameters as this run saw them, the models and data, the device and the library versions: what a
# rerun needs to match.

# %%
show_config(globals(), models=models_dir, data=dataset["source"] + lu.data_label(synthetic),
            pixel_spacing_mm=round(spacing_mm, 4))

# %% [markdown]
# ## What you learned
# - Score at the slices' native 512x512, per slice, with Dice and HD95 together: a boundary a few pixels
#   off barely moves Dice, and HD95 says it in mm.
# - Compare two models on the same slices, in pairs, with a confidence interval: a difference of means
#   alone hides how small it is, and how often one model beats the other.
# - In-domain scores do not show generalisation: the cross-validation and whole scans from other
#   scanners choose the model (the Residual U-Net).
#
# ## Try this
# 1. Set `THRESHOLD = 0.3`, then `0.7`, and rerun the scores. What happens to precision, recall and the
#    mean Dice, and what does that say about how sure the models are?
# 2. In "Where do the models fail?", show the 6 worst slices instead of 3 (`nsmallest(6)`). Are they the
#    same slices for both models, and what do their errors have in common?
# 3. Set `MODELS_DIR` to the models you trained in 03 and 04 with other settings (e.g. `DICE_WEIGHT = 0`).
#    Is their paired difference larger or smaller than the committed models', and is it evidence?
#
# **Next →** [06_your_scan](06_your_scan.ipynb): the Residual U-Net on a whole chest CT, and then on yours.
