"""The two models, built with the Keras functional API.

Both share one skeleton - 4 downsampling stages, a bottleneck, 4 upsampling stages with
transpose convolutions and concatenated skip connections, and a 1x1 sigmoid output - and
differ only in the block used at every stage: two plain convolutions (U-Net) or a residual
block (Residual U-Net). So a comparison of the two measures the blocks, nothing else.
"""

from __future__ import annotations

import keras
from keras import layers

from lungseg.preprocess import check_img_size

DEPTH = 4  # downsampling stages: the input size must be divisible by 2**4 = 16
# Batch norm's moving statistics (used at validation and inference) follow the batches with this
# momentum. Keras' default, 0.99, needs hundreds of steps to settle; with ~20 steps per epoch the
# validation scores of the first epochs would reflect stale statistics, not the model.
BN_MOMENTUM = 0.9


def conv_block(x, filters: int, name: str):
    """U-Net block: two 3x3 convolutions, each followed by batch normalisation and ReLU."""
    for index in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{index}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def residual_block(x, filters: int, name: str):
    """Residual block: two 3x3 conv + batch norm (ReLU between), added to a shortcut, then ReLU.

    The shortcut is the input itself, or a 1x1 convolution + batch norm (a projection) where
    the number of channels changes, so that the two can be added."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_segmenter(img_size: int, base_filters: int, block, name: str) -> keras.Model:
    """Encoder-decoder with skips; ``block(x, filters, name)`` is used at every stage.

    Filters double at each of the 4 downsampling stages (base, 2x, 4x, 8x; bottleneck 16x)
    and halve again on the way up."""
    check_img_size(img_size)
    inputs = keras.Input((img_size, img_size, 1), name="ct_slice")
    x, skips = inputs, []
    for level in range(DEPTH):  # encoder: features at full, 1/2, 1/4, 1/8 resolution
        x = block(x, base_filters * 2**level, name=f"down{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    x = block(x, base_filters * 2**DEPTH, name="bottleneck")  # 1/16 resolution, widest
    for level in reversed(range(DEPTH)):  # decoder: upsample, join the skip, refine
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level + 1}_transpose")(x)
        x = layers.Concatenate(name=f"up{level + 1}_skip")([x, skips[level]])
        x = block(x, filters, name=f"up{level + 1}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="lung_probability")(x)
    return keras.Model(inputs, outputs, name=name)


def unet(img_size: int = 256, base_filters: int = 16) -> keras.Model:
    """The U-Net (Ronneberger et al., 2015) with batch normalisation."""
    return build_segmenter(img_size, base_filters, conv_block, name="unet")


def resunet(img_size: int = 256, base_filters: int = 16) -> keras.Model:
    """The Residual U-Net: the same skeleton with residual blocks (Zhang et al., 2018)."""
    return build_segmenter(img_size, base_filters, residual_block, name="resunet")
