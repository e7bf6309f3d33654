"""Committed models that load on every Keras 3 that Colab may bring (3.8 and newer), not only on the pinned one.

A ``.keras`` file is a zip of ``config.json`` (the layers and their settings), ``model.weights.h5`` and
``metadata.json``. Newer Keras releases write settings that older ones do not know and refuse, e.g.
``input_axes``/``output_axes`` of the weight initializers (3.15) and the batch renormalisation
settings of ``BatchNormalization``. At their default values they change nothing, so
``make_portable`` leaves them out of the committed files: the model is the same and older Keras
reads it. (Checked by a test that loads the committed models with Keras 3.10 in a throwaway
environment and compares their predictions with the pinned Keras's.)
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

# Settings newer Keras releases added, at the default value that makes them no-ops.
NEWER_DEFAULTS = {"input_axes": None, "output_axes": None, "renorm": False, "renorm_clipping": None,
                  "renorm_momentum": 0.99}


def _without_newer_defaults(node):
    if isinstance(node, dict):
        return {key: _without_newer_defaults(value) for key, value in node.items()
                if not (key in NEWER_DEFAULTS and value == NEWER_DEFAULTS[key])}
    if isinstance(node, list):
        return [_without_newer_defaults(value) for value in node]
    return node


def newer_settings(path) -> list[str]:
    """The settings in a .keras file's config that Keras older than the pinned one cannot read."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            found.extend(key for key, value in node.items() if key in NEWER_DEFAULTS and value == NEWER_DEFAULTS[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    with zipfile.ZipFile(path) as archive:
        walk(json.loads(archive.read("config.json")))
    return sorted(set(found))


def make_portable(path) -> None:
    """Rewrite a .keras file in place without the newer settings at their defaults (atomically)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(_without_newer_defaults(json.loads(data))).encode()
            target.writestr(item, data)
    temporary.replace(path)


def saved_by(path) -> str | None:
    """The Keras version a .keras file says wrote it (its metadata.json), or None if it cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("metadata.json"))["keras_version"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
