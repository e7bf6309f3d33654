"""The two networks as the notebooks define them: shapes, the shared skeleton, and saving/reloading
in a fresh process; the committed models: the same skeleton, and they reproduce their recorded Dice."""

import subprocess
import sys

import keras
import numpy as np
import pytest

import lungseg_utils as lu

from conftest import REPO_ROOT
from notebook_code import definitions

COMMITTED = REPO_ROOT / "models"


def build(name, size, filters=4):
    if name == "unet":
        return definitions("03_unet", "conv_block", "build_unet")["build_unet"](size, filters)
    return definitions("04_resunet", "residual_block", "build_resunet")["build_resunet"](size, filters)


@pytest.mark.parametrize("name", ["unet", "resunet"])
@pytest.mark.parametrize("size", [32, 64, 96])
def test_one_sigmoid_channel_at_input_resolution(name, size):
    model = build(name, size)
    assert model.input_shape == (None, size, size, 1) and model.output_shape == (None, size, size, 1)
    output = model.predict(np.random.default_rng(0).random((2, size, size, 1), np.float32), verbose=0)
    assert output.min() >= 0.0 and output.max() <= 1.0
    assert model.layers[-1].activation.__name__ == "sigmoid"


STAGES = ["down1", "down2", "down3", "down4", "bottleneck", "up4", "up3", "up2", "up1"]


def skeleton(model) -> dict:
    """What the two models must share: the input, the 4 poolings, the 4 transpose convolutions
    and their settings, which stage output each skip joins, every stage's output shape, the output."""
    layers = {layer.name: layer for layer in model.layers}

    def source(tensor):  # the name of the layer that made a tensor
        return tensor._keras_history.operation.name

    stage_outputs = {}
    for stage in STAGES:
        own = [layer for layer in model.layers if layer.name.startswith(stage + "_") and
               not layer.name.endswith(("_transpose", "_skip"))]
        stage_outputs[stage] = own[-1].output.shape
    return {
        "input": model.input_shape,
        "pools": [(layers[f"pool{i}"].pool_size, source(layers[f"pool{i}"].input)[:5]) for i in range(1, 5)],
        "transposes": [(layers[f"up{i}_transpose"].filters, layers[f"up{i}_transpose"].kernel_size,
                        layers[f"up{i}_transpose"].strides) for i in range(1, 5)],
        "skips": [[source(t)[:5] if not source(t).endswith("_transpose") else "transpose"
                   for t in layers[f"up{i}_skip"].input] for i in range(1, 5)],
        "stage_shapes": stage_outputs,
        "output": (layers["lung_probability"].filters, layers["lung_probability"].activation.__name__, model.output_shape),
    }


def block_layers(model) -> set:
    return {type(layer).__name__ for layer in model.layers if any(layer.name.startswith(s + "_") for s in STAGES)
            and not layer.name.endswith(("_transpose", "_skip"))}


def _check_same_skeleton_other_block(unet, resunet):
    assert skeleton(unet) == skeleton(resunet)
    assert skeleton(unet)["skips"] == [["transpose", f"down{i}"] for i in range(1, 5)]
    assert len([layer for layer in unet.layers if isinstance(layer, keras.layers.MaxPooling2D)]) == 4
    assert block_layers(unet) == {"Conv2D", "BatchNormalization", "Activation"}
    assert block_layers(resunet) == {"Conv2D", "BatchNormalization", "Activation", "Add"}
    assert sum(isinstance(layer, keras.layers.Add) for layer in resunet.layers) == 9  # 4 down + bottleneck + 4 up


def test_the_notebooks_networks_share_the_skeleton_and_differ_only_in_the_block():
    _check_same_skeleton_other_block(build("unet", 64), build("resunet", 64))


def test_the_committed_models_share_the_skeleton_and_differ_only_in_the_block():
    unet, _ = lu.load_trained_model(COMMITTED / "unet.keras")
    resunet, _ = lu.load_trained_model(COMMITTED / "resunet.keras")
    _check_same_skeleton_other_block(unet, resunet)


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_the_committed_models_reproduce_their_recorded_test_dice(name, real_data):
    """What 05 falls back on and what users apply to their scans: it loads and scores as recorded."""
    model, record = lu.load_trained_model(COMMITTED / f"{name}.keras")
    assert record["synthetic"] is False and record["img_size"] == 256
    assert (COMMITTED / f"{name}.keras").stat().st_size < 3e6  # no optimizer state
    images = [lu.to_standard_hu(lu.read_slice(real_data / "2d_images" / n), record["hu_calibration"])
              for n in record["test_slices"]]
    truths = [lu.read_mask(real_data / "2d_masks" / n) for n in record["test_slices"]]
    masks = lu.predict_masks(model, images, record)
    dice = np.mean([lu.overlap_scores(t, m)["dice"] for t, m in zip(truths, masks)])
    assert dice == pytest.approx(record["test_dice_native"], abs=0.001)
    assert not set(record["test_slices"]) & set(record["training_slices"] + record["validation_slices"])


@pytest.mark.parametrize("dice_weight", [1.0, 3.0])
def test_saved_model_gives_the_same_predictions_in_a_fresh_process(tmp_path, dice_weight):
    keras.utils.set_random_seed(1)
    model = build("resunet", 32)
    loss = lu.bce_dice_loss if dice_weight == 1 else lu.WeightedBceDiceLoss(dice_weight)  # as 03/04 compile it
    model.compile(optimizer="adam", loss=loss, metrics=[lu.dice_coef, lu.iou_coef])
    data = np.random.default_rng(0).random((4, 32, 32, 1), np.float32)
    model.fit(data, (data > 0.5).astype(np.uint8), epochs=1, verbose=0)  # non-trivial batch-norm statistics
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "data.npy", data)
    np.save(tmp_path / "expected.npy", model.predict(data, verbose=0))
    script = (
        "import sys, numpy as np, keras; sys.path.insert(0, sys.argv[2]); import lungseg_utils; "
        "model = keras.saving.load_model(sys.argv[1] + '/model.keras'); "
        "weight = float(sys.argv[3]); "
        "assert (model.loss is lungseg_utils.bce_dice_loss if weight == 1 else "
        "isinstance(model.loss, lungseg_utils.WeightedBceDiceLoss) and model.loss.dice_weight == weight), model.loss; "
        "np.save(sys.argv[1] + '/reloaded.npy', model.predict(np.load(sys.argv[1] + '/data.npy'), verbose=0))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(REPO_ROOT), str(dice_weight)], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "reloaded.npy"), np.load(tmp_path / "expected.npy"))
