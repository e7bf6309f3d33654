"""How every notebook run documents itself: the machine, the library versions, its settings as a
table, paths relative to the repository, JSON records written atomically, and a model as one row
per stage. Bookkeeping that no lesson teaches, so the notebooks call it rather than show it."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd


def describe_device() -> str:
    """'GPU: <name>' for each GPU TensorFlow sees, else 'CPU: <processor> (<n> cores)'."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "GPU: " + ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
    processor = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        processor = models[0] if models else processor
    return f"CPU: {processor} ({os.cpu_count()} cores)"


def library_versions() -> dict:
    import cv2
    import keras
    import scipy
    import sklearn
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__, "opencv": cv2.__version__}


def repo_path(path) -> str:
    """A path as the notebooks print it, the same on every machine: relative to the repository, and one
    outside it (your data folder, a scan) by its name alone."""
    repository = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lungseg_utils.py").is_file()), Path.cwd())
    relative = os.path.relpath(Path(path).resolve(), repository)
    return Path(path).resolve().name if relative.startswith("..") else relative


def config_table(config: dict) -> pd.DataFrame:
    """A notebook's effective settings followed by the library versions, as a one-column table."""
    config = {key: repo_path(value) if isinstance(value, Path) else value for key, value in config.items()}
    return pd.Series({**config, **library_versions()}, name="value").astype(str).to_frame()


def write_json(path, record: dict) -> None:
    """Write a JSON record atomically (a temporary file, then a rename): never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
    temporary.replace(path)


def stage_summary(model) -> pd.DataFrame:
    """``model.summary()`` in one row per stage (layers named ``<stage>_...``): layers, output shape, weights."""
    rows = {}
    for layer in model.layers:
        row = rows.setdefault(layer.name.split("_")[0], {"layers": 0, "output": "", "weights": 0})
        row["layers"] += 1
        row["output"] = " x ".join(str(n) for n in layer.output.shape[1:])
        row["weights"] += layer.count_params()
    table = pd.DataFrame(rows).T
    table.loc["total"] = [len(model.layers), "", model.count_params()]
    return table


def draw_unet(img_size: int, base_filters: int, depth: int = 4, title: str = "U-Net"):
    """The U shape as a figure: each stage a box (its resolution and filters), down the left, across the
    bottleneck, up the right; the skip connections as arrows across the U. Drawn from the settings."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    figure, axis = plt.subplots(figsize=(9, 4.6))

    def height(level):  # the input at the top, the bottleneck at the bottom
        return 1.2 * (depth - level)

    def box(x, level, filters, colour):
        y = height(level)
        axis.add_patch(Rectangle((x - 0.7, y - 0.34), 1.4, 0.68, facecolor=colour, edgecolor="black"))
        size = img_size // 2**level
        axis.text(x, y, f"{size}x{size}\n{filters} filters", ha="center", va="center", fontsize=8)
        return x, y

    def arrow(start, end, style="-|>", colour="black", label="", shift=(0.0, 0.12)):
        axis.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=colour, lw=1.2))
        if label:
            axis.text((start[0] + end[0]) / 2 + shift[0], (start[1] + end[1]) / 2 + shift[1], label, ha="center",
                      va="center", fontsize=7, color=colour)

    down = [box(level * 1.6, level, base_filters * 2**level, "#cfe3f7") for level in range(depth)]
    bottom = box(depth * 1.6, depth, base_filters * 2**depth, "#f7d9c4")
    up = [box((2 * depth - level) * 1.6, level, base_filters * 2**level, "#d5efd0") for level in range(depth)]
    for level in range(depth):
        after = down[level + 1] if level + 1 < depth else bottom
        arrow((down[level][0] + 0.3, down[level][1] - 0.32), (after[0] - 0.3, after[1] + 0.32), label="max-pool",
              shift=(-0.75, -0.1))
        before = up[level + 1] if level + 1 < depth else bottom
        arrow((before[0] + 0.3, before[1] + 0.32), (up[level][0] - 0.3, up[level][1] - 0.32),
              label="transpose\nconv", shift=(0.75, -0.1))
        arrow((down[level][0] + 0.7, down[level][1]), (up[level][0] - 0.7, up[level][1]), style="-|>",
              colour="#6a3d9a", label="skip: concatenate")
    axis.text(down[0][0], height(0) + 0.6, "input: one CT slice", ha="center", fontsize=8)
    axis.text(up[0][0], height(0) + 0.6, "1x1 conv + sigmoid: lung probability", ha="center", fontsize=8)
    axis.text(bottom[0], height(depth) - 0.6, "bottleneck", ha="center", fontsize=8)
    axis.set_xlim(-1, 2 * depth * 1.6 + 1), axis.set_ylim(-0.9, height(0) + 1)
    axis.set_aspect("equal"), axis.axis("off"), axis.set_title(title + ": each box two 3x3 conv + BN + ReLU", fontsize=10)
    return figure
