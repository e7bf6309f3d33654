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
# # 3. Train a U-Net
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lungseg/lungseg/blob/main/notebooks/03_unet.ipynb)
#
# The U-Net (Ronneberger et al., 2015) is the classic network for medical image segmentation: an
# encoder that sees more and more context at lower and lower resolution, a decoder that brings the
# resolution back, and *skip connections* that hand the decoder the encoder's sharp details at
# each scale. We build it from scratch with the Keras functional API, train it on the arrays from
# `02_preprocess` with a BCE + Dice loss, and keep the epoch with the best validation IoU.

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
# ## The building block
# Every stage of the U-Net is the same block: two 3x3 convolutions, each followed by batch
# normalisation (which keeps activations in a stable range and lets us use a larger learning rate)
# and a ReLU.

# %%
print(inspect.getsource(lu.conv_block))

# %% [markdown]
# ## The network
# Four times down: block, then 2x2 max-pooling (half the resolution, twice the filters). A bottleneck
# block at 1/16 of the input size. Four times up: a 2x2 transpose convolution doubles the resolution,
# the encoder's features of that scale are concatenated (the skip connection), and a block merges
# them. A 1x1 convolution with a sigmoid gives each pixel's probability of being lung. The same
# skeleton serves the Residual U-Net of the next notebook, with another block.

# %%
print(inspect.getsource(lu.build_segmenter))

# %%
model = lu.unet(IMG_SIZE, BASE_FILTERS)
model.summary(line_length=100, expand_nested=False)
print(f"parameters: {model.count_params():,}")

# %% [markdown]
# ## Train
# The loss is binary cross-entropy plus (1 - soft Dice): cross-entropy gives smooth gradients from
# the start, and the Dice term weighs the lung as much as the (larger) background. Dice and IoU of
# the thresholded prediction are tracked per epoch; the model of the epoch with the best validation
# IoU is kept. The learning rate follows a cosine decay from `LEARNING_RATE` to 1% of it. The
# shared helper does the same for both models, so the comparison in `05_evaluate` is fair.
#
# Why 3e-3 and not the usual 1e-3: Adam moves each weight by at most about the learning rate per
# step, and 25 epochs of 151 slices are only about 475 steps. With 1e-3 the output layer could not
# move far enough: the predicted probability stayed near 0.06 on background pixels, the loss
# levelled off at 0.20 although the thresholded Dice was 0.98, and most of that loss came from the
# haze of background probability, not from the lung border. With 3e-3 the background falls below
# 0.01, the loss reaches 0.05, and Dice rose on the validation and test slices for both models
# (README, Results).

# %%
result = lu.train_model(lambda: lu.unet(IMG_SIZE, BASE_FILTERS), arrays, preprocessing, name="unet",
                        output_dir=output_dir, epochs=EPOCHS, batch_size=BATCH_SIZE,
                        learning_rate=LEARNING_RATE, seed=SEED, extra={"base_filters": BASE_FILTERS})

# %% [markdown]
# ## Training curves
# Training (dashed) and validation (solid). Validation scores are those of the un-augmented slices.

# %%
lu.plot_history({"U-Net": result.history}, path=output_dir / "figures" / "03_unet_curves.png",
                synthetic=preprocessing["synthetic"]);

# %%
print(lu.training_summary(result.record))
