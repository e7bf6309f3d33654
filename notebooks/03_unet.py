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
# each scale. Here we build it from scratch with the Keras functional API, write its loss and
# metrics, feed it with `tf.data`, and train it with `compile` and `fit`, keeping the epoch with the
# best validation IoU. Every piece is a cell you can change and re-run: another depth, another
# block, another loss. Cells marked `#@save` are also in `lungseg_utils.py` (04 and 05 use them).

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
import time

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import layers, ops

import lungseg_utils as lu  # the #@save cells of 01-03
from lungseg_utils import augment_pair, data_label, save_figure  # used by this notebook's #@save cells
from lungseg.report import draw_unet, stage_summary  # the U as a drawing; a model as one row per stage
from lungseg.notebook import check_parameters, load_arrays  # refuses what cannot work; 02's arrays, made if missing
from lungseg.training import finish_training  # the best epoch's model and its record, once fit has ended

# %% [markdown]
# ## Parameters
# The defaults train in 4–14 minutes per model on 2 CPU cores, by the host.
# `IMG_SIZE` is the size the slices are resized to (02 makes the arrays at this size if needed).

# %% tags=["parameters"]
DATA_DIR = ""  # the data folder, for 01 if it must run first (empty: as 01 decides; see 01's Parameters)
OUTPUT_DIR = "outputs"
IMG_SIZE = 256
EPOCHS = 25
BATCH_SIZE = 8
LEARNING_RATE = 3e-3  # not the usual 1e-3: see "Compile" below
BASE_FILTERS = 8
MIXED_PRECISION = False  # True: compute in bfloat16 where the hardware supports it (see "Mixed precision")
DICE_WEIGHT = 1.0  # the loss is BCE + DICE_WEIGHT x (1 - soft Dice); see "Loss and metrics"
SEED = 0

# %%
output_dir = REPO_ROOT / OUTPUT_DIR
check_parameters(globals())  # the image size and the training settings: refused now, not after minutes of training
arrays, preprocessing = load_arrays("03", OUTPUT_DIR, IMG_SIZE, DATA_DIR)  # 02's arrays (01 and 02 first if missing)

# %% [markdown]
# ## The building block
# Every stage of the U-Net is the same block: two 3x3 convolutions, each followed by batch
# normalisation (which keeps activations in a stable range and allows a larger learning rate) and a
# ReLU. Batch norm's moving statistics, used at validation and inference, follow the batches with
# momentum 0.9: Keras' default 0.99 needs hundreds of steps to settle, and we have about 20 per epoch.

# %%
def conv_block(x, filters, name):
    for index in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{index}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x

# %% [markdown]
# ## The network
# Four times down: a block, then 2x2 max-pooling (half the resolution; the next block has twice the
# filters). A bottleneck block at 1/16 of the input size. Four times up: a 2x2 transpose convolution
# doubles the resolution, the encoder's features of that scale are concatenated (the skip
# connection), and a block merges them. A 1x1 convolution with a sigmoid gives each pixel's
# probability of being lung. Hence `IMG_SIZE` must be a multiple of 2⁴ = 16.
#
# This is Ronneberger's shape, not his network: his convolutions are unpadded ("valid"), so each one
# trims the border and the output is smaller than the input, and he starts from 64 filters without
# batch normalisation. Ours pads ("same"), so the mask has the slice's size, normalises every
# convolution, and starts from `BASE_FILTERS = 8`, which trains in minutes on a CPU and still scores
# a Dice of about 0.98 on held-out slices (05).

# %%
def build_unet(img_size, base_filters, depth=4):
    inputs = keras.Input((img_size, img_size, 1), name="ct_slice")
    x, skips = inputs, []
    for level in range(depth):  # encoder: features at 1, 1/2, 1/4, 1/8 of the input size
        x = conv_block(x, base_filters * 2**level, name=f"down{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    x = conv_block(x, base_filters * 2**depth, name="bottleneck")  # 1/16: the widest view, the most filters
    for level in reversed(range(depth)):  # decoder: upsample, join the skip of the same size, refine
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level + 1}_transpose")(x)
        x = layers.Concatenate(name=f"up{level + 1}_skip")([x, skips[level]])
        x = conv_block(x, filters, name=f"up{level + 1}")
    # float32 output: under mixed precision the probabilities and the loss keep full precision
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="lung_probability")(x)
    return keras.Model(inputs, outputs, name="unet")

# %% [markdown]
# The same network as a drawing, at this notebook's `IMG_SIZE` and `BASE_FILTERS`: the resolution halves
# on the way down while the filters double, and each skip hands the decoder the encoder's sharp
# features of its scale, which the bottleneck's coarse view has lost.

# %%
draw_unet(IMG_SIZE, BASE_FILTERS);

# %% [markdown]
# ## Mixed precision (optional)
# With `MIXED_PRECISION = True` the layers compute in bfloat16 (half the bits of float32, the same
# range) and keep their weights in float32. On hardware with bfloat16 arithmetic (GPUs from NVIDIA
# Ampere on; CPUs with AVX512-BF16 or AMX) a training step is faster; elsewhere it can be slower. The
# default stays float32, which every machine runs at full speed; bfloat16 gives the same
# cross-validated Dice within 0.0003 ([RESULTS.md](../RESULTS.md)). The policy is global: it applies to
# every layer built after this cell.

# %%
keras.mixed_precision.set_global_policy("mixed_bfloat16" if MIXED_PRECISION else "float32")

# %% [markdown]
# `model.summary()` lists all 68 layers; `stage_summary` shows one row per stage: what it outputs
# and how many weights it has.

# %%
keras.utils.set_random_seed(SEED)  # the same initial weights and shuffling on every run
model = build_unet(IMG_SIZE, BASE_FILTERS)
stage_summary(model)

# %% [markdown]
# ## Loss and metrics
# The loss is binary cross-entropy plus (1 - soft Dice). Cross-entropy gives smooth gradients from
# the start; the Dice term weighs the lung as much as the larger background. The soft Dice uses
# the probabilities themselves, so it has a gradient. The metrics, Dice and IoU, threshold the
# prediction at 0.5 first, as a mask would be. All three are per image (Keras averages them over
# the batch), written with `keras.ops`, and registered, so that a saved model loads with
# `keras.saving.load_model` once `lungseg_utils` is imported.
#
# `DICE_WEIGHT` weighs the two terms: the loss is BCE + `DICE_WEIGHT` x (1 - soft Dice), as MONAI's
# `DiceCELoss` does with `lambda_dice`. Per image, the Dice term counts a small lung as much as a
# large one; cross-entropy counts pixels. A weight other than 1 compiles `WeightedBceDiceLoss`, the
# same loss as a Keras `Loss` object, because a model saved with a plain function keeps only its
# name, not the weight. The default is 1: a weight of 3 gives the same cross-validated Dice within
# 0.0002.

# %%
#@save
_AXES = (1, 2, 3)  # height, width, channel: everything but the batch


@keras.saving.register_keras_serializable(package="lungseg")
def dice_coef(y_true, y_pred, threshold=0.5, eps=1e-6):
    """Per-image Dice 2|T∩P| / (|T| + |P|) of the prediction thresholded at 0.5 (both empty: 1)."""
    truth = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
    prediction = ops.cast(ops.cast(y_pred, "float32") >= threshold, "float32")
    intersection = ops.sum(truth * prediction, axis=_AXES)
    return (2.0 * intersection + eps) / (ops.sum(truth, axis=_AXES) + ops.sum(prediction, axis=_AXES) + eps)


@keras.saving.register_keras_serializable(package="lungseg")
def iou_coef(y_true, y_pred, threshold=0.5, eps=1e-6):
    """Per-image IoU |T∩P| / |T∪P| of the prediction thresholded at 0.5 (both empty: 1)."""
    truth = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
    prediction = ops.cast(ops.cast(y_pred, "float32") >= threshold, "float32")
    intersection = ops.sum(truth * prediction, axis=_AXES)
    union = ops.sum(truth, axis=_AXES) + ops.sum(prediction, axis=_AXES) - intersection
    return (intersection + eps) / (union + eps)


@keras.saving.register_keras_serializable(package="lungseg")
def bce_dice_loss(y_true, y_pred, smooth=1.0, dice_weight=1.0):
    """Per-image mean binary cross-entropy + dice_weight * (1 - soft Dice),
    soft Dice = (2Σtp + 1) / (Σt + Σp + 1)."""
    truth = ops.cast(y_true, "float32")
    probability = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
    bce = -ops.mean(truth * ops.log(probability) + (1.0 - truth) * ops.log(1.0 - probability), axis=_AXES)
    soft_dice = (2.0 * ops.sum(truth * probability, axis=_AXES) + smooth) / (
        ops.sum(truth, axis=_AXES) + ops.sum(probability, axis=_AXES) + smooth)
    return bce + dice_weight * (1.0 - soft_dice)


@keras.saving.register_keras_serializable(package="lungseg")
class WeightedBceDiceLoss(keras.losses.Loss):
    """``bce_dice_loss`` with another weight on the Dice term, as a Keras loss object: a saved model
    keeps the weight (a plain function is saved by its name only)."""

    def __init__(self, dice_weight=1.0, name="bce_dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        return bce_dice_loss(y_true, y_pred, dice_weight=self.dice_weight)

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight}

# %%
truth = np.zeros((1, 8, 8, 1), np.float32)
truth[0, 2:6, 2:6] = 1
for label, guess in [("perfect", truth), ("half the lung", truth * (np.arange(8) < 4)[None, None, :, None]),
                     ("unsure everywhere (0.5)", np.full_like(truth, 0.5))]:
    print(f"{label:24s} Dice {float(dice_coef(truth, guess)[0]):.3f}  IoU {float(iou_coef(truth, guess)[0]):.3f}  "
          f"loss {float(bce_dice_loss(truth, guess)[0]):.3f}")

# %% [markdown]
# "Half the lung" has the higher Dice and yet the higher loss. BCE charges each pixel -log(the
# probability it gave the truth): a lung pixel called background with certainty (1e-7 after clipping)
# costs -log(1e-7) ≈ 16, while 0.5 costs -log(0.5) ≈ 0.69. The 8 lung pixels missed with certainty,
# out of 64, cost 8 x 16 / 64 ≈ 2.0; the Dice term adds 0.32. The loss prefers honest doubt to a
# confident mistake, and its gradient pushes hardest where the model is sure and wrong; the metrics,
# thresholded at 0.5, see only the masks.

# %% [markdown]
# ## The input pipeline
# `tf.data` feeds the training slices in a new random order every epoch, in batches, prepared while
# the previous batch trains (`prefetch`). Each training batch gets 02's changes drawn afresh: first
# the gas pockets and the coarser grid (by default), which `SliceDrawer` draws in NumPy, called
# through `tf.numpy_function`; then the changes of intensity, by Keras layers. Validation slices are
# neither shuffled nor changed.

# %%
#@save
def make_dataset(images, masks, batch_size: int, training: bool = False, seed: int = 0, augmenter=None,
                 drawer=None):
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and drawer is not None:  # NumPy code in the pipeline: new gas pockets, lesions, coarser grids
        dataset = dataset.map(lambda x, y: (tf.ensure_shape(tf.numpy_function(drawer, [x, y], tf.float32), x.shape), y))
    if training and augmenter is not None:
        dataset = dataset.map(lambda x, y: augment_pair(x, y, augmenter))
    return dataset.prefetch(tf.data.AUTOTUNE)

# %%
augmenter = lu.make_augmenter(**preprocessing["augmentation"], hu_window=(preprocessing["hu_min"],
                                  preprocessing["hu_max"]), seed=SEED)  # None: augmentation off
drawer = lu.make_drawer(preprocessing, seed=SEED)  # None: no gas pockets, lesions or coarser grid
train_data = make_dataset(arrays["x_train"], arrays["y_train"], BATCH_SIZE, training=True, seed=SEED,
                          augmenter=augmenter, drawer=drawer)
val_data = make_dataset(arrays["x_val"], arrays["y_val"], BATCH_SIZE)
print(f"{len(train_data)} training batches and {len(val_data)} validation batches of up to {BATCH_SIZE} slices")

# %% [markdown]
# One training batch, as `fit` will see it: shuffled, with its gas pockets and coarser grids, augmented
# (noise, blur, HU scale and shift), the mask unchanged. It is drawn from a copy of the pipeline, so
# that training's own random draws stay as they are.

# %%
preview = make_dataset(arrays["x_train"], arrays["y_train"], BATCH_SIZE, training=True, seed=SEED,
                       augmenter=lu.make_augmenter(**preprocessing["augmentation"], hu_window=(
                           preprocessing["hu_min"], preprocessing["hu_max"]), seed=SEED),
                       drawer=lu.make_drawer(preprocessing, seed=SEED))
images, masks = next(iter(preview))
lu.show_pairs([list(images.numpy()[:4, ..., 0]), list(masks.numpy()[:4, ..., 0])], [f"slice {i + 1}" for i in range(4)],
              ["input", "mask"], title=f"One training batch from tf.data: {tuple(images.shape)} images",
              synthetic=preprocessing["synthetic"], size=2.4);

# %% [markdown]
# ## Compile
# Adam, with a learning rate that follows a cosine from `LEARNING_RATE` down to 1% of it over the
# whole run: large steps early, fine ones at the end.
#
# Why 3e-3 and not the usual 1e-3: Adam moves each weight by at most about the learning rate per
# step, and 25 epochs of 151 slices are only about 475 steps: at 1e-3 the background's probability
# cannot fall far from where it starts. At 3e-3 it falls below 0.01 (the probability map at the end
# shows it), and the cross-validated Dice is 0.001 to 0.002 higher than at 1e-3.

# %%
steps = math.ceil(len(arrays["x_train"]) / BATCH_SIZE) * EPOCHS
schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=steps, alpha=0.01)
loss = bce_dice_loss if DICE_WEIGHT == 1 else WeightedBceDiceLoss(DICE_WEIGHT)  # a weight needs the Loss object
model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=[dice_coef, iou_coef])

# %% [markdown]
# ## Fit, keeping the best epoch
# Keras callbacks do the bookkeeping:
# - `ModelCheckpoint` saves the model whenever the validation IoU improves. It writes to
#   `unet.in-progress.keras`, which becomes `unet.keras` only when training has ended, so an
#   interrupted run never replaces an earlier complete model.
# - `CSVLogger` writes the history, one row per epoch; `TerminateOnNaN` stops a run whose loss
#   has become NaN (bad data, too large a learning rate).
# - `EpochTimer` (below) adds each epoch's seconds to that history.
#
# After `fit`, `finish_training` renames the files and writes the model's record (`unet.json`:
# its preprocessing, slices, best epoch, timings), which 05 and `predict.sh` read.

# %%
#@save
class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's duration to the logs as 'seconds' (CSVLogger then writes it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = time.perf_counter() - self.started


# %%
models_dir = output_dir / "models"
models_dir.mkdir(parents=True, exist_ok=True)
callbacks = [
    EpochTimer(),
    keras.callbacks.ModelCheckpoint(models_dir / "unet.in-progress.keras", monitor="val_iou_coef", mode="max",
                                    save_best_only=True),
    keras.callbacks.CSVLogger(models_dir / "unet.in-progress_history.csv"),
    keras.callbacks.TerminateOnNaN(),
]
history = model.fit(train_data, validation_data=val_data, epochs=EPOCHS, callbacks=callbacks, verbose=2,
                    shuffle=False)  # tf.data shuffles already; the history is also in the CSV

# %%
settings = {**preprocessing, "epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
            "learning_rate_schedule": "cosine decay to 1%", "base_filters": BASE_FILTERS,
            "mixed_precision": MIXED_PRECISION, "dice_weight": DICE_WEIGHT, "seed": SEED,
            "training_slices": list(arrays["names_train"]), "validation_slices": list(arrays["names_val"])}
record = finish_training(model, "unet", models_dir, settings)
model = keras.saving.load_model(models_dir / "unet.keras")  # the best epoch, not the last
print(f"best epoch {record['best_epoch']} of {EPOCHS}: validation IoU {record['best_val_iou']:.4f}, "
      f"Dice {record['best_val_dice']:.4f}; {record['seconds_per_epoch']:.1f} s per epoch on {record['device']}")

# %% [markdown]
# ## Training curves
# Loss, Dice and IoU per epoch: training (dashed) and validation (solid).

# %%
#@save
def plot_history(histories: dict, path=None, synthetic: bool = False):
    """Loss, Dice and IoU per epoch, training (dashed) and validation (solid), for one or more models."""
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for (name, history), colour in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for axis, metric in zip(axes, ("loss", "dice_coef", "iou_coef")):
            axis.plot(history["epoch"] + 1, history[metric], "--", color=colour, alpha=0.6, label=f"{name} train")
            axis.plot(history["epoch"] + 1, history[f"val_{metric}"], "-", color=colour, label=f"{name} validation")
            axis.set_title(metric), axis.set_xlabel("epoch"), axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=8)
    figure.suptitle("Training curves" + data_label(synthetic))
    figure.tight_layout()
    return save_figure(figure, path, synthetic)

# %%
plot_history({"U-Net": pd.read_csv(models_dir / "unet_history.csv")}, path=output_dir / "figures" / "03_unet_curves.png",
             synthetic=preprocessing["synthetic"]);

# %% [markdown]
# ## A first look at its predictions
# The network's output is a probability per pixel; the mask is where it is at least 0.5. On a
# validation slice: the probability map (nearly everything is sure: near 0 or 1), and the mask
# over the truth, with the pixels it missed in blue and the extra ones in red. `05_evaluate` scores
# both models properly, at the slices' native resolution.

# %%
#@save
def error_overlay(image01: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with false positives in red and false negatives in blue."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    rgb[prediction.astype(bool) & ~truth.astype(bool)] = [1.0, 0.1, 0.1]
    rgb[truth.astype(bool) & ~prediction.astype(bool)] = [0.1, 0.4, 1.0]
    return rgb

# %%
index = int(np.argsort([mask.sum() for mask in arrays["y_val"]])[len(arrays["y_val"]) // 2])  # a typical slice
probability = model.predict(arrays["x_val"][index:index + 1], verbose=0)[0, ..., 0]
truth = arrays["y_val"][index, ..., 0]
figure, axes = plt.subplots(1, 3, figsize=(12, 4.2))
axes[0].imshow(arrays["x_val"][index, ..., 0], cmap="gray"), axes[0].set_title("input (window -1000..400 HU)")
shown = axes[1].imshow(probability, cmap="magma", vmin=0, vmax=1)
axes[1].set_title("lung probability"), figure.colorbar(shown, ax=axes[1], fraction=0.046)
axes[2].imshow(error_overlay(arrays["x_val"][index, ..., 0], truth, probability >= 0.5))
axes[2].set_title(f"mask at 0.5: Dice {float(dice_coef(truth[None, ..., None], probability[None, ..., None])[0]):.3f}\n"
                  "red: extra, blue: missed")
for axis in axes:
    axis.set_xticks([]), axis.set_yticks([])
figure.suptitle(f"U-Net on validation slice {arrays['names_val'][index]}" + data_label(preprocessing["synthetic"]))
save_figure(figure, output_dir / "figures" / "03_probability_map.png", preprocessing["synthetic"]);

# %% [markdown]
# ## This run
# The parameters as this run saw them, the data, the device and the library versions: what a rerun
# needs to match.

# %%
show_config(globals(), data=preprocessing["data_source"] + lu.data_label(preprocessing["synthetic"]),
            slices=preprocessing["slices"])

# %% [markdown]
# ## What you learned
# - A U-Net: an encoder that halves the resolution four times, a bottleneck, and a decoder that brings
#   each scale's features back through skip connections; a sigmoid gives each pixel's probability of lung.
# - The loss adds binary cross-entropy (every pixel) and a soft Dice term (the overlap as a whole);
#   Dice and IoU, thresholded at 0.5, are the metrics.
# - `tf.data` feeds augmented batches; `fit` with `ModelCheckpoint` keeps the epoch with the best
#   validation score, not the last.
#
# ## Try this
# 1. Build `build_unet(IMG_SIZE, BASE_FILTERS, depth=3)` and compare its `count_params()` with this
#    model's. Which stage holds most of the parameters, and why? Train it: what does one stage fewer
#    cost in validation Dice? (Hint: count the filters of the deepest block.)
# 2. Train with the cross-entropy alone, `loss=lambda t, p: bce_dice_loss(t, p, dice_weight=0)`. How do
#    its training curves differ from these, and on which slices would you expect the Dice term to matter?
# 3. In "Loss and metrics", score a prediction of 0.5 everywhere and a confident mask with half the lung
#    missing. Which has the lower loss, and which the higher Dice at 0.5? Why do the two disagree?
#
# **Next →** [04_resunet](04_resunet.ipynb): the same network with residual blocks.
