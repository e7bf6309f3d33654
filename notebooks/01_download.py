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
# # 1. Download and verify the lung CT data
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lungseg/lungseg/blob/main/notebooks/01_download.ipynb)
#
# We use Kevin Mader's *Finding and Measuring Lungs in CT Data* (Kaggle `kmader/finding-lungs-in-ct-data`):
# 267 axial chest CT slices of 512x512 pixels, stored as int16 **Hounsfield units** (HU: air is -1000,
# water 0, cortical bone about +500 to +1900), each with a manual lung mask (0 = background, 255 = lung).
# This notebook gets the data, shows how to read a CT slice without losing its HU, and checks every
# pair before anything is trained on it: a silent data problem (a missing mask, an 8-bit export)
# ruins everything after it.
#
# **Cells marked `#@save`** hold code that later notebooks use too. They are copied, unchanged, into
# `lungseg_utils.py`, which the other notebooks import as `lu` (run `python -m lungseg.build_utils`
# after editing one; a test fails while the two differ).

# %%
import os, subprocess, sys  # set-up: in Colab, fetch lungseg and what Colab lacks; everywhere, find lungseg/
if "google.colab" in sys.modules and not os.path.isdir("/content/lungseg"):
    subprocess.run(f"git clone -q https://github.com/lungseg/lungseg /content/lungseg && {sys.executable} -m pip "
                   "install -q pydicom highdicom pynrrd papermill jupytext", shell=True, check=True)
sys.path[:0] = ["/content/lungseg"] if "google.colab" in sys.modules else [os.path.abspath(".."), os.path.abspath("../..")]
from lungseg.notebook import show_config, start
REPO_ROOT = start()  # says the runtime (CPU or GPU) in one line

# %%
import textwrap
from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage

from lungseg.data import check_lung_stats, find_pairs, summarise, verify_pairs  # checks of every pair
from lungseg.download import get_dataset  # Kaggle, archives (extracted safely), synthetic phantoms
from lungseg.errors import LungsegError  # the error every check raises: it names the file or parameter and the fix
from lungseg.report import repo_path, write_json  # each run documents itself

# %% [markdown]
# ## Parameters
# Change them here, or give them to the whole pipeline ([README, Running](../README.md#running)).

# %% tags=["parameters"]
DATA_SOURCE = "auto"
DATA_DIR = ""
ARCHIVE = ""
OUTPUT_DIR = "outputs"
SYNTHETIC_COUNT = 60
SEED = 0

# %%
named_data_dir = DATA_DIR or os.environ.get("LUNGSEG_DATA_DIR")  # named by you: it must hold the data
data_dir = Path(named_data_dir or REPO_ROOT / "data" / "finding-lungs-in-ct-data").expanduser()
output_dir = REPO_ROOT / OUTPUT_DIR

# %% [markdown]
# ## Get the data
# `DATA_SOURCE` says where the slices come from:
#
# | `DATA_SOURCE` | what it does |
# |---|---|
# | `"auto"` (default) | `DATA_DIR` if it holds data; else `kagglehub`; else the `kaggle` package if you have a token; else synthetic phantoms |
# | `"kagglehub"` | downloads with `kagglehub`, Kaggle's own client: **no account needed** for this public dataset (into its cache, then copied into `DATA_DIR`) |
# | `"kaggle"` | downloads with the official `kaggle` package (credentials: `KAGGLE_USERNAME`/`KAGGLE_KEY`, `~/.kaggle/kaggle.json`, or an upload in Colab) |
# | `"folder"` | uses `DATA_DIR` as it is: `2d_images/` + `2d_masks/`, or `Train/Images`, `Train/Masks`, `Test/Images`, `Test/Masks` |
# | `"archive"` | extracts `ARCHIVE` (the Kaggle zip, or a folder with `2d_images.zip` and `2d_masks.zip`) into `DATA_DIR` |
# | `"synthetic"` | writes CT-like phantoms: **not real CT**, only so that the pipeline runs anywhere; labelled as such everywhere |
#
# What comes down: Kaggle's copy of the dataset. Its 267 2D slices and masks take about 175 MB (217 of
# them are 141 MB); the download also holds the dataset's 3D volumes, which lungseg does not use. An
# empty `DATA_DIR` means `$LUNGSEG_DATA_DIR` if set, else `data/finding-lungs-in-ct-data` in the
# repository; a folder you name must hold the data (a misspelt path stops the run rather than falling
# back to phantoms). **In Colab** the machine forgets everything when the runtime ends: to keep a copy,
# put the data folder (`2d_images/`, `2d_masks/`) on Google Drive, mount it
# (`from google.colab import drive; drive.mount("/content/drive")`) and set
# `DATA_DIR = "/content/drive/MyDrive/finding-lungs-in-ct-data"`.
#
# Downloads and extractions go to a temporary folder first and are renamed into place only when
# complete, so an interrupted run never leaves a folder that looks finished; an existing folder is
# never overwritten, and re-running with the data in place downloads nothing.

# %%
dataset = get_dataset(DATA_SOURCE, data_dir, output_dir, archive=ARCHIVE or None, synthetic_count=SYNTHETIC_COUNT,
                      seed=SEED, in_colab="google.colab" in sys.modules, named=bool(named_data_dir))
pairs = find_pairs(dataset["root"])
print(f"source: {dataset['source']}{' [SYNTHETIC DATA - not real CT]' if dataset['synthetic'] else ''}")
print(f"data folder: {repo_path(dataset['root'])}, {len(pairs)} image/mask pairs")

# %% [markdown]
# ## Reading a CT slice in Hounsfield units
# The slices are int16 TIFFs in HU. The obvious `cv2.imread(path)` silently converts them to
# 8-bit and the HU are gone; `tifffile` (or OpenCV with `IMREAD_UNCHANGED`) keeps them:

# %%
first_image = pairs.image_path.iloc[0]
for how, array in [("cv2.imread(path)", cv2.imread(first_image)),
                   ("cv2.imread(path, cv2.IMREAD_UNCHANGED)", cv2.imread(first_image, cv2.IMREAD_UNCHANGED))]:
    print(f"{how:40s} -> {array.dtype} {array.shape}, values {array.min()}..{array.max()}")

# %% [markdown]
# So we read every slice through one function that keeps HU for the formats a CT slice comes in
# (TIFF, DICOM with its rescale slope and intercept, 16-bit PNG holding HU + 1024), and refuses
# what cannot be HU, with a message that names the file and the fix.

# %%
#@save
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".dcm")
PNG_HU_OFFSET = -1024  # a 16-bit PNG cannot hold negative numbers: by convention it stores HU + 1024


def read_slice(path, *, png_hu_offset: int = PNG_HU_OFFSET) -> np.ndarray:
    """One CT slice as a 2-D array in HU: TIFF as stored, DICOM through its RescaleSlope/Intercept,
    16-bit PNG plus ``png_hu_offset``. Anything unreadable raises LungsegError naming the file."""
    from lungseg import files  # opening each format, and errors that name the file and the fix

    path = files.check_suffix(path, IMAGE_SUFFIXES)
    with files.named_errors(path):
        if files.is_dicom(path):
            dataset = files.read_dicom(path)  # pydicom
            array = dataset.pixel_array.astype(np.float32) * float(dataset.get("RescaleSlope") or 1) + float(
                dataset.get("RescaleIntercept") or 0)
        elif path.suffix.lower() == ".png":
            array = files.read_unchanged(path)  # cv2.imread(path, cv2.IMREAD_UNCHANGED): all 16 bits
            if array.dtype == np.uint16:
                array = array.astype(np.int32) + png_hu_offset
        else:
            array = files.read_tiff(path)  # tifffile.imread(path): the int16 HU as stored
    array = files.check_slice(array, path)  # one 2-D slice: not a colour image, not a stack
    check_finite(array, path)
    return array

# %% [markdown]
# A mask is read the same way and must hold only 0 and 255 (or 0 and 1); an image must hold finite
# numbers that can be HU: every chest slice has air (below -500) and tissue (above -200).

# %%
#@save
def check_finite(image: np.ndarray, name) -> None:
    """NaN or infinite pixels would train a model into NaN and predict empty masks: refuse them."""
    bad = np.size(image) - np.count_nonzero(np.isfinite(image))
    if bad:
        raise LungsegError(f"{name}: {bad} pixels are not finite (NaN or infinite). Re-export the slice, or "
                           "replace them (e.g. with -1024 HU, air) before using it.")


def read_mask(path) -> np.ndarray:
    """A lung mask as uint8 {0, 1}; anything but 0/1/255 is refused."""
    mask = read_slice(path, png_hu_offset=0)
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1, 255}:
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise LungsegError(f"{path}: mask is not binary (values {shown}); masks must hold only 0 and 255 "
                           "(or 0 and 1). Re-export it as a binary mask.")
    return (mask > 0).astype(np.uint8)


def check_hu(image: np.ndarray, name) -> None:
    """Refuse arrays that cannot be CT in HU: every chest slice has air (below -500) and tissue (above -200)."""
    if image.dtype in (np.uint8, np.int8, bool):
        raise LungsegError(f"{name}: an 8-bit image cannot hold Hounsfield units (HU). Export the slice as "
                           "int16 TIFF, 16-bit PNG holding HU+1024, or DICOM.")
    check_finite(image, name)
    low, high = float(np.min(image)), float(np.max(image))
    if low > -500 or high < -200:
        raise LungsegError(f"{name}: values {low:.0f}..{high:.0f} do not look like a CT slice in HU (expected air "
                           "below -500 and tissue above -200). Convert it to HU first; if it is a PNG, it must "
                           "be 16-bit holding HU+1024.")

# %%
image = read_slice(first_image)
print(f"read_slice -> {image.dtype} {image.shape}, {image.min()}..{image.max()} HU")

# %% [markdown]
# ## Verify every pair
# Every slice is read this way and checked: the image is in HU, the mask is binary, and both have
# the same shape (`verify_pairs`; the first problem stops the run and names the file).

# %% tags=["nbval-check-output"]
facts = verify_pairs(pairs)
print(f"verified pairs: {len(facts)}")
print("image dtypes:", sorted(set(facts.dtype)))
print("shapes:", sorted({f"{h}x{w}" for h, w in zip(facts.height, facts.width)}))

# %%
summarise(facts)

# %% [markdown]
# `lung_stats.csv` (where present) lists each slice's lung area in pixels: it must agree with the
# masks exactly, or the csv belongs to other masks.

# %%
stats_csv = Path(dataset["root"]) / "lung_stats.csv"
if stats_csv.is_file():
    compared = check_lung_stats(stats_csv, facts)
    print(f"lung_stats.csv agrees with the masks on all {len(compared)} slices it lists")
else:
    print("no lung_stats.csv beside the data: nothing to compare")

# %% [markdown]
# ## A first look
# A CT slice is shown through a *window* of HU (here -1000..400, air to soft tissue); a helper draws
# rows of images and saves the figure. Figures of synthetic data are stamped as such.

# %%
#@save
SYNTHETIC_LABEL = "SYNTHETIC DATA - not real CT"


def data_label(synthetic: bool) -> str:
    """A suffix for titles and records, so that synthetic results are never mistaken for real ones."""
    return f" [{SYNTHETIC_LABEL}]" if synthetic else ""


def save_figure(figure, path=None, synthetic: bool = False):
    """Stamp synthetic figures, save to ``path`` (PNG) if given, and return the figure."""
    if synthetic:
        figure.text(0.5, 0.0, SYNTHETIC_LABEL, ha="center", va="top", color="red", fontsize=11)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure


def show_pairs(rows, column_titles, row_titles=None, title="", path=None, synthetic=False, size=2.6):
    """A grid of images (``rows``: lists of 2-D or RGB arrays), grey colour map, no ticks."""
    figure, axes = plt.subplots(len(rows), len(rows[0]), figsize=(size * len(rows[0]), size * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            axes[r, c].imshow(picture, cmap="gray")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(column_titles[c], fontsize=10)
        if row_titles:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=8)
    figure.suptitle(title + data_label(synthetic), fontsize=11)
    figure.tight_layout()
    return save_figure(figure, path, synthetic)

# %% [markdown]
# Four slices with their masks. The dark circle's outside (around -2000 HU) is padding beyond the
# scanner's field of view, not tissue.

# %%
examples = pairs.iloc[:: max(1, len(pairs) // 4)][:4]
rows = [[np.clip((read_slice(p.image_path) + 1000) / 1400, 0, 1), read_mask(p.mask_path)] for p in examples.itertuples()]
show_pairs(rows, ["CT slice (window -1000..400 HU)", "lung mask"], list(examples.name), title="Example slices",
           path=output_dir / "figures" / "01_examples.png", synthetic=dataset["synthetic"]);

# %% [markdown]
# ## Audit the labels
# A mask can be binary, the right shape and still wrong: drawn by hand, or by a tool that failed.
# One wrong mask among a few dozen costs its slice up to 1.0 Dice and drags every mean with it, and
# a model trained on it learns the error. So every mask is checked against its own image, in HU,
# for signs that no real lung mask shows:
#
# - lung marked on **air outside the body** (air connected to the image's edge) or **outside the
#   scanner's field of view** (the padding, below -1500 HU);
# - a "lung" whose **mean HU** no lung has (lung is mostly air: the real masks here average -730..-500
#   HU; soft tissue is about 40, outside air -1000);
# - **one lung missing** while the other is large (left and right of the body's middle);
# - lung **touching the image border**, or no lung at all.
#
# Flagged slices are listed with their reason and shown below; nothing is dropped. Training uses
# every slice as it is; evaluation reports scores over all slices and over the slices whose labels
# look sound, side by side.

# %%
def audit_mask(image_hu: np.ndarray, mask: np.ndarray, outside_fraction: float = 0.02,
               lung_hu=(-950, -300), one_side_fraction: float = 0.1) -> list:
    """Reasons to doubt one lung mask, from its image in HU (an empty list: it looks sound)."""
    image, lung = np.asarray(image_hu, np.float32), np.asarray(mask).astype(bool)
    area = np.count_nonzero(lung)
    if area == 0:
        return ["no lung marked"]
    reasons = []
    if lung[0].any() or lung[-1].any() or lung[:, 0].any() or lung[:, -1].any():
        reasons.append("lung touches the image border")
    air, _ = ndimage.label(image < -500)  # air and the padding outside the field of view
    outside = np.isin(air, np.setdiff1d(np.concatenate([air[0], air[-1], air[:, 0], air[:, -1]]), [0]))
    beyond_fov = np.count_nonzero(lung & (image < -1500)) / area
    on_outside_air = np.count_nonzero(lung & outside) / area
    if beyond_fov > outside_fraction:
        reasons.append(f"{beyond_fov:.0%} of the lung lies outside the scanner's field of view")
    elif on_outside_air > outside_fraction:
        reasons.append(f"{on_outside_air:.0%} of the lung lies on air outside the body")
    mean_hu = float(image[lung].mean())
    if not lung_hu[0] <= mean_hu <= lung_hu[1]:
        reasons.append(f"mean {mean_hu:.0f} HU inside the mask: no lung has that (expected {lung_hu[0]}..{lung_hu[1]})")
    body_columns = np.flatnonzero((image > -500).any(axis=0))
    middle = (body_columns[0] + body_columns[-1] + 1) // 2 if body_columns.size else image.shape[1] // 2
    sides = np.count_nonzero(lung[:, :middle]), np.count_nonzero(lung[:, middle:])
    if min(sides) < one_side_fraction * max(sides) and max(sides) > 0.02 * lung.size:
        side = "left (the patient's right)" if sides[0] < sides[1] else "right (the patient's left)"
        reasons.append(f"one lung missing: {min(sides):,} lung pixels on the image's {side}, {max(sides):,} on the other side")
    return reasons


def audit_labels(pairs: pd.DataFrame) -> pd.DataFrame:
    """``audit_mask`` for every pair (columns name, image_path, mask_path): name, flagged, reasons."""
    reasons = ["; ".join(audit_mask(read_slice(p.image_path), read_mask(p.mask_path))) for p in pairs.itertuples()]
    return pd.DataFrame({"name": list(pairs.name), "flagged": [bool(r) for r in reasons], "reasons": reasons})

# %% tags=["nbval-check-output"]
audit = audit_labels(pairs)
flagged = audit[audit.flagged]
print(f"labels audited: {len(audit)}; flagged: {len(flagged)}")
print(flagged[["name", "reasons"]].to_string(index=False) if len(flagged) else "no mask flagged")

# %% [markdown]
# Each flagged slice, with its mask's outline in red. Look before you trust a score on it.

# %%
if len(flagged):
    shown = pairs.set_index("name").loc[flagged.name[:8]]
    figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4.6), squeeze=False, layout="constrained")
    for axis, (name, row), reason in zip(axes[0], shown.iterrows(), flagged.reasons):
        axis.imshow(np.clip((read_slice(row.image_path) + 1000) / 1400, 0, 1), cmap="gray")
        axis.contour(read_mask(row.mask_path), [0.5], colors="red", linewidths=1)
        axis.set_title(name + "\n" + textwrap.fill(reason, 40), fontsize=8)
        axis.set_xticks([]), axis.set_yticks([])
    figure.suptitle("Flagged masks (red: the mask's outline)" + data_label(dataset["synthetic"]))
    save_figure(figure, output_dir / "figures" / "01_flagged_masks.png", dataset["synthetic"]);

# %% [markdown]
# ## Are these really Hounsfield units?
# HU is a physical scale: air is -1000 and water 0 on every calibrated scanner, fat lies near -100
# and muscle and blood near +40. A model learns the numbers it is shown, so the numbers must mean
# what they mean on the scans it will meet. We check, from these slices alone, where outside air,
# fat and soft tissue actually lie. Noise hides the tissue peaks in single pixels, so the body's
# histogram is taken after a 7x7 mean filter.

# %%
STANDARD_HU = {"outside air": -1000.0, "fat": -100.0, "soft tissue": 40.0}  # air by definition; fat, muscle/blood


def tissue_peaks(images) -> dict:
    """Where outside air, fat and soft tissue lie in a set of slices, in the slices' own values: the
    median of the air outside the body (connected to the image's edge, inside the field of view),
    and the fat and soft-tissue peaks of the body's histogram after a 7x7 mean filter. None where a
    peak is not found."""
    air, body = [], []
    for image in images:
        image = np.asarray(image, np.float32)
        field = ndimage.binary_erosion(image > -1500, iterations=8)  # not the padding beyond the field of view
        smooth = ndimage.uniform_filter(image, 7)
        low, _ = ndimage.label(smooth < -400)
        edge = np.setdiff1d(np.concatenate([low[0], low[-1], low[:, 0], low[:, -1]]), [0])
        outside = ndimage.binary_erosion(np.isin(low, edge), iterations=8) & field
        if np.count_nonzero(outside) > 500:
            air.append(float(np.median(image[outside])))
        tissue = smooth[ndimage.binary_erosion((smooth > -400) & field, iterations=4)]
        body.append(tissue[(tissue > -300) & (tissue < 300)])
    counts, edges = np.histogram(np.concatenate(body) if body else [], bins=np.arange(-300, 302, 2))
    counts, centres = ndimage.gaussian_filter1d(counts.astype(float), 2), (edges[:-1] + edges[1:]) / 2

    def peak(low, high):
        part = (centres >= low) & (centres < high)
        found = counts[part].max(initial=0) > 0.05 * counts.max(initial=0) > 0
        return float(centres[part][np.argmax(counts[part])]) if found else None
    return {"outside air": float(np.median(air)) if air else None, "fat": peak(-300, -30), "soft tissue": peak(-30, 300)}


def fit_hu_calibration(peaks: dict) -> dict:
    """The straight line that takes the peaks found to STANDARD_HU: standard = scale * stored + offset
    (least squares). Identity when fewer than two peaks were found or the line is implausible."""
    found = [name for name, value in peaks.items() if value is not None]
    identity = {"scale": 1.0, "offset": 0.0, "peaks": peaks, "standard": STANDARD_HU}
    if len(found) < 2:
        return {**identity, "note": f"peaks found: {found or 'none'}; left as they are"}
    scale, offset = np.polyfit([peaks[n] for n in found], [STANDARD_HU[n] for n in found], 1)
    if not 0.5 <= scale <= 2.0 or abs(offset) > 300:
        return {**identity, "note": f"fit scale {scale:.3f}, offset {offset:.0f} is implausible; left as they are"}
    return {**identity, "scale": float(scale), "offset": float(offset)}


# %% tags=["nbval-check-output"]
peaks = tissue_peaks(read_slice(p) for p in pairs.image_path)
calibration = fit_hu_calibration(peaks)
print(pd.DataFrame({"in these slices": peaks, "standard HU": STANDARD_HU}).round(0).to_string())
print(f"standard HU = {calibration['scale']:.3f} x stored {calibration['offset']:+.0f}", calibration.get("note", ""))

# %% [markdown]
# On the Kaggle slices all three sit at about 0.8 times their standard values: air at -797 instead of
# -1000, fat -81 instead of -100, soft tissue +31 instead of +40. The slices were stored scaled,
# and their lungs (median -689) are really about -860 HU, the inspiratory lung of other scanners.
# A model trained on the stored numbers learns that lung is about -690 and calls the darker lung of
# a standard scan "outside air". So the models learn standard HU, which is what your scans hold.
# (Bone has no sharp peak, so it is no anchor.)
#
# Every later notebook reads the slices through this line, with the calibration recorded in
# `dataset.json`:

# %%
#@save
def to_standard_hu(image, calibration: dict) -> np.ndarray:
    """A slice of the dataset in standard HU (float32), with the calibration that 01 recorded."""
    return np.asarray(image, np.float32) * np.float32(calibration["scale"]) + np.float32(calibration["offset"])

# %%
smooth = [ndimage.uniform_filter(read_slice(p).astype(np.float32), 7) for p in pairs.image_path[:40]]
values = np.concatenate([s[(s > -1100) & (s < 300)].ravel()[::5] for s in smooth])
figure, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for axis, data, title in [(axes[0], values, "as stored"), (axes[1], to_standard_hu(values, calibration), "calibrated")]:
    axis.hist(data, bins=np.arange(-1100, 300, 5), color="grey")
    for name, standard in STANDARD_HU.items():
        axis.axvline(standard, color="red", lw=1)
        axis.text(standard, axis.get_ylim()[1] * 0.95, f" {name}", color="red", fontsize=8, va="top")
    axis.set_yscale("log"), axis.set_xlabel("value (7x7 mean)"), axis.set_title(f"{title}; red: standard HU")
save_figure(figure, output_dir / "figures" / "01_hu_calibration.png", dataset["synthetic"]);

# %% [markdown]
# ## Record what we got
# The next notebook reads these files: the list of pairs, the facts of each slice and a record of the source.

# %%
(output_dir / "data").mkdir(parents=True, exist_ok=True)
pairs.to_csv(output_dir / "data" / "pairs.csv", index=False)
facts.to_csv(output_dir / "data" / "slice_facts.csv", index=False)
audit.to_csv(output_dir / "data" / "label_audit.csv", index=False)
write_json(output_dir / "data" / "dataset.json",
           {**dataset, "pairs": len(pairs), "stats_csv": str(stats_csv) if stats_csv.is_file() else None,
            "hu_calibration": calibration})
print("wrote", repo_path(output_dir / "data" / "pairs.csv"), "label_audit.csv and dataset.json")

# %% [markdown]
# ## This run
# The parameters as this run saw them, where the data and outputs are, the device and the library
# versions: what a rerun needs to match.

# %%
show_config(globals(), data_folder=data_dir, outputs=output_dir)

# %% [markdown]
# ## What you learned
# - CT values are Hounsfield units: air -1000, water 0, lung about -850, cortical bone about +500 to
#   +1900. Read them with a reader that keeps int16 (tifffile; pydicom with the rescale slope and
#   intercept), never with an image library's 8-bit default.
# - Check every pair before anything is trained on it: files, shapes, binary masks, and masks that no
#   real lung has (lung on the air outside the body).
# - Anchor the numbers to tissue you know: these slices hold outside air, fat and soft tissue at 0.8
#   times their HU, and one line of calibration makes them standard HU.
#
# ## Try this
# 1. Export a slice as an image viewer would, an 8-bit PNG (`cv2.imwrite("slice.png", cv2.imread(path))`),
#    and give it to `read_slice`. What happens, and what would a model have learnt had it been read?
# 2. Fit the calibration on the first 10 slices alone. How far is its scale from the one fitted on
#    every slice, and what does that say about how a collection is stored?
# 3. Make the audit stricter, `audit_mask(..., outside_fraction=0.005)`. Which masks does it add, and
#    would you train on them?
#
# **Next →** [02_preprocess](02_preprocess.ipynb): the HU window, the split, and augmentation.
