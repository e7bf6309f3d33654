"""The Keras loss and metrics against NumPy references on masks the tests build."""

import numpy as np
import pytest

from lungseg_utils import bce_dice_loss, dice_coef, iou_coef


def _masks():
    truth = np.zeros((32, 32), np.float32)
    truth[8:24, 8:24] = 1  # 256 pixels
    half = np.zeros_like(truth)
    half[8:24, 8:16] = 1  # 128 of them
    disjoint = np.zeros_like(truth)
    disjoint[0:4, 0:4] = 1
    empty = np.zeros_like(truth)
    return {"perfect": (truth, truth), "half": (truth, half), "disjoint": (truth, disjoint),
            "empty truth": (empty, disjoint), "empty prediction": (truth, empty), "both empty": (empty, empty)}


def _reference(truth, prediction):
    t, p = truth.astype(bool), prediction >= 0.5
    both = np.sum(t & p)
    if not t.any() and not p.any():
        return 1.0, 1.0
    return 2 * both / (t.sum() + p.sum()), both / np.sum(t | p)


@pytest.mark.parametrize("case", list(_masks()))
def test_dice_and_iou_match_numpy(case):
    truth, prediction = _masks()[case]
    dice, iou = _reference(truth, prediction)
    batch = truth[None, ..., None], prediction[None, ..., None]
    assert float(dice_coef(*batch)[0]) == pytest.approx(dice, abs=1e-5)
    assert float(iou_coef(*batch)[0]) == pytest.approx(iou, abs=1e-5)


def test_known_values():
    masks = _masks()
    assert float(dice_coef(masks["half"][0][None, ..., None], masks["half"][1][None, ..., None])[0]) == pytest.approx(2 / 3)
    assert float(iou_coef(masks["half"][0][None, ..., None], masks["half"][1][None, ..., None])[0]) == pytest.approx(0.5)


def test_metrics_are_per_image():
    masks = _masks()
    truth = np.stack([masks["perfect"][0], masks["disjoint"][0]])[..., None]
    prediction = np.stack([masks["perfect"][1], masks["disjoint"][1]])[..., None]
    np.testing.assert_allclose(np.asarray(dice_coef(truth, prediction)), [1.0, 0.0], atol=1e-5)


def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    truth = (rng.random((2, 16, 16, 1)) > 0.6).astype(np.float32)
    probability = rng.uniform(0.01, 0.99, truth.shape).astype(np.float32)
    bce = -np.mean(truth * np.log(probability) + (1 - truth) * np.log(1 - probability), axis=(1, 2, 3))
    soft_dice = (2 * np.sum(truth * probability, axis=(1, 2, 3)) + 1) / (truth.sum((1, 2, 3)) + probability.sum((1, 2, 3)) + 1)
    np.testing.assert_allclose(np.asarray(bce_dice_loss(truth, probability)), bce + 1 - soft_dice, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bce_dice_loss(truth, probability, dice_weight=3.0)), bce + 3 * (1 - soft_dice),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bce_dice_loss(truth, probability, dice_weight=0.0)), bce, rtol=1e-5)


def test_loss_is_lower_for_better_predictions():
    truth, _ = _masks()["perfect"]
    good = np.where(truth > 0, 0.95, 0.05).astype(np.float32)
    bad = np.where(truth > 0, 0.05, 0.95).astype(np.float32)
    losses = [float(bce_dice_loss(truth[None, ..., None], p[None, ..., None])[0]) for p in (truth, good, bad)]
    assert losses[0] < 0.01 < losses[1] < losses[2]
