"""Augmentation, the tf.data input pipeline, and the one training helper both models use."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lungseg.data import LungsegError, write_json
from lungseg.losses import bce_dice_loss, dice_coef, iou_coef


# --------------------------------------------------------------------------- augmentation
def augment_pair(image, mask, seed, rotation_degrees: float = 10.0, flip_left_right: bool = True,
                 flip_up_down: bool = False):
    """Randomly flip and rotate an image (H, W, 1) and its mask with the *same* transform.

    Arrays or tensors; ``seed`` is two integers (stateless random ops: the same seed gives the
    same transform).
    Image and mask are stacked as two channels and transformed together (bilinear); the mask
    is thresholded at 0.5 afterwards, so it stays binary. Rotation fills with 0, which is air
    after windowing. Up-down flips are off by default: an upside-down chest is not a CT slice
    a model will ever see, whereas left-right mirror images are plausible anatomy variants.
    """
    image, mask = tf.convert_to_tensor(image), tf.convert_to_tensor(mask)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    both = tf.concat([tf.cast(image, tf.float32), tf.cast(mask, tf.float32)], axis=-1)
    if flip_left_right:
        both = tf.image.stateless_random_flip_left_right(both, seeds[0])
    if flip_up_down:
        both = tf.image.stateless_random_flip_up_down(both, seeds[1])
    if rotation_degrees:
        limit = rotation_degrees * math.pi / 180.0
        angle = tf.random.stateless_uniform([], seeds[2], -limit, limit)
        both = rotate(both, angle)
    return both[..., :1], tf.cast(both[..., 1:] >= 0.5, mask.dtype)


def rotate(image, angle):
    """Rotate an (H, W, C) float image by ``angle`` radians about its centre (bilinear, 0 fill)."""
    height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    # The transform maps each output pixel (x, y) to the input pixel it samples from.
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return rotated[0]


def make_dataset(images: np.ndarray, masks: np.ndarray, batch_size: int, training: bool, seed: int = 0,
                 augmentation: dict | None = None) -> tf.data.Dataset:
    """A tf.data pipeline over arrays: for training, shuffled each epoch and augmented
    (``augmentation`` = keyword arguments of :func:`augment_pair`; None or all off: no augmentation);
    then batched and prefetched."""
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        if augmentation and any(augmentation.values()):
            dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.random(seed=seed).batch(2)))
            dataset = dataset.map(lambda pair, s: augment_pair(*pair, seed=s, **augmentation),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- machine facts
def describe_device() -> str:
    """'GPU: <name>' for each GPU TensorFlow sees, else 'CPU: <processor> (<n> cores)'."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
        return "GPU: " + ", ".join(names)
    processor = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {processor} ({os.cpu_count()} cores)"


def library_versions() -> dict:
    import cv2
    import scipy
    import tifffile

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "scipy": scipy.__version__,
            "opencv": cv2.__version__, "tifffile": tifffile.__version__}


def config_table(config: dict) -> pd.DataFrame:
    """A notebook's effective settings followed by the library versions, as a one-column table."""
    return pd.Series({**config, **library_versions()}, name="value").to_frame()


def training_summary(record: dict) -> str:
    """Three lines on a finished training run: best epoch and scores, speed and device, files."""
    return (f"best epoch {record['best_epoch']} of {record['epochs']}: validation IoU {record['best_val_iou']:.4f}, "
            f"Dice {record['best_val_dice']:.4f}\n{record['seconds_per_epoch']:.1f} s per epoch, "
            f"{record['training_seconds']:.0f} s in all on {record['device']}\n"
            f"saved {record['model_file']} with its settings (.json) and history (_history.csv) beside it")


def distribution_strategy() -> tf.distribute.Strategy:
    """Mirrored over all GPUs when there are several; the default strategy (one GPU or CPU) otherwise."""
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def estimate_training_memory_gb(img_size: int, base_filters: int, batch_size: int) -> float:
    """A rough upper estimate of training memory: per image and level, about 12 float32 feature
    maps of that level's width are kept for the backward pass (convolutions, batch norm, ReLU,
    skips, gradients), encoder and decoder together."""
    per_image = sum((img_size / 2**level) ** 2 * base_filters * 2**level for level in range(5))
    return batch_size * per_image * 12 * 2 * 4 / 1e9


def available_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return None


def check_training_settings(epochs: int, batch_size: int, img_size: int, base_filters: int) -> None:
    """Refuse settings that cannot work, with the parameter named: EPOCHS < 1, BATCH_SIZE < 1,
    or (on CPU) a batch whose estimated memory exceeds 80% of the memory available."""
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise LungsegError(f"EPOCHS={epochs!r}: train for at least 1 epoch.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise LungsegError(f"BATCH_SIZE={batch_size!r}: use a positive whole number such as 8.")
    if tf.config.list_physical_devices("GPU"):
        return
    needed, available = estimate_training_memory_gb(img_size, base_filters, batch_size), available_memory_gb()
    if available is not None and needed > 0.8 * available:
        raise LungsegError(
            f"BATCH_SIZE={batch_size} at IMG_SIZE={img_size}, BASE_FILTERS={base_filters} needs about "
            f"{needed:.1f} GB for training, but only {available:.1f} GB are available on this CPU "
            "machine. Lower BATCH_SIZE (or IMG_SIZE)."
        )


# --------------------------------------------------------------------------- training
class KeepBestModel(keras.callbacks.Callback):
    """Save the model whenever ``monitor`` improves - to a temporary file, then renamed, so an
    interruption never leaves a half-written model - and time every epoch."""

    def __init__(self, path: Path, monitor: str = "val_iou_coef"):
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        self.best, self.best_epoch, self.epoch_seconds = -np.inf, 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._started)
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            temporary = self.path.with_name(self.path.stem + ".partial.keras")
            self.model.save(temporary)
            temporary.replace(self.path)


@dataclass
class TrainingResult:
    model: keras.Model  # the best model by validation IoU (reloaded from its file)
    history: pd.DataFrame  # one row per epoch: loss, dice_coef, iou_coef and their val_ versions
    record: dict  # what is written to <name>.json


def load_training_inputs(output_dir: str | Path, img_size: int) -> tuple[dict, dict]:
    """The arrays and preprocessing settings that 02_preprocess wrote, checked against ``img_size``."""
    from lungseg.data import read_json
    from lungseg.preprocess import check_img_size, load_arrays

    check_img_size(img_size)
    preprocessing = read_json(Path(output_dir) / "data" / "preprocess.json", produced_by="notebooks/02_preprocess")
    return load_arrays(Path(output_dir) / "data" / "arrays.npz", img_size), preprocessing


def train_model(build_model, arrays: dict, preprocessing: dict, *, name: str, output_dir: str | Path,
                epochs: int, batch_size: int, learning_rate: float, seed: int,
                extra: dict | None = None) -> TrainingResult:
    """Compile and fit ``build_model()`` with BCE+Dice and Adam (cosine-decayed learning rate),
    augmenting the training slices as ``preprocessing["augmentation"]`` says,
    keep the best epoch by validation IoU in ``output_dir/models/<name>.keras``, log the history
    to ``<name>_history.csv`` and write ``<name>.json`` with settings, results and timings.

    The best model is first kept in ``<name>.in-progress.keras`` and moved to ``<name>.keras``
    only when training ends, so an interrupted run leaves an earlier complete model untouched.
    """
    models_dir = Path(output_dir) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    steps = math.ceil(len(arrays["x_train"]) / batch_size) * epochs
    with distribution_strategy().scope():
        model = build_model()
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.01)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=bce_dice_loss,
                      metrics=[dice_coef, iou_coef])
    augmentation = preprocessing.get("augmentation")
    train = make_dataset(arrays["x_train"], arrays["y_train"], batch_size, True, seed, augmentation)
    val = make_dataset(arrays["x_val"], arrays["y_val"], batch_size, False)
    in_progress = models_dir / f"{name}.in-progress.keras"
    keeper = KeepBestModel(in_progress)
    history_csv = models_dir / f"{name}_history.csv"
    started = time.perf_counter()
    model.fit(train, validation_data=val, epochs=epochs, verbose=2, shuffle=False,  # tf.data shuffles
              callbacks=[keeper, keras.callbacks.CSVLogger(str(history_csv))])
    total_seconds = time.perf_counter() - started
    final = models_dir / f"{name}.keras"
    in_progress.replace(final)
    history = pd.read_csv(history_csv)
    best = history.iloc[keeper.best_epoch - 1]
    record = {
        "model": name, **preprocessing, **(extra or {}), "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "learning_rate_schedule": "cosine decay to 1%", "seed": seed,
        "parameters": int(model.count_params()), "best_epoch": keeper.best_epoch,
        "best_val_iou": float(best["val_iou_coef"]), "best_val_dice": float(best["val_dice_coef"]),
        "seconds_per_epoch": float(np.mean(keeper.epoch_seconds[1:] or keeper.epoch_seconds)),
        "first_epoch_seconds": float(keeper.epoch_seconds[0]), "training_seconds": total_seconds,
        "device": describe_device(), "versions": library_versions(), "model_file": str(final),
    }
    write_json(models_dir / f"{name}.json", record)
    return TrainingResult(keras.saving.load_model(final), history, record)


def load_trained_model(path: str | Path) -> tuple[keras.Model, dict]:
    """Load ``<name>.keras`` and the settings it was trained with (``<name>.json`` beside it)."""
    import json

    path = Path(path)
    settings_path = path.with_suffix(".json")
    for needed in (path, settings_path):
        if not needed.is_file():
            raise LungsegError(f"{needed} is missing: train the model first (notebooks 03_unet / 04_resunet).")
    return keras.saving.load_model(path), json.loads(settings_path.read_text())
