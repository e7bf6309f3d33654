"""Shared fixtures: the real slices from ../shared (or $LUNGSEG_DATA_DIR), and small folders
that tests build from them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def real_data_dir() -> Path | None:
    candidates = [os.environ.get("LUNGSEG_DATA_DIR"), REPO_ROOT.parent / "shared" / "data" / "finding-lungs-in-ct-data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "2d_images").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real slices; a missing folder skips the test, except under CI=true, where it fails."""
    folder = real_data_dir()
    if folder is None:
        message = "real data not found: set LUNGSEG_DATA_DIR or put ../shared/data/finding-lungs-in-ct-data beside the repo"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def real_names(real_data) -> list[str]:
    return sorted(p.name for p in (real_data / "2d_images").glob("*.tif"))


SHARED_PAIRS = 217  # the shared folder holds 217 of the 267 Kaggle pairs; the tests count what is there


def split_sizes(n: int, fractions=(0.7, 0.15, 0.15)) -> dict:
    """The train/val/test sizes 02's split_slices gives n slices (validation and test rounded)."""
    val, test = round(fractions[1] * n), round(fractions[2] * n)
    return {"train": n - val - test, "val": val, "test": test}


@pytest.fixture
def small_kaggle_folder(tmp_path, real_data, real_names) -> Path:
    """A copy of 6 real pairs in the Kaggle layout, with the matching rows of lung_stats.csv."""
    import pandas as pd

    folder = tmp_path / "small"
    for part in ("2d_images", "2d_masks"):
        (folder / part).mkdir(parents=True)
        for name in real_names[:6]:
            shutil.copy(real_data / part / name, folder / part / name)
    stats = pd.read_csv(real_data / "lung_stats.csv")
    stats[stats.img_id.isin(real_names[:6])].to_csv(folder / "lung_stats.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def real_arrays(real_data) -> dict:
    """All the real pairs at 64 px, split as 02_preprocess splits them (seed 0), plus the split's names."""
    import numpy as np

    import lungseg_utils as lu
    from lungseg.data import find_pairs

    pairs = find_pairs(real_data)
    from notebook_code import definitions

    split_slices = definitions("02_preprocess", "split_slices")["split_slices"]  # 02's cell
    pairs = pairs.merge(split_slices(pairs.name, seed=0), on="name")
    arrays = {}
    for split in ("train", "val", "test"):
        part = pairs[pairs.split == split]
        arrays[f"x_{split}"] = np.stack([lu.preprocess_slice(lu.read_slice(p), 64, -1000, 400) for p in part.image_path])[..., None]
        arrays[f"y_{split}"] = np.stack([lu.resize_mask(lu.read_mask(p), 64) for p in part.mask_path])[..., None]
        arrays[f"names_{split}"] = np.array(part.name, dtype=str)
    return arrays


QUICK_PREPROCESSING = {"img_size": 64, "hu_min": -1000, "hu_max": 400, "synthetic": False, "data_source": "folder",
                       "augmentation": {"rotation_degrees": 0.0, "flip_left_right": False, "flip_up_down": False}}


def train_unet(arrays, epochs=8, learning_rate=1e-3, base_filters=8, seed=0):
    """The U-Net of 03_unet (its own cells), compiled and fitted as 03 does, at 64 px."""
    import keras

    import lungseg_utils as lu
    from notebook_code import definitions

    keras.utils.set_random_seed(seed)
    model = definitions("03_unet", "conv_block", "build_unet")["build_unet"](64, base_filters)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=lu.bce_dice_loss, metrics=[lu.dice_coef, lu.iou_coef])
    history = model.fit(lu.make_dataset(arrays["x_train"], arrays["y_train"], 8, training=True, seed=seed),
                        validation_data=lu.make_dataset(arrays["x_val"], arrays["y_val"], 8), epochs=epochs, verbose=0,
                        shuffle=False)
    return model, history.history


@pytest.fixture(scope="session")
def unet_training(real_arrays):
    """A U-Net (8 base filters) trained for 8 epochs on the real slices at 64 px (a few seconds): (model, history)."""
    return train_unet(real_arrays)


@pytest.fixture(scope="session")
def trained_unet(unet_training):
    """(model, settings): the settings are what a model's record holds for inference."""
    return unet_training[0], dict(QUICK_PREPROCESSING)


def write_training_inputs(arrays: dict, output_dir: Path, preprocessing: dict = QUICK_PREPROCESSING) -> Path:
    """outputs/data as 02_preprocess leaves it (arrays.npz, preprocess.json, dataset.json, pairs.csv),
    so that a training notebook finds its inputs without running 01 and 02."""
    import json

    import numpy as np

    data = output_dir / "data"
    data.mkdir(parents=True)
    np.savez(data / "arrays.npz", **arrays)
    (data / "preprocess.json").write_text(json.dumps({**preprocessing, "split": [0.7, 0.15, 0.15], "split_seed": 0,
                                                      "data_root": "", "slices": {}}))
    (data / "dataset.json").write_text(json.dumps({"source": "folder", "synthetic": False, "root": "",
                                                   "hu_calibration": {"scale": 1.0, "offset": 0.0}}))
    (data / "pairs.csv").write_text("name,image_path,mask_path\n")
    return output_dir


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No $LUNGSEG_DATA_DIR and no Kaggle credentials anywhere (environment or ~/.kaggle), as for a new user."""
    for variable in ("LUNGSEG_DATA_DIR", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session")
def committed():
    """The committed Residual U-Net and its record: what predict.sh uses without models of your own."""
    import lungseg_utils as lu

    return lu.load_trained_model(REPO_ROOT / "models" / "resunet.keras")


@pytest.fixture(scope="session")
def slices(real_data, real_names, committed):
    """Six real slices in standard HU, int16 as a scanner stores them (calibrated as the committed models'
    training slices were; from different patients: a test volume, not anatomy)."""
    import numpy as np

    import lungseg_utils as lu

    calibration = committed[1]["hu_calibration"]
    return [np.round(lu.to_standard_hu(lu.read_slice(real_data / "2d_images" / name), calibration)).astype(np.int16)
            for name in real_names[:6]]
