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
