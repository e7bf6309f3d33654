"""Make ``lungseg_utils.py`` from the notebooks' cells marked ``#@save`` (the d2l way).

The notebooks are the one source of the code they teach. A cell whose first line is ``#@save``
is also needed elsewhere (by a later notebook, by a saved model that needs its loss to load, by
the tests and the benchmark), so it is copied, unchanged and in notebook order, into
``lungseg_utils.py``. Never edit that file by hand: edit the cell, then run
``python -m lungseg.build_utils`` (a test fails while the file differs from the cells).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
TARGET = REPO_ROOT / "lungseg_utils.py"
MARK = "#@save"

HEADER = '''"""What several lungseg notebooks share: ``import lungseg_utils as lu``.

GENERATED from the notebook cells marked ``#@save`` by ``python -m lungseg.build_utils``: do not
edit this file; edit the cell in the notebook named above each part, then run that command.

Importing it registers the loss and metrics with Keras, so saved models load with plain
``keras.saving.load_model(path)``.
"""

import contextlib
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage, stats

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _quiet_native_stderr():
    """TensorFlow's native start-up lines (CUDA probes on a CPU machine, oneDNN) bypass Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with _quiet_native_stderr():
    import keras
    import tensorflow as tf
    from keras import ops

    tf.config.list_physical_devices("GPU")

from lungseg.checks import check_settings  # noqa: E402  a model's record says its image size and HU window
from lungseg.errors import LungsegError  # noqa: E402  the error every check raises: it names the file and the fix
'''


def saved_cells(notebooks_dir: Path = NOTEBOOKS) -> list[tuple[str, str]]:
    """(notebook name, cell source without the mark) of every ``#@save`` cell, in notebook order."""
    import jupytext

    cells = []
    for source in sorted(notebooks_dir.glob("[0-9][0-9]_*.py")):
        for cell in jupytext.read(source).cells:
            lines = cell.source.splitlines()
            if cell.cell_type == "code" and lines and lines[0].strip() == MARK:
                cells.append((source.stem, "\n".join(lines[1:]).strip("\n")))
    return cells


def build(notebooks_dir: Path = NOTEBOOKS) -> str:
    parts, current = [HEADER], None
    for notebook, code in saved_cells(notebooks_dir):
        if notebook != current:
            parts.append(f"\n# {'=' * 40} from notebooks/{notebook}.py\n")
            current = notebook
        parts.append("\n\n" + code + "\n")
    return "".join(parts).rstrip("\n") + "\n"


def main() -> int:
    TARGET.write_text(build())
    print(f"wrote {TARGET} from {len(saved_cells())} {MARK} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
