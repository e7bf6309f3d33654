"""Segmenting a scan: its slices through the network in batches, as notebook 05 does for the test
slices, each mask thresholded and cleaned in 2D; then, for a volume, the 3D step of
:mod:`lungseg.anatomy`. Takes a model, its settings and a :class:`~lungseg.reading.Scan`; gives
labels[slice, row, column]: 0 background, 1 right lung, 2 left lung.
"""

from __future__ import annotations

import inspect
import weakref

import numpy as np

from lungseg.anatomy import body_midline, field_of_view_cut_mm2, keep_lungs, split_lungs
from lungseg.measuring import NO_LUNG_ML
from lungseg.checks import check_settings
from lungseg.reading import Scan
from lungseg_utils import check_hu, clean_mask, preprocess_slice, resize_image


_MAX_HOLE = inspect.signature(clean_mask).parameters["max_hole_fraction"].default  # a share of the slice
_NETWORKS = weakref.WeakKeyDictionary()  # model -> its forward pass, traced once for any batch size


def _network(model):
    """``model(x, training=False)`` as one traced function. It computes what ``model.predict`` computes for
    the same batches, without predict's set-up on every call and its new trace for every new batch size
    (the last, shorter batch of each scan); a folder of scans traces it once."""
    import tensorflow as tf

    if model not in _NETWORKS:
        _NETWORKS[model] = tf.function(lambda x: model(x, training=False),
                                       input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
    return _NETWORKS[model]


def prepare_network(model, settings: dict, batch_size: int = 8) -> None:
    """Trace the model's forward pass and set up its kernels for a full batch now (about a second), so
    that no scan pays for it."""
    size = settings["img_size"]
    _network(model)(np.zeros((batch_size, size, size, 1), np.float32))


def _scan_probabilities(model, slices, settings: dict, batch_size: int) -> list:
    """As ``lungseg_utils.predict_probabilities`` (the same inputs, in the same batches), through :func:`_network`."""
    network = _network(model)
    batch = np.stack([preprocess_slice(np.asarray(s), settings["img_size"], settings["hu_min"], settings["hu_max"])
                      for s in slices])[..., None]
    probabilities = np.concatenate([network(batch[i:i + batch_size]).numpy() for i in range(0, len(batch), batch_size)])
    return [resize_image(p, np.shape(s)) for p, s in zip(probabilities[..., 0], slices)]


def _clean_slice(mask: np.ndarray) -> np.ndarray:
    """``clean_mask(mask)``, computed within the mask's bounding box and a pixel around it: the same pixels
    (what lies outside is background that reaches the edge either way; the hole limit stays a share of the
    whole slice), in about half the time on a chest slice."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    cleaned = np.zeros(mask.shape, np.uint8)
    if rows.size:
        box = slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(columns[0] - 1, 0), columns[-1] + 2)
        crop = mask[box]
        cleaned[box] = clean_mask(crop, max_hole_fraction=_MAX_HOLE * mask.size / crop.size)
    return cleaned


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
            for offset, probability in enumerate(_scan_probabilities(model, chunk, settings, batch_size)):
                mask = (probability >= threshold).astype(np.uint8)
                masks[start + offset] = _clean_slice(mask) if postprocess else mask
            bar.update(len(chunk))
    if scan.kind == "slice":
        return masks
    lungs = keep_lungs(masks, scan) if postprocess else masks
    voxel_ml = np.prod(scan.pixel_spacing_mm) * scan.slice_thickness_mm / 1000
    if postprocess and float(lungs.sum(axis=(1, 2)) @ voxel_ml) < NO_LUNG_ML:
        # all lung dropped: lungs cut by a round field of view open onto its padding, "outside the body"
        scan.cut_mm2 = field_of_view_cut_mm2(scan, masks > 0)
    return split_lungs(lungs, body_midline(scan.hu, lungs))
