"""lungseg: the code behind the notebooks, split by topic. Notebooks import ``lungseg_utils``."""

import contextlib
import os
import sys


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hide what native code writes to stderr (file descriptor 2) inside the block.

    TensorFlow's start-up messages (absl, oneDNN, 'could not find cuda drivers' on a CPU machine)
    bypass Python and TF_CPP_MIN_LOG_LEVEL; they would fill every notebook's first cells.
    Python exceptions are unaffected."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
with _quiet_native_stderr():
    import tensorflow

    tensorflow.config.list_physical_devices("GPU")  # the CUDA probe logs once, here, silenced
