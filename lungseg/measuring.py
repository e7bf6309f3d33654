"""Measuring the lungs: volume (right, left, both) and density (mean HU, PD05/PD15/PD95, LAA-950, the shares of
high-attenuation and of consolidated lung), and
whether what was found can be a human lung at the scan's voxel size. Takes a Scan and its labels;
gives one row of ``measurements.csv`` (:func:`scan_measurements`).
"""

from __future__ import annotations

import numpy as np

from lungseg.anatomy import _bounding_box, field_of_view_cut_mm2
from lungseg.reading import Scan


# What is measured must be a human lung's size. Set from physiology: an adult's lungs hold up to
# about 9 L at full inspiration (total lung capacity; the tallest adults), a third more where
# emphysema over-inflates them; no lung is longer than 40 cm in any direction (apex to base about
# 30 cm, a chest about 35 cm across); a newborn's lungs hold about 150 mL. A volume outside these
# bounds means the voxel size is wrong (a file that lost its geometry, a slice spacing mistyped),
# and it is flagged, never reported.
MAX_LUNG_ML, MAX_LUNG_EXTENT_MM, MIN_WHOLE_LUNGS_ML = 12_000.0, 400.0, 150.0
IMPLAUSIBLE = "not a human lung's size at this voxel size, so not measured"
UNMEASURED = "no voxel size in the file, so not measured: give the scan as NIfTI or DICOM with its geometry"


def implausible_lungs(scan: Scan, labels: np.ndarray, volume_ml: float) -> str | None:
    """Why the lungs in labels[slice, row, column] cannot be a human's at the scan's voxel size, or None."""
    lung = labels > 0
    if scan.kind != "volume" or not lung.any():
        return None
    spacing = (float(np.mean(scan.slice_thickness_mm)),) + tuple(scan.pixel_spacing_mm)
    box = _bounding_box(lung)
    extent = [float(scan.slice_thickness_mm[box[0]].sum()), (box[1].stop - box[1].start) * spacing[1],
              (box[2].stop - box[2].start) * spacing[2]]
    whole = not lung[0].any() and not lung[-1].any()  # lung-free slices below and above: the lungs lie whole in it
    if volume_ml > MAX_LUNG_ML:
        why = f"{volume_ml:,.0f} mL of lung, more than any human lung holds (up to about {MAX_LUNG_ML / 1000:.0f} L)"
    elif max(extent) > MAX_LUNG_EXTENT_MM:
        why = f"lungs {max(extent):,.0f} mm long, where no lung reaches {MAX_LUNG_EXTENT_MM:.0f} mm"
    elif whole and NO_LUNG_ML <= volume_ml < MIN_WHOLE_LUNGS_ML:  # below NO_LUNG_ML: stray voxels, "no lungs found"
        why = (f"whole lungs (lung-free slices above and below) of {volume_ml:,.1f} mL, less than a newborn's "
               f"(about {MIN_WHOLE_LUNGS_ML:.0f} mL)")
    else:
        return None
    voxels = f"{spacing[1]:g} x {spacing[2]:g} x {spacing[0]:g} mm"
    if np.allclose(spacing, 1.0):
        check = f"the voxels are {voxels}, NIfTI's default when a file lost its geometry (e.g. made from PNG slices)"
    else:
        check = f"the voxels are {voxels} (rows x columns x slices): check the pixel spacing and the slice spacing"
    return f"{IMPLAUSIBLE}: {why}; {check}. Re-export the scan with its geometry (e.g. dcm2niix)."


CUT_FIELD_OF_VIEW = "the field of view cuts the lungs, so not measured"
MIN_CUT_MM2 = 100.0  # lung on the field of view's edge over at least 1 cm² (e.g. 10 mm along it on 10 mm of slices)


def field_of_view_cut(scan: Scan, labels: np.ndarray) -> str | None:
    """Why the lungs are not whole in the scan's field of view (lung runs onto its edge over a real length), or None.
    In a chest held whole, the chest wall lies between each lung and the image's edge; on the Kaggle slices this
    rule fires on none of 217 whole slices and on all 217 cut through both lungs, and not when the cut runs
    through the chest wall (8 pixels outside the lung)."""
    area = max(field_of_view_cut_mm2(scan, labels > 0), scan.cut_mm2)  # cut_mm2: what the 3D step dropped
    if area < MIN_CUT_MM2:
        return None
    return (f"{CUT_FIELD_OF_VIEW}: lung runs onto the edge of the image over {area / 100:,.1f} cm², so part of it lies "
            "outside the scan. The mask shows what the scan holds; for volumes, reconstruct the scan with a field of "
            "view that holds the whole chest.")


NO_LUNG_ML = 20.0  # less lung than this in a volume: "no lungs found"
# Dense lung, as quantitative CT measures it: high-attenuation areas (HAA, -600..-250 HU: ground glass and
# reticulation, used in interstitial lung disease) and consolidation (-100..+100 HU: lung as dense as soft
# tissue). Only a mask that keeps diseased lung can measure them; one that leaves dense lung out gives ~0%.
HAA_HU, CONSOLIDATION_HU = (-600.0, -250.0), (-100.0, 100.0)


def share_percent(values: np.ndarray, band: tuple) -> float:
    """% of the values in [low, high] HU (NaN for none)."""
    return float(100 * np.mean((values >= band[0]) & (values <= band[1]))) if values.size else np.nan


def scan_measurements(scan: Scan, labels: np.ndarray, pixel_spacing_mm: float | None = None) -> dict:
    """Lung size (area in mm² for a slice; volumes in mL, right and left, for a volume) and density:
    mean HU, PD05/PD15/PD95 (HU percentiles) and LAA-950 (% of lung voxels below -950 HU, the
    emphysema index; PD15 is its density counterpart), HAA and consolidation (% of lung voxels in
    HAA_HU and CONSOLIDATION_HU)."""
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
        implausible = UNMEASURED if not scan.voxel_size_known else (
            implausible_lungs(scan, labels, row["lung_volume_ml"]) or field_of_view_cut(scan, labels))
        if implausible:  # flagged, never reported as a result
            row.update(lung_volume_ml=np.nan, right_volume_ml=np.nan, left_volume_ml=np.nan, note=implausible)
        elif row["lung_volume_ml"] < NO_LUNG_ML:
            row["note"] = f"no lungs found ({row['lung_volume_ml']:.1f} mL): is this a chest CT?"
        elif min(row["right_volume_ml"], row["left_volume_ml"]) == 0:
            found, missing = ("right", "left") if row["left_volume_ml"] == 0 else ("left", "right")
            row["note"] = (f"one lung found, the {found}; the {missing} lung is 0 mL (after a pneumonectomy, a "
                           f"collapsed lung, or a scan of one side): check the mask")
    inside = scan.hu[lung]
    mean, percentiles = _density(inside) if inside.size else (np.nan, [np.nan] * 3)
    row.update(mean_hu=mean, pd05_hu=percentiles[0], pd15_hu=percentiles[1],
               pd95_hu=percentiles[2], laa950_percent=100 * np.mean(inside < -950) if inside.size else np.nan,
               haa_percent=share_percent(inside, HAA_HU), consolidation_percent=share_percent(inside, CONSOLIDATION_HU),
               pixel_spacing_mm=" x ".join(f"{v:g}" for v in spacing) if spacing else "unknown",
               slice_spacing_mm=float(np.mean(scan.slice_thickness_mm)) if scan.kind == "volume" else np.nan)
    return row


def _density(values: np.ndarray, quantiles=(5, 15, 95)) -> tuple:
    """The mean and percentiles (numpy's linear method) of the lung's HU. Whole-number HU, as scanners store
    them, are counted instead of sorted: the same numbers, several times faster on millions of voxels."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (high - low < 1e5 and np.array_equal(values, np.rint(values))):
        return float(np.mean(values, dtype=np.float64)), np.percentile(values.astype(np.float64), quantiles)
    counts = np.bincount((values - low).astype(np.int64))
    offsets = np.arange(len(counts), dtype=np.float64) + low
    ends = np.cumsum(counts)
    positions = np.asarray(quantiles, np.float64) / 100 * (values.size - 1)
    below = np.floor(positions)
    lower = offsets[np.searchsorted(ends, below, side="right")]  # the sorted values at floor and floor + 1
    upper = offsets[np.searchsorted(ends, np.minimum(below + 1, values.size - 1), side="right")]
    fraction = positions - below
    percentiles = np.where(fraction >= 0.5, upper - (upper - lower) * (1 - fraction), lower + (upper - lower) * fraction)
    return float(counts @ offsets / values.size), percentiles
