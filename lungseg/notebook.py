"""The plumbing of a notebook's first cells, kept out of the lesson: ``start()`` (the setup cell's last
line) and ``show_config(globals())`` (the configuration, printed by one call)."""

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
