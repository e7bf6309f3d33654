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
# # 4. Train a Residual U-Net
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lungseg/lungseg/blob/main/notebooks/04_resunet.ipynb)
#
# The Residual U-Net (Zhang, Liu and Wang, 2018) keeps the U-Net's skeleton - 4 stages down, a
# bottleneck, 4 stages up with transpose convolutions and concatenated skips - but replaces each
# plain block by a *residual* block, whose output is its input plus a learned correction. Such
# blocks pass gradients more easily and often train faster. Everything else (data, loss, metrics,
# training helper, epochs) is the same as in `03_unet`, so `05_evaluate` compares like with like.

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
import inspect

import lungseg_utils as lu

# %% [markdown]
# ## Parameters
# The defaults train in minutes on 2 CPU cores (the README's Results give measured times).
# `IMG_SIZE` must match the arrays written by `02_preprocess`.

# %% tags=["parameters"]
OUTPUT_DIR = "outputs"
IMG_SIZE = 256
EPOCHS = 25
BATCH_SIZE = 8
LEARNING_RATE = 3e-3  # not the usual 1e-3: see "Train" below
BASE_FILTERS = 8
SEED = 0

# %% [markdown]
# ## Configuration

# %%
output_dir = REPO_ROOT / OUTPUT_DIR
arrays, preprocessing = lu.load_training_inputs(output_dir, IMG_SIZE)
lu.check_training_settings(EPOCHS, BATCH_SIZE, IMG_SIZE, BASE_FILTERS)
config = {"OUTPUT_DIR": str(output_dir), "IMG_SIZE": IMG_SIZE, "EPOCHS": EPOCHS, "BATCH_SIZE": BATCH_SIZE,
          "LEARNING_RATE": LEARNING_RATE, "BASE_FILTERS": BASE_FILTERS, "SEED": SEED,
          "data": preprocessing["data_source"] + lu.data_label(preprocessing["synthetic"]),
          "slices": preprocessing["slices"], "device": lu.describe_device()}
lu.config_table(config)

# %% [markdown]
# ## The residual block
# Two 3x3 convolutions with batch normalisation (ReLU between them) compute a correction that is
# added to the block's input (the *shortcut*). Where the number of channels changes, the shortcut
# is projected by a 1x1 convolution so that the two can be added; a ReLU follows the sum.

# %%
print(inspect.getsource(lu.residual_block))

# %% [markdown]
# ## The network
# The skeleton of `03_unet` (`lu.build_segmenter`), with the residual block at each of the 4
# downsampling stages, the bottleneck and the 4 upsampling stages; upsampling by 2x2 transpose
# convolutions, skip connections concatenated.

# %%
print(inspect.getsource(lu.resunet))

# %%
model = lu.resunet(IMG_SIZE, BASE_FILTERS)
model.summary(line_length=100, expand_nested=False)
print(f"parameters: {model.count_params():,}")

# %% [markdown]
# ## Train
# The loss is binary cross-entropy plus (1 - soft Dice): cross-entropy gives smooth gradients from
# the start, and the Dice term weighs the lung as much as the (larger) background. Dice and IoU of
# the thresholded prediction are tracked per epoch; the model of the epoch with the best validation
# IoU is kept. The learning rate follows a cosine decay from `LEARNING_RATE` to 1% of it, exactly
# as for the U-Net: it is the same helper (`03_unet` explains why 3e-3 rather than 1e-3).

# %%
result = lu.train_model(lambda: lu.resunet(IMG_SIZE, BASE_FILTERS), arrays, preprocessing, name="resunet",
                        output_dir=output_dir, epochs=EPOCHS, batch_size=BATCH_SIZE,
                        learning_rate=LEARNING_RATE, seed=SEED, extra={"base_filters": BASE_FILTERS})

# %% [markdown]
# ## Training curves
# Training (dashed) and validation (solid). Validation scores are those of the un-augmented slices.

# %%
lu.plot_history({"Residual U-Net": result.history}, path=output_dir / "figures" / "04_resunet_curves.png",
                synthetic=preprocessing["synthetic"]);

# %%
print(lu.training_summary(result.record))
