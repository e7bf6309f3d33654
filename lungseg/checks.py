"""Checks that refuse what cannot work, naming the parameter or file and the fix: training settings
before minutes of training, and a trained model's files before it is used."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

from lungseg.errors import LungsegError


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


def check_img_size(img_size) -> int:
    """The U-Nets halve the resolution four times, so the input size must be a multiple of 16."""
    if isinstance(img_size, bool) or not isinstance(img_size, numbers.Integral) or img_size < 16 or img_size % 16:
        raise LungsegError(f"IMG_SIZE={img_size!r} cannot be used: the models halve the resolution 4 times, so it "
                           "must be a positive multiple of 16 (e.g. 128, 256, 384, 512).")
    return int(img_size)


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
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    needed, available = estimate_training_memory_gb(img_size, base_filters, batch_size), available_memory_gb()
    if available is not None and needed > 0.8 * available:
        raise LungsegError(
            f"BATCH_SIZE={batch_size} at IMG_SIZE={img_size}, BASE_FILTERS={base_filters} needs about "
            f"{needed:.1f} GB for training, but only {available:.1f} GB are available on this CPU "
            "machine. Lower BATCH_SIZE (or IMG_SIZE).")


def check_augmentation(augmentation: dict) -> None:
    """02's augmentation parameters: numbers >= 0; HU_SCALE and HU_CONTRAST below 1; BLUR_SIGMA and the
    shares GAS_POCKETS, LESIONS and RESOLUTION at most 1."""
    limits = {"rotation_degrees": 180, "hu_scale": 0.99, "hu_shift": 1000, "hu_contrast": 0.99, "noise_hu": 500,
              "blur_sigma": 1.0, "gas_pockets": 1.0, "lesions": 1.0,
              "resolution": 1.0}
    for key, limit in limits.items():
        value = augmentation.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= limit:
            raise LungsegError(f"{key.upper()}={value!r}: use a number from 0 (off) to {limit}.")


def check_settings(settings, name="settings") -> None:
    """A model's record must say how its input was made: image size and HU window."""
    missing = [key for key in ("img_size", "hu_min", "hu_max") if not isinstance(settings, dict) or key not in settings]
    if missing:
        raise LungsegError(f"{name} lacks {', '.join(missing)}: give the model's record (the .json written beside "
                           "its .keras; load_trained_model returns it), which says how its input was made.")


def read_model_record(path) -> dict:
    """The record a model was trained with, ``<name>.json`` beside ``<name>.keras``; both files must be there."""
    import json

    path = Path(path)
    for needed in (path, path.with_suffix(".json")):
        if not needed.is_file():
            raise LungsegError(f"{needed} is missing: train the model first (notebooks 03_unet / 04_resunet), "
                               "or use the committed models in the repository's models/ folder.")
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        check_settings(record, path.with_suffix(".json"))
    except ValueError as error:  # not JSON, or not a model's record
        raise LungsegError(f"{path.with_suffix('.json')}: not a model record ({error}). It is written with the "
                           "model by 03/04: train again, or copy both files from the repository's models/.") from None
    return record


def explain_load_error(path, error) -> LungsegError:
    """Why ``keras.saving.load_model(path)`` failed, and what to do: a newer Keras wrote it, or it is damaged."""
    import keras

    from lungseg.portable import saved_by  # the Keras version that wrote the file, if it says

    if saved_by(path) and saved_by(path) != keras.__version__:
        return LungsegError(f"{path}: saved by Keras {saved_by(path)}, which this Keras {keras.__version__} cannot "
                            f"read ({type(error).__name__}). Upgrade Keras (pip install -U keras), or use the "
                            "repository's committed models, which load on Keras 3.8 and newer.")
    return LungsegError(f"{path}: cannot be loaded as a Keras model ({type(error).__name__}); the file may be "
                        "truncated or damaged (an interrupted copy or download). Train again (03/04), or copy "
                        "it again with its .json from the repository's models/.")


def check_scan_settings(model: str, scan: str, models=("unet", "resunet")) -> None:
    """06's parameters, before anything is downloaded or loaded: MODEL one of the models, SCAN an existing path."""
    if model not in models:
        raise LungsegError(f"MODEL={model!r} is not one of {list(models)}: set MODEL = \"resunet\" (or \"unet\").")
    if scan and not Path(scan).expanduser().exists():
        raise LungsegError(f"SCAN={scan!r} does not exist ({Path(scan).expanduser().resolve()}). Point it at your CT (a "
                           "DICOM series folder or a NIfTI file; in Colab, upload it first: see 'Your own scan'), "
                           "or leave it empty for the example scan.")


def choose_models_dir(models_dir: str, output_dir, names: list, repo_root):
    """``MODELS_DIR`` if given; else ``OUTPUT_DIR/models`` when every model is there (you trained them in
    03/04); else the repository's committed ``models/``, said in one line."""
    from pathlib import Path

    from lungseg.report import repo_path

    if models_dir:
        return Path(repo_root) / Path(models_dir).expanduser()
    trained = Path(output_dir) / "models"
    if all((trained / f"{name}.keras").is_file() for name in names):
        return trained
    print(f"Models: the committed ones in {repo_path(Path(repo_root) / 'models')} ({repo_path(trained)} holds no "
          "trained pair of them; 03 and 04 make one).")
    return Path(repo_root) / "models"


def check_models_fit_data(records: dict, dataset: dict, models_dir) -> None:
    """Models that learnt real CT are not scored on synthetic phantoms: the score would measure nothing."""
    real_ct_models = [name for name, record in records.items() if not record["synthetic"]]
    if dataset["synthetic"] and real_ct_models:
        import sys

        where = ("In Colab each notebook runs on its own machine: set DATA_DIR to a folder holding the data (01_download "
                 "says how), or run again when kaggle.com can be reached." if "google.colab" in sys.modules else
                 "Set DATA_DIR to a folder holding the data, or run 01_download where kaggle.com can be reached; to "
                 "score models that learnt the phantoms, train them here first (03_unet, 04_resunet).")
        raise LungsegError(f"The data are SYNTHETIC phantoms, and {', '.join(real_ct_models)} in "
                           f"{Path(models_dir).name}/ learnt real CT: scoring them on phantoms measures nothing. {where}")
