"""Synthetic CT-like phantoms with lung masks, so that the pipeline runs without any download.

They are NOT real patients: every file name starts with ``SYNTHETIC_`` and the folder holds a
README saying so. Each 512x512 int16 slice in HU has a field-of-view circle (-2048 outside),
air (-1000), a body ellipse of soft tissue (~40 HU) and fat, two lungs (~-850 HU with vessels),
a heart, a vertebra (bone ~700 HU) and noise; the mask marks the two lungs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.errors import LungsegError

SYNTHETIC_PREFIX = "SYNTHETIC_"


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    cos, sin = np.cos(angle), np.sin(angle)
    y, x = yy - cy, xx - cx
    return ((x * cos + y * sin) / rx) ** 2 + ((-x * sin + y * cos) / ry) ** 2 <= 1.0


def make_phantom(rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """One phantom slice (int16 HU) and its lung mask (uint8 0/255)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    s = size / 512
    image = np.full((size, size), -1000.0, np.float32)
    body_ry, body_rx = rng.uniform(150, 185) * s, rng.uniform(205, 240) * s
    body_cy = c + rng.uniform(-10, 10) * s
    image[_ellipse(yy, xx, body_cy, c, body_ry, body_rx)] = -100  # subcutaneous fat
    image[_ellipse(yy, xx, body_cy, c, body_ry - 12 * s, body_rx - 12 * s)] = 40  # muscle/soft tissue
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        lung_rx = rng.uniform(60, 85) * s
        lung_ry = rng.uniform(95, 130) * s
        cx = c + side * rng.uniform(85, 105) * s
        cy = body_cy - rng.uniform(0, 20) * s
        lungs |= _ellipse(yy, xx, cy, cx, lung_ry, lung_rx, side * rng.uniform(0.0, 0.25))
    heart = _ellipse(yy, xx, body_cy + 20 * s, c + rng.uniform(0, 25) * s, rng.uniform(45, 65) * s,
                     rng.uniform(45, 70) * s)
    lungs &= ~heart
    lungs &= _ellipse(yy, xx, body_cy, c, body_ry - 28 * s, body_rx - 28 * s)  # a chest wall all round, as in a chest
    image[lungs] = -850
    image[heart] = 45
    spine = _ellipse(yy, xx, body_cy + body_ry - 55 * s, c, 22 * s, 20 * s)
    image[spine] = 700
    for _ in range(int(rng.integers(20, 40))):  # vessels: small bright dots inside the lungs
        y, x = np.argwhere(lungs)[rng.integers(lungs.sum())]
        image[_ellipse(yy, xx, y, x, rng.uniform(1.5, 4) * s, rng.uniform(1.5, 4) * s) & lungs] = -50
    image += rng.normal(0, 25, image.shape).astype(np.float32)
    image[(yy - c) ** 2 + (xx - c) ** 2 > (c - 1) ** 2] = -2048  # outside the field of view
    return np.round(image).astype(np.int16), (lungs * 255).astype(np.uint8)


def write_synthetic_dataset(folder: str | Path, count: int = 60, seed: int = 0, size: int = 512) -> Path:
    """Write ``count`` phantoms in the Kaggle layout (2d_images/, 2d_masks/, lung_stats.csv).

    A folder made earlier with the same count, seed and size is reused as it is; one made with other
    settings is replaced (it holds only phantoms: its README says so). Any other existing folder is refused."""
    import json
    import shutil

    import tifffile

    folder = Path(folder)
    wanted = {"count": count, "seed": seed, "size": size}
    made_with = folder / "synthetic.json"
    if made_with.is_file() and json.loads(made_with.read_text()) == wanted:
        return folder
    if folder.exists():
        if not (folder / "README.txt").is_file() or "SYNTHETIC" not in (folder / "README.txt").read_text():
            raise LungsegError(f"{folder} exists and was not made by lungseg.synthetic; refusing to replace it. "
                             "Move it away or choose another OUTPUT_DIR.")
        shutil.rmtree(folder)  # phantoms made with other settings
    names = [f"{SYNTHETIC_PREFIX}{index:04d}.tif" for index in range(count)]
    (folder / "2d_images").mkdir(parents=True, exist_ok=True)
    (folder / "2d_masks").mkdir(parents=True, exist_ok=True)
    (folder / "README.txt").write_text(
        "SYNTHETIC phantoms made by lungseg.synthetic - not real CT. For testing the pipeline only.\n"
    )
    rng = np.random.default_rng(seed)
    rows = []
    for name in names:
        image, mask = make_phantom(rng, size)
        tifffile.imwrite(folder / "2d_images" / name, image)
        tifffile.imwrite(folder / "2d_masks" / name, mask)
        inside = image[mask > 0].astype(np.float64)
        rows.append({
            "img_id": name, "lung_area_px": int((mask > 0).sum()),
            "lung_area_mm2": float((mask > 0).sum() * 0.703125),
            "lung_volume_fraction": float((mask > 0).mean()), "lung_mean_hu": inside.mean(),
            "lung_pd95_hu": np.percentile(inside, 95), "lung_pd05_hu": np.percentile(inside, 5),
        })
    pd.DataFrame(rows).to_csv(folder / "lung_stats.csv", index=False)
    made_with.write_text(json.dumps(wanted) + "\n")  # last: a folder without it is incomplete
    return folder
