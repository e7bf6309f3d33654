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
# resolution**: the predicted probabilities are resized back before thresholding, and compared with
# the original masks, because that is the resolution a radiologist or a lung measurement works at.
# Then: a paired comparison of the two models, the worst slices, lung measurements as in
# `lung_stats.csv`, and predictions on your own scans.

# %% [markdown]
# ## Setup
# In Colab this fetches the repository and installs what Colab lacks; elsewhere it only finds the
# repository so that `lungseg_utils` can be imported.

# %%
import os, subprocess, sys  # noqa: E401
from pathlib import Path

if "google.colab" in sys.modules:
    if not Path("/content/lungseg").exists():
        subprocess.run(["git", "clone", "-q", "https://github.com/lungseg/lungseg", "/content/lungseg"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "tifffile", "pydicom"], check=True)
    os.chdir("/content/lungseg/notebooks")
REPO_ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lungseg_utils.py").is_file())
sys.path.insert(0, str(REPO_ROOT))

# %% [markdown]
# ## Imports

# %%
import numbers

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import lungseg_utils as lu

# %% [markdown]
# ## Parameters
# `PREDICT_DIR`: a folder of your own slices (TIFF in HU, 16-bit PNG holding HU+1024, or DICOM);
# empty means a demonstration on three test slices. `PREDICT_MODEL`: `"unet"`, `"resunet"`, or empty
# for the one with the better test Dice.

# %% tags=["parameters"]
OUTPUT_DIR = "outputs"
MODELS = ["unet", "resunet"]
THRESHOLD = 0.5
PREDICT_DIR = ""
PREDICT_MODEL = ""
SEED = 0

# %% [markdown]
# ## Configuration

# %%
output_dir = REPO_ROOT / OUTPUT_DIR
evaluation_dir = output_dir / "evaluation"
figures_dir = output_dir / "figures"
models, records = {}, {}
for name in MODELS:
    models[name], records[name] = lu.load_trained_model(output_dir / "models" / f"{name}.keras")
synthetic = any(record["synthetic"] for record in records.values())
pixel_area = lu.pixel_area_mm2(Path(records[MODELS[0]]["data_root"]) / "lung_stats.csv")
spacing_mm = float(np.sqrt(pixel_area))
config = {"OUTPUT_DIR": str(output_dir), "MODELS": MODELS, "THRESHOLD": THRESHOLD, "PREDICT_DIR": PREDICT_DIR,
          "data": records[MODELS[0]]["data_source"] + lu.data_label(synthetic),
          "pixel spacing (mm)": round(spacing_mm, 4), "device": lu.describe_device()}
lu.config_table(config)

# %% [markdown]
# ## The test slices at native resolution
# Read straight from the original files, in HU, with their original masks.

# %%
# NBVAL_CHECK_OUTPUT
names, images, masks = lu.load_split_originals(output_dir, "test")
print(f"test slices: {len(names)}, shapes: {sorted({m.shape for m in masks})}")

# %% [markdown]
# ## Score each model
# Per slice: Dice, IoU, precision, recall and HD95 (the 95th percentile of the distances between
# the predicted and true lung boundaries, in mm). With and without post-processing (`lu.clean_mask`):
# drop islands smaller than 1% of the largest region and fill small holes (vessels), while larger
# holes stay, since the reference masks leave out e.g. cysts. Inference is timed end to end
# (windowing, resizing, network, resizing back, thresholding).

# %%
arrays = lu.load_arrays(output_dir / "data" / "arrays.npz")
per_slice, predictions, speed = [], {}, {}
for name, model in models.items():
    table, predictions[name] = lu.score_native(model, records[name], names, images, masks, spacing_mm, THRESHOLD)
    per_slice.append(table.assign(model=name, resolution="native"))
    speed[name] = len(names) / table.attrs["inference_seconds"]
    # The same scores at the model's own resolution (what the training curves show), for reference.
    low_res = model.predict(arrays["x_test"], verbose=0)[..., 0] >= THRESHOLD
    scale = records[name]["img_size"]
    rows = [{"name": n, "postprocessed": False, **lu.score_slice(t[..., 0], p, spacing_mm * 512 / scale)}
            for n, t, p in zip(arrays["names_test"], arrays["y_test"], low_res)]
    per_slice.append(pd.DataFrame(rows).assign(model=name, resolution=f"model ({scale} px)"))
per_slice = pd.concat(per_slice, ignore_index=True)
summary = lu.summary_rows(per_slice, ["model", "resolution", "postprocessed"])
summary["pooled_dice"] = [
    lu.pooled_dice(masks, predictions[row.model][row.postprocessed]) if row.resolution == "native" else np.nan
    for row in summary.itertuples()]
summary.round(4)

# %% [markdown]
# ## The test loss, as the reference notebook reported it
# Keras' `evaluate` on the test arrays at model resolution: the BCE + Dice loss and the per-image
# Dice and IoU averaged over the slices. (The reference Kaggle notebook reported Dice 0.9650 and
# IoU 0.9317 this way, on its own split.)

# %%
reference_style = pd.DataFrame({name: model.evaluate(arrays["x_test"], arrays["y_test"], verbose=0, return_dict=True)
                                for name, model in models.items()}).T
reference_style.round(4)

# %% [markdown]
# ## U-Net vs Residual U-Net
# The headline numbers side by side (native resolution, no post-processing), with size and speed.
# A difference of means on 33 slices can be noise, so the per-slice Dice scores are compared in
# pairs (same slice, two models): the mean difference with a 95% bootstrap confidence interval and
# a Wilcoxon signed-rank test. If the interval contains 0, the data do not show a winner.

# %%
native = summary[(summary.resolution == "native") & ~summary.postprocessed].set_index("model")
comparison = pd.DataFrame({name: pd.Series(column, dtype=object) for name, column in {
    name: {"Dice (mean)": native.dice_mean[name], "Dice (std)": native.dice_std[name],
           "Dice (worst slice)": native.dice_min[name], "IoU (mean)": native.iou_mean[name],
           "pooled Dice": native.pooled_dice[name], "HD95 mm (mean)": native.hd95_mm_mean[name],
           "parameters": records[name]["parameters"], "training s": records[name]["training_seconds"],
           "s per epoch": records[name]["seconds_per_epoch"], "best epoch": records[name]["best_epoch"],
           "inference slices/s": speed[name]} for name in MODELS}.items()})  # object columns: counts stay integers
comparison.map(lambda value: f"{value:,}" if isinstance(value, numbers.Integral) else f"{value:.4f}")

# %%
dice = per_slice[(per_slice.resolution == "native") & ~per_slice.postprocessed].pivot(
    index="name", columns="model", values="dice")
paired = lu.paired_comparison(dice[MODELS[0]], dice[MODELS[-1]], seed=SEED) if len(MODELS) == 2 else {}
winner = max(MODELS, key=lambda name: native.dice_mean[name])
pd.Series(paired, name=f"{MODELS[0]} minus {MODELS[-1]}, per-slice Dice").to_frame()

# %%
significant = bool(paired) and (paired["ci95_low"] > 0 or paired["ci95_high"] < 0)
if significant:
    sign = 1 if winner == MODELS[0] else -1  # report the interval of "winner minus the other"
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
# `lu.clean_mask`. Small false-positive islands barely move Dice but inflate HD95, which is where
# post-processing earns its keep. (Filling *every* hole, tried first, lowered the worst slice's
# Dice from 0.95 to 0.93: at the lung bases the prediction can enclose tissue the masks exclude.)

# %%
native_rows = summary[summary.resolution == "native"]
native_rows.pivot(index="model", columns="postprocessed", values=["dice_mean", "hd95_mm_mean", "dice_min"]).round(4)

# %% [markdown]
# ## Save the numbers
# Per-slice rows, the summary, the comparison and the paired test, as CSV and JSON.

# %%
evaluation_dir.mkdir(parents=True, exist_ok=True)
per_slice.to_csv(evaluation_dir / "per_slice.csv", index=False)
summary.to_csv(evaluation_dir / "summary.csv", index=False)
comparison.to_csv(evaluation_dir / "comparison.csv")
lu.write_json(evaluation_dir / "evaluation.json", {
    "data": config["data"], "synthetic": synthetic, "test_slices": len(names), "threshold": THRESHOLD,
    "comparison": comparison.to_dict(), "paired_dice": paired, "winner_by_mean_dice": winner,
    "difference_significant": significant,
    "reference_style_test_metrics": reference_style.to_dict(orient="index"),
    "summary": summary.to_dict(orient="records")})
print("wrote", *sorted(p.name for p in evaluation_dir.iterdir()))

# %% [markdown]
# ## Look at the predictions
# CT slice, true mask and each model's predicted mask, for four test slices.

# %%
shown = np.linspace(0, len(names) - 1, 4).astype(int)
rows = [[lu.window_hu(images[i], -1000, 400), masks[i]] + [predictions[m][False][i] for m in MODELS] for i in shown]
lu.show_pairs(rows, ["CT slice", "true mask"] + [f"{m} prediction" for m in MODELS], [names[i] for i in shown],
              title="Test slices at native resolution", path=figures_dir / "predicted_mask_visualization.png",
              synthetic=synthetic);

# %% [markdown]
# ## Where do the models fail?
# The three test slices with the lowest Dice for each model; false positives in red, false
# negatives in blue.

# %%
rows, titles = [], []
for name in MODELS:
    worst = dice[name].nsmallest(3)
    rows.append([lu.error_overlay(lu.window_hu(images[names.index(n)], -1000, 400), masks[names.index(n)],
                                  predictions[name][False][names.index(n)]) for n in worst.index])
    titles.append(name + ": " + ", ".join(f"{d:.3f}" for d in worst))
lu.show_pairs(rows, ["worst", "2nd worst", "3rd worst"], titles, size=3.4,
              title="Errors on the worst slices (red: false positive, blue: false negative)",
              path=figures_dir / "worst_slices_errors.png", synthetic=synthetic);

# %% [markdown]
# ## Per-slice Dice, and how training went
# A strip plot shows every test slice; training curves of both models together.

# %%
figure, axis = plt.subplots(figsize=(6, 3.5))
for position, name in enumerate(MODELS):
    values = dice[name].to_numpy()
    axis.boxplot(values, positions=[position], widths=0.5, showfliers=False)
    axis.scatter(position + np.random.default_rng(SEED).uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.7)
axis.set_xticks(range(len(MODELS)), MODELS), axis.set_ylabel("Dice per test slice (native)"), axis.grid(alpha=0.3)
lu.save_figure(figure, figures_dir / "dice_per_slice.png", synthetic);

# %%
histories = {name: pd.read_csv(output_dir / "models" / f"{name}_history.csv") for name in MODELS}
lu.plot_history(histories, path=figures_dir / "training_curves.png", synthetic=synthetic);

# %% [markdown]
# ## Lung measurements
# The data set was made to *measure* lungs: area (mm²), mean density and the 5th/95th percentile
# densities (PD05, PD95) per slice. Here they are computed from the predicted masks (with
# post-processing) and from the true masks, which give exactly the values of `lung_stats.csv`.

# %%
rows = []
for name in MODELS:
    for slice_name, image, truth, predicted in zip(names, images, masks, predictions[name][True]):
        true_values = lu.lung_measurements(image, truth, pixel_area)
        predicted_values = lu.lung_measurements(image, predicted, pixel_area)
        rows.append({"model": name, "name": slice_name, **{f"true_{k}": v for k, v in true_values.items()},
                     **{f"predicted_{k}": v for k, v in predicted_values.items()}})
measurements = pd.DataFrame(rows)
errors = {}
for quantity in ("area_mm2", "mean_hu", "pd05_hu", "pd95_hu"):
    difference = measurements[f"predicted_{quantity}"] - measurements[f"true_{quantity}"]
    measurements[f"error_{quantity}"] = difference
    errors[quantity] = difference.abs().groupby(measurements.model).mean()
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
# `lu.predict_masks(model, slices_in_hu, settings)` applies exactly the preprocessing the model
# was trained with (read from the settings saved beside it) to slices of any size and returns masks
# of the same size. Below it runs on `PREDICT_DIR` and writes a mask and an overlay per input to
# `outputs/predictions/`. Inputs must be CT in HU: int16 or float TIFF, 16-bit PNG holding HU+1024,
# or DICOM (rescale slope and intercept are applied). An 8-bit image is refused with a message,
# because it cannot hold HU and would give a meaningless mask.

# %%
chosen = PREDICT_MODEL or winner
if PREDICT_DIR:
    inputs = PREDICT_DIR
else:  # a demonstration on three test slices
    pairs = pd.read_csv(output_dir / "data" / "pairs.csv").set_index("name")
    inputs = [pairs.image_path[n] for n in names[:3]]
written = lu.predict_folder(models[chosen], records[chosen], inputs, output_dir / "predictions" / chosen)
print(f"model: {chosen}")
written

# %%
overlays = [plt.imread(Path(row.mask).with_name(Path(row.mask).name.replace("_mask", "_overlay")))
            for row in written.itertuples()][:4]
lu.show_pairs([overlays], [Path(p).name for p in written.input[:4]], title=f"{chosen}: predicted lungs",
              synthetic=synthetic);
