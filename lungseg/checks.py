"""Training settings that cannot work are refused before minutes of training, naming the parameter."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from lungseg_utils import LungsegError, tf


def estimate_training_memory_gb(img_size: int, base_filters: int, batch_size: int) -> float:
    """A rough upper estimate of training memory: per image and level, about 12 float32 feature
    maps of that level's width are kept for the backward pass (convolutions, batch norm, ReLU,
    skips, gradients), encoder and decoder together."""
    per_image = sum((img_size / 2**level) ** 2 * base_filters * 2**level for level in range(5))
    return batch_size * per_image * 12 * 2 * 4 / 1e9


def available_memory_gb() -> float | None:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    return None


def check_training_settings(epochs, batch_size, img_size, base_filters, learning_rate=1e-3, dice_weight=1.0) -> None:
    """EPOCHS, BATCH_SIZE, BASE_FILTERS: whole numbers >= 1; LEARNING_RATE > 0; DICE_WEIGHT >= 0;
    and, on a CPU, a batch whose estimated memory fits in 80% of the memory available."""
    for name, value in (("EPOCHS", epochs), ("BATCH_SIZE", batch_size), ("BASE_FILTERS", base_filters)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise LungsegError(f"{name}={value!r}: use a whole number of at least 1.")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real) or not learning_rate > 0:
        raise LungsegError(f"LEARNING_RATE={learning_rate!r}: use a positive number such as 0.003.")
    if isinstance(dice_weight, bool) or not isinstance(dice_weight, numbers.Real) or not 0 <= dice_weight < math.inf:
        raise LungsegError(f"DICE_WEIGHT={dice_weight!r}: use a number of at least 0 (1.0: BCE + Dice, 0: BCE alone).")
    if tf.config.list_physical_devices("GPU"):
        return
    needed, available = estimate_training_memory_gb(img_size, base_filters, batch_size), available_memory_gb()
    if available is not None and needed > 0.8 * available:
        raise LungsegError(
            f"BATCH_SIZE={batch_size} at IMG_SIZE={img_size}, BASE_FILTERS={base_filters} needs about "
            f"{needed:.1f} GB for training, but only {available:.1f} GB are available on this CPU "
            "machine. Lower BATCH_SIZE (or IMG_SIZE).")


def check_augmentation(augmentation: dict) -> None:
    """02's augmentation parameters: numbers >= 0; HU_SCALE and HU_CONTRAST below 1, BLUR_SIGMA and GAS_POCKETS
    at most 1."""
    limits = {"rotation_degrees": 180, "hu_scale": 0.99, "hu_shift": 1000, "hu_contrast": 0.99, "noise_hu": 500,
              "blur_sigma": 1.0, "gas_pockets": 1.0}
    for key, limit in limits.items():
        value = augmentation.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= limit:
            raise LungsegError(f"{key.upper()}={value!r}: use a number from 0 (off) to {limit}.")
