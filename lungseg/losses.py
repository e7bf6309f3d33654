"""Loss and metrics for binary lung segmentation, written with ``keras.ops`` (Keras 3).

They are registered as serializable, so a saved model loads with plain
``keras.saving.load_model(path)`` (after ``import lungseg_utils``) and no ``custom_objects``.

Definitions (each returns one value per image; Keras averages them over the images of an epoch):

- ``dice_coef``: Dice = 2|T∩P| / (|T| + |P|) of the prediction thresholded at 0.5, per image.
  An image whose truth and prediction are both empty scores 1 (``eps`` = 1e-6 in numerator and
  denominator), one with an empty truth and a non-empty prediction scores ~0.
- ``iou_coef``: IoU = |T∩P| / |T∪P|, same thresholding and conventions.
- ``bce_dice_loss``: mean binary cross-entropy over the pixels + (1 - soft Dice), where the soft
  Dice uses the probabilities (no threshold) and a smoothing of 1 pixel:
  (2·Σ t·p + 1) / (Σ t + Σ p + 1). BCE gives stable gradients early on; the Dice term counters
  the imbalance between lung and background pixels.
"""

from __future__ import annotations

import keras
from keras import ops

_AXES = (1, 2, 3)  # height, width, channel: everything but the batch


def _hard(y_true, y_pred, threshold):
    truth = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
    prediction = ops.cast(ops.cast(y_pred, "float32") >= threshold, "float32")
    return truth, prediction


@keras.saving.register_keras_serializable(package="lungseg")
def dice_coef(y_true, y_pred, threshold=0.5, eps=1e-6):
    """Per-image Dice of the prediction thresholded at ``threshold`` (see module docstring)."""
    truth, prediction = _hard(y_true, y_pred, threshold)
    intersection = ops.sum(truth * prediction, axis=_AXES)
    total = ops.sum(truth, axis=_AXES) + ops.sum(prediction, axis=_AXES)
    return (2.0 * intersection + eps) / (total + eps)


@keras.saving.register_keras_serializable(package="lungseg")
def iou_coef(y_true, y_pred, threshold=0.5, eps=1e-6):
    """Per-image IoU (Jaccard) of the prediction thresholded at ``threshold``."""
    truth, prediction = _hard(y_true, y_pred, threshold)
    intersection = ops.sum(truth * prediction, axis=_AXES)
    union = ops.sum(truth, axis=_AXES) + ops.sum(prediction, axis=_AXES) - intersection
    return (intersection + eps) / (union + eps)


@keras.saving.register_keras_serializable(package="lungseg")
def bce_dice_loss(y_true, y_pred, smooth=1.0):
    """Per-image mean BCE + (1 - soft Dice) (see module docstring)."""
    truth = ops.cast(y_true, "float32")
    probability = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
    bce = -ops.mean(truth * ops.log(probability) + (1.0 - truth) * ops.log(1.0 - probability), axis=_AXES)
    intersection = ops.sum(truth * probability, axis=_AXES)
    total = ops.sum(truth, axis=_AXES) + ops.sum(probability, axis=_AXES)
    soft_dice = (2.0 * intersection + smooth) / (total + smooth)
    return bce + (1.0 - soft_dice)
