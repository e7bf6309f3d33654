"""The 3D step: a volume's mask judged by anatomy, and told right from left. Takes a mask[slice, row,
column] from the network (and the scan's HU); gives the regions that can be lung, their enclosed
holes filled (:func:`keep_lungs`), labelled 1 right and 2 left (:func:`split_lungs`, :func:`body_midline`).

A 2D model sees one slice at a time, so below the lungs it may mark gas in the stomach and bowel,
and beside the body the air by the arms or hips; and where disease fills the lung it may leave out
what no longer looks dark. A volume shows what a slice cannot, so a volume's mask is judged in 3D
by anatomy, as lungmask does, on its connected regions (SciPy's `ndimage.label`):
- lung lies inside the body: in each slice, what tissue (above -500 HU) encloses, the outline closed
  along the image's edges where the body runs off them (a patient wider than the field of view);
- lung holds vessels and walls: it is not pure gas (its median lies above -970 HU, darker than any
  training lung);
- lung lies above the diaphragm: a region half of whose voxels have another lung region straight
  above them (in the same column of the volume, higher up), with tissue between the two (denser
  than -300 HU over most of the gap: a diaphragm, not a slice of lung the model missed), lies
  below the diaphragm: the stomach under the left dome, the colon under the bases;
- a region smaller than a tenth of the largest is a speck, not a lung;
- what the lung encloses is lung: holes in 3D (a nodule, a tumour, a cavity that the model left
  out but the lung surrounds) are filled. The mediastinum is never enclosed: it runs on into the
  neck and the abdomen.
A volume with under 20 mL of lung left is reported as "no lungs found". Then the lung voxels are
told right from left. These rules and their numbers were set from anatomy and the Kaggle slices,
before the external volumes were looked at.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from lungseg.reading import Scan


def split_lungs(mask: np.ndarray, midline: float | None = None, min_lung_share: float = 0.15) -> np.ndarray:
    """Label a lung mask[slice, row, column] (columns from the patient's right to left): 1 right, 2 left.

    Each connected region gets its side from where it lies against the body's ``midline`` (a column; see
    :func:`body_midline`), or, without one, against the middle of the lungs' width. A region crossing that
    line (two lungs that touch) is cut at the column with the fewest lung voxels near it; a region with less
    than ``min_lung_share`` of it on the other side (5% without a midline) is one lung, however large, and
    gets the side where most of it lies (one lung after a pneumonectomy, reaching over the midline)."""
    mask = np.asarray(mask).astype(bool)
    labels = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return labels
    profile = mask.sum(axis=(0, 1))
    columns = np.flatnonzero(profile)
    low, high = columns[0], columns[-1]
    if midline is None:
        middle, half_band = (low + high) / 2, 0.2 * (high - low)
    else:
        middle, half_band = float(midline), 0.1 * (high - low)
    band = np.arange(max(0, round(middle - half_band)), min(mask.shape[2] - 1, round(middle + half_band)) + 1)
    split = band[np.lexsort((np.abs(band - middle), profile[band]))[0]]  # fewest voxels, then central
    whole = _bounding_box(mask)  # all of the mask lies in it
    regions, _ = ndimage.label(mask[whole])
    inner = labels[whole]  # a view: labelling it labels `labels`
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        inside = regions[box] == index
        column = np.arange(whole[2].start + box[2].start, whole[2].start + box[2].stop)[None, None, :]
        cut = int(np.clip(split - column[0, 0, 0], 0, inside.shape[2]))  # the box's columns before ``split``
        right_share = np.count_nonzero(inside[:, :, :cut]) / np.count_nonzero(inside)
        crossing = min(right_share, 1 - right_share) >= (0.05 if midline is None else min_lung_share)
        side = np.where(column < split, 1, 2).astype(np.uint8) if crossing else 1 if right_share >= 0.5 else 2
        np.copyto(inner[box], side, where=inside)
    return labels


def body_midline(hu: np.ndarray, lung: np.ndarray, slices: int = 9) -> float | None:
    """The column of the body's midline in a volume hu[slice, row, column]: the median, over up to ``slices``
    slices with lung, of the middle of what the tissue encloses (:func:`inside_body`); None without lung."""
    with_lung = np.flatnonzero(np.asarray(lung).any(axis=(1, 2)))
    if not with_lung.size:
        return None
    centres = []
    for k in with_lung[np.unique(np.linspace(0, len(with_lung) - 1, min(slices, len(with_lung))).round().astype(int))]:
        body_columns = np.flatnonzero(inside_body(hu[k]).any(axis=0))
        if body_columns.size:
            centres.append((body_columns[0] + body_columns[-1]) / 2)
    return float(np.median(centres)) if centres else None


def inside_body(hu: np.ndarray, tissue_hu: float = -500.0) -> np.ndarray:
    """What a slice's tissue (above ``tissue_hu``) encloses. Where the body runs off the image (a patient
    wider than the field of view), its outline is closed along that edge, between the first and the
    last tissue pixel on it: the air left open to the image's edge is outside, the rest inside."""
    tissue = hu > tissue_hu
    closed = tissue.copy()
    for edge in (closed[0], closed[-1], closed[:, 0], closed[:, -1]):  # views: closing them closes `closed`
        present = np.flatnonzero(edge)
        if len(present):
            edge[present[0]:present[-1] + 1] = True
    count, air = cv2.connectedComponents((~closed).astype(np.uint8), connectivity=4)  # ndimage.label's, faster
    outside = np.zeros(count, bool)
    outside[np.concatenate([air[0], air[-1], air[:, 0], air[:, -1]])] = True
    outside[0] = False  # label 0: the closed outline and the tissue
    return ~outside[air]


def keep_lungs(mask: np.ndarray, scan: Scan, min_share: float = 0.1, gas_hu: float = -970.0,
               under_share: float = 0.5, fill: bool = True) -> np.ndarray:
    """The connected regions of a volume's mask[slice, row, column] (slices going up) that can be lung,
    by the rules above, with the holes that they enclose filled. Counted slice by slice, so a large
    scan needs little memory beyond its labels; within the mask's bounding box, where all of it lies
    (only "inside the body" looks at whole slices)."""
    if not np.any(mask):
        return np.asarray(mask).astype(np.uint8)
    box = _bounding_box(mask)
    regions, found = ndimage.label(mask[box])
    hu = scan.hu[box]
    volume, inside, gas = np.zeros(found + 1), np.zeros(found + 1), np.zeros(found + 1)  # mL per region
    voxel_ml = scan.slice_thickness_mm[box[0]] * np.prod(scan.pixel_spacing_mm) / 1000
    for k in np.flatnonzero(np.any(regions, axis=(1, 2))):  # the slices with lung found
        labels = regions[k]
        volume += np.bincount(labels.ravel(), minlength=found + 1) * voxel_ml[k]
        inside += np.bincount(labels[inside_body(scan.hu[box[0].start + k])[box[1:]]], minlength=found + 1) * voxel_ml[k]
        gas += np.bincount(labels[hu[k] <= gas_hu], minlength=found + 1) * voxel_ml[k]
    lung_like = (inside >= 0.5 * volume) & (gas < 0.5 * volume)
    lung_like[0] = False  # label 0 is the background
    keep = lung_like & (volume >= min_share * volume[lung_like].max(initial=0))
    under = _under_other_regions(regions, np.flatnonzero(keep), hu)
    for index, share in under.items():
        if share >= under_share:
            keep[index] = False
    keep &= volume >= min_share * volume[keep].max(initial=0)
    kept = np.zeros(np.shape(mask), bool)
    kept[box] = keep[regions]
    return (_fill_enclosed(kept) if fill else kept).astype(np.uint8)


def _under_other_regions(regions: np.ndarray, indices, hu: np.ndarray, tissue_hu: float = -300.0) -> dict:
    """For each region in ``indices``: the share of its voxels that lie under another of these regions
    with tissue between: in the same (row, column), the other region starts higher up, and the slices
    between the two are mostly denser than ``tissue_hu`` (a diaphragm; not a slice of lung that the
    model missed)."""
    if len(indices) < 2:  # nothing for a region to lie under
        return {index: 0.0 for index in indices}
    boxes = ndimage.find_objects(regions)
    extent = {}
    for index in indices:  # each region's lowest and highest slice in every (row, column)
        box = boxes[index - 1]
        inside = regions[box] == index
        present = inside.any(axis=0)
        top, bottom = np.full(regions.shape[1:], -1, np.int32), np.full(regions.shape[1:], regions.shape[0], np.int32)
        top[box[1:]] = np.where(present, box[0].stop - 1 - np.argmax(inside[::-1], axis=0), -1)
        bottom[box[1:]] = np.where(present, box[0].start + np.argmax(inside, axis=0), regions.shape[0])
        extent[index] = top, bottom
    shares = {}
    for index in indices:
        box = boxes[index - 1]
        top = extent[index][0][box[1:]]
        rows = slice(box[0].start, regions.shape[0])  # from this region up to the top of the scan
        tissue = _count_up(hu[rows][(slice(None),) + box[1:]] > tissue_hu)
        under = np.zeros(top.shape, bool)
        for other in indices:
            if other == index:
                continue
            bottom = extent[other][1][box[1:]]
            gap = bottom - top - 1
            above = (top >= 0) & (bottom < regions.shape[0]) & (gap >= 1)
            low, high = np.clip(top + 1 - box[0].start, 0, None), np.clip(bottom - box[0].start, 0, None)
            dense = np.take_along_axis(tissue, high[None], 0)[0] - np.take_along_axis(tissue, low[None], 0)[0]
            under |= above & (dense >= 0.5 * np.maximum(gap, 1))
        inside = regions[box] == index
        shares[index] = float(np.count_nonzero(inside & under[None]) / np.count_nonzero(inside))
    return shares


def _count_up(dense: np.ndarray) -> np.ndarray:
    """counts[j] = how many of dense[:j] are true in each (row, column): a cumulative sum along the slices
    with a zero slice first, added slice by slice (numpy's cumsum along the first axis of a large boolean
    array took 0.6 s against 0.25 s on a 133-slice scan)."""
    counts = np.zeros((len(dense) + 1,) + dense.shape[1:], np.int32)
    for j, plane in enumerate(dense):
        np.add(counts[j], plane, out=counts[j + 1])
    return counts


def _fill_enclosed(mask: np.ndarray) -> np.ndarray:
    """The mask with every hole that it encloses in 3D filled: the connected parts of its complement,
    within the mask's bounding box, that touch no face of that box. Such a hole is made, slice by slice,
    of the slice's own holes (the complement's parts that do not reach the box's sides, found in 2D), so
    only those are followed in 3D: one that meets open complement in the slice above or below is open."""
    if not mask.any():
        return mask
    box = _bounding_box(mask)
    complement = ~mask[box]
    in_plane = np.zeros(complement.shape, bool)  # the slices' holes; none in the first and last slice (faces)
    for k in range(1, len(complement) - 1):
        count, parts = cv2.connectedComponents(complement[k].astype(np.uint8), connectivity=4)  # ndimage.label's
        if count > 1:
            reaches_side = np.zeros(count, bool)
            reaches_side[np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]])] = True
            reaches_side[0] = True  # label 0: the mask
            in_plane[k] = ~reaches_side[parts]
    if not in_plane.any():
        return mask
    sub = _bounding_box(in_plane)
    holes, count = ndimage.label(in_plane[sub])
    open_part = complement[sub] & ~in_plane[sub]  # complement that reaches a side in its own slice
    opened = np.zeros(count + 1, bool)
    opened[0] = True
    opened[holes[1:][open_part[:-1]]] = True  # a hole part above or below open complement (in ``sub``)
    opened[holes[:-1][open_part[1:]]] = True
    for end, beyond in ((0, sub[0].start - 1), (-1, sub[0].stop)):  # open complement just outside ``sub``
        if 0 <= beyond < len(complement):
            outer = complement[beyond][sub[1:]] & ~in_plane[beyond][sub[1:]]
            opened[holes[end][outer]] = True
    filled = mask.copy()
    filled[box][sub] |= ~opened[holes]
    return filled


def _bounding_box(mask: np.ndarray) -> tuple:
    ranges = []
    for axes in ((1, 2), (0, 2), (0, 1)):
        present = np.flatnonzero(np.any(mask, axis=axes))
        ranges.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(ranges)


def _lung_on_edge(hu: np.ndarray, lung: np.ndarray, dark_hu: float = -500.0, min_share: float = 0.5) -> int:
    """Pixels of one slice where lung runs onto the edge of the field of view: the image's border, or the
    padding outside a round field of view. Lung here is a dark region (below ``dark_hu``) that is mostly
    the mask; in a chest held whole, the chest wall lies between every lung and the edge."""
    hu = np.asarray(hu, np.float32)
    padding = hu == hu.min()
    if padding.mean() < 0.01:  # a constant fill outside the field of view, or none
        padding[:] = False
    edge = padding.copy()
    edge[[0, -1], :], edge[:, [0, -1]] = True, True
    if padding.any():
        edge = ndimage.binary_dilation(edge) & ~padding  # the pixels beside the padding
    dark = (hu < dark_hu) & ~padding
    regions, count = ndimage.label(dark)
    if not count:
        return 0
    lung_like = np.bincount(regions[lung & dark], minlength=count + 1) >= min_share * np.bincount(
        regions.ravel(), minlength=count + 1)
    lung_like[0] = False
    return int(np.count_nonzero(lung_like[regions] & edge))


def field_of_view_cut_mm2(scan: Scan, lung: np.ndarray, margin_px: int = 3) -> float:
    """How much of the lungs in lung[slice, row, column] the field of view cuts, in mm² of lung on its edge
    (summed over slices: edge length x slice spacing). 0 for lungs held whole in every slice. Only the slices
    whose lung comes within ``margin_px`` of the border, or that hold padding, are looked at. (The top and
    bottom of a scan are not its field of view: lungs cut there are measured and noted.)"""
    if scan.kind != "volume" or not np.any(lung):
        return 0.0
    area, pixel_mm = 0.0, float(np.mean(scan.pixel_spacing_mm))
    for k in np.flatnonzero(lung.any(axis=(1, 2))):
        rows, columns = np.flatnonzero(lung[k].any(axis=1)), np.flatnonzero(lung[k].any(axis=0))
        near = min(rows[0], columns[0], lung.shape[1] - 1 - rows[-1], lung.shape[2] - 1 - columns[-1]) < margin_px
        if not near and scan.hu[k].min() < -1500:  # padding: is the lung within the margin of it?
            padding = (scan.hu[k] == scan.hu[k].min()).astype(np.uint8)
            near = padding.mean() >= 0.01 and np.any(lung[k] & cv2.dilate(padding, np.ones((2 * margin_px + 1,) * 2,
                                                                                             np.uint8)).astype(bool))
        if near:
            area += _lung_on_edge(scan.hu[k], lung[k]) * pixel_mm * float(scan.slice_thickness_mm[k])
    return area
