"""The notebooks' "Try this" exercises that promise a measurable effect: each test makes the change the
exercise asks for, with the notebook's own code, and checks that the learner sees what is promised."""

import numpy as np
import pytest

import lungseg_utils as lu

from notebook_code import NOTEBOOKS, code_cells, definitions

REPO_ROOT = NOTEBOOKS.parent


def test_01_an_8_bit_export_is_refused_not_read(real_data, real_names, tmp_path):
    import cv2

    from lungseg.errors import LungsegError

    read_slice = definitions("01_download", "read_slice")["read_slice"]
    exported = tmp_path / "slice.png"
    cv2.imwrite(str(exported), cv2.imread(str(real_data / "2d_images" / real_names[0])))  # the exercise's export
    with pytest.raises(LungsegError, match="slice.png"):
        read_slice(exported)


def test_01_ten_slices_already_show_how_the_collection_was_stored(real_data, real_names):
    code = definitions("01_download", "tissue_peaks", "fit_hu_calibration")
    tissue_peaks, fit = code["tissue_peaks"], code["fit_hu_calibration"]
    paths = [real_data / "2d_images" / name for name in real_names]
    every = fit(tissue_peaks(lu.read_slice(p) for p in paths))
    ten = fit(tissue_peaks(lu.read_slice(p) for p in paths[:10]))
    assert every["scale"] == pytest.approx(1.25, abs=0.02) and ten["scale"] == pytest.approx(every["scale"], abs=0.02)


def test_02_a_soft_tissue_window_blacks_out_the_lung(real_data, real_names, committed):
    calibration = committed[1]["hu_calibration"]
    for name in real_names[:20]:
        hu = lu.to_standard_hu(lu.read_slice(real_data / "2d_images" / name), calibration)
        lung = lu.read_mask(real_data / "2d_masks" / name) > 0
        assert (lu.window_hu(hu, -160, 240)[lung] == 0).mean() > 0.95  # the exercise's window
        assert (lu.window_hu(hu, -1000, 400)[lung] > 0).mean() > 0.5  # the notebook's: most of the lung stays visible


def test_03_a_unet_of_depth_3_has_a_quarter_of_the_parameters():
    build_unet = definitions("03_unet", "conv_block", "build_unet")["build_unet"]
    four, three = build_unet(256, 8).count_params(), build_unet(256, 8, depth=3).count_params()
    assert (four, three) == (487_881, 121_737) and 0.24 < three / four < 0.26


def test_04_the_residual_u_nets_extra_parameters_are_its_projections():
    build_unet = definitions("03_unet", "conv_block", "build_unet")["build_unet"]
    build_resunet = definitions("04_resunet", "residual_block", "build_resunet")["build_resunet"]
    unet, resunet = build_unet(256, 8), build_resunet(256, 8)
    projections = sum(layer.count_params() for layer in resunet.layers if "_proj" in layer.name)
    assert resunet.count_params() - unet.count_params() == projections == 23_240


def test_04_without_the_shortcut_the_projections_drop_out_and_the_u_net_is_left():
    import keras

    cell = next(cell.source for cell in code_cells("04_resunet") if "def residual_block" in cell.source)
    dropped = cell.replace('y = layers.Add(name=f"{name}_add")([shortcut, y])\n    return layers.Activation("relu", '
                           'name=f"{name}_out")(y)', 'return layers.Activation("relu")(y)')
    assert dropped != cell, "04's residual block changed: update the exercise and this test"
    namespace = definitions("04_resunet", "build_resunet")
    exec(compile(dropped, "<04_resunet>", "exec"), namespace)
    keras.utils.clear_session()
    plain = namespace["build_resunet"](256, 8)
    assert not [layer for layer in plain.layers if "_proj" in layer.name]  # not on a path to the output
    build_unet = definitions("03_unet", "conv_block", "build_unet")["build_unet"]
    assert plain.count_params() == build_unet(256, 8).count_params() == 487_881


def test_05_the_threshold_trades_precision_for_recall_and_barely_moves_the_dice(real_data, real_names, committed):
    model, record = committed
    names = real_names[-20:]
    images = [lu.to_standard_hu(lu.read_slice(real_data / "2d_images" / n), record["hu_calibration"]) for n in names]
    truths = [lu.read_mask(real_data / "2d_masks" / n) > 0 for n in names]
    probabilities = lu.predict_probabilities(model, images, record)
    scores = {threshold: {key: np.mean([lu.overlap_scores(t, p >= threshold)[key] for t, p in zip(truths, probabilities)])
                          for key in ("dice", "precision", "recall")} for threshold in (0.3, 0.5, 0.7)}
    assert scores[0.3]["recall"] > scores[0.5]["recall"] > scores[0.7]["recall"]
    assert scores[0.3]["precision"] < scores[0.5]["precision"] < scores[0.7]["precision"]
    assert all(abs(scores[t]["dice"] - scores[0.5]["dice"]) < 0.01 for t in (0.3, 0.7))


def test_06_a_higher_threshold_shrinks_the_lungs_and_raises_laa950():
    from lungseg import examples
    from lungseg.scans import read_scan, scan_measurements, segment_scan

    model, record = lu.load_trained_model(REPO_ROOT / "models" / "resunet.keras")
    scan = read_scan(examples.small_example().series)
    measured = {threshold: scan_measurements(scan, segment_scan(model, scan, record, threshold=threshold))
                for threshold in (0.3, 0.5, 0.7)}
    volumes = [measured[t]["lung_volume_ml"] for t in (0.3, 0.5, 0.7)]
    laa950 = [measured[t]["laa950_percent"] for t in (0.3, 0.5, 0.7)]
    assert volumes[0] > volumes[1] > volumes[2] and laa950[0] < laa950[1] < laa950[2]
    assert all(abs(v / volumes[1] - 1) < 0.05 for v in volumes)  # "about 3%": 4,799 / 4,654 / 4,521 mL when measured
