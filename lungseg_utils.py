"""What several lungseg notebooks share: ``import lungseg_utils as lu``.

GENERATED from the notebook cells marked ``#@save`` by ``python -m lungseg.build_utils``: do not
edit this file; edit the cell in the notebook named above each part, then run that command.

Importing it registers the loss and metrics with Keras, so saved models load with plain
``keras.saving.load_model(path)``.
"""

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage, stats
from sklearn.model_selection import KFold, train_test_split

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

# ======================================== from notebooks/01_download.py


def describe_device() -> str:
    """'GPU: <name>' for each GPU TensorFlow sees, else 'CPU: <processor> (<n> cores)'."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "GPU: " + ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
    processor = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        processor = models[0] if models else processor
    return f"CPU: {processor} ({os.cpu_count()} cores)"


def library_versions() -> dict:
    import cv2
    import scipy
    import sklearn

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__, "opencv": cv2.__version__}


def repo_path(path) -> str:
    """A path as the notebooks print it: relative to the repository, the same on every machine."""
    repository = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lungseg_utils.py").is_file()), Path.cwd())
    return os.path.relpath(Path(path).resolve(), repository)


def config_table(config: dict) -> pd.DataFrame:
    """A notebook's effective settings followed by the library versions, as a one-column table."""
    config = {key: repo_path(value) if isinstance(value, Path) else value for key, value in config.items()}
    return pd.Series({**config, **library_versions()}, name="value").astype(str).to_frame()


def write_json(path, record: dict) -> None:
    """Write a JSON record atomically (a temporary file, then a rename): never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
    temporary.replace(path)


class LungsegError(ValueError):
    """A problem with the user's data or parameters; the message names the file or parameter and the fix."""


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".dcm")
PNG_HU_OFFSET = -1024  # a 16-bit PNG cannot hold negative numbers: by convention it stores HU + 1024


def read_slice(path, *, png_hu_offset: int = PNG_HU_OFFSET) -> np.ndarray:
    """One CT slice as a 2-D array in HU: TIFF read losslessly, DICOM (``.dcm`` or any file with the
    DICOM preamble) with RescaleSlope/Intercept applied, 16-bit PNG with ``png_hu_offset`` added. Anything unreadable raises LungsegError."""
    import tifffile

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES and not is_dicom(path):
        raise LungsegError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}.")
    try:
        if is_dicom(path):
            import pydicom

            from lungseg.dicom import check_decodable  # a missing decoder: which compression, which package

            dataset = pydicom.dcmread(path, force=True)  # force: files written without the 128-byte preamble
            check_decodable(dataset, path)
            array = dicom_hu(dataset)
        elif suffix == ".png":
            array = _read_with_opencv(path)
            if array.dtype == np.uint16:
                array = array.astype(np.int32) + png_hu_offset
        else:
            try:
                array = tifffile.imread(path)
            except ValueError as error:  # compressions tifffile needs imagecodecs for (LZW): OpenCV keeps the bits too
                if "imagecodecs" not in str(error):
                    raise
                array = _read_with_opencv(path)
    except Exception as error:  # tifffile, pydicom and OpenCV raise many different types
        raise LungsegError(f"{path}: unreadable or corrupt image ({type(error).__name__}: {error}). "
                           "Re-download or re-export this file, or remove it together with its mask.") from error
    array = np.asarray(array)
    if array.size == 0:
        raise LungsegError(f"{path}: unreadable or corrupt image (no pixel data). Re-download or re-export it.")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise LungsegError(f"{path}: a colour image {array.shape}; a CT slice has one channel in HU.")
    if array.ndim != 2:
        raise LungsegError(f"{path}: expected one 2-D slice, got an array of shape {array.shape}.")
    check_finite(array, path)
    return array


def is_dicom(path) -> bool:
    """A ``.dcm`` file, a file with the DICOM preamble, or a file without a suffix that pydicom reads as an
    image (files of a series often have no suffix, and some no preamble)."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            if handle.read(132)[128:] == b"DICM":
                return True
    except OSError:
        return False
    if path.suffix or path.name.upper() == "DICOMDIR":
        return False
    try:
        import pydicom

        header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        return "Rows" in header and "SOPClassUID" in header
    except Exception:  # not DICOM: pydicom raises many kinds
        return False


def dicom_hu(dataset) -> np.ndarray:
    """A DICOM image's stored values in HU: stored * RescaleSlope + RescaleIntercept."""
    return dataset.pixel_array.astype(np.float32) * float(dataset.get("RescaleSlope") or 1) + float(
        dataset.get("RescaleIntercept") or 0)


def _read_with_opencv(path) -> np.ndarray:
    """``cv2.imread(path, IMREAD_UNCHANGED)`` (all bits kept), without OpenCV's own log lines on a bad file."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if array is None:
        raise OSError("OpenCV could not decode it")
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


def audit_mask(image_hu: np.ndarray, mask: np.ndarray, outside_fraction: float = 0.02,
               lung_hu=(-950, -300), one_side_fraction: float = 0.1) -> list:
    """Reasons to doubt one lung mask, from its image in HU (an empty list: it looks sound)."""
    image, lung = np.asarray(image_hu, np.float32), np.asarray(mask).astype(bool)
    area = np.count_nonzero(lung)
    if area == 0:
        return ["no lung marked"]
    reasons = []
    if lung[0].any() or lung[-1].any() or lung[:, 0].any() or lung[:, -1].any():
        reasons.append("lung touches the image border")
    air, _ = ndimage.label(image < -500)  # air and the padding outside the field of view
    outside = np.isin(air, np.setdiff1d(np.concatenate([air[0], air[-1], air[:, 0], air[:, -1]]), [0]))
    beyond_fov = np.count_nonzero(lung & (image < -1500)) / area
    on_outside_air = np.count_nonzero(lung & outside) / area
    if beyond_fov > outside_fraction:
        reasons.append(f"{beyond_fov:.0%} of the lung lies outside the scanner's field of view")
    elif on_outside_air > outside_fraction:
        reasons.append(f"{on_outside_air:.0%} of the lung lies on air outside the body")
    mean_hu = float(image[lung].mean())
    if not lung_hu[0] <= mean_hu <= lung_hu[1]:
        reasons.append(f"mean {mean_hu:.0f} HU inside the mask: no lung has that (expected {lung_hu[0]}..{lung_hu[1]})")
    body_columns = np.flatnonzero((image > -500).any(axis=0))
    middle = (body_columns[0] + body_columns[-1] + 1) // 2 if body_columns.size else image.shape[1] // 2
    sides = np.count_nonzero(lung[:, :middle]), np.count_nonzero(lung[:, middle:])
    if min(sides) < one_side_fraction * max(sides) and max(sides) > 0.02 * lung.size:
        side = "left (the patient's right)" if sides[0] < sides[1] else "right (the patient's left)"
        reasons.append(f"one lung missing: {min(sides):,} lung pixels on the image's {side}, {max(sides):,} on the other side")
    return reasons


def audit_labels(pairs: pd.DataFrame) -> pd.DataFrame:
    """``audit_mask`` for every pair (columns name, image_path, mask_path): name, flagged, reasons."""
    reasons = ["; ".join(audit_mask(read_slice(p.image_path), read_mask(p.mask_path))) for p in pairs.itertuples()]
    return pd.DataFrame({"name": list(pairs.name), "flagged": [bool(r) for r in reasons], "reasons": reasons})


STANDARD_HU = {"outside air": -1000.0, "fat": -100.0, "soft tissue": 40.0}  # air by definition; fat, muscle/blood


def tissue_peaks(images) -> dict:
    """Where outside air, fat and soft tissue lie in a set of slices, in the slices' own values: the
    median of the air outside the body (connected to the image's edge, inside the field of view),
    and the fat and soft-tissue peaks of the body's histogram after a 7x7 mean filter. None where a
    peak is not found."""
    air, body = [], []
    for image in images:
        image = np.asarray(image, np.float32)
        field = ndimage.binary_erosion(image > -1500, iterations=8)  # not the padding beyond the field of view
        smooth = ndimage.uniform_filter(image, 7)
        low, _ = ndimage.label(smooth < -400)
        edge = np.setdiff1d(np.concatenate([low[0], low[-1], low[:, 0], low[:, -1]]), [0])
        outside = ndimage.binary_erosion(np.isin(low, edge), iterations=8) & field
        if np.count_nonzero(outside) > 500:
            air.append(float(np.median(image[outside])))
        tissue = smooth[ndimage.binary_erosion((smooth > -400) & field, iterations=4)]
        body.append(tissue[(tissue > -300) & (tissue < 300)])
    counts, edges = np.histogram(np.concatenate(body) if body else [], bins=np.arange(-300, 302, 2))
    counts, centres = ndimage.gaussian_filter1d(counts.astype(float), 2), (edges[:-1] + edges[1:]) / 2

    def peak(low, high):
        part = (centres >= low) & (centres < high)
        found = counts[part].max(initial=0) > 0.05 * counts.max(initial=0) > 0
        return float(centres[part][np.argmax(counts[part])]) if found else None
    return {"outside air": float(np.median(air)) if air else None, "fat": peak(-300, -30), "soft tissue": peak(-30, 300)}


def fit_hu_calibration(peaks: dict) -> dict:
    """The straight line that takes the peaks found to STANDARD_HU: standard = scale * stored + offset
    (least squares). Identity when fewer than two peaks were found or the line is implausible."""
    found = [name for name, value in peaks.items() if value is not None]
    identity = {"scale": 1.0, "offset": 0.0, "peaks": peaks, "standard": STANDARD_HU}
    if len(found) < 2:
        return {**identity, "note": f"peaks found: {found or 'none'}; left as they are"}
    scale, offset = np.polyfit([peaks[n] for n in found], [STANDARD_HU[n] for n in found], 1)
    if not 0.5 <= scale <= 2.0 or abs(offset) > 300:
        return {**identity, "note": f"fit scale {scale:.3f}, offset {offset:.0f} is implausible; left as they are"}
    return {**identity, "scale": float(scale), "offset": float(offset)}


def to_standard_hu(image, calibration: dict) -> np.ndarray:
    """A slice of the dataset in standard HU (float32), with the calibration that 01 recorded."""
    return np.asarray(image, np.float32) * np.float32(calibration["scale"]) + np.float32(calibration["offset"])

# ======================================== from notebooks/02_preprocess.py


def check_img_size(img_size) -> int:
    """The U-Nets halve the resolution four times, so the input size must be a multiple of 16."""
    if not isinstance(img_size, (int, np.integer)) or img_size < 16 or img_size % 16:
        raise LungsegError(f"IMG_SIZE={img_size!r} cannot be used: the models halve the resolution 4 times, so it "
                           "must be a positive multiple of 16 (e.g. 128, 256, 384, 512).")
    return int(img_size)


def window_hu(image: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and scale linearly to [0, 1] (float32). With (-1000, 400), the
    padding outside the scanner's field of view (below -2000) becomes air."""
    if not hu_max > hu_min:
        raise LungsegError(f"HU window ({hu_min}, {hu_max}) is empty: HU_MAX must be greater than HU_MIN.")
    return np.clip((image.astype(np.float32) - hu_min) / (hu_max - hu_min), 0.0, 1.0)


def split_slices(names, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> pd.DataFrame:
    """Each slice to train/val/test: the test slices first, then the validation slices from the rest."""
    names, fractions = sorted(names), list(fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise LungsegError(f"SPLIT={fractions} must be three fractions (train, val, test) summing to 1.")
    n_val, n_test = round(fractions[1] * len(names)), round(fractions[2] * len(names))
    if min(n_val, n_test, len(names) - n_val - n_test) < 1:
        raise LungsegError(f"SPLIT={fractions} on {len(names)} slices gives {len(names) - n_val - n_test}/{n_val}/"
                           f"{n_test} train/val/test slices; every part needs at least one. Use larger fractions.")
    train_val, test = train_test_split(names, test_size=n_test, random_state=seed)
    train, val = train_test_split(train_val, test_size=n_val, random_state=seed)
    part_of = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}
    return pd.DataFrame({"name": names, "split": [part_of[name] for name in names]})


def kfold_split(names, fold: int, folds: int = 5, val_fraction: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """Fold ``fold`` of a k-fold cross-validation: scikit-learn's ``KFold`` makes ``folds`` test parts
    (every slice is tested exactly once over the folds); the validation slices, which pick the
    epoch, come from the rest. Sorted names and ``seed`` make it deterministic."""
    names = sorted(names)
    if not (isinstance(folds, int) and 2 <= folds <= len(names)) or fold not in range(folds if isinstance(folds, int) else 0):
        raise LungsegError(f"FOLD={fold!r} of FOLDS={folds!r}: FOLDS must be an integer 2..{len(names)} and FOLD one "
                           "of 0..FOLDS-1 (or FOLD=None for the fixed SPLIT).")
    train_val, test = list(KFold(folds, shuffle=True, random_state=seed).split(names))[fold]
    train, val = train_test_split(train_val, test_size=round(val_fraction * len(names)), random_state=seed)
    part_of = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}
    return pd.DataFrame({"name": names, "split": [part_of[index] for index in range(len(names))]})


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
    by one pixel; radii in ``radius_px``, for a 256-pixel slice) pasted where the slice is soft tissue
    (above -200 HU) at least 4 pixels from the lung."""
    width = float(hu_window[1] - hu_window[0])
    image = image01.astype(np.float32).copy()
    tissue = (image > (-200 - hu_window[0]) / width) & ~ndimage.binary_dilation(mask.astype(bool), iterations=4)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        ry, rx = rng.uniform(*radius_px, size=2)
        room = ndimage.binary_erosion(tissue, np.ones((2 * int(ry) + 1, 2 * int(rx) + 1)))
        if not room.any():
            break
        cy, cx = np.argwhere(room)[rng.integers(np.count_nonzero(room))]
        pocket = ndimage.gaussian_filter((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32), 1.0)
        gas = (rng.uniform(-1000, -900) + rng.normal(0, 20, image.shape) - hu_window[0]) / width
        image = np.clip((1 - pocket) * image + pocket * gas, 0, 1)
        tissue &= pocket < 0.01
    return image


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


def stage_summary(model) -> pd.DataFrame:
    """``model.summary()`` in one row per stage (layers named ``<stage>_...``): layers, output shape, weights."""
    rows = {}
    for layer in model.layers:
        row = rows.setdefault(layer.name.split("_")[0], {"layers": 0, "output": "", "weights": 0})
        row["layers"] += 1
        row["output"] = " x ".join(str(n) for n in layer.output.shape[1:])
        row["weights"] += layer.count_params()
    table = pd.DataFrame(rows).T
    table.loc["total"] = [len(model.layers), "", model.count_params()]
    return table


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


def make_dataset(images, masks, batch_size: int, training: bool = False, seed: int = 0, augmenter=None):
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and augmenter is not None:
        dataset = dataset.map(lambda x, y: augment_pair(x, y, augmenter))
    return dataset.prefetch(tf.data.AUTOTUNE)


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's duration to the logs as 'seconds' (CSVLogger then writes it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = time.perf_counter() - self.started


def finish_training(model, name: str, models_dir, settings: dict) -> dict:
    """After ``fit``: move ``<name>.in-progress.keras`` and its history to ``<name>.keras`` and
    ``<name>_history.csv``, write ``<name>.json`` (settings, best epoch, timings, device, versions),
    and return that record. A run whose loss became NaN keeps the previous model and says so."""
    models_dir = Path(models_dir)
    best_model, history_csv = models_dir / f"{name}.in-progress.keras", models_dir / f"{name}.in-progress_history.csv"
    history = pd.read_csv(history_csv)
    if not np.isfinite(history.loss).all() or not best_model.is_file():
        for leftover in (best_model, history_csv):
            leftover.unlink(missing_ok=True)
        raise LungsegError(f"Training {name} stopped at epoch {len(history)}: the loss became NaN. Nothing was "
                           f"saved; an earlier {name}.keras is kept. Lower LEARNING_RATE, or look for NaN in the data.")
    best = int(history.val_iou_coef.idxmax())
    record = {"model": name, **settings, "parameters": int(model.count_params()), "best_epoch": best + 1,
              "best_val_iou": float(history.val_iou_coef[best]), "best_val_dice": float(history.val_dice_coef[best]),
              "seconds_per_epoch": float(history.seconds[1:].mean() if len(history) > 1 else history.seconds[0]),
              "first_epoch_seconds": float(history.seconds[0]), "training_seconds": float(history.seconds.sum()),
              "device": describe_device(), "versions": library_versions(), "model_file": str(models_dir / f"{name}.keras")}
    best_model.replace(models_dir / f"{name}.keras")
    history_csv.replace(models_dir / f"{name}_history.csv")
    write_json(models_dir / f"{name}.json", record)
    return record


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

# ======================================== from notebooks/05_evaluate.py


def load_trained_model(path):
    """Load ``<name>.keras`` and the record it was trained with (``<name>.json`` beside it)."""
    path = Path(path)
    for needed in (path, path.with_suffix(".json")):
        if not needed.is_file():
            raise LungsegError(f"{needed} is missing: train the model first (notebooks 03_unet / 04_resunet), "
                               "or use the committed models in the repository's models/ folder.")
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        check_settings(record, path.with_suffix(".json"))
    except ValueError as error:  # not JSON, or not a model's record
        raise LungsegError(f"{path.with_suffix('.json')}: not a model record ({error}). It is written with the "
                           "model by 03/04: train again, or copy both files from the repository's models/.") from None
    try:
        model = keras.saving.load_model(path, compile=False)  # for inference and scoring: no optimizer state
    except Exception as error:  # Keras reports a truncated zip as "file not found", among others
        from lungseg.portable import saved_by  # the Keras version that wrote the file, if it says

        if saved_by(path) and saved_by(path) != keras.__version__:
            raise LungsegError(f"{path}: saved by Keras {saved_by(path)}, which this Keras {keras.__version__} cannot "
                               f"read ({type(error).__name__}). Upgrade Keras (pip install -U keras), or use the "
                               "repository's committed models, which load on Keras 3.8 and newer.") from None
        raise LungsegError(f"{path}: cannot be loaded as a Keras model ({type(error).__name__}); the file may be "
                           "truncated or damaged (an interrupted copy or download). Train again (03/04), or copy "
                           "it again with its .json from the repository's models/.") from None
    model.compile(loss=bce_dice_loss, metrics=[dice_coef, iou_coef])
    return model, record


def check_settings(settings, name="settings") -> None:
    """A model's record must say how its input was made: image size and HU window."""
    missing = [key for key in ("img_size", "hu_min", "hu_max") if not isinstance(settings, dict) or key not in settings]
    if missing:
        raise LungsegError(f"{name} lacks {', '.join(missing)}: give the model's record (the .json written beside "
                           "its .keras; load_trained_model returns it), which says how its input was made.")


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
    """95th percentile of the distances from each mask's boundary pixels to the other's boundary, in
    mm (both empty: 0; one empty: inf)."""
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


def error_overlay(image01: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with false positives in red and false negatives in blue."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    rgb[prediction.astype(bool) & ~truth.astype(bool)] = [1.0, 0.1, 0.1]
    rgb[truth.astype(bool) & ~prediction.astype(bool)] = [0.1, 0.4, 1.0]
    return rgb


def lung_measurements(image_hu: np.ndarray, mask: np.ndarray, pixel_area_mm2: float) -> dict:
    """Lung area (mm²), mean HU, and the 5th/95th percentile density (PD05/PD95) inside the mask."""
    inside = image_hu[mask.astype(bool)].astype(np.float64)
    if inside.size == 0:
        return {"area_mm2": 0.0, "mean_hu": np.nan, "pd05_hu": np.nan, "pd95_hu": np.nan}
    return {"area_mm2": inside.size * pixel_area_mm2, "mean_hu": inside.mean(),
            "pd05_hu": np.percentile(inside, 5), "pd95_hu": np.percentile(inside, 95)}


from dataclasses import dataclass, field


@dataclass
class Scan:
    """A CT slice or volume in HU as the model sees it: ``hu[slice, row, column]``, rows from front to
    back, columns from the patient's right to left; with its voxel size and how to put a mask back."""
    name: str
    kind: str  # "slice" or "volume"
    hu: np.ndarray
    pixel_spacing_mm: tuple | None  # (row, column) spacing; None when the file does not say (TIFF, PNG)
    slice_thickness_mm: np.ndarray | None = None  # per slice, from the real positions (volumes)
    affine: np.ndarray | None = None  # the input's NIfTI affine (RAS), for the mask file
    orientation: np.ndarray | None = None  # the input's axes, as nibabel's io_orientation gives them
    source: str = ""
    notes: list = field(default_factory=list)


NIFTI_SUFFIXES = (".nii", ".nii.gz")
MODEL_AXES = ("L", "P", "S")  # nibabel axis codes of (column, row, slice) as the model was trained


def _to_model_axes(data: np.ndarray, affine: np.ndarray):
    """Reorient a volume (array axes as its affine says) to hu[slice, row, column] in MODEL_AXES."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(orientation, nib.orientations.axcodes2ornt(MODEL_AXES))
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zooms = zooms[np.argsort(transform[:, 0])]  # in the order (column, row, slice)
    hu = nib.orientations.apply_orientation(data, transform).transpose(2, 1, 0)
    return hu, zooms, orientation


def from_model_axes(mask: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """The inverse of the reorientation: a mask[slice, row, column] back into the input's own array axes."""
    import nibabel as nib

    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(MODEL_AXES), orientation)
    return nib.orientations.apply_orientation(mask.transpose(2, 1, 0), transform)


def read_nifti(path) -> Scan:
    """A NIfTI volume in HU (its scaling applied), in the model's orientation whatever the file's."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(path)
        data = image.get_fdata(dtype=np.float32)
    except Exception as error:
        raise LungsegError(f"{path}: unreadable NIfTI ({type(error).__name__}: {error}). Re-export it.") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LungsegError(f"{path}: a NIfTI of shape {data.shape}; a CT volume has three dimensions.")
    axes = image.affine[:3, :3]
    voxel_mm3 = abs(np.linalg.det(axes)) if np.all(np.isfinite(axes)) else 0.0
    if voxel_mm3 < 1e-6:
        raise LungsegError(f"{path}: its affine (voxel to world) is {'singular' if np.all(np.isfinite(axes)) else 'not finite'}"
                           ", so its voxels have no size or place. Re-export it with its geometry (e.g. dcm2niix).")
    hu, zooms, orientation = _to_model_axes(data, image.affine)
    name = path.name[: -len(next(s for s in NIFTI_SUFFIXES if path.name.lower().endswith(s)))]
    notes = []
    if not int(image.header["qform_code"]) and not int(image.header["sform_code"]):
        notes.append(f"{path}: no qform or sform code, so its orientation is not known: right and left (labels 1 "
                     "and 2) are a guess. Export it with its orientation (e.g. dcm2niix).")
    directions = axes / np.linalg.norm(axes, axis=0)
    if np.abs(directions.T @ directions - np.eye(3)).max() > 1e-3:  # sheared, e.g. a gantry tilt kept in the affine
        notes.append(f"{path}: its affine is sheared (a gantry tilt?): volumes use the true voxel volume, "
                     f"{voxel_mm3:.3f} mm³.")
    thickness = voxel_mm3 / (zooms[0] * zooms[1])  # along the slice normal, not the length of the third axis
    return Scan(name, "volume", hu, (float(zooms[1]), float(zooms[0])), np.full(hu.shape[0], float(thickness)),
                image.affine, orientation, str(path), notes)


CT_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, enhanced CT


def dicom_pixel_spacing(header, source, pixel_spacing_mm: float | None = None, notes: list | None = None):
    """(row, column) spacing in mm: PixelSpacing; else ImagerPixelSpacing (said); else ``pixel_spacing_mm``
    (said); else None. A wrong pixel size would put every volume off by its square."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = header.get(key)
        if value and len(value) == 2 and all(float(v) > 0 for v in value):
            if key != "PixelSpacing" and notes is not None:
                notes.append(f"{source}: no PixelSpacing; its {key} ({float(value[0]):g} x {float(value[1]):g} mm) is used.")
            return float(value[0]), float(value[1])
    if pixel_spacing_mm:
        if notes is not None:
            notes.append(f"{source}: no PixelSpacing; --pixel-spacing {pixel_spacing_mm:g} mm is used.")
        return float(pixel_spacing_mm), float(pixel_spacing_mm)
    return None


def read_dicom_series(files, name: str, pixel_spacing_mm: float | None = None) -> Scan:
    """One DICOM series as a volume in HU. ``files``: (path, header) pairs of one Series Instance UID.
    Localizers (scouts) are left out, slices ordered along the slice normal and spaced by their Image
    Position (Patient), RescaleSlope/Intercept applied. One slice left: a slice, not a volume."""
    import pydicom

    notes = []
    def frame(header):
        return tuple(np.round(np.asarray(header.get("ImageOrientationPatient") or [1, 0, 0, 0, 1, 0], float), 3)), \
            header.get("Rows"), header.get("Columns")
    common = pd.Series([frame(h) for _, h in files]).value_counts().index[0]
    kept = []
    for path, header in files:
        if "LOCALIZER" in [str(v).upper() for v in header.get("ImageType") or []] or frame(header) != common:
            notes.append(f"{path}: a localizer (scout) or an image of another orientation or size: left out.")
        else:
            kept.append((path, header))
    missing = [str(path) for path, header in kept if header.get("ImagePositionPatient") is None]
    if missing and len(kept) > 1:
        raise LungsegError(f"{missing[0]}: no Image Position (Patient), so its slices cannot be placed. Export the "
                           "series with its geometry, or as NIfTI.")
    row_direction, column_direction = np.array(common[0][:3]), np.array(common[0][3:])
    normal = np.cross(row_direction, column_direction)
    origins = np.array([np.asarray(h.get("ImagePositionPatient") or [0, 0, 0], float) for _, h in kept])
    order = np.argsort(origins @ normal, kind="stable")
    kept, origins = [kept[i] for i in order], origins[order]
    positions = origins @ normal
    gaps = np.diff(positions)
    if len(gaps) and gaps.min() < 0.01:
        twin = kept[int(np.argmin(gaps)) + 1][0]
        raise LungsegError(f"{twin}: at the same position as another slice of series {name}; a series has one slice "
                           "per position. Remove the duplicate (or choose one series with --series).")
    if len(gaps) and gaps.max() - gaps.min() > 0.01 * np.median(gaps) + 0.01:
        notes.append(f"{name}: uneven slice spacing ({gaps.min():.2f}..{gaps.max():.2f} mm): volumes use each "
                     "slice's real position; the mask file's affine has the mean spacing.")
    slices = []
    for path, header in kept:
        slices.append(read_slice(path))  # stored values * RescaleSlope + RescaleIntercept: HU
    spacing = dicom_pixel_spacing(kept[0][1], kept[0][0], pixel_spacing_mm, notes)  # (between rows, between columns)
    if spacing is None and len(kept) > 1:
        raise LungsegError(f"{kept[0][0]}: no PixelSpacing (nor ImagerPixelSpacing), so the lungs cannot be measured "
                           "in mL. Give the pixel size with --pixel-spacing MM, or export the series with its geometry.")
    if len(kept) == 1:
        notes.append(f"{kept[0][0]}: a series of one slice: segmented as a slice.")
        return Scan(kept[0][0].name, "slice", slices[0][None], spacing, source=str(kept[0][0]), notes=notes)
    step = (origins[-1] - origins[0]) / (len(kept) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_direction * spacing[1], column_direction * spacing[0], step, origins[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's patient axes are LPS, NIfTI's RAS
    hu, zooms, orientation = _to_model_axes(np.stack(slices, axis=-1).transpose(1, 0, 2), affine)
    thickness = np.full(hu.shape[0], zooms[2])
    if orientation[2, 0] == 2:  # axial slices: each keeps its real spacing (half the gaps to its neighbours)
        neighbours = np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1]]])
        thickness = neighbours if orientation[2, 1] == 1 else neighbours[::-1]  # the model's slices go up (S)
    return Scan(name, "volume", hu, (float(zooms[1]), float(zooms[0])), thickness, affine, orientation,
                str(kept[0][0].parent), notes)


NOT_HU_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _refuse(message):
    def read():
        raise LungsegError(message)
    return read


def read_image_slice(path) -> Scan:
    """A TIFF, 16-bit PNG or single DICOM slice as a one-slice Scan (DICOM knows its pixel spacing)."""
    path = Path(path)
    spacing, notes = None, []
    if is_dicom(path):
        import pydicom

        spacing = dicom_pixel_spacing(pydicom.dcmread(path, stop_before_pixels=True), path, notes=notes)
    return Scan(path.name, "slice", read_slice(path)[None], spacing, source=str(path), notes=notes)


def find_scans(input_path, series: str | None = None, pixel_spacing_mm: float | None = None, exclude=()) -> list:
    """The scans in ``input_path`` (a slice, a NIfTI file, or a folder, searched with its subfolders, of
    DICOM files, slices or NIfTI files; a CD's DICOMDIR index and the files in ``exclude`` are passed
    over) as (source, read) pairs: ``read()`` returns a Scan or raises LungsegError naming the file."""
    import pydicom

    path = Path(input_path).expanduser()
    if not path.exists():
        raise LungsegError(f"{path} does not exist. Give a CT slice, a NIfTI file, or a folder of DICOM files or slices.")
    exclude = {Path(p).resolve() for p in exclude}
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.resolve() not in exclude)
    scans, dicoms = [], {}
    for file in files:
        suffix = file.suffix.lower()
        if file.name.upper() == "DICOMDIR":  # a CD's index of its files, not an image
            continue
        if file.name.lower().endswith(NIFTI_SUFFIXES):
            scans.append((file, lambda file=file: read_nifti(file)))
        elif is_dicom(file):
            try:
                header = pydicom.dcmread(file, stop_before_pixels=True, force=True)
            except Exception as error:
                scans.append((file, _refuse(f"{file}: unreadable DICOM ({type(error).__name__}). Re-export it.")))
                continue
            modality, sop_class = header.get("Modality"), str(header.get("SOPClassUID") or "")
            if (modality and modality != "CT") or (not modality and sop_class and sop_class not in CT_IMAGE_STORAGE):
                scans.append((file, _refuse(f"{file}: a {modality or 'non-CT'} image, not CT: the models segment CT in HU.")))
                continue
            if int(header.get("NumberOfFrames") or 1) > 1:
                scans.append((file, _refuse(f"{file}: an enhanced multi-frame CT ({header.NumberOfFrames} frames in one "
                                            "file), which lungseg does not read: convert it to NIfTI (e.g. dcm2niix) "
                                            "or to single-frame DICOM, and give that.")))
                continue
            dicoms.setdefault(str(header.get("SeriesInstanceUID") or "unknown"), []).append((file, header))
        elif suffix in IMAGE_SUFFIXES:
            scans.append((file, lambda file=file: read_image_slice(file)))
        elif suffix in NOT_HU_SUFFIXES:
            scans.append((file, _refuse(f"{file}: a {suffix[1:].upper()} image has 8 bits and cannot hold Hounsfield "
                                        "units (HU). Export the CT as DICOM, NIfTI, int16 TIFF or 16-bit PNG (HU+1024).")))
        elif path.is_file():
            scans.append((file, _refuse(f"{file}: not a CT file lungseg reads (DICOM, NIfTI, TIFF, 16-bit PNG).")))
    if series is not None and series not in dicoms:
        raise LungsegError(f"--series {series}: no such series in {path}; found {', '.join(dicoms) or 'no DICOM series'}.")
    volumes = {uid: files for uid, files in dicoms.items() if len(files) > 1}
    if series is not None or volumes:
        chosen = series or max(volumes, key=lambda uid: len(volumes[uid]))
        name = (path.resolve().name if path.is_dir() else path.stem) or "scan"  # "." is named after its folder
        others = [f"{path}: also holds series {uid} ({len(files)} files), not segmented; series={uid!r} "
                  f"(--series {uid}) chooses it." for uid, files in dicoms.items() if uid != chosen]

        def read(files=dicoms[chosen]):
            scan = read_dicom_series(files, name, pixel_spacing_mm)
            scan.notes += others
            return scan
        scans.append((path, read))
    else:  # single DICOM slices, each its own series
        singles = [file for files in dicoms.values() for file, _ in files]
        note = (f"{path}: {len(singles)} DICOM files, each with its own Series Instance UID: segmented as separate "
                "slices. If they are one scan, export them as one series (or as NIfTI).") if len(singles) > 2 else None

        def read_single(file, first):
            scan = read_image_slice(file)
            scan.notes += [note] if note and first else []
            return scan
        scans += [(file, lambda file=file, first=(k == 0): read_single(file, first)) for k, file in enumerate(singles)]
    if not scans:
        raise LungsegError(f"{path}: holds no CT files (DICOM, NIfTI, TIFF or 16-bit PNG). Point INPUT at a DICOM "
                           "series folder, a NIfTI file, or a folder of slices.")
    return scans


def split_lungs(mask: np.ndarray) -> np.ndarray:
    """Label a lung mask[slice, row, column] (columns from the patient's right to left): 1 right, 2 left.
    The split column is the one with the fewest lung voxels in the middle 40% of the lungs' width; a
    connected region lying (95%) on one side gets that side, one crossing it (touching lungs) is cut there."""
    mask = np.asarray(mask).astype(bool)
    labels = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return labels
    profile = mask.sum(axis=(0, 1))
    columns = np.flatnonzero(profile)
    low, high = columns[0], columns[-1]
    band = np.arange(low + int(0.3 * (high - low)), high - int(0.3 * (high - low)) + 1)
    split = band[np.lexsort((np.abs(band - (low + high) / 2), profile[band]))[0]]  # fewest voxels, then central
    regions, _ = ndimage.label(mask)
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        inside = regions[box] == index
        column = np.arange(box[2].start, box[2].stop)[None, None, :]
        right_share = np.count_nonzero(inside & (column < split)) / np.count_nonzero(inside)
        side = 1 if right_share >= 0.95 else 2 if right_share <= 0.05 else np.where(column < split, 1, 2)
        labels[box][inside] = np.broadcast_to(side, inside.shape)[inside]
    return labels


def keep_lungs(mask: np.ndarray, scan: Scan, min_share: float = 0.1, gas_hu: float = -970.0) -> np.ndarray:
    """The connected regions of a volume's mask[slice, row, column] that can be lung: mostly inside the
    body (each slice's outline of tissue above -500 HU, holes filled), not pure gas (less than half of
    the region at or below ``gas_hu``: its median lies above) and at least ``min_share`` of the largest
    such region's volume. Counted slice by slice, so a large scan needs little memory beyond its labels."""
    regions, found = ndimage.label(mask)
    if not found:
        return mask.astype(np.uint8)
    volume, inside, gas = np.zeros(found + 1), np.zeros(found + 1), np.zeros(found + 1)  # mL per region
    voxel_ml = scan.slice_thickness_mm * np.prod(scan.pixel_spacing_mm) / 1000
    for k in np.flatnonzero(np.any(mask, axis=(1, 2))):  # the slices with lung found
        labels = regions[k]
        volume += np.bincount(labels.ravel(), minlength=found + 1) * voxel_ml[k]
        inside += np.bincount(labels[ndimage.binary_fill_holes(scan.hu[k] > -500)], minlength=found + 1) * voxel_ml[k]
        gas += np.bincount(labels[scan.hu[k] <= gas_hu], minlength=found + 1) * voxel_ml[k]
    lung_like = (inside >= 0.5 * volume) & (gas < 0.5 * volume)
    lung_like[0] = False  # label 0 is the background
    keep = lung_like & (volume >= min_share * volume[lung_like].max(initial=0))
    return keep[regions].astype(np.uint8)


NO_LUNG_ML = 20.0  # less lung than this in a volume: "no lungs found"


def segment_scan(model, scan: Scan, settings: dict, threshold: float = 0.5, postprocess: bool = True,
                 batch_size: int = 8, progress: bool = False) -> np.ndarray:
    """Labels[slice, row, column] for a Scan: 0 background, 1 right lung, 2 left lung (a slice: 1 lung)."""
    from tqdm import tqdm

    check_settings(settings)
    check_hu(scan.hu, scan.source or scan.name)
    masks = np.zeros(scan.hu.shape, np.uint8)
    with tqdm(total=len(scan.hu), desc=scan.name, unit="slice", disable=not progress or scan.kind == "slice") as bar:
        for start in range(0, len(scan.hu), 4 * batch_size):
            chunk = list(scan.hu[start:start + 4 * batch_size])
            for offset, probability in enumerate(_probabilities(model, chunk, settings, batch_size)):
                mask = (probability >= threshold).astype(np.uint8)
                masks[start + offset] = clean_mask(mask) if postprocess else mask
            bar.update(len(chunk))
    if scan.kind == "slice":
        return masks
    return split_lungs(keep_lungs(masks, scan) if postprocess else masks)


def scan_measurements(scan: Scan, labels: np.ndarray, pixel_spacing_mm: float | None = None) -> dict:
    """Lung size (area in mm² for a slice; volumes in mL, right and left, for a volume) and density:
    mean HU, PD05/PD15/PD95 (HU percentiles) and LAA-950 (% of lung voxels below -950 HU, the
    emphysema index; PD15 is its density counterpart)."""
    spacing = scan.pixel_spacing_mm or ((pixel_spacing_mm, pixel_spacing_mm) if pixel_spacing_mm else None)
    pixel_area = spacing[0] * spacing[1] if spacing else np.nan
    lung = labels > 0
    row = {"name": scan.name, "kind": scan.kind, "slices": len(scan.hu), "lung_pixels": int(lung.sum())}
    if scan.kind == "slice":
        row["area_mm2"] = lung.sum() * pixel_area
        if not lung.any():
            row["note"] = "no lung found: is this a chest CT slice in HU?"
    else:
        def millilitres(part):
            return float((part.sum(axis=(1, 2)) * scan.slice_thickness_mm).sum() * pixel_area / 1000)
        row.update(lung_volume_ml=millilitres(lung), right_volume_ml=millilitres(labels == 1),
                   left_volume_ml=millilitres(labels == 2))
        if row["lung_volume_ml"] < NO_LUNG_ML:
            row["note"] = f"no lungs found ({row['lung_volume_ml']:.1f} mL): is this a chest CT?"
    inside = scan.hu[lung].astype(np.float64)
    percentiles = np.percentile(inside, [5, 15, 95]) if inside.size else [np.nan] * 3
    row.update(mean_hu=inside.mean() if inside.size else np.nan, pd05_hu=percentiles[0], pd15_hu=percentiles[1],
               pd95_hu=percentiles[2], laa950_percent=100 * np.mean(inside < -950) if inside.size else np.nan,
               pixel_spacing_mm=" x ".join(f"{v:g}" for v in spacing) if spacing else "unknown",
               slice_spacing_mm=float(np.mean(scan.slice_thickness_mm)) if scan.kind == "volume" else np.nan)
    return row


LABEL_COLOURS = {1: (0.1, 1.0, 0.2), 2: (0.2, 0.5, 1.0)}  # right lung green, left lung blue


def mask_overlay(image01: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with each label tinted (1 green, 2 blue)."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    for label, colour in LABEL_COLOURS.items():
        rgb[labels == label] = 0.55 * rgb[labels == label] + 0.45 * np.array(colour)
    return rgb


def write_scan_outputs(scan: Scan, labels: np.ndarray, outputs) -> dict:
    """The mask file (NIfTI for a volume, PNG for a slice) and a preview PNG; returns their paths."""
    import cv2

    name = scan.name
    if scan.kind == "volume":
        import nibabel as nib

        mask_path = outputs.path(f"{name}_mask.nii.gz")
        image = nib.Nifti1Image(from_model_axes(labels, scan.orientation).astype(np.uint8), scan.affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, mask_path)
    else:
        mask_path = outputs.path(f"{name}_mask.png")
        cv2.imwrite(str(mask_path), (labels[0] > 0).astype(np.uint8) * 255)
    with_lung = np.flatnonzero(labels.any(axis=(1, 2))) if labels.any() else np.arange(len(labels))
    shown = with_lung[np.linspace(0, len(with_lung) - 1, min(6, len(with_lung))).astype(int)]
    pictures = [mask_overlay(window_hu(scan.hu[k], -1000, 400), labels[k]) for k in shown]
    title = f"{name}: right lung green, left lung blue" if scan.kind == "volume" else f"{name}: predicted lung"
    figure = show_pairs([pictures], [f"slice {k + 1} of {len(labels)}" for k in shown], title=title,
                        path=outputs.path(f"{name}_preview.png"), size=2.4)
    plt.close(figure)
    return {"mask": str(mask_path), "preview": str(outputs.folder / f"{name}_preview.png")}


def predict_scans(model, settings: dict, input_path, output_dir, *, threshold: float = 0.5, postprocess: bool = True,
                  batch_size: int = 8, series: str | None = None, pixel_spacing_mm: float | None = None,
                  progress: bool = False, model_name: str = "", log=print) -> pd.DataFrame:
    """Segment the lungs in your CT (see find_scans for what ``input_path`` may be) and write, into
    ``output_dir``, each scan's mask and preview and ``measurements.csv``/``.json``. Returns the
    measurements (with rows of earlier runs into the same folder); ``.attrs["problems"]`` lists the
    inputs that could not be used, ``.attrs["segmented"]`` counts the scans of this call."""
    from lungseg.outputs import OutputFolder  # never replaces your files; records each scan as it is written

    outputs = OutputFolder(output_dir)
    record = {"model": model_name or model.name, "threshold": threshold, "postprocess": postprocess,
              "settings": {key: settings.get(key) for key in ("img_size", "hu_min", "hu_max", "epochs", "base_filters",
                                                                "best_val_dice", "model_file")},
              "labels": {"0": "background", "1": "right lung", "2": "left lung (volumes)"},
              "versions": library_versions()}
    rows, problems = [], []
    try:
        for source, read in find_scans(input_path, series, pixel_spacing_mm, exclude=outputs.own_files()):
            try:
                scan = read()
                for note in scan.notes:
                    log(" ".join(note.split()))
                labels = segment_scan(model, scan, settings, threshold, postprocess, batch_size, progress)
                lung_hu = scan.hu[labels > 0]
                if lung_hu.size and not -1000 <= lung_hu.mean() <= -200:
                    raise LungsegError(f"{source}: the lung found has a mean of {lung_hu.mean():.0f} HU, which no lung "
                                       "has: its values are not HU. Convert it to HU (a 16-bit PNG holds HU+1024; "
                                       "DICOM needs its rescale slope and intercept).")
                scan.name = outputs.name_for(scan.name, source)  # two patients' chest.nii.gz: chest, chest-2
                rows.append({**scan_measurements(scan, labels, pixel_spacing_mm),
                             **write_scan_outputs(scan, labels, outputs), "input": str(Path(source).resolve())})
                if "note" in rows[-1]:
                    log(f"{source}: {rows[-1]['note']}")
            except LungsegError as error:
                problems.append(" ".join(str(error).split()))  # one line per input
                log(f"not segmented: {problems[-1]}")
            if rows:
                outputs.save(rows, {**record, "problems": problems})  # each scan recorded as soon as it is done
        table = outputs.save(rows, {**record, "problems": problems})
    finally:
        outputs.close()
    segmented = len(rows)
    table.attrs.update(problems=problems, segmented=segmented)
    return table
