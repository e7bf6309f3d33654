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
    """All 217 real pairs at 64 px, split as 02_preprocess splits them (seed 0), plus the split's names."""
    import numpy as np

    from lungseg.data import find_pairs, read_mask, read_slice
    from lungseg.preprocess import make_split, preprocess_slice, resize_mask

    pairs = find_pairs(real_data)
    pairs = pairs.merge(make_split(pairs.name, seed=0), on="name")
    arrays = {}
    for split in ("train", "val", "test"):
        part = pairs[pairs.split == split]
        arrays[f"x_{split}"] = np.stack([preprocess_slice(read_slice(p), 64, -1000, 400) for p in part.image_path])[..., None]
        arrays[f"y_{split}"] = np.stack([resize_mask(read_mask(p), 64) for p in part.mask_path])[..., None]
        arrays[f"names_{split}"] = list(part.name)
    return arrays


QUICK_PREPROCESSING = {"img_size": 64, "hu_min": -1000, "hu_max": 400, "synthetic": False, "data_source": "folder",
                       "augmentation": {"rotation_degrees": 10.0, "flip_left_right": True, "flip_up_down": False}}


@pytest.fixture(scope="session")
def trained_unet(real_arrays, tmp_path_factory):
    """A U-Net (8 base filters) trained for 8 epochs on the real slices at 64 px: a few seconds."""
    from lungseg.models import unet
    from lungseg.training import train_model

    return train_model(lambda: unet(64, 8), real_arrays, QUICK_PREPROCESSING, name="unet",
                       output_dir=tmp_path_factory.mktemp("trained"), epochs=8, batch_size=8,
                       learning_rate=1e-3, seed=0)
