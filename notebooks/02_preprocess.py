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
# # 2. Preprocess: HU window, resize, split, augmentation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lungseg/lungseg/blob/main/notebooks/02_preprocess.ipynb)
#
# A network wants small inputs of similar range; a CT slice is 512x512 int16 HU from about -3000
# to 3000. This notebook turns the verified slices of `01_download` into training arrays: it maps a
# window of HU to [0, 1], resizes images and masks (keeping masks binary), splits the slices into
# train/validation/test **once** with a saved manifest, and shows what data augmentation does (and
# why it is off by default here).

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
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import lungseg_utils as lu

# %% [markdown]
# ## Parameters
# `IMG_SIZE` must be a multiple of 16 (the models halve the resolution four times). The HU window
# (-1000, 400) spans air to soft tissue: lung (about -850) and the chest wall (about 40) stay far
# apart, and everything outside the window is clipped to its ends.

# %% tags=["parameters"]
OUTPUT_DIR = "outputs"
IMG_SIZE = 256
HU_MIN = -1000
HU_MAX = 400
SPLIT = [0.7, 0.15, 0.15]
SPLIT_SEED = 0
ROTATION_DEGREES = 0.0  # augmentation is off by default: see "Augmentation" below
FLIP_LEFT_RIGHT = False
FLIP_UP_DOWN = False

# %% [markdown]
# ## Configuration

# %%
output_dir = REPO_ROOT / OUTPUT_DIR
lu.check_img_size(IMG_SIZE)
dataset = lu.read_json(output_dir / "data" / "dataset.json", produced_by="notebooks/01_download")
pairs = pd.read_csv(output_dir / "data" / "pairs.csv")
augmentation = {"rotation_degrees": float(ROTATION_DEGREES), "flip_left_right": bool(FLIP_LEFT_RIGHT),
                "flip_up_down": bool(FLIP_UP_DOWN)}
config = {"OUTPUT_DIR": str(output_dir), "IMG_SIZE": IMG_SIZE, "HU window": (HU_MIN, HU_MAX),
          "SPLIT": SPLIT, "SPLIT_SEED": SPLIT_SEED, "augmentation": augmentation,
          "data": f"{dataset['source']}{lu.data_label(dataset['synthetic'])}: {len(pairs)} pairs"}
lu.config_table(config)

# %% [markdown]
# ## The HU window
# Why a window: almost all the information for finding lungs lies between air and soft tissue.
# Below, one slice over its full HU range, the same slice windowed, and its HU histogram with the
# window's ends.

# %%
first = pairs.iloc[0]
image_hu = lu.read_slice(first.image_path)
figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
axes[0].imshow(image_hu, cmap="gray"), axes[0].set_title(f"full range {image_hu.min()}..{image_hu.max()} HU")
axes[1].imshow(lu.window_hu(image_hu, HU_MIN, HU_MAX), cmap="gray"), axes[1].set_title(f"window {HU_MIN}..{HU_MAX} HU")
axes[2].hist(image_hu.ravel(), bins=200, color="grey")
for edge in (HU_MIN, HU_MAX):
    axes[2].axvline(edge, color="red")
axes[2].set_yscale("log"), axes[2].set_xlabel("HU"), axes[2].set_title("histogram, window in red")
for axis in axes[:2]:
    axis.set_xticks([]), axis.set_yticks([])
lu.save_figure(figure, output_dir / "figures" / "02_hu_window.png", dataset["synthetic"]);

# %% [markdown]
# ## Split once, and write it down
# Each slice is its own group (the file names carry no patient id, and no two slices look like
# neighbours). The split depends only on the file names and `SPLIT_SEED`; the manifest records it so that
# the training and evaluation notebooks, and you, see exactly which slices were held out.

# %%
# NBVAL_CHECK_OUTPUT
manifest = lu.make_split(pairs.name, SPLIT, SPLIT_SEED)
manifest.to_csv(output_dir / "data" / "split_manifest.csv", index=False)
print(manifest.split.value_counts().reindex(["train", "val", "test"]).to_string())

# %% [markdown]
# ## Window and resize every slice
# Images are windowed, then shrunk with area averaging (no aliasing). Masks are resized as 0/1
# values the same way and thresholded at 0.5, so each new pixel is lung when most of it was lung,
# and the masks stay binary.

# %%
pairs = pairs.merge(manifest, on="name")
arrays = {}
for split in ("train", "val", "test"):
    part = pairs[pairs.split == split]
    images = [lu.preprocess_slice(lu.read_slice(p), IMG_SIZE, HU_MIN, HU_MAX) for p in part.image_path]
    masks = [lu.resize_mask(lu.read_mask(p), IMG_SIZE) for p in part.mask_path]
    arrays[f"x_{split}"] = np.stack(images)[..., None].astype(np.float32)
    arrays[f"y_{split}"] = np.stack(masks)[..., None].astype(np.uint8)
    arrays[f"names_{split}"] = part.name.to_numpy(dtype=str)
    print(f"{split:5s}  x {arrays[f'x_{split}'].shape} {arrays[f'x_{split}'].dtype}   "
          f"y {arrays[f'y_{split}'].shape} {arrays[f'y_{split}'].dtype}")

# %%
# NBVAL_CHECK_OUTPUT
print("image range:", float(arrays["x_train"].min()), "..", float(arrays["x_train"].max()))
print("mask values:", np.unique(np.concatenate([arrays[f"y_{s}"].ravel() for s in ("train", "val", "test")])))

# %% [markdown]
# ## Save the arrays and the settings
# The training notebooks read these; the settings travel on with each trained model, so that
# predictions on new scans use exactly this preprocessing.

# %%
arrays_path = output_dir / "data" / "arrays.npz"
temporary = arrays_path.with_name("arrays.partial.npz")
np.savez(temporary, **arrays)
temporary.replace(arrays_path)
settings = {"img_size": IMG_SIZE, "hu_min": HU_MIN, "hu_max": HU_MAX, "split": SPLIT, "split_seed": SPLIT_SEED,
            "augmentation": augmentation, "data_source": dataset["source"], "synthetic": dataset["synthetic"],
            "data_root": dataset["root"], "slices": {s: int(len(arrays[f"x_{s}"])) for s in ("train", "val", "test")}}
lu.write_json(output_dir / "data" / "preprocess.json", settings)
print("wrote", arrays_path, f"({arrays_path.stat().st_size / 1e6:.0f} MB) and preprocess.json")

# %% [markdown]
# ## Augmentation
# With about 150 training slices a model can memorise them, and the usual guard is augmentation:
# each time a slice is drawn for training, it is randomly mirrored left-right (`FLIP_LEFT_RIGHT`)
# and rotated by up to `ROTATION_DEGREES`; image and mask get the same transform, and the mask is
# thresholded again so it stays binary. Up-down flips (`FLIP_UP_DOWN`) exist but an upside-down
# chest is not a slice a model will ever meet.
#
# **On these slices it did not pay, so it is off by default.** In the benchmark (README, Results)
# flips with ±10° rotations lowered the test Dice of both models on every one of 3 seeds (about
# 0.002, measured at learning rate 1e-3), and the validation Dice too; flips alone changed nothing
# measurable (one seed). The test
# slices come from the same collection and scanners as the training slices; on your own scans, if
# they vary more (other scanners, patient positions), try `ROTATION_DEGREES = 10` and
# `FLIP_LEFT_RIGHT = True` and compare on your validation slices. Below: one training slice (left)
# and five random augmentations of it, with the settings above, or, when they switch augmentation
# off, with those example settings.

# %%
augmentation_on = any(augmentation.values())
shown = augmentation if augmentation_on else {"rotation_degrees": 10.0, "flip_left_right": True, "flip_up_down": False}
print("augmentation in training:", augmentation if augmentation_on else "off", "| figure shows:", shown)
image, mask = arrays["x_train"][0], arrays["y_train"][0]
augmented = [lu.augment_pair(image, mask, seed=[SPLIT_SEED, i], **shown) for i in range(5)]
rows = [[image[..., 0]] + [a[0].numpy()[..., 0] for a in augmented],
        [mask[..., 0]] + [a[1].numpy()[..., 0] for a in augmented]]
title = "Training augmentation" if augmentation_on else "Augmentation example (not used in training at these settings)"
lu.show_pairs(rows, ["original"] + [f"augmented {i + 1}" for i in range(5)], ["image", "mask"],
              title=title, path=output_dir / "figures" / "02_augmentation.png",
              synthetic=dataset["synthetic"], size=2.2);
print("augmented mask values:", np.unique(np.concatenate([a[1].numpy().ravel() for a in augmented])))
