"""Both models: shapes, blocks, and saving/reloading in a fresh process."""

import subprocess
import sys

import keras
import numpy as np
import pytest

import lungseg_utils as lu
from lungseg.data import LungsegError

from conftest import REPO_ROOT


@pytest.mark.parametrize("build", [lu.unet, lu.resunet])
@pytest.mark.parametrize("size", [32, 64, 96])
def test_one_sigmoid_channel_at_input_resolution(build, size):
    model = build(size, 4)
    assert model.input_shape == (None, size, size, 1)
    assert model.output_shape == (None, size, size, 1)
    output = model.predict(np.random.default_rng(0).random((2, size, size, 1), np.float32), verbose=0)
    assert output.min() >= 0.0 and output.max() <= 1.0
    assert model.layers[-1].activation.__name__ == "sigmoid"


@pytest.mark.parametrize("build", [lu.unet, lu.resunet])
def test_sizes_that_are_not_multiples_of_16_are_refused(build):
    with pytest.raises(LungsegError, match="IMG_SIZE=100 .*multiple of 16"):
        build(100, 4)


def test_residual_unet_has_4_stages_down_and_up_with_projected_shortcuts():
    model = lu.resunet(64, 4)
    names = [layer.name for layer in model.layers]
    assert sum(n.startswith("pool") for n in names) == 4
    assert sum(isinstance(layer, keras.layers.Conv2DTranspose) for layer in model.layers) == 4
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 9  # 4 + bottleneck + 4
    assert "down1_proj" in names and "bottleneck_proj" in names  # channels change there
    assert sum(isinstance(layer, keras.layers.Concatenate) for layer in model.layers) == 4


def test_saved_model_gives_the_same_predictions_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(1)
    model = lu.resunet(32, 4)
    model.compile(optimizer="adam", loss=lu.bce_dice_loss, metrics=[lu.dice_coef, lu.iou_coef])
    data = np.random.default_rng(0).random((4, 32, 32, 1), np.float32)
    model.fit(data, (data > 0.5).astype(np.uint8), epochs=1, verbose=0)  # non-trivial batch-norm statistics
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "data.npy", data)
    np.save(tmp_path / "expected.npy", model.predict(data, verbose=0))
    script = (
        "import sys, numpy as np, keras; sys.path.insert(0, sys.argv[2]); import lungseg_utils; "
        "model = keras.saving.load_model(sys.argv[1] + '/model.keras'); "
        "assert model.loss is lungseg_utils.bce_dice_loss, model.loss; "
        "np.save(sys.argv[1] + '/reloaded.npy', model.predict(np.load(sys.argv[1] + '/data.npy'), verbose=0))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(REPO_ROOT)], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "reloaded.npy"), np.load(tmp_path / "expected.npy"))
