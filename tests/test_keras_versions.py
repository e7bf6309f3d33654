"""The committed models on an older Keras 3: Colab brings its own TensorFlow and Keras, and 05 and
predict.sh fall back on these files. A throwaway environment with Keras 3.10 and the lightest backend
that runs here (PyTorch, CPU) loads them and must predict what the pinned Keras predicts."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lungseg_utils as lu
from lungseg.portable import NEWER_DEFAULTS, newer_settings

from conftest import REPO_ROOT

OLD_KERAS = "3.10.0"
MODELS = ("unet", "resunet")


def test_the_committed_models_carry_no_setting_that_older_keras_refuses():
    for name in MODELS:
        assert newer_settings(REPO_ROOT / "models" / f"{name}.keras") == [], name
    assert {"input_axes", "renorm"} <= set(NEWER_DEFAULTS)


@pytest.fixture(scope="module")
def old_keras(tmp_path_factory):
    venv = tmp_path_factory.mktemp("old-keras") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           f"keras=={OLD_KERAS}", "torch==2.13.0"], capture_output=True, text=True, timeout=1200)
    if done.returncode:
        message = f"keras=={OLD_KERAS} with torch could not be installed in a throwaway environment: {done.stderr[-400:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return venv / "bin" / "python"


def test_the_committed_models_predict_the_same_on_keras_3_10(old_keras, real_data, tmp_path):
    script = textwrap.dedent("""
        import os, sys
        os.environ["KERAS_BACKEND"] = "torch"
        import keras, numpy as np
        assert keras.__version__ == sys.argv[1], keras.__version__
        model = keras.saving.load_model(sys.argv[2], compile=False)
        np.save(sys.argv[4], model.predict(np.load(sys.argv[3]), batch_size=8, verbose=0))
    """)
    (tmp_path / "predict.py").write_text(script)
    for name in MODELS:
        model, record = lu.load_trained_model(REPO_ROOT / "models" / f"{name}.keras")
        names = record["test_slices"][:12]
        x = np.stack([lu.preprocess_slice(lu.to_standard_hu(lu.read_slice(real_data / "2d_images" / n),
                                                             record["hu_calibration"]),
                                          record["img_size"], record["hu_min"], record["hu_max"]) for n in names])[..., None]
        np.save(tmp_path / "x.npy", x)
        done = subprocess.run([str(old_keras), str(tmp_path / "predict.py"), OLD_KERAS, str(REPO_ROOT / "models" / f"{name}.keras"),
                               str(tmp_path / "x.npy"), str(tmp_path / "old.npy")], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert done.returncode == 0, done.stderr[-2000:]
        old, pinned = np.load(tmp_path / "old.npy"), model.predict(x, verbose=0)
        assert np.abs(old - pinned).max() < 1e-3, name
        assert np.mean((old >= 0.5) == (pinned >= 0.5)) > 0.9999, name


def test_a_model_saved_by_a_newer_keras_is_said_to_be_so(tmp_path):
    import zipfile

    source = REPO_ROOT / "models" / "unet.keras"
    newer = tmp_path / "unet.keras"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(newer, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":  # a layer this Keras does not know, as a future release may write
                config = json.loads(data)
                config["config"]["layers"][1]["class_name"] = "ConvFromTheFuture"
                data = json.dumps(config).encode()
            if item.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "keras_version": "9.0.0"}).encode()
            zout.writestr(item, data)
    (tmp_path / "unet.json").write_text((REPO_ROOT / "models" / "unet.json").read_text())
    with pytest.raises(lu.LungsegError) as error:
        lu.load_trained_model(newer)
    message = str(error.value)
    assert "saved by Keras 9.0.0" in message and "Upgrade Keras" in message and "truncated" not in message
