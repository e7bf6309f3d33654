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
# # 6. Your own scan: a 2D model meets a 3D CT
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lungseg/lungseg/blob/main/notebooks/06_your_scan.ipynb)
#
# The models of 03 and 04 learnt single slices. A CT scan is a **volume**: a DICOM series (one file per
# slice) or one NIfTI file, a few hundred slices with a geometry. In this notebook you will learn to
# - read a DICOM series in HU, in the right order, with its voxel size;
# - segment it slice by slice, and then use what only a volume shows (the **3D step**): which connected
#   regions are lungs, and which lung is right and which left;
# - measure the lungs in mL and their emphysema index (LAA-950), against a reference;
# - see why a lung mask is anatomy and not darkness;
# - segment your own scan.
#
# The example is a real whole chest CT with a reference lung mask. One ships with the repository: a COPD
# patient's chest from the Chest Imaging Platform, which its authors shrank 8x (64x64 pixels of 4.17 mm,
# 1 MB), so it looks blocky; a model that learnt 0.8 mm slices finds its lungs because 02 showed it
# coarser grids (`RESOLUTION`). It made this notebook's outputs. Where `idc-index` and a network are at
# hand (Colab installs it), the example comes at full resolution from NCI's Imaging Data Commons
# instead: a lung cancer patient of NSCLC-Radiomics (LUNG1-001, 134 slices of 512x512, 88 MB, CC BY-NC
# 3.0) with the radiotherapy team's lung contours; that path is checked here against a stand-in only.
# **Not for clinical use.**

# %%
import os, subprocess, sys  # set-up: in Colab, fetch lungseg and what Colab lacks; everywhere, find lungseg/
if "google.colab" in sys.modules and not os.path.isdir("/content/lungseg"):
    subprocess.run(f"git clone -q https://github.com/lungseg/lungseg /content/lungseg && {sys.executable} -m pip "
                   "install -q pydicom highdicom pynrrd papermill jupytext", shell=True, check=True)
sys.path[:0] = ["/content/lungseg"] if "google.colab" in sys.modules else [os.path.abspath(".."), os.path.abspath("../..")]
from lungseg.notebook import show_config, start
REPO_ROOT = start()  # says the runtime (CPU or GPU) in one line

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pydicom
from scipy import ndimage

import lungseg_utils as lu  # 01-05's #@save cells: reading HU, predicting, the model's loader
from lungseg.checks import check_scan_settings, choose_models_dir  # refuses MODEL / SCAN that cannot work
from lungseg.examples import get_example, reference_mask  # the example: a CT series and its reference lungs
from lungseg.scans import Scan, body_midline, inside_body, keep_lungs, mask_overlay, predict_scans, read_scan, segment_scan, split_lungs

# %% [markdown]
# ## Parameters
# `SCAN`: your CT, a DICOM series folder or a NIfTI file (see "Your own scan" at the end); empty, the
# last section segments the example. `MODEL`: the Residual U-Net, the model 05 chose for whole scans.
# `EXAMPLE`: `"auto"` (the full-resolution scan where it can be downloaded, else the small one), `"full"`
# or `"small"`; `EXAMPLE_DIR`: where it is kept (empty: the small one's copy in `examples/`, the full
# one's download in `data/`).
# This notebook needs no Kaggle data, so no `DATA_DIR`.

# %% tags=["parameters"]
SCAN = ""
MODEL = "resunet"
MODELS_DIR = ""  # empty: yours in OUTPUT_DIR/models (03, 04) if both are there, else the committed ones
EXAMPLE = "auto"
EXAMPLE_DIR = ""
THRESHOLD = 0.5
OUTPUT_DIR = "outputs"
SEED = 0

# %%
check_scan_settings(MODEL, SCAN)  # before anything is downloaded or loaded
output_dir = REPO_ROOT / OUTPUT_DIR

# %% [markdown]
# ## The example: a chest CT and its reference
# A whole chest CT, and a lung mask that others made for it (a tool's, or a radiotherapy team's): what
# the model's lungs are measured against.

# %%
example = get_example(EXAMPLE, EXAMPLE_DIR)  # checked file by file; the small one ships with the repository
print(example.description)

# %% [markdown]
# ## A scan is a volume
# A DICOM series is one file per slice. The file names say nothing reliable about the order: each
# header's `ImagePositionPatient` says where the slice lies, `PixelSpacing` how large a pixel is, and
# `RescaleSlope` / `RescaleIntercept` how stored numbers become HU.

# %%
headers = [pydicom.dcmread(path) for path in sorted(example.series.glob("*.dcm"))]
headers.sort(key=lambda h: float(h.ImagePositionPatient[2]))  # from the feet up, by position, not by file name
volume = np.stack([h.pixel_array * float(h.RescaleSlope) + float(h.RescaleIntercept) for h in headers])  # HU
row_mm, column_mm = (float(v) for v in headers[0].PixelSpacing)
slice_mm = float(np.median(np.diff([float(h.ImagePositionPatient[2]) for h in headers])))
voxel_ml = row_mm * column_mm * slice_mm / 1000
print(f"{volume.shape[0]} slices of {volume.shape[1]}x{volume.shape[2]}, {volume.min():.0f}..{volume.max():.0f} HU, "
      f"voxels {row_mm:.2f} x {column_mm:.2f} x {slice_mm:.2f} mm")

# %% [markdown]
# The training slices show the patient's front at the top and the patient's right on the image's left.
# `ImageOrientationPatient` says which way this series' rows and columns run: here the same way, so the
# slices go to the model as they are (`read_scan` below turns any other orientation).

# %%
print("orientation (rows, columns):", [round(float(v)) for v in headers[0].ImageOrientationPatient])

# %% [markdown]
# ## Every slice through the model
# The model is the one 05 chose for whole scans, with the record of how it was trained. Each slice goes
# through exactly what the test slices went through in 05: the model's HU window and size, the
# network, the probabilities back at the slice's own size, the threshold. Volume = lung voxels x the
# voxel's volume.

# %%
models_dir = choose_models_dir(MODELS_DIR, output_dir, ["unet", "resunet"], REPO_ROOT)  # yours (03, 04), else committed
model, record = lu.load_trained_model(models_dir / f"{MODEL}.keras")
synthetic = record["synthetic"]  # a model that learnt phantoms: every figure says so

# %%
probabilities = np.stack(lu.predict_probabilities(model, list(volume), record))
mask = probabilities >= THRESHOLD
print(f"{MODEL}: {mask.sum() * voxel_ml:,.0f} mL called lung, on {mask.any(axis=(1, 2)).sum()} of {len(mask)} slices")

# %% [markdown]
# An axial slice, and a coronal view rebuilt from all of them (head at the top): the model has never
# seen a coronal view, but the slices stack into lungs.

# %%
def show_axial_and_coronal(labels, title, path=None, painted=None):
    """An axial and a coronal plane, each through the most lung (or, with ``painted``, a dict of colour:
    mask, through the most painted voxels), with the labels tinted and the painted voxels in colour."""
    shown = labels > 0 if not painted else np.logical_or.reduce(list(painted.values()))
    middle_row = int(np.argmax(shown.sum(axis=(0, 2))))  # the coronal plane
    axial = int(np.argmax(shown.sum(axis=(1, 2))))
    pictures = [mask_overlay(lu.window_hu(volume[axial], -1000, 400), labels[axial]),
                mask_overlay(lu.window_hu(volume[::-1, middle_row], -1000, 400), labels[::-1, middle_row])]
    for colour, voxels in (painted or {}).items():
        pictures[0][voxels[axial]], pictures[1][voxels[::-1, middle_row]] = colour, colour
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    axes[0].imshow(pictures[0])
    axes[1].imshow(pictures[1], aspect=slice_mm / column_mm)
    axes[0].set_title(f"axial, slice {axial + 1} of {len(volume)}"), axes[1].set_title("coronal, head at the top")
    for axis in axes:
        axis.set_xticks([]), axis.set_yticks([])
    figure.suptitle(title + lu.data_label(synthetic))
    return lu.save_figure(figure, path, synthetic)


show_axial_and_coronal(mask.astype(np.uint8), f"{MODEL}, slice by slice");

# %% [markdown]
# ## The 3D step: which regions are lungs
# A 2D model sees one slice at a time, so on a whole scan it can mark bowel gas below the lungs, or air
# beside the body. A volume shows what a slice cannot: the lungs are the large connected regions
# *inside the body*, of lung tissue rather than pure gas. `ndimage.label` numbers the mask's connected
# regions in 3D; for each, its size, how much of it lies inside the body (what each slice's tissue
# encloses), and how much is darker than -970 HU (gas, not lung tissue):

# %%
regions, found = ndimage.label(mask)
index = np.arange(1, found + 1)
body = np.stack([inside_body(image) for image in volume])
pd.DataFrame({"mL": ndimage.sum(mask, regions, index) * voxel_ml,
              "share inside the body": ndimage.mean(body, regions, index),
              "share below -970 HU": ndimage.mean(volume <= -970, regions, index)},
             index=pd.Index(index, name="region")).sort_values("mL", ascending=False).head(6).round(2)

# %% [markdown]
# `keep_lungs` applies the rules: a region stays when at least half of it is inside the body, less
# than half is gas, it holds at least a tenth of the largest such region, and it does not lie mostly
# under another region (gas below the diaphragm). Then it fills what the lungs enclose: a hole in a
# lung in 3D (a vessel, a tumour) is lung.

# %%
scan = read_scan(example.series)  # the same series, read and checked by lungseg.scans
kept = keep_lungs(mask, scan) > 0
removed, filled = mask & ~kept, kept & ~mask
print(f"before: {mask.sum() * voxel_ml:,.0f} mL in {found} regions; after: {kept.sum() * voxel_ml:,.0f} mL in "
      f"{ndimage.label(kept)[1]} (the two lungs touch: right and left come next)")
print(f"removed {removed.sum() * voxel_ml:,.0f} mL (red), filled {filled.sum() * voxel_ml:,.0f} mL (yellow)")

# %% [markdown]
# What the 3D step changed, on the planes where it changed most: kept lung in green, the regions it
# removed in red, what it filled in yellow.

# %%
show_axial_and_coronal(kept.astype(np.uint8), "the 3D step: kept green, removed red, filled yellow",
                       output_dir / "figures" / "06_3d_step.png", painted={(0.9, 0.1, 0.1): removed, (1.0, 0.8, 0.0): filled});

# %% [markdown]
# ## Right and left lung
# Lung function is often asked per lung. The image's left is the patient's right. A lung's side is
# where it lies against the body's midline, not against the other lung: after a pneumonectomy there is
# only one. Where the two lungs touch, `split_lungs` cuts them at the column near the midline with the
# least lung.

# %%
midline = body_midline(volume, kept)  # the column in the middle of the body, on the slices with lung
labels = split_lungs(kept, midline)  # 0 background, 1 right lung, 2 left lung
print(f"midline: column {midline:.0f} of {volume.shape[2]}")
print({side: f"{(labels == value).sum() * voxel_ml:,.0f} mL" for side, value in (("right", 1), ("left", 2))})
show_axial_and_coronal(labels, "right lung green, left lung blue", output_dir / "figures" / "06_scan.png");

# %% [markdown]
# ## Measure: volume and LAA-950
# The lung volume, and **LAA-950**: the share of lung voxels below -950 HU, the standard CT index of
# emphysema (healthy lungs at full inspiration: a few percent). The histogram shows where it comes
# from. The reference is the example's own lung mask, read onto the same grid.

# %%
reference = reference_mask(example, scan)  # the example's reference lungs, slice by slice
ours = labels > 0
pd.DataFrame({"lung mL": [ours.sum() * voxel_ml, reference.sum() * voxel_ml],
              "LAA-950 %": [100 * np.mean(volume[ours] < -950), 100 * np.mean(volume[reference] < -950)],
              "Dice with the reference": [2 * (ours & reference).sum() / (ours.sum() + reference.sum()), 1.0]},
             index=[MODEL, "reference"]).round(3)

# %%
figure, axis = plt.subplots(figsize=(7, 3))
axis.hist(volume[ours], bins=np.arange(-1100, 0, 10), color="grey")
axis.axvspan(-1100, -950, color="red", alpha=0.2, label="below -950 HU: LAA-950")
axis.set_xlabel("HU inside the lung mask"), axis.set_yticks([]), axis.legend()
lu.save_figure(figure, synthetic=synthetic);

# %% [markdown]
# Two good masks of one scan differ by about the width of their boundary, a few percent of the volume.

# %% [markdown]
# ## Lung is anatomy, not darkness
# People segment lungs mostly because something is wrong in them, and a lung mask keeps diseased
# lung: a tumour inside the pleura is lung tissue gone dense. A model trained on clear lungs has
# learnt that lung is *dark*, and leaves dense lesions out; Hofmanninger et al. (2020) showed that
# this is "primarily a data diversity problem, not a methodology problem". Below, two 30 mm tumours
# (+40 HU) are written into this scan's lung: one deep inside it, one against the chest wall.

# %%
voxel_mm = (slice_mm, row_mm, column_mm)
zz, yy, xx = np.ogrid[: ours.shape[0], : ours.shape[1], : ours.shape[2]]  # coordinates that broadcast
def ball(centre, diameter_mm=30.0):
    return sum(((axis - c) * mm) ** 2 for axis, c, mm in zip((zz, yy, xx), centre, voxel_mm)) <= (diameter_mm / 2) ** 2
depth = ndimage.distance_transform_edt(ours, sampling=voxel_mm)  # mm from the lung's edge
deep = np.unravel_index(np.argmax(depth), ours.shape)  # the point deepest inside the lung
k = deep[0]
edge_rows, edge_columns = np.nonzero(ours[k])
side = int(np.argmin(edge_columns))  # the right lung's outermost point on that slice: the chest wall
on_wall = (k, edge_rows[side], edge_columns[side] + round(10 / column_mm))  # 10 mm inside the pleura
tumours = {"deep inside": ball(deep) & ours, "on the chest wall": ball(on_wall) & ours}
print({name: f"{tumour.sum() * voxel_ml:.1f} mL" for name, tumour in tumours.items()})

# %% [markdown]
# Write them in at +40 HU (soft tissue, with a scanner's noise), segment the diseased scan without and
# with the 3D step, and count how much of each tumour is called lung.

# %%
sick = scan.hu.copy()
for tumour in tumours.values():
    sick[tumour] = 40 + np.random.default_rng(SEED).normal(0, 15, tumour.sum())
diseased = Scan(scan.name, scan.kind, sick, scan.pixel_spacing_mm, scan.slice_thickness_mm, scan.affine, scan.orientation)
alone = segment_scan(model, diseased, record, postprocess=False) > 0  # the model, slice by slice
with_3d = segment_scan(model, diseased, record) > 0  # and the 3D step
pd.DataFrame({name: {"kept by the model": alone[tumour].mean(), "kept with the 3D step": with_3d[tumour].mean()}
              for name, tumour in tumours.items()}).T.round(2)

# %%
figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for axis, found_lung, title in [(axes[0], alone, "the model alone"), (axes[1], with_3d, "with the 3D step")]:
    axis.imshow(mask_overlay(lu.window_hu(sick[k], -1000, 400), found_lung[k].astype(np.uint8)))
    axis.contour(sum(tumours.values())[k], [0.5], colors="red", linewidths=1)
    axis.set_title(f"{title}: tumours in red"), axis.set_xticks([]), axis.set_yticks([])
lu.save_figure(figure, output_dir / "figures" / "06_tumours.png", synthetic);

# %% [markdown]
# The tumour that the lung encloses comes back: a hole in the lung in 3D is lung. The one on the chest
# wall does not: nothing closes the lung's outline over it, and the model took its density for the
# chest wall. Teaching the network with lesions drawn into its training lungs (02's `LESIONS`) is the
# data-diversity answer. It stays off by default: so far, each way of drawing lesions that taught this
# 2D network dense lung also taught it the liver or the colon below the lungs, or lost a dark lung, on
# some training seed ([RESULTS.md](../RESULTS.md)). Check the mask before you trust the volume of a
# diseased lung.

# %% [markdown]
# ## Your own scan
# One call does all of the above for every scan in a folder or file (DICOM series, NIfTI, slices) and
# writes, for each, a mask on the input's grid (`<name>_mask.nii.gz`: 1 right lung, 2 left lung), for a
# DICOM series a DICOM Segmentation (`<name>_seg.dcm`, which 3D Slicer and OHIF open), a preview and a
# row of `measurements.csv`. An input it cannot use is named in one line, with the fix; it never
# replaces your files. From a shell: `bash scripts/predict.sh INPUT [OUTPUT_DIR]`.
#
# **Before you upload a scan: de-identify it.** DICOM headers carry the patient's name, birth date and
# IDs, and a Colab runtime is a machine in Google's cloud. Use an anonymised export from your PACS or a
# tool such as `dicom-anonymizer`, or a NIfTI file (which holds no names). Then, in Colab:
# 1. zip the series folder on your computer, and upload it with the folder icon on the left (or
#    `from google.colab import files; files.upload()`);
# 2. unzip it in a cell: `!python -m zipfile -e my_scan.zip my_scan`;
# 3. set `SCAN = "/content/my_scan"` in the Parameters cell, and run the notebook again.
#
# The masks come from a research model: **not for clinical use**.

# %%
measured = predict_scans(model, record, Path(SCAN).expanduser() if SCAN else example.series,
                         output_dir / "predictions" / MODEL, model_name=MODEL)
measured.drop(columns=["mask", "dicom_seg", "preview", "input"], errors="ignore").round(2).T

# %%
for preview in measured.get("preview", []):  # one per scan segmented
    figure, axis = plt.subplots(figsize=(14, 3))
    axis.imshow(plt.imread(preview)), axis.axis("off")

# %% [markdown]
# ## This run
# The parameters as this run saw them, the model and the example, the device and the library
# versions: what a rerun needs to match.

# %%
show_config(globals(), models=models_dir, example=example.name,
            trained_on="SYNTHETIC phantoms, not real CT" if synthetic else "real CT slices")

# %% [markdown]
# ## What you learned
# - A DICOM series becomes a volume in HU by its headers: position for the order, spacing for the voxel's
#   size, slope and intercept for HU. Its volume in mL is voxels x voxel size.
# - A 2D model segments a volume slice by slice; the 3D step keeps the regions that are anatomy (inside
#   the body, lung tissue, not under the lungs), fills what they enclose, and tells right from left.
# - A lung mask holds diseased lung. What the lung encloses the 3D step gives back; a lesion on the chest
#   wall it cannot, which is why you look at the mask before you trust a number.
#
# ## Try this
# 1. Set `MODEL = "unet"` and rerun: how many regions does the U-Net leave before the 3D step, and what is
#    its Dice with the reference?
# 2. Set `THRESHOLD = 0.3`, then `0.7`. Which way do the lung volume and LAA-950 move, and why do they
#    move in opposite directions? (Hint: where do the voxels lie that only one threshold calls lung,
#    and what else shares their volume?)
# 3. Grow the deep tumour, `ball(deep, diameter_mm=60.0)`, and rerun "Lung is anatomy": how much does
#    the model alone keep now, and does the 3D step still fill it all?
# 4. Segment a scan of your own (de-identified) and open its `_seg.dcm` or `_mask.nii.gz` in 3D Slicer
#    over the CT ([docs/own-scans.md](../docs/own-scans.md)).
#
# **Next →** `bash scripts/predict.sh` on a folder of scans, and [RESULTS.md](../RESULTS.md) for what the
# models do on other scanners and on diseased lungs.
