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
# train/validation/test **once** with a saved manifest, and shows what data augmentation does: gas
# pockets that are not lung, lesions that are, a coarser grid, and changes of intensity, each drawn
# afresh for every batch while the saved arrays stay as the data are. Cells marked `#@save` are also in
# `lungseg_utils.py`, because the training notebooks and the evaluation use them.

# %%
import os, subprocess, sys  # set-up: in Colab, fetch lungseg and what Colab lacks; everywhere, find lungseg/
if "google.colab" in sys.modules and not os.path.isdir("/content/lungseg"):
    subprocess.run(f"git clone -q https://github.com/lungseg/lungseg /content/lungseg && {sys.executable} -m pip "
                   "install -q pydicom highdicom pynrrd papermill jupytext", shell=True, check=True)
sys.path[:0] = ["/content/lungseg"] if "google.colab" in sys.modules else [os.path.abspath(".."), os.path.abspath("../..")]
from lungseg.notebook import show_config, start
REPO_ROOT = start()  # says the runtime (CPU or GPU) in one line

# %%
import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf
from scipy import ndimage
from sklearn.model_selection import train_test_split

import lungseg_utils as lu  # the #@save cells of 01 (and of this notebook)
from lungseg.data import benchmark_settings, read_split_manifest  # the benchmark's splits, checked
from lungseg.errors import LungsegError  # the error every check raises: it names the file or parameter and the fix
from lungseg.notebook import check_parameters, load_pairs  # refuses what cannot work; 01's outputs, made if missing
from lungseg.report import repo_path, write_json  # each run documents itself

# %% [markdown]
# ## Parameters
# `IMG_SIZE` must be a multiple of 16 (the models halve the resolution four times). The HU window
# (-1000, 400) spans air to soft tissue: lung (about -850) and the chest wall (about 40) stay far
# apart, and everything outside the window is clipped to its ends.

# %% tags=["parameters"]
DATA_DIR = ""  # the data folder, for 01 if it must run first (empty: as 01 decides; see 01's Parameters)
OUTPUT_DIR = "outputs"
IMG_SIZE = 256
HU_MIN = -1000
HU_MAX = 400
SPLIT = [0.7, 0.15, 0.15]
SPLIT_SEED = 0
ROTATION_DEGREES = 0.0  # geometric augmentation is off by default: see "Augmentation" below
FLIP_LEFT_RIGHT = False
FLIP_UP_DOWN = False
HU_SCALE = 0.15  # intensity augmentation, on by default: HU x (1 ± HU_SCALE) about water; see "Augmentation"
HU_SHIFT = 50.0  # ± HU added
HU_CONTRAST = 0.0  # ± contrast about the slice's mean (a fraction)
NOISE_HU = 20.0  # Gaussian noise, HU
BLUR_SIGMA = 1.0  # Gaussian blur of up to this many pixels (at most 1)
GAS_POCKETS = 0.5  # share of training draws given pockets of bowel gas that are not lung; see "Gas is not lung"
LESIONS = 0.0  # share of training draws given dense lesions inside the lung, labelled lung; see "Diseased lung is lung"
RESOLUTION = 0.3  # share of training draws shown on a 2-8x coarser grid; see "A coarser grid"

# %%
output_dir = REPO_ROOT / OUTPUT_DIR
check_parameters(globals())  # the image size and the augmentation: refused now if they cannot work
dataset, pairs, calibration = load_pairs("02", OUTPUT_DIR, DATA_DIR)  # 01's pairs and HU calibration (01 first if missing)

# %% [markdown]
# ## The HU window
# Almost all the information for finding lungs lies between air and soft tissue, so we clip HU to
# a window and scale it to [0, 1]. Below, the slice with the widest range of values among the first
# 40 (the padding outside the scanner's field of view, dense bone), shown over its full range, then
# windowed, and its HU histogram with the window's ends: over the full range, lung and soft tissue
# are squeezed into a few shades of grey.

# %%
#@save
def window_hu(image: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and scale linearly to [0, 1] (float32). With (-1000, 400), the
    padding outside the scanner's field of view (below -2000) becomes air."""
    if not hu_max > hu_min:
        raise LungsegError(f"HU window ({hu_min}, {hu_max}) is empty: HU_MAX must be greater than HU_MIN.")
    return np.clip((image.astype(np.float32) - hu_min) / (hu_max - hu_min), 0.0, 1.0)

# %%
candidates = [lu.to_standard_hu(lu.read_slice(p), calibration) for p in pairs.image_path[:40]]
image_hu = max(candidates, key=lambda image: image.max() - image.min())
figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
axes[0].imshow(image_hu, cmap="gray"), axes[0].set_title(f"full range {image_hu.min():.0f}..{image_hu.max():.0f} HU")
axes[1].imshow(window_hu(image_hu, HU_MIN, HU_MAX), cmap="gray"), axes[1].set_title(f"window {HU_MIN}..{HU_MAX} HU")
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
# neighbours). scikit-learn's `train_test_split` takes the test slices off first, then the
# validation slices from the rest; sorting the names first makes the split depend only on the set
# of names and `SPLIT_SEED`. The manifest records it, so that training, evaluation and you see
# exactly which slices were held out.
#
# One split of 217 slices tests on 33 of them, too few to choose between settings whose Dice differs
# by 0.001. So the defaults are decided by a 5-fold cross-validation, in which every slice is tested
# once (`benchmarks/crossval.py` gives this notebook each fold as a saved split), and on CT from
# other scanners ([RESULTS.md](../RESULTS.md)). This split stays the teaching split.
#
# 01's audit flags masks that are wrong (three of the 217). By default they are split like any other
# slice. The benchmark can keep them out (`TRAIN_ON_FLAGGED False`): the flagged slices that fall in
# training or validation are then marked `excluded` in the manifest and left out of the arrays, while
# those in the test part stay there, scored and named. The lesson trains on them: leaving them out
# changes the cross-validated Dice by less than 0.0005.

# %%
def split_slices(names, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> pd.DataFrame:
    """Each slice to train/val/test: the test slices first, then the validation slices from the rest."""
    names, fractions = sorted(names), list(fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise LungsegError(f"SPLIT={fractions} must be three fractions (train, val, test) summing to 1.")
    n_val, n_test = round(fractions[1] * len(names)), round(fractions[2] * len(names))
    if min(n_val, n_test, len(names) - n_val - n_test) < 1:
        raise LungsegError(f"SPLIT={fractions} on {len(names)} slices gives {len(names) - n_val - n_test}/{n_val}/"
                           f"{n_test} train/val/test slices; every part needs at least one. Use larger fractions.")
    train_val, test = train_test_split(names, test_size=n_test, random_state=seed)
    train, val = train_test_split(train_val, test_size=n_val, random_state=seed)
    part_of = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}
    return pd.DataFrame({"name": names, "split": [part_of[name] for name in names]})


# %% tags=["nbval-check-output"]
split_manifest, train_on_flagged = benchmark_settings()  # "" and True, unless benchmarks/crossval.py sets them
if split_manifest:  # a split made elsewhere (the benchmark's folds): checked to name exactly these slices
    manifest = read_split_manifest(REPO_ROOT / split_manifest, pairs.name)
else:
    manifest = split_slices(pairs.name, SPLIT, SPLIT_SEED)
if not train_on_flagged:  # the flagged masks stay test slices (scored, and named as flagged), never teachers
    audit_csv = output_dir / "data" / "label_audit.csv"
    if not audit_csv.is_file():
        raise LungsegError(f"TRAIN_ON_FLAGGED=False needs 01's label audit, {audit_csv}, which is missing: run "
                           "01_download again (or keep TRAIN_ON_FLAGGED=True).")
    audit = pd.read_csv(audit_csv)
    kept_out = manifest.name.isin(audit.name[audit.flagged]) & manifest.split.isin(["train", "val"])
    manifest.loc[kept_out, "split"] = "excluded"
    print("kept out of training and validation (flagged by 01's audit):", ", ".join(manifest.name[kept_out]) or "none")
manifest.to_csv(output_dir / "data" / "split_manifest.csv", index=False)
print(manifest.split.value_counts().reindex(["train", "val", "test"]).to_string())

# %% [markdown]
# ## Window and resize every slice
# Images are windowed, then shrunk with area averaging (each new pixel is the mean of the pixels
# it covers, which keeps aliasing small). Masks are resized as 0/1 values the same way and thresholded at 0.5,
# so a new pixel is lung when most of it was lung, and the masks stay binary.

# %%
#@save
def resize_image(image: np.ndarray, size) -> np.ndarray:
    """Resize a float image to ``size`` (an int for a square, or (height, width)): area averaging
    when shrinking, bilinear when enlarging."""
    import cv2

    height, width = (size, size) if np.isscalar(size) else size
    shrinking = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image.astype(np.float32), (int(width), int(height)),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size) -> np.ndarray:
    """Resize a binary mask and keep it binary: the fraction of lung under each new pixel, >= 0.5."""
    return (resize_image(mask.astype(np.float32), size) >= 0.5).astype(np.uint8)


def preprocess_slice(image_hu: np.ndarray, img_size: int, hu_min: float, hu_max: float) -> np.ndarray:
    """A slice in HU -> a model input (img_size x img_size, float32 in [0, 1]): window, then resize."""
    return resize_image(window_hu(image_hu, hu_min, hu_max), img_size)

# %%
pairs = pairs.merge(manifest, on="name")
arrays = {}
for split in ("train", "val", "test"):
    part = pairs[pairs.split == split]
    images = [preprocess_slice(lu.to_standard_hu(lu.read_slice(p), calibration), IMG_SIZE, HU_MIN, HU_MAX)
              for p in part.image_path]
    masks = [resize_mask(lu.read_mask(p), IMG_SIZE) for p in part.mask_path]
    arrays[f"x_{split}"] = np.stack(images)[..., None].astype(np.float32)
    arrays[f"y_{split}"] = np.stack(masks)[..., None].astype(np.uint8)
    arrays[f"names_{split}"] = part.name.to_numpy(dtype=str)
    print(f"{split:5s}  x {arrays[f'x_{split}'].shape} {arrays[f'x_{split}'].dtype}   "
          f"y {arrays[f'y_{split}'].shape} {arrays[f'y_{split}'].dtype}")

# %% tags=["nbval-check-output"]
print("image range:", float(arrays["x_train"].min()), "..", float(arrays["x_train"].max()))
print("mask values:", np.unique(np.concatenate([arrays[f"y_{s}"].ravel() for s in ("train", "val", "test")])))

# %% [markdown]
# ## Gas is not lung
# In standard HU, gas in the stomach and bowel (about -1000, and -950 where it borders the gut wall)
# is as dark as the darkest lung, and the chest slices here hold almost none of it: a model never
# told otherwise takes every dark pocket inside the body for lung. So `GAS_POCKETS` of the training
# draws get one to three pockets of gas in soft tissue (-200..+150 HU: fat, muscle and organs) away
# from the lungs, labelled "not lung": homogeneous air with noise, with soft edges, and no vessels,
# which lung always has. Cortical bone (+500 HU and more) never takes a pocket; the spongy bone of an
# older patient's vertebra (100-200 HU) can. Like the augmentation below, the pockets are drawn afresh
# each time a batch is drawn, inside 03's input pipeline, so every slice is seen both with and
# without them; the saved arrays stay as the data are. They are what keeps the colon gas beside the
# lung bases of a scan from another collection out of its lung mask.

# %%
#@save
def add_gas_pockets(image01: np.ndarray, mask: np.ndarray, rng: np.random.Generator, hu_window=(-1000, 400),
                    count=(1, 3), radius_px=(3, 16)) -> np.ndarray:
    """A windowed slice with 1-3 elliptic pockets of gas (-1000..-900 HU, noise of 20 HU, edges blurred
    by one pixel; radii in ``radius_px``, for a 256-pixel slice) where the slice is soft tissue
    (-200..+150 HU, so never cortical bone) at least 4 pixels from the lung. A pocket with no room shrinks."""
    width = float(hu_window[1] - hu_window[0])
    image = image01.astype(np.float32).copy()
    hu = image * width + hu_window[0]
    soft = ndimage.binary_erosion((hu > -200) & (hu < 150), iterations=2)  # 2 pixels inside: blurred edges stay in it
    tissue = soft & ~ndimage.binary_dilation(mask.astype(bool), iterations=4)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        ry, rx = rng.uniform(*radius_px, size=2)
        for _smaller in range(6):  # where the whole pocket's box fits in soft tissue; if nowhere, a smaller one
            box = (2 * int(ry) + 1, 2 * int(rx) + 1)  # a minimum filter is an erosion by the box, and faster
            room = ndimage.minimum_filter(tissue.astype(np.uint8), box, mode="constant", cval=0).astype(bool)
            if room.any():
                break
            ry, rx = max(0.7 * ry, radius_px[0]), max(0.7 * rx, radius_px[0])
        if not room.any():
            break
        cy, cx = np.argwhere(room)[rng.integers(np.count_nonzero(room))]
        pocket = ndimage.gaussian_filter((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32), 1.0)
        gas = (rng.uniform(-1000, -900) + rng.normal(0, 20, image.shape) - hu_window[0]) / width
        image = np.clip((1 - pocket) * image + pocket * gas, 0, 1)
        tissue &= pocket < 0.01
    return image

# %% [markdown]
# One draw on a copy of a training slice (the pockets outlined in red): the mask does not change.

# %%
slice01, slice_mask = arrays["x_train"][0, ..., 0], arrays["y_train"][0, ..., 0]
with_gas = add_gas_pockets(slice01, slice_mask, np.random.default_rng(SPLIT_SEED), (HU_MIN, HU_MAX),
                           count=(3, 3), radius_px=(3 * IMG_SIZE / 256, 16 * IMG_SIZE / 256))
figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
for axis, picture, name in [(axes[0], slice01, "training slice"), (axes[1], with_gas, "with gas pockets"),
                            (axes[2], slice_mask, "mask (unchanged)")]:
    axis.imshow(picture, cmap="gray", vmin=0, vmax=1)
    axis.set_title(name, fontsize=10), axis.set_xticks([]), axis.set_yticks([])
axes[1].contour(np.abs(with_gas - slice01) > 0.05, [0.5], colors="red", linewidths=1)
figure.suptitle("Gas is not lung: the pockets (red) are labelled background" + lu.data_label(dataset["synthetic"]))
lu.save_figure(figure, output_dir / "figures" / "02_gas_pockets.png", dataset["synthetic"]);
print("pixels changed:", int(np.count_nonzero(np.abs(with_gas - slice01) > 0.05)),
      "| saved slice unchanged:", bool(np.array_equal(slice01, arrays["x_train"][0, ..., 0])))

# %% [markdown]
# ## Diseased lung is lung
# People segment lungs mostly because something is wrong in them: pneumonia, a tumour, nodules,
# collapsed lung at the back. Inside the pleura all of it is lung, and a lung mask keeps it (as
# lungmask's R231 and TotalSegmentator do). The Kaggle slices hold mostly clear lungs, so a model
# trained on them learns that lung is *dark* tissue and cuts dense lesions out. Hofmanninger et al.
# (2020) found the same for models trained on public data: lung segmentation is "primarily a data
# diversity problem, not a methodology problem". With no diseased training scans, the diversity can
# come from augmentation: `LESIONS` of the training draws get one to three lesions *inside* the
# lung mask, which stays as it is (lung): blobs with irregular outlines, from a few millimetres
# to several centimetres, from hazy (-500 HU) to soft tissue (+80 HU), with texture, most of them on
# the lung's edge, where a lesion meets the chest wall and the lung's outline disappears.
#
# **Off by default**, because a 2D network of this size that learns "dense tissue beside the lung can
# be lung" applies it below the lungs too: lesions shaped like disease, drawn for half the batches,
# kept most of a consolidation, and the same network called up to 6,547 mL of a lung-bases scan's
# liver and colon lung ([RESULTS.md](../RESULTS.md), design 2). Set `LESIONS = 0.5` and retrain 04 to
# see what it does.

# %%
#@save
def add_lesions(image01: np.ndarray, mask: np.ndarray, rng: np.random.Generator, hu_window=(-1000, 400),
                count=(1, 3), radius_px=(3, 30), hu_range=(-500, 80), texture_hu=60.0, on_edge=0.6) -> np.ndarray:
    """A windowed slice with 1-3 lesions inside the lung: outlines r(angle) = R (1 + a Fourier series of
    orders 2-5), R log-uniform in ``radius_px`` (for a 256-pixel slice), centred on the lung's edge
    (share ``on_edge``) or inside it, one density in ``hu_range`` each with smooth texture (SD up to
    ``texture_hu``) and noise, edges blurred, and clipped to the lung: nothing outside the mask changes."""
    width = float(hu_window[1] - hu_window[0])
    image = image01.astype(np.float32).copy()
    lung = mask.astype(bool)
    if not lung.any():
        return image
    edge = lung & ~ndimage.binary_erosion(lung, iterations=2)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        pool = edge if rng.random() < on_edge and edge.any() else lung
        cy, cx = np.argwhere(pool)[rng.integers(np.count_nonzero(pool))]
        radius = np.exp(rng.uniform(np.log(radius_px[0]), np.log(radius_px[1])))
        angle, distance = np.arctan2(yy - cy, xx - cx), np.hypot(yy - cy, xx - cx)
        outline = np.ones_like(angle)
        for order in range(2, 6):
            outline += rng.uniform(0, 0.3 / order * 2) * np.cos(order * angle + rng.uniform(0, 2 * np.pi))
        blob = (distance <= radius * outline).astype(np.float32)
        alpha = ndimage.gaussian_filter(blob, rng.uniform(0.5, 1.5)) * lung
        texture = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), 2.0)
        hu = rng.uniform(*hu_range) + rng.uniform(0, texture_hu) * texture / (texture.std() + 1e-6) + rng.normal(0, 15, image.shape)
        image = np.clip((1 - alpha) * image + alpha * (hu - hu_window[0]) / width, 0, 1)
    return image

# %% [markdown]
# What a lesion looks like to the network, on a copy of one training slice (at the defaults an example
# only: with `LESIONS = 0` training draws none). The mask stays the same: all of it is lung.

# %%
example = add_lesions(arrays["x_train"][0, ..., 0], arrays["y_train"][0, ..., 0], np.random.default_rng(SPLIT_SEED),
                      (HU_MIN, HU_MAX), count=(3, 3), radius_px=(3 * IMG_SIZE / 256, 30 * IMG_SIZE / 256))
lu.show_pairs([[arrays["x_train"][0, ..., 0], example, arrays["y_train"][0, ..., 0]]],
              ["training slice", "with lesions", "mask (unchanged: lung)"], title="Diseased lung is lung",
              path=output_dir / "figures" / "02_lesions.png", synthetic=dataset["synthetic"], size=3.2);

# %% [markdown]
# ## A coarser grid
# The Kaggle slices have pixels of about 0.8 mm; a scan from elsewhere can be much coarser (a
# low-dose screening series, a thick slab, a volume shrunk to save space: the COPD chest that
# [RESULTS.md](../RESULTS.md) scores has pixels of 4.17 mm). A network that has only seen sharp slices
# meets such a scan by chance. So `RESOLUTION` of the training draws are averaged down to a grid 2 to
# 8 times coarser and brought back to `IMG_SIZE` bilinearly: the same anatomy with the detail of a
# coarser scan. Over three training seeds, the Residual U-Net's Dice on that COPD chest spans 0.158
# without the coarser grid and 0.001 with it, at the same Dice on the Kaggle slices.

# %%
#@save
def coarsen(image01: np.ndarray, rng: np.random.Generator, factor=(2.0, 8.0)) -> np.ndarray:
    """The slice averaged down to a grid ``f`` times coarser (``f`` uniform in ``factor``) and enlarged back
    bilinearly to its size: the detail of a scan with ``f`` times larger pixels."""
    height, width = image01.shape
    f = rng.uniform(*factor)
    small = resize_image(image01, (max(2, round(height / f)), max(2, round(width / f))))
    return np.clip(resize_image(small, (height, width)), 0, 1)

# %%
coarse = {f: coarsen(slice01, np.random.default_rng(SPLIT_SEED), factor=(f, f)) for f in (2, 4, 8)}
lu.show_pairs([[slice01, *coarse.values()]], ["training slice"] + [f"{f}x coarser" for f in coarse],
              title="A coarser grid, brought back to the same size", path=output_dir / "figures" / "02_coarser.png",
              synthetic=dataset["synthetic"], size=2.6);
print({f"{f}x": f"mean {picture.mean():.3f} (slice {slice01.mean():.3f})" for f, picture in coarse.items()})

# %% [markdown]
# ## Drawn afresh for every batch
# The three changes above are drawn by `SliceDrawer`, which 03's input pipeline calls on every
# batch: for each slice, gas pockets with probability `GAS_POCKETS`, lesions with `LESIONS`, then the
# coarser grid with `RESOLUTION`, each from one seeded random generator. A slice thus looks different
# in every epoch, and the same run draws the same changes again. The mask is never changed. Below,
# four draws of one slice at this notebook's settings.

# %%
#@save
class SliceDrawer:
    """For a batch of windowed slices (N, H, W, 1) and their masks: gas pockets in a share ``gas_pockets``
    of the slices, lesions in ``lesions``, then a coarser grid in ``resolution``; new draws at every call,
    the same sequence for the same seed. Returns new images; the masks and the given arrays are unchanged."""

    def __init__(self, gas_pockets=0.0, lesions=0.0, resolution=0.0, hu_window=(-1000, 400), seed=0):
        self.gas_pockets, self.lesions, self.resolution = float(gas_pockets), float(lesions), float(resolution)
        self.hu_window, self.rng = tuple(hu_window), np.random.default_rng(seed)

    def __call__(self, images, masks):
        images = np.array(images, dtype=np.float32)  # a copy
        scale = images.shape[1] / 256  # the sizes below are for a 256-pixel slice
        for image, mask in zip(images[..., 0], np.asarray(masks)[..., 0]):
            changed = image
            if self.rng.random() < self.gas_pockets:
                changed = add_gas_pockets(changed, mask, self.rng, self.hu_window, radius_px=(3 * scale, 16 * scale))
            if self.rng.random() < self.lesions:
                changed = add_lesions(changed, mask, self.rng, self.hu_window, radius_px=(3 * scale, 30 * scale))
            if self.rng.random() < self.resolution:
                changed = coarsen(changed, self.rng)
            image[...] = changed
        return images


def make_drawer(preprocessing: dict, seed: int = 0):
    """02's SliceDrawer for a run's settings (preprocess.json), or None when it would draw nothing."""
    shares = {key: float(preprocessing.get(key) or 0.0) for key in ("gas_pockets", "lesions", "resolution")}
    if not any(shares.values()):
        return None
    return SliceDrawer(**shares, hu_window=(preprocessing["hu_min"], preprocessing["hu_max"]), seed=seed)

# %%
drawer = SliceDrawer(GAS_POCKETS, LESIONS, RESOLUTION, (HU_MIN, HU_MAX), seed=SPLIT_SEED)
draws = [drawer(arrays["x_train"][:1], arrays["y_train"][:1])[0, ..., 0] for _ in range(4)]
lu.show_pairs([[slice01, *draws]], ["training slice"] + [f"draw {i + 1}" for i in range(4)],
              title=f"Four draws: gas pockets {GAS_POCKETS:.0%}, lesions {LESIONS:.0%}, coarser grid {RESOLUTION:.0%}",
              path=output_dir / "figures" / "02_draws.png", synthetic=dataset["synthetic"], size=2.6);
print("draws that differ from the slice:", sum(not np.array_equal(draw, slice01) for draw in draws), "of 4")

# %% [markdown]
# ## Augmentation
# With about 150 training slices from one collection, a model learns that collection: its
# scanners, its doses, its patients' breathing. Augmentation shows it other versions of each slice:
# the layers below draw a new random one each time a batch is drawn, inside 03's input pipeline,
# and the saved arrays stay as they are.
#
# **Intensity augmentation is on by default**, because the numbers are what differ most between
# scanners. Calibrated scanners agree on air and water, but a collection can be exported scaled (the
# Kaggle slices were stored at 0.8x, which 01 undoes), breathing and disease move lung between about -700 (expiration) and below -950 (emphysema), doses
# change the noise, and reconstruction kernels the sharpness. So each training slice gets, on the
# image alone (the mask does not change): its HU multiplied by up to 1 ± `HU_SCALE` about water
# (`RandomHUScale`, our one custom layer), ± `HU_SHIFT` HU added (`RandomBrightness`), Gaussian noise
# of `NOISE_HU` HU (`GaussianNoise`) and a Gaussian blur of up to `BLUR_SIGMA` pixels
# (`RandomGaussianBlur`). The layers work on windowed values, so HU are divided by the window's
# width; `ImageOnly` applies a layer to the image channel and passes the mask through.
# `HU_CONTRAST` (contrast about the slice's own mean, `RandomContrast`) is there but off: it moves
# air, which no scanner does.
#
# Geometric augmentation, off by default, mirrors left-right (`FLIP_LEFT_RIGHT`) and rotates by up to
# `ROTATION_DEGREES` (`RandomFlip`, `RandomRotation`). Image and mask get the *same* transform: they
# go through the layers stacked as two channels, and the mask is thresholded again so it stays
# binary. It stays off because it does not raise the cross-validated Dice: the slices, like most
# scans, come upright and unmirrored.

# %%
#@save
class ImageOnly(keras.layers.Layer):
    """Apply a layer to channel 0 (the image) of an image+mask stack; the mask passes unchanged."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, stack, training=None):
        return tf.concat([self.layer(stack[..., :1], training=training), stack[..., 1:]], axis=-1)


class RandomHUScale(keras.layers.Layer):
    """Multiply HU by a random factor in [1 - factor, 1 + factor] about ``pivot`` (water, in windowed
    units), one factor per slice, and clip to the window: another scanner's calibration."""

    def __init__(self, factor: float, pivot: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.pivot, self.seed_generator = factor, pivot, keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        scale = keras.random.uniform((tf.shape(images)[0], 1, 1, 1), 1 - self.factor, 1 + self.factor,
                                     seed=self.seed_generator)
        return tf.clip_by_value(self.pivot + scale * (images - self.pivot), 0.0, 1.0)


def make_augmenter(rotation_degrees: float = 10.0, flip_left_right: bool = True, flip_up_down: bool = False,
                   hu_scale: float = 0.0, hu_shift: float = 0.0, hu_contrast: float = 0.0, noise_hu: float = 0.0,
                   blur_sigma: float = 0.0, hu_window: tuple = (-1000, 400), seed: int = 0):
    """Random flips and rotations of image and mask, and intensity changes of the image alone (Keras
    preprocessing layers), or None when every option is off. hu_window: the (HU_MIN, HU_MAX) the
    images were windowed with, to turn HU into windowed units."""
    flips = {(True, False): "horizontal", (False, True): "vertical", (True, True): "horizontal_and_vertical"}
    width = float(hu_window[1] - hu_window[0])
    steps = []
    if flip_left_right or flip_up_down:
        steps.append(keras.layers.RandomFlip(flips[(bool(flip_left_right), bool(flip_up_down))], seed=seed))
    if rotation_degrees:  # the factor is a fraction of a full turn; rotated-in corners are 0, air after windowing
        steps.append(keras.layers.RandomRotation(rotation_degrees / 360, fill_mode="constant", fill_value=0.0,
                                                 seed=seed))
    if blur_sigma:  # half the slices, one sigma up to blur_sigma per batch
        steps.append(ImageOnly(keras.layers.RandomGaussianBlur(0.5, kernel_size=5, sigma=(0.0, blur_sigma),
                                                               value_range=(0, 1), seed=seed)))
    if noise_hu:  # before the scale, shift and contrast, which clip to the window as windowing does
        steps.append(ImageOnly(keras.layers.GaussianNoise(noise_hu / width, seed=seed)))
    if hu_scale:
        steps.append(ImageOnly(RandomHUScale(hu_scale, -hu_window[0] / width, seed=seed)))
    if hu_shift:
        steps.append(ImageOnly(keras.layers.RandomBrightness(hu_shift / width, value_range=(0, 1), seed=seed)))
    if hu_contrast:
        steps.append(ImageOnly(keras.layers.RandomContrast(hu_contrast, value_range=(0, 1), seed=seed)))
    return keras.Sequential(steps, name="augmentation") if steps else None


def augment_pair(images, masks, augmenter):
    """The same random transform for a batch of images (N, H, W, 1) and their masks."""
    both = augmenter(tf.concat([tf.cast(images, "float32"), tf.cast(masks, "float32")], axis=-1), training=True)
    return both[..., :1], tf.cast(both[..., 1:] >= 0.5, masks.dtype)

# %% [markdown]
# Below: one training slice (left) and five random augmentations of it, with the settings above
# (or, when they switch augmentation off, with example settings).

# %%
augmentation = {"rotation_degrees": float(ROTATION_DEGREES), "flip_left_right": bool(FLIP_LEFT_RIGHT),
                "flip_up_down": bool(FLIP_UP_DOWN), "hu_scale": float(HU_SCALE), "hu_shift": float(HU_SHIFT),
                "hu_contrast": float(HU_CONTRAST), "noise_hu": float(NOISE_HU), "blur_sigma": float(BLUR_SIGMA)}
augmentation_on = any(augmentation.values())
shown = augmentation if augmentation_on else {"rotation_degrees": 10.0, "flip_left_right": True, "hu_scale": 0.15,
                                              "hu_shift": 50.0, "noise_hu": 20.0, "blur_sigma": 1.0}
print("augmentation in training:", augmentation if augmentation_on else "off", "| figure shows:", shown)
image, mask = arrays["x_train"][:1], arrays["y_train"][:1]
new_images, new_masks = augment_pair(np.repeat(image, 5, axis=0), np.repeat(mask, 5, axis=0),
                                     make_augmenter(**shown, hu_window=(HU_MIN, HU_MAX), seed=SPLIT_SEED))
rows = [[image[0, ..., 0]] + list(new_images.numpy()[..., 0]), [mask[0, ..., 0]] + list(new_masks.numpy()[..., 0])]
title = "Training augmentation" if augmentation_on else "Augmentation example (not used in training at these settings)"
lu.show_pairs(rows, ["original"] + [f"augmented {i + 1}" for i in range(5)], ["image", "mask"], title=title,
              path=output_dir / "figures" / "02_augmentation.png", synthetic=dataset["synthetic"], size=2.2);
print("augmented mask values:", np.unique(new_masks.numpy()))

# %% [markdown]
# Random draws mostly land near the middle of each range, and `imshow` stretches every picture to its
# own darkest and brightest pixel, so the panels above look alike. Below, each intensity change at
# the end of its range, one at a time, drawn on one fixed grey scale (the window: black -1000 HU,
# white 400 HU), with the lung's mean HU in each title: this is as far as training moves a slice.

# %%
x, lung = image[0, ..., 0], mask[0, ..., 0] > 0
width, water = HU_MAX - HU_MIN, -HU_MIN / (HU_MAX - HU_MIN)  # windowed units: HU / width; water's place
extremes = {"original": x,
            f"HU x {1 - HU_SCALE:.2f}": np.clip(water + (1 - HU_SCALE) * (x - water), 0, 1),
            f"HU x {1 + HU_SCALE:.2f}": np.clip(water + (1 + HU_SCALE) * (x - water), 0, 1),
            f"{-HU_SHIFT:+.0f} HU": np.clip(x - HU_SHIFT / width, 0, 1),
            f"{HU_SHIFT:+.0f} HU": np.clip(x + HU_SHIFT / width, 0, 1),
            f"noise {NOISE_HU:.0f} HU": np.clip(x + np.random.default_rng(SPLIT_SEED).normal(0, NOISE_HU / width, x.shape), 0, 1),
            f"blur {BLUR_SIGMA:g} px": ndimage.gaussian_filter(x, BLUR_SIGMA)}
figure, axes = plt.subplots(1, len(extremes), figsize=(2.2 * len(extremes), 2.6))
for axis, (name, picture) in zip(axes, extremes.items()):
    axis.imshow(picture, cmap="gray", vmin=0, vmax=1)  # one grey scale for all
    axis.set_title(f"{name}\nlung {HU_MIN + width * picture[lung].mean():.0f} HU", fontsize=9)
    axis.set_xticks([]), axis.set_yticks([])
lu.save_figure(figure, output_dir / "figures" / "02_augmentation_extremes.png", dataset["synthetic"]);

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
            "split_method": f"manifest {split_manifest}" if split_manifest else "train_test_split",
            "augmentation": augmentation, "gas_pockets": float(GAS_POCKETS), "lesions": float(LESIONS),
            "resolution": float(RESOLUTION),
            "train_on_flagged": train_on_flagged,
            "hu_calibration": calibration,
            "data_source": dataset["source"], "synthetic": dataset["synthetic"],
            "data_root": dataset["root"], "slices": {s: int(len(arrays[f"x_{s}"])) for s in ("train", "val", "test")}}
write_json(output_dir / "data" / "preprocess.json", settings)
print("wrote", repo_path(arrays_path), f"({arrays_path.stat().st_size / 1e6:.0f} MB) and preprocess.json")

# %% [markdown]
# ## This run
# The parameters as this run saw them, the data, the device and the library versions: what a rerun
# needs to match.

# %%
show_config(globals(), data=f"{dataset['source']}{lu.data_label(dataset['synthetic'])}: {len(pairs)} pairs",
            calibration=f"standard HU = {calibration['scale']:.3f} x stored {calibration['offset']:+.1f} (01)")

# %% [markdown]
# ## What you learned
# - The HU window decides what the network can see: -1000..400 keeps the lung's texture and the body
#   around it, and maps both to [0, 1].
# - The split is made once, by slice name, and written down (`split_manifest.csv`), so that every later
#   notebook, and every rerun, tests on the same slices.
# - Augmentation changes each training slice a little every time it is drawn: geometry (rotation,
#   flips) on image and mask together, intensity (HU scale and shift, noise, blur) on the image alone,
#   so that other scanners look familiar.
# - What the slices lack is drawn into them, labelled by anatomy: gas pockets outside the lung stay
#   "not lung", lesions inside it stay lung, and a coarser grid shows the network another scanner's
#   detail. A new draw every batch means every slice is seen both with and without them.
#
# ## Try this
# 1. Set a soft-tissue window, `HU_MIN, HU_MAX = -160, 240`, and rerun "The HU window". How much of the
#    lung is left above black, and could a model still tell lung from the air outside the body?
# 2. Set `SPLIT_SEED = 1` and compare the new `split_manifest.csv` with this one, then run 05 on it. How
#    far do the scores move, and what does that say about one split of 217 slices as evidence?
# 3. Draw the augmentation figure at `rotation_degrees=30` and `hu_scale=0.4`: where would a real scan
#    never go?
#
# **Next →** [03_unet](03_unet.ipynb): a U-Net trained on these arrays.
