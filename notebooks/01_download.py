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
# 267 axial chest CT slices of 512x512 pixels, stored as int16 **Hounsfield units** (HU: air is
# -1000, water 0, bone several hundred), each with a manual lung mask (0 = background, 255 = lung).
# This notebook gets the data from one of four sources, then checks every pair before anything is
# trained on it, because a silent data problem (a missing mask, an 8-bit export) ruins everything after it.
#
# | `DATA_SOURCE` | what it does |
# |---|---|
# | `"auto"` (default) | `DATA_DIR` if it holds data; else Kaggle if you have credentials; else synthetic phantoms |
# | `"kaggle"` | downloads with the official `kaggle` package (credentials: `KAGGLE_USERNAME`/`KAGGLE_KEY`, `~/.kaggle/kaggle.json`, or an upload in Colab) |
# | `"folder"` | uses `DATA_DIR` as it is: `2d_images/` + `2d_masks/`, or `Train/Images`, `Train/Masks`, `Test/Images`, `Test/Masks` |
# | `"archive"` | extracts `ARCHIVE` (the Kaggle zip, or a folder with `2d_images.zip` and `2d_masks.zip`) into `DATA_DIR` |
# | `"synthetic"` | writes CT-like phantoms: **not real CT**, only so that the pipeline runs anywhere; labelled as such everywhere |

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
import lungseg_utils as lu

# %% [markdown]
# ## Parameters
# Change these here, or pass them with papermill (`python -m lungseg.runner -p DATA_SOURCE kaggle`).
# An empty `DATA_DIR` means `$LUNGSEG_DATA_DIR` if set, else `data/finding-lungs-in-ct-data` in the repository.

# %% tags=["parameters"]
DATA_SOURCE = "auto"
DATA_DIR = ""
ARCHIVE = ""
OUTPUT_DIR = "outputs"
SYNTHETIC_COUNT = 60
SEED = 0

# %% [markdown]
# ## Configuration
# The effective settings and library versions, so that every run documents itself.

# %%
data_dir = Path(DATA_DIR or os.environ.get("LUNGSEG_DATA_DIR") or REPO_ROOT / "data" / "finding-lungs-in-ct-data")
output_dir = REPO_ROOT / OUTPUT_DIR
config = {"DATA_SOURCE": DATA_SOURCE, "DATA_DIR": str(data_dir), "ARCHIVE": ARCHIVE,
          "OUTPUT_DIR": str(output_dir), "SYNTHETIC_COUNT": SYNTHETIC_COUNT, "SEED": SEED}
lu.config_table(config)

# %% [markdown]
# ## Get the data
# Downloads and extractions go to a temporary folder first and are renamed into place only when
# complete, so an interrupted run never leaves a folder that looks finished; an existing folder is
# never overwritten, and re-running with the data in place downloads nothing.

# %%
dataset = lu.get_dataset(DATA_SOURCE, data_dir, output_dir, archive=ARCHIVE or None,
                         synthetic_count=SYNTHETIC_COUNT, seed=SEED, in_colab="google.colab" in sys.modules)
pairs = lu.find_pairs(dataset["root"])
print(f"source: {dataset['source']}{lu.data_label(dataset['synthetic'])}")
print(f"data folder: {dataset['root']}")

# %% [markdown]
# ## Verify every pair
# Each slice is read losslessly (a plain `cv2.imread` would turn the int16 HU into 8-bit and destroy
# them) and checked: the image is in HU, the mask is binary, and both have the same shape.

# %%
# NBVAL_CHECK_OUTPUT
facts = lu.verify_pairs(pairs)
print(f"verified pairs: {len(facts)}")
print("image dtypes:", sorted(set(facts.dtype)))
print("shapes:", sorted({f"{h}x{w}" for h, w in zip(facts.height, facts.width)}))

# %%
lu.summarise(facts)

# %% [markdown]
# `lung_stats.csv` (where present) lists each slice's lung area in pixels: it must agree with the
# masks exactly, or the csv belongs to other masks.

# %%
stats_csv = Path(dataset["root"]) / "lung_stats.csv"
if stats_csv.is_file():
    compared = lu.check_lung_stats(stats_csv, facts)
    print(f"lung_stats.csv agrees with the masks on all {len(compared)} slices it lists")
else:
    print("no lung_stats.csv beside the data: nothing to compare")

# %% [markdown]
# ## A first look
# Four slices with their masks. The dark circle's outside (around -2000 HU) is padding beyond the
# scanner's field of view, not tissue.

# %%
examples = pairs.iloc[:: max(1, len(pairs) // 4)][:4]
rows = [[lu.window_hu(lu.read_slice(p.image_path), -1000, 400), lu.read_mask(p.mask_path)]
        for p in examples.itertuples()]
lu.show_pairs(rows, ["CT slice (window -1000..400 HU)", "lung mask"], list(examples.name),
              title="Example slices", path=output_dir / "figures" / "01_examples.png",
              synthetic=dataset["synthetic"]);

# %% [markdown]
# ## Record what we got
# The next notebook reads these two files: the list of pairs and a record of the source.

# %%
(output_dir / "data").mkdir(parents=True, exist_ok=True)
pairs.to_csv(output_dir / "data" / "pairs.csv", index=False)
facts.to_csv(output_dir / "data" / "slice_facts.csv", index=False)
lu.write_json(output_dir / "data" / "dataset.json",
              {**dataset, "pairs": len(pairs), "stats_csv": str(stats_csv) if stats_csv.is_file() else None})
print("wrote", output_dir / "data" / "pairs.csv", "and dataset.json")
