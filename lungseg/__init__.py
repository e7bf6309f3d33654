"""lungseg: the code behind the notebooks, split by topic. Notebooks import ``lungseg_utils``."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the notebooks
