"""The plumbing of a notebook's first cells, kept out of the lesson: ``start()`` (the set-up cell's last
line), ``check_parameters(globals())`` (refuses what cannot work, before any work), ``load_pairs`` and
``load_arrays`` (a notebook's inputs, made first where they are missing, in one printed line) and
``show_config(globals())`` (the configuration of the run, printed at the end by one call)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def start() -> Path:
    """Work in ``notebooks/`` (in Colab too), quiet TensorFlow's start-up, say the runtime; return the repository."""
    if "google.colab" in sys.modules:
        os.chdir(REPO_ROOT / "notebooks")
    import lungseg_utils  # noqa: F401  first: it quiets TensorFlow's native start-up lines

    from lungseg.runner import describe_runtime

    print(describe_runtime())
    return REPO_ROOT


def parameter_names() -> list[str]:
    """Every name a notebook's cell tagged ``parameters`` declares, over all the notebooks."""
    from lungseg.runner import declared_parameters, notebook_sources

    import jupytext

    names: list[str] = []
    for source in notebook_sources():
        names += [name for name in declared_parameters(jupytext.read(source)) if name not in names]
    return names


def show_config(namespace: dict, **resolved):
    """The notebook's parameters as this run sees them (papermill's included), then what they resolved to
    (paths shown from the repository), the device and the library versions, as one table."""
    from lungseg.report import config_table, describe_device

    declared = set(parameter_names())
    parameters = {name: value for name, value in namespace.items() if name in declared}  # in the cell's order
    return config_table({**parameters, **resolved, "device": describe_device()})


AUGMENTATION = {"ROTATION_DEGREES": "rotation_degrees", "FLIP_LEFT_RIGHT": "flip_left_right",
                "FLIP_UP_DOWN": "flip_up_down", "HU_SCALE": "hu_scale", "HU_SHIFT": "hu_shift",
                "HU_CONTRAST": "hu_contrast", "NOISE_HU": "noise_hu", "BLUR_SIGMA": "blur_sigma",
                "GAS_POCKETS": "gas_pockets", "LESIONS": "lesions", "RESOLUTION": "resolution"}


def check_parameters(namespace: dict) -> None:
    """Refuse the parameters in ``namespace`` (a notebook's ``globals()``) that cannot work, each by its name
    with the fix, before minutes of work: the image size, 02's augmentation, 03's and 04's training."""
    from lungseg.checks import check_augmentation, check_img_size, check_training_settings

    if "IMG_SIZE" in namespace:
        check_img_size(namespace["IMG_SIZE"])
    if any(name in namespace for name in AUGMENTATION):
        check_augmentation({key: namespace[name] for name, key in AUGMENTATION.items() if name in namespace})
    if "EPOCHS" in namespace:
        check_training_settings(*(namespace[name] for name in ("EPOCHS", "BATCH_SIZE", "IMG_SIZE", "BASE_FILTERS",
                                                              "LEARNING_RATE", "DICE_WEIGHT")))


def load_pairs(notebook: str, output_dir: str = "outputs", data_dir: str = ""):
    """01's record of the data, its verified pairs and its HU calibration (01 runs first where they are
    missing); says in one line what they are."""
    import json

    import pandas as pd

    from lungseg.data import dataset_calibration
    from lungseg.runner import ensure_inputs
    from lungseg_utils import data_label

    ensure_inputs(notebook, output_dir, data_dir=data_dir)
    data = REPO_ROOT / output_dir / "data"
    dataset = json.loads((data / "dataset.json").read_text())
    pairs = pd.read_csv(data / "pairs.csv")
    calibration = dataset_calibration(dataset)  # 01's: the stored values -> standard HU
    print(f"data: {len(pairs)} verified pairs of {Path(dataset['root']).name} ({dataset['source']})"
          f"{data_label(dataset['synthetic'])}; "
          f"standard HU = {calibration['scale']:.3f} x stored {calibration['offset']:+.1f} (01)")
    return dataset, pairs, calibration


def load_arrays(notebook: str, output_dir: str = "outputs", img_size: int = 256, data_dir: str = ""):
    """02's arrays and its record of how they were made (01 and 02 run first where they are missing, or were
    made at another size); says in one line what they are."""
    import json

    import numpy as np

    from lungseg.runner import ensure_inputs
    from lungseg_utils import data_label

    ensure_inputs(notebook, output_dir, img_size, data_dir=data_dir)
    data = REPO_ROOT / output_dir / "data"
    preprocessing = json.loads((data / "preprocess.json").read_text())
    with np.load(data / "arrays.npz") as archive:
        arrays = dict(archive)
    slices = {split: len(arrays[f"x_{split}"]) for split in ("train", "val", "test")}
    print(f"data: {slices['train']} training, {slices['val']} validation and {slices['test']} test slices of "
          f"{preprocessing['img_size']}x{preprocessing['img_size']} of {Path(preprocessing['data_root']).name}"
          f"{data_label(preprocessing['synthetic'])} (02)")
    return arrays, preprocessing
