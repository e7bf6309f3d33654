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
# A Residual U-Net keeps the U-Net's skeleton - 4 stages down, a bottleneck, 4 stages up with
# transpose convolutions and concatenated skips - but replaces each plain block by a *residual* block
# (He et al., 2016), whose output is its input plus a learned correction. Ours uses He et al.'s
# post-activation block, max-pooling and transpose convolutions; the ResUNet of Zhang, Liu and Wang
# (2018) differs (pre-activation blocks, 3 levels, stride-2 convolutions). Residual blocks pass
# gradients more easily through deep networks; their shortcuts make each epoch a little slower here.
# The whole network is below; the data,
# loss, metrics, pipeline and training are those of `03_unet` (imported from `lungseg_utils`), so
# that `05_evaluate` compares the blocks and nothing else.

# %%
import os, subprocess, sys  # set-up: in Colab, fetch lungseg and what Colab lacks; everywhere, find lungseg/
if "google.colab" in sys.modules and not os.path.isdir("/content/lungseg"):
    subprocess.run(f"git clone -q https://github.com/lungseg/lungseg /content/lungseg && {sys.executable} -m pip "
                   "install -q pydicom highdicom pynrrd papermill jupytext", shell=True, check=True)
sys.path[:0] = ["/content/lungseg"] if "google.colab" in sys.modules else [os.path.abspath(".."), os.path.abspath("../..")]
from lungseg.notebook import show_config, start
REPO_ROOT = start()  # says the runtime (CPU or GPU) in one line

# %%
import math

import keras
import numpy as np
import pandas as pd
from keras import layers

import lungseg_utils as lu  # the #@save cells of 01-03
from lungseg.report import stage_summary  # a model as one row per stage
from lungseg.notebook import check_parameters, load_arrays  # refuses what cannot work; 02's arrays, made if missing
from lungseg.training import finish_training  # the best epoch's model and its record, once fit has ended

# %% [markdown]
# ## Parameters
# The same as `03_unet`'s, so that both models train alike.

# %% tags=["parameters"]
DATA_DIR = ""  # the data folder, for 01 if it must run first (empty: as 01 decides; see 01's Parameters)
OUTPUT_DIR = "outputs"
IMG_SIZE = 256
EPOCHS = 25
BATCH_SIZE = 8
LEARNING_RATE = 3e-3  # 03_unet explains why not 1e-3
BASE_FILTERS = 8
MIXED_PRECISION = False  # True: bfloat16 compute; 03_unet explains when it helps
DICE_WEIGHT = 1.0  # the weight of the loss's Dice term; 03_unet explains it
SEED = 0

# %%
output_dir = REPO_ROOT / OUTPUT_DIR
check_parameters(globals())  # the image size and the training settings: refused now, not after minutes of training
arrays, preprocessing = load_arrays("04", OUTPUT_DIR, IMG_SIZE, DATA_DIR)  # 02's arrays (01 and 02 first if missing)

# %% [markdown]
# ## The residual block
# Two 3x3 convolutions with batch normalisation (ReLU between them) compute a correction that is
# added to the block's input, the *shortcut*. Where the number of channels changes, the shortcut
# is projected by a 1x1 convolution (with batch norm) so that the two can be added; a ReLU follows
# the sum. If the best correction is none, the block can learn to pass its input through.

# %%
def residual_block(x, filters, name):
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=0.9, name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)

# %% [markdown]
# ## The network
# The skeleton of `03_unet`, stage for stage: 4 residual blocks down, each followed by 2x2
# max-pooling; a residual bottleneck at 1/16 of the input size; 4 stages up, each a 2x2 transpose
# convolution, the concatenated skip of the same size, and a residual block; a 1x1 sigmoid output.
# The two networks differ in the block and nothing else.

# %%
def build_resunet(img_size, base_filters, depth=4):
    inputs = keras.Input((img_size, img_size, 1), name="ct_slice")
    x, skips = inputs, []
    for level in range(depth):  # encoder
        x = residual_block(x, base_filters * 2**level, name=f"down{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    x = residual_block(x, base_filters * 2**depth, name="bottleneck")
    for level in reversed(range(depth)):  # decoder
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level + 1}_transpose")(x)
        x = layers.Concatenate(name=f"up{level + 1}_skip")([x, skips[level]])
        x = residual_block(x, filters, name=f"up{level + 1}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="lung_probability")(x)
    return keras.Model(inputs, outputs, name="resunet")

# %%
keras.mixed_precision.set_global_policy("mixed_bfloat16" if MIXED_PRECISION else "float32")  # as in 03_unet
keras.utils.set_random_seed(SEED)
model = build_resunet(IMG_SIZE, BASE_FILTERS)
stage_summary(model)  # model.summary() lists all 95 layers

# %% [markdown]
# ## Train exactly as the U-Net
# The input pipeline, the BCE + Dice loss, the Dice/IoU metrics, Adam with the cosine schedule, and
# the callbacks (best epoch by validation IoU into `resunet.in-progress.keras`, history, NaN guard,
# epoch timer) are those of `03_unet`, taken from `lungseg_utils`.

# %%
augmenter = lu.make_augmenter(**preprocessing["augmentation"], hu_window=(preprocessing["hu_min"],
                                  preprocessing["hu_max"]), seed=SEED)  # None: augmentation off
train_data = lu.make_dataset(arrays["x_train"], arrays["y_train"], BATCH_SIZE, training=True, seed=SEED,
                             augmenter=augmenter, drawer=lu.make_drawer(preprocessing, seed=SEED))
val_data = lu.make_dataset(arrays["x_val"], arrays["y_val"], BATCH_SIZE)
steps = math.ceil(len(arrays["x_train"]) / BATCH_SIZE) * EPOCHS
schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=steps, alpha=0.01)
loss = lu.bce_dice_loss if DICE_WEIGHT == 1 else lu.WeightedBceDiceLoss(DICE_WEIGHT)  # as in 03_unet
model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=[lu.dice_coef, lu.iou_coef])

# %%
models_dir = output_dir / "models"
models_dir.mkdir(parents=True, exist_ok=True)
callbacks = [
    lu.EpochTimer(),
    keras.callbacks.ModelCheckpoint(models_dir / "resunet.in-progress.keras", monitor="val_iou_coef", mode="max",
                                    save_best_only=True),
    keras.callbacks.CSVLogger(models_dir / "resunet.in-progress_history.csv"),
    keras.callbacks.TerminateOnNaN(),
]
history = model.fit(train_data, validation_data=val_data, epochs=EPOCHS, callbacks=callbacks, verbose=2,
                    shuffle=False)  # tf.data shuffles already; the history is also in the CSV

# %%
settings = {**preprocessing, "epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
            "learning_rate_schedule": "cosine decay to 1%", "base_filters": BASE_FILTERS,
            "mixed_precision": MIXED_PRECISION, "dice_weight": DICE_WEIGHT, "seed": SEED,
            "training_slices": list(arrays["names_train"]), "validation_slices": list(arrays["names_val"])}
record = finish_training(model, "resunet", models_dir, settings)
model = keras.saving.load_model(models_dir / "resunet.keras")  # the best epoch, not the last
print(f"best epoch {record['best_epoch']} of {EPOCHS}: validation IoU {record['best_val_iou']:.4f}, "
      f"Dice {record['best_val_dice']:.4f}; {record['seconds_per_epoch']:.1f} s per epoch on {record['device']}")

# %% [markdown]
# ## Training curves, over the U-Net's
# Training (dashed) and validation (solid), with 03's U-Net for comparison: yours if 03 ran here, else
# the committed one (trained at the defaults).

# %%
unet_history = models_dir / "unet_history.csv"
unet_label = "U-Net (03)" if unet_history.is_file() else "U-Net (committed)"
unet_history = unet_history if unet_history.is_file() else REPO_ROOT / "models" / "unet_history.csv"
lu.plot_history({"Residual U-Net": pd.read_csv(models_dir / "resunet_history.csv"), unet_label: pd.read_csv(unet_history)},
                path=output_dir / "figures" / "04_resunet_curves.png", synthetic=preprocessing["synthetic"]);

# %% [markdown]
# ## Its predictions
# The same typical validation slice as in 03: the probability map, and the mask at 0.5 over the truth.

# %%
index = int(np.argsort([mask.sum() for mask in arrays["y_val"]])[len(arrays["y_val"]) // 2])  # 03's slice
probability = model.predict(arrays["x_val"][index:index + 1], verbose=0)[0, ..., 0]
truth = arrays["y_val"][index, ..., 0]
dice = float(lu.dice_coef(truth[None, ..., None], probability[None, ..., None])[0])
lu.show_pairs([[arrays["x_val"][index, ..., 0], probability, lu.error_overlay(arrays["x_val"][index, ..., 0], truth,
                                                                             probability >= 0.5)]],
              ["input", "lung probability", f"mask at 0.5: Dice {dice:.3f}\nred: extra, blue: missed"],
              title=f"Residual U-Net on validation slice {arrays['names_val'][index]}",
              path=output_dir / "figures" / "04_predictions.png", synthetic=preprocessing["synthetic"], size=3.6);

# %% [markdown]
# ## This run
# The parameters as this run saw them, the data, the device and the library versions: what a rerun
# needs to match.

# %%
show_config(globals(), data=preprocessing["data_source"] + lu.data_label(preprocessing["synthetic"]),
            slices=preprocessing["slices"])

# %% [markdown]
# ## What you learned
# - A residual block adds a learned correction to its input; where the channels change, a 1x1
#   convolution projects the shortcut so that the two can be added.
# - The Residual U-Net is 03's U-Net with that block in every stage: the same skeleton, data, loss and
#   training, so that 05 compares the blocks and nothing else.
# - Residual connections are almost free: the network grows by a few percent.
#
# ## Try this
# 1. Compare `build_resunet(256, 8).count_params()` with 03's `build_unet(256, 8)`. Which layers hold the
#    difference, and why do only some blocks need them? (Hint: `layer.name` and `layer.count_params()`
#    for every layer in `model.layers`.)
# 2. Write a *pre-activation* block (He et al., 2016; d2l's exercise): batch norm and ReLU before each
#    convolution, and nothing after the sum. Build the network with it and train: does it change the
#    validation Dice?
# 3. Drop the shortcut (`return layers.Activation("relu")(y)`) and count the parameters again. What
#    became of the projections, and which network is left? Train it and compare the curves. (Hint: a
#    functional model keeps only the layers on a path from its input to its output.)
#
# **Next →** [05_evaluate](05_evaluate.ipynb): both models on held-out slices, and on whole scans.
