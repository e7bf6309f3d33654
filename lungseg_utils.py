"""What several lungseg notebooks share: ``import lungseg_utils as lu``.

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

# ======================================== from notebooks/01_download.py


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".dcm")
PNG_HU_OFFSET = -1024  # a 16-bit PNG cannot hold negative numbers: by convention it stores HU + 1024


def read_slice(path, *, png_hu_offset: int = PNG_HU_OFFSET) -> np.ndarray:
    """One CT slice as a 2-D array in HU: TIFF as stored, DICOM through its RescaleSlope/Intercept,
    16-bit PNG plus ``png_hu_offset``. Anything unreadable raises LungsegError naming the file."""
    from lungseg import files  # opening each format, and errors that name the file and the fix

    path = files.check_suffix(path, IMAGE_SUFFIXES)
    with files.named_errors(path):
        if files.is_dicom(path):
            dataset = files.read_dicom(path)  # pydicom
            array = dataset.pixel_array.astype(np.float32) * float(dataset.get("RescaleSlope") or 1) + float(
                dataset.get("RescaleIntercept") or 0)
        elif path.suffix.lower() == ".png":
            array = files.read_unchanged(path)  # cv2.imread(path, cv2.IMREAD_UNCHANGED): all 16 bits
            if array.dtype == np.uint16:
                array = array.astype(np.int32) + png_hu_offset
        else:
            array = files.read_tiff(path)  # tifffile.imread(path): the int16 HU as stored
    array = files.check_slice(array, path)  # one 2-D slice: not a colour image, not a stack
    check_finite(array, path)
    return array


def check_finite(image: np.ndarray, name) -> None:
    """NaN or infinite pixels would train a model into NaN and predict empty masks: refuse them."""
    bad = np.size(image) - np.count_nonzero(np.isfinite(image))
    if bad:
        raise LungsegError(f"{name}: {bad} pixels are not finite (NaN or infinite). Re-export the slice, or "
                           "replace them (e.g. with -1024 HU, air) before using it.")


def read_mask(path) -> np.ndarray:
    """A lung mask as uint8 {0, 1}; anything but 0/1/255 is refused."""
    mask = read_slice(path, png_hu_offset=0)
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1, 255}:
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise LungsegError(f"{path}: mask is not binary (values {shown}); masks must hold only 0 and 255 "
                           "(or 0 and 1). Re-export it as a binary mask.")
    return (mask > 0).astype(np.uint8)


def check_hu(image: np.ndarray, name) -> None:
    """Refuse arrays that cannot be CT in HU: every chest slice has air (below -500) and tissue (above -200)."""
    if image.dtype in (np.uint8, np.int8, bool):
        raise LungsegError(f"{name}: an 8-bit image cannot hold Hounsfield units (HU). Export the slice as "
                           "int16 TIFF, 16-bit PNG holding HU+1024, or DICOM.")
    check_finite(image, name)
    low, high = float(np.min(image)), float(np.max(image))
    if low > -500 or high < -200:
        raise LungsegError(f"{name}: values {low:.0f}..{high:.0f} do not look like a CT slice in HU (expected air "
                           "below -500 and tissue above -200). Convert it to HU first; if it is a PNG, it must "
                           "be 16-bit holding HU+1024.")


SYNTHETIC_LABEL = "SYNTHETIC DATA - not real CT"


def data_label(synthetic: bool) -> str:
    """A suffix for titles and records, so that synthetic results are never mistaken for real ones."""
    return f" [{SYNTHETIC_LABEL}]" if synthetic else ""


def save_figure(figure, path=None, synthetic: bool = False):
    """Stamp synthetic figures, save to ``path`` (PNG) if given, and return the figure."""
    if synthetic:
        figure.text(0.5, 0.0, SYNTHETIC_LABEL, ha="center", va="top", color="red", fontsize=11)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure


def show_pairs(rows, column_titles, row_titles=None, title="", path=None, synthetic=False, size=2.6):
    """A grid of images (``rows``: lists of 2-D or RGB arrays), grey colour map, no ticks."""
    figure, axes = plt.subplots(len(rows), len(rows[0]), figsize=(size * len(rows[0]), size * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            axes[r, c].imshow(picture, cmap="gray")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(column_titles[c], fontsize=10)
        if row_titles:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=8)
    figure.suptitle(title + data_label(synthetic), fontsize=11)
    figure.tight_layout()
    return save_figure(figure, path, synthetic)


def to_standard_hu(image, calibration: dict) -> np.ndarray:
    """A slice of the dataset in standard HU (float32), with the calibration that 01 recorded."""
    return np.asarray(image, np.float32) * np.float32(calibration["scale"]) + np.float32(calibration["offset"])

# ======================================== from notebooks/02_preprocess.py


def window_hu(image: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and scale linearly to [0, 1] (float32). With (-1000, 400), the
    padding outside the scanner's field of view (below -2000) becomes air."""
    if not hu_max > hu_min:
        raise LungsegError(f"HU window ({hu_min}, {hu_max}) is empty: HU_MAX must be greater than HU_MIN.")
    return np.clip((image.astype(np.float32) - hu_min) / (hu_max - hu_min), 0.0, 1.0)


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """Resize a float image to ``size`` (an int for a square, or (height, width)): area averaging
    when shrinking, bilinear when enlarging."""
    import cv2

    height, width = (size, size) if np.isscalar(size) else size
    shrinking = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image.astype(np.float32), (int(width), int(height)),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size) -> np.ndarray:
    """Resize a binary mask and keep it binary: the fraction of lung under each new pixel, >= 0.5."""
    return (resize_image(mask.astype(np.float32), size) >= 0.5).astype(np.uint8)


def preprocess_slice(image_hu: np.ndarray, img_size: int, hu_min: float, hu_max: float) -> np.ndarray:
    """A slice in HU -> a model input (img_size x img_size, float32 in [0, 1]): window, then resize."""
    return resize_image(window_hu(image_hu, hu_min, hu_max), img_size)


def add_gas_pockets(image01: np.ndarray, mask: np.ndarray, rng: np.random.Generator, hu_window=(-1000, 400),
                    count=(1, 3), radius_px=(3, 16)) -> np.ndarray:
    """A windowed slice with 1-3 elliptic pockets of gas (-1000..-900 HU, noise of 20 HU, edges blurred
    by one pixel; radii in ``radius_px``, for a 256-pixel slice) where the slice is soft tissue
    (-200..+150 HU, so never cortical bone) at least 4 pixels from the lung. A pocket with no room shrinks."""
    width = float(hu_window[1] - hu_window[0])
    image = image01.astype(np.float32).copy()
    hu = image * width + hu_window[0]
    soft = ndimage.binary_erosion((hu > -200) & (hu < 150), iterations=2)  # 2 pixels inside: blurred edges stay in it
    tissue = soft & ~ndimage.binary_dilation(mask.astype(bool), iterations=4)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        ry, rx = rng.uniform(*radius_px, size=2)
        for _smaller in range(6):  # where the whole pocket's box fits in soft tissue; if nowhere, a smaller one
            box = (2 * int(ry) + 1, 2 * int(rx) + 1)  # a minimum filter is an erosion by the box, and faster
            room = ndimage.minimum_filter(tissue.astype(np.uint8), box, mode="constant", cval=0).astype(bool)
            if room.any():
                break
            ry, rx = max(0.7 * ry, radius_px[0]), max(0.7 * rx, radius_px[0])
        if not room.any():
            break
        cy, cx = np.argwhere(room)[rng.integers(np.count_nonzero(room))]
        pocket = ndimage.gaussian_filter((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32), 1.0)
        gas = (rng.uniform(-1000, -900) + rng.normal(0, 20, image.shape) - hu_window[0]) / width
        image = np.clip((1 - pocket) * image + pocket * gas, 0, 1)
        tissue &= pocket < 0.01
    return image


def add_lesions(image01: np.ndarray, mask: np.ndarray, rng: np.random.Generator, hu_window=(-1000, 400),
                count=(1, 3), radius_px=(3, 30), hu_range=(-500, 80), texture_hu=60.0, on_edge=0.6) -> np.ndarray:
    """A windowed slice with 1-3 lesions inside the lung: outlines r(angle) = R (1 + a Fourier series of
    orders 2-5), R log-uniform in ``radius_px`` (for a 256-pixel slice), centred on the lung's edge
    (share ``on_edge``) or inside it, one density in ``hu_range`` each with smooth texture (SD up to
    ``texture_hu``) and noise, edges blurred, and clipped to the lung: nothing outside the mask changes."""
    width = float(hu_window[1] - hu_window[0])
    image = image01.astype(np.float32).copy()
    lung = mask.astype(bool)
    if not lung.any():
        return image
    edge = lung & ~ndimage.binary_erosion(lung, iterations=2)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        pool = edge if rng.random() < on_edge and edge.any() else lung
        cy, cx = np.argwhere(pool)[rng.integers(np.count_nonzero(pool))]
        radius = np.exp(rng.uniform(np.log(radius_px[0]), np.log(radius_px[1])))
        angle, distance = np.arctan2(yy - cy, xx - cx), np.hypot(yy - cy, xx - cx)
        outline = np.ones_like(angle)
        for order in range(2, 6):
            outline += rng.uniform(0, 0.3 / order * 2) * np.cos(order * angle + rng.uniform(0, 2 * np.pi))
        blob = (distance <= radius * outline).astype(np.float32)
        alpha = ndimage.gaussian_filter(blob, rng.uniform(0.5, 1.5)) * lung
        texture = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), 2.0)
        hu = rng.uniform(*hu_range) + rng.uniform(0, texture_hu) * texture / (texture.std() + 1e-6) + rng.normal(0, 15, image.shape)
        image = np.clip((1 - alpha) * image + alpha * (hu - hu_window[0]) / width, 0, 1)
    return image


def coarsen(image01: np.ndarray, rng: np.random.Generator, factor=(2.0, 8.0)) -> np.ndarray:
    """The slice averaged down to a grid ``f`` times coarser (``f`` uniform in ``factor``) and enlarged back
    bilinearly to its size: the detail of a scan with ``f`` times larger pixels."""
    height, width = image01.shape
    f = rng.uniform(*factor)
    small = resize_image(image01, (max(2, round(height / f)), max(2, round(width / f))))
    return np.clip(resize_image(small, (height, width)), 0, 1)


class SliceDrawer:
    """For a batch of windowed slices (N, H, W, 1) and their masks: gas pockets in a share ``gas_pockets``
    of the slices, lesions in ``lesions``, then a coarser grid in ``resolution``; new draws at every call,
    the same sequence for the same seed. Returns new images; the masks and the given arrays are unchanged."""

    def __init__(self, gas_pockets=0.0, lesions=0.0, resolution=0.0, hu_window=(-1000, 400), seed=0):
        self.gas_pockets, self.lesions, self.resolution = float(gas_pockets), float(lesions), float(resolution)
        self.hu_window, self.rng = tuple(hu_window), np.random.default_rng(seed)

    def __call__(self, images, masks):
        images = np.array(images, dtype=np.float32)  # a copy
        scale = images.shape[1] / 256  # the sizes below are for a 256-pixel slice
        for image, mask in zip(images[..., 0], np.asarray(masks)[..., 0]):
            changed = image
            if self.rng.random() < self.gas_pockets:
                changed = add_gas_pockets(changed, mask, self.rng, self.hu_window, radius_px=(3 * scale, 16 * scale))
            if self.rng.random() < self.lesions:
                changed = add_lesions(changed, mask, self.rng, self.hu_window, radius_px=(3 * scale, 30 * scale))
            if self.rng.random() < self.resolution:
                changed = coarsen(changed, self.rng)
            image[...] = changed
        return images


def make_drawer(preprocessing: dict, seed: int = 0):
    """02's SliceDrawer for a run's settings (preprocess.json), or None when it would draw nothing."""
    shares = {key: float(preprocessing.get(key) or 0.0) for key in ("gas_pockets", "lesions", "resolution")}
    if not any(shares.values()):
        return None
    return SliceDrawer(**shares, hu_window=(preprocessing["hu_min"], preprocessing["hu_max"]), seed=seed)


class ImageOnly(keras.layers.Layer):
    """Apply a layer to channel 0 (the image) of an image+mask stack; the mask passes unchanged."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, stack, training=None):
        return tf.concat([self.layer(stack[..., :1], training=training), stack[..., 1:]], axis=-1)


class RandomHUScale(keras.layers.Layer):
    """Multiply HU by a random factor in [1 - factor, 1 + factor] about ``pivot`` (water, in windowed
    units), one factor per slice, and clip to the window: another scanner's calibration."""

    def __init__(self, factor: float, pivot: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.pivot, self.seed_generator = factor, pivot, keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        scale = keras.random.uniform((tf.shape(images)[0], 1, 1, 1), 1 - self.factor, 1 + self.factor,
                                     seed=self.seed_generator)
        return tf.clip_by_value(self.pivot + scale * (images - self.pivot), 0.0, 1.0)


def make_augmenter(rotation_degrees: float = 10.0, flip_left_right: bool = True, flip_up_down: bool = False,
                   hu_scale: float = 0.0, hu_shift: float = 0.0, hu_contrast: float = 0.0, noise_hu: float = 0.0,
                   blur_sigma: float = 0.0, hu_window: tuple = (-1000, 400), seed: int = 0):
    """Random flips and rotations of image and mask, and intensity changes of the image alone (Keras
    preprocessing layers), or None when every option is off. hu_window: the (HU_MIN, HU_MAX) the
    images were windowed with, to turn HU into windowed units."""
    flips = {(True, False): "horizontal", (False, True): "vertical", (True, True): "horizontal_and_vertical"}
    width = float(hu_window[1] - hu_window[0])
    steps = []
    if flip_left_right or flip_up_down:
        steps.append(keras.layers.RandomFlip(flips[(bool(flip_left_right), bool(flip_up_down))], seed=seed))
    if rotation_degrees:  # the factor is a fraction of a full turn; rotated-in corners are 0, air after windowing
        steps.append(keras.layers.RandomRotation(rotation_degrees / 360, fill_mode="constant", fill_value=0.0,
                                                 seed=seed))
    if blur_sigma:  # half the slices, one sigma up to blur_sigma per batch
        steps.append(ImageOnly(keras.layers.RandomGaussianBlur(0.5, kernel_size=5, sigma=(0.0, blur_sigma),
                                                               value_range=(0, 1), seed=seed)))
    if noise_hu:  # before the scale, shift and contrast, which clip to the window as windowing does
        steps.append(ImageOnly(keras.layers.GaussianNoise(noise_hu / width, seed=seed)))
    if hu_scale:
        steps.append(ImageOnly(RandomHUScale(hu_scale, -hu_window[0] / width, seed=seed)))
    if hu_shift:
        steps.append(ImageOnly(keras.layers.RandomBrightness(hu_shift / width, value_range=(0, 1), seed=seed)))
    if hu_contrast:
        steps.append(ImageOnly(keras.layers.RandomContrast(hu_contrast, value_range=(0, 1), seed=seed)))
    return keras.Sequential(steps, name="augmentation") if steps else None


def augment_pair(images, masks, augmenter):
    """The same random transform for a batch of images (N, H, W, 1) and their masks."""
    both = augmenter(tf.concat([tf.cast(images, "float32"), tf.cast(masks, "float32")], axis=-1), training=True)
    return both[..., :1], tf.cast(both[..., 1:] >= 0.5, masks.dtype)

# ======================================== from notebooks/03_unet.py


_AXES = (1, 2, 3)  # height, width, channel: everything but the batch


@keras.saving.register_keras_serializable(package="lungseg")
def dice_coef(y_true, y_pred, threshold=0.5, eps=1e-6):
    """Per-image Dice 2|T∩P| / (|T| + |P|) of the prediction thresholded at 0.5 (both empty: 1)."""
    truth = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
    prediction = ops.cast(ops.cast(y_pred, "float32") >= threshold, "float32")
    intersection = ops.sum(truth * prediction, axis=_AXES)
    return (2.0 * intersection + eps) / (ops.sum(truth, axis=_AXES) + ops.sum(prediction, axis=_AXES) + eps)


@keras.saving.register_keras_serializable(package="lungseg")
def iou_coef(y_true, y_pred, threshold=0.5, eps=1e-6):
    """Per-image IoU |T∩P| / |T∪P| of the prediction thresholded at 0.5 (both empty: 1)."""
    truth = ops.cast(ops.cast(y_true, "float32") > 0.5, "float32")
    prediction = ops.cast(ops.cast(y_pred, "float32") >= threshold, "float32")
    intersection = ops.sum(truth * prediction, axis=_AXES)
    union = ops.sum(truth, axis=_AXES) + ops.sum(prediction, axis=_AXES) - intersection
    return (intersection + eps) / (union + eps)


@keras.saving.register_keras_serializable(package="lungseg")
def bce_dice_loss(y_true, y_pred, smooth=1.0, dice_weight=1.0):
    """Per-image mean binary cross-entropy + dice_weight * (1 - soft Dice),
    soft Dice = (2Σtp + 1) / (Σt + Σp + 1)."""
    truth = ops.cast(y_true, "float32")
    probability = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
    bce = -ops.mean(truth * ops.log(probability) + (1.0 - truth) * ops.log(1.0 - probability), axis=_AXES)
    soft_dice = (2.0 * ops.sum(truth * probability, axis=_AXES) + smooth) / (
        ops.sum(truth, axis=_AXES) + ops.sum(probability, axis=_AXES) + smooth)
    return bce + dice_weight * (1.0 - soft_dice)


@keras.saving.register_keras_serializable(package="lungseg")
class WeightedBceDiceLoss(keras.losses.Loss):
    """``bce_dice_loss`` with another weight on the Dice term, as a Keras loss object: a saved model
    keeps the weight (a plain function is saved by its name only)."""

    def __init__(self, dice_weight=1.0, name="bce_dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        return bce_dice_loss(y_true, y_pred, dice_weight=self.dice_weight)

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight}


def make_dataset(images, masks, batch_size: int, training: bool = False, seed: int = 0, augmenter=None,
                 drawer=None):
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and drawer is not None:  # NumPy code in the pipeline: new gas pockets, lesions, coarser grids
        dataset = dataset.map(lambda x, y: (tf.ensure_shape(tf.numpy_function(drawer, [x, y], tf.float32), x.shape), y))
    if training and augmenter is not None:
        dataset = dataset.map(lambda x, y: augment_pair(x, y, augmenter))
    return dataset.prefetch(tf.data.AUTOTUNE)


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's duration to the logs as 'seconds' (CSVLogger then writes it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = time.perf_counter() - self.started


def plot_history(histories: dict, path=None, synthetic: bool = False):
    """Loss, Dice and IoU per epoch, training (dashed) and validation (solid), for one or more models."""
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for (name, history), colour in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for axis, metric in zip(axes, ("loss", "dice_coef", "iou_coef")):
            axis.plot(history["epoch"] + 1, history[metric], "--", color=colour, alpha=0.6, label=f"{name} train")
            axis.plot(history["epoch"] + 1, history[f"val_{metric}"], "-", color=colour, label=f"{name} validation")
            axis.set_title(metric), axis.set_xlabel("epoch"), axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=8)
    figure.suptitle("Training curves" + data_label(synthetic))
    figure.tight_layout()
    return save_figure(figure, path, synthetic)


def error_overlay(image01: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with false positives in red and false negatives in blue."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    rgb[prediction.astype(bool) & ~truth.astype(bool)] = [1.0, 0.1, 0.1]
    rgb[truth.astype(bool) & ~prediction.astype(bool)] = [0.1, 0.4, 1.0]
    return rgb

# ======================================== from notebooks/05_evaluate.py


def load_trained_model(path):
    """Load ``<name>.keras`` and the record it was trained with (``<name>.json`` beside it)."""
    from lungseg.checks import explain_load_error, read_model_record  # missing, damaged, too new: what to do

    path = Path(path)
    record = read_model_record(path)  # <name>.json: image size, HU window, slices, best epoch
    try:
        model = keras.saving.load_model(path, compile=False)  # for inference and scoring: no optimizer state
    except Exception as error:  # Keras reports a truncated zip as "file not found", among others
        raise explain_load_error(path, error) from None
    model.compile(loss=bce_dice_loss, metrics=[dice_coef, iou_coef])
    return model, record


def predict_probabilities(model, slices_hu, settings: dict, batch_size: int = 8) -> list:
    """Lung probability maps at each slice's own size. ``slices_hu``: one 2-D array in HU, or a
    list / 3-D array of them; ``settings``: the model's record (img_size, hu_min, hu_max)."""
    check_settings(settings)
    slices = [slices_hu] if _one_slice(slices_hu) else list(slices_hu)
    if not slices:
        raise LungsegError("No slices given to predict on.")
    for index, image in enumerate(slices):
        if np.ndim(image) != 2 or min(np.shape(image)) < 16:  # e.g. an (H, W, 3) image read as H slices
            raise LungsegError(f"slice {index} has shape {np.shape(image)}: give 2-D slices in HU with one channel, "
                               "(H, W), as one array, a list of them (any sizes) or a 3-D array (N, H, W).")
        check_hu(np.asarray(image), f"slice {index}")
    return _probabilities(model, slices, settings, batch_size)


def _probabilities(model, slices, settings: dict, batch_size: int) -> list:
    batch = np.stack([preprocess_slice(np.asarray(s), settings["img_size"], settings["hu_min"], settings["hu_max"])
                      for s in slices])[..., None]
    probabilities = model.predict(batch, batch_size=batch_size, verbose=0)[..., 0]
    return [resize_image(p, np.shape(s)) for p, s in zip(probabilities, slices)]


def predict_masks(model, slices_hu, settings: dict, threshold: float = 0.5, postprocess: bool = False,
                  batch_size: int = 8):
    """Binary lung masks (uint8 0/1) at the input size: one 2-D slice in, one mask out; a list or
    3-D array in, a list out. ``postprocess``: :func:`clean_mask`."""
    masks = [(p >= threshold).astype(np.uint8) for p in predict_probabilities(model, slices_hu, settings, batch_size)]
    if postprocess:
        masks = [clean_mask(m) for m in masks]
    return masks[0] if _one_slice(slices_hu) else masks


def _one_slice(slices_hu) -> bool:
    return isinstance(slices_hu, np.ndarray) and slices_hu.ndim == 2


def overlap_scores(truth: np.ndarray, prediction: np.ndarray) -> dict:
    """Dice, IoU, precision and recall of two binary masks (both empty: all 1)."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    tp, fp, fn = np.count_nonzero(truth & prediction), np.count_nonzero(~truth & prediction), np.count_nonzero(truth & ~prediction)
    if tp + fp + fn == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}


def hd95(truth: np.ndarray, prediction: np.ndarray, spacing_mm: float = 1.0) -> float:
    """95th percentile of the distances from each mask's boundary pixels to the other's boundary, both
    directions pooled (medpy's convention; MONAI takes the larger of the two directed 95th percentiles),
    in mm (both empty: 0; one empty: inf)."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    if not truth.any() or not prediction.any():
        return 0.0 if truth.any() == prediction.any() else float("inf")
    edges = [mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3)), border_value=0) for mask in (truth, prediction)]
    to_truth, to_prediction = (ndimage.distance_transform_edt(~edge, sampling=spacing_mm) for edge in edges)
    return float(np.percentile(np.concatenate([to_truth[edges[1]], to_prediction[edges[0]]]), 95))


def score_slice(truth, prediction, spacing_mm: float) -> dict:
    return {**overlap_scores(truth, prediction), "hd95_mm": hd95(truth, prediction, spacing_mm)}


def pooled_dice(truths, predictions) -> float:
    """Dice over all pixels of all slices together (large lungs weigh more than small ones)."""
    tp = sum(np.count_nonzero(t.astype(bool) & p.astype(bool)) for t, p in zip(truths, predictions))
    total = sum(np.count_nonzero(t) + np.count_nonzero(p) for t, p in zip(truths, predictions))
    return 2 * tp / total if total else 1.0


def clean_mask(mask, min_component_fraction: float = 0.01, max_hole_fraction: float = 0.001) -> np.ndarray:
    """Drop islands smaller than ``min_component_fraction`` of the largest region; fill holes no
    larger than ``max_hole_fraction`` of the slice (at 512x512: up to 262 pixels, vessels). A hole
    is a region of background that does not reach the slice's edge."""
    mask = np.asarray(mask).astype(bool)
    labels, found = ndimage.label(mask)
    if found > 1:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_component_fraction * sizes[1:].max()
        keep[0] = False  # label 0 is the background
        mask = keep[labels]
    background, found = ndimage.label(~mask)
    if found > 1:
        sizes = np.bincount(background.ravel())
        fill = sizes <= max_hole_fraction * mask.size
        edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
        fill[0] = False
        fill[edge] = False  # background that reaches the edge is outside, not a hole
        mask = mask | fill[background]
    return mask.astype(np.uint8)


def paired_comparison(a, b, seed: int = 0, resamples: int = 10000) -> dict:
    """Per-slice scores of two models on the same slices: mean difference (a - b), its 95%
    bootstrap confidence interval, and the Wilcoxon signed-rank test's p-value."""
    difference = np.asarray(a, float) - np.asarray(b, float)
    means = difference[np.random.default_rng(seed).integers(0, len(difference), (resamples, len(difference)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    p_value = float(stats.wilcoxon(difference).pvalue) if np.any(difference != 0) else 1.0
    return {"mean_difference": float(difference.mean()), "ci95_low": float(low), "ci95_high": float(high),
            "wilcoxon_p": p_value, "slices": int(len(difference)),
            "a_better_slices": int((difference > 0).sum()), "b_better_slices": int((difference < 0).sum())}
