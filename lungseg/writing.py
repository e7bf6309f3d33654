"""Writing a scan's results: the mask (NIfTI for a volume, on the input's own grid; PNG for a slice; a
DICOM Segmentation for a DICOM series) and a preview picture. Takes a Scan, its labels and an
:class:`~lungseg.outputs.OutputFolder`; gives the paths written (:func:`write_scan_outputs`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from lungseg.reading import Scan, from_model_axes
from lungseg_utils import window_hu


# The whole path for a user, as one function (and one command, `bash scripts/predict.sh INPUT
# [OUTPUT_DIR]`, which calls it): for each scan a mask (`<name>_mask.nii.gz` for a volume, with the
# input's affine and array orientation; `<name>_mask.png` for a slice), a preview, and a row of
# `measurements.csv` / `measurements.json`. An input it cannot use is named in one line and the rest
# go on. It replaces only files it wrote itself (listed in `measurements.json`), never yours.


LABEL_COLOURS = {1: (0.1, 1.0, 0.2), 2: (0.2, 0.5, 1.0)}  # right lung green, left lung blue


def mask_overlay(image01: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with each label tinted (1 green, 2 blue)."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    for label, colour in LABEL_COLOURS.items():
        rgb[labels == label] = 0.55 * rgb[labels == label] + 0.45 * np.array(colour)
    return rgb


def preview(pictures: list, captions: list, title: str, path, size: float = 2.4) -> None:
    """The pictures side by side in one image, each captioned, titled, as a PNG: what ``show_pairs`` draws
    in a row, in one axes (a figure of six axes took a second of the path's time)."""
    height = max(p.shape[0] for p in pictures)
    gap = np.ones((height, max(2, height // 64), 3), np.float32)
    tiles = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=1.0) for p in pictures]
    strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    figure = plt.figure(figsize=(size * len(pictures), size + 0.5))
    axis = figure.add_axes((0, 0, 1, size / (size + 0.5)))
    axis.imshow(strip, interpolation="antialiased")
    axis.set_axis_off()
    width = strip.shape[1] / len(pictures)
    for k, caption in enumerate(captions):
        axis.text((k + 0.5) * width, -height * 0.02, caption, ha="center", va="bottom", fontsize=10)
    figure.suptitle(title, fontsize=11, y=0.99)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_scan_outputs(scan: Scan, labels: np.ndarray, outputs, model_name: str = "", log=print) -> dict:
    """The mask file (NIfTI for a volume, PNG for a slice; for a DICOM series also a DICOM Segmentation on
    its source frames) and a preview PNG; returns their paths."""
    import cv2

    name, written = scan.name, {}
    if scan.kind == "volume":
        import nibabel as nib

        mask_path = outputs.path(f"{name}_mask.nii.gz")
        on_input = from_model_axes(labels, scan.orientation).astype(np.uint8)  # the input's array axes
        mask, affine = on_input, scan.affine
        if scan.grid is not None:  # missing slices: the mask on the even grid, empty where no slice was
            mask = np.zeros(on_input.shape[:2] + (scan.grid[-1] + 1,), np.uint8)
            mask[:, :, scan.grid] = on_input
            affine = scan.affine.copy()
            affine[:3, 2] *= (len(scan.grid) - 1) / scan.grid[-1]  # the mean step -> the series' own step
        image = nib.Nifti1Image(mask, affine)
        if scan.nifti_forms is not None:  # the input's qform and sform disagree: the mask keeps both, as they were
            qform, qcode, sform, scode = scan.nifti_forms
            image.set_qform(qform, int(qcode))
            image.set_sform(sform, int(scode))
        image.header.set_xyzt_units("mm")
        nib.save(image, mask_path)
        if scan.source_files and scan.no_seg:
            log(f"{scan.source}: no DICOM Segmentation written: {scan.no_seg}; {mask_path.name} holds the labels.")
            written["dicom_seg"] = ""
        elif scan.source_files:  # (column, row, slice) of the series -> one frame (row, column) per source file
            from lungseg.dicom import write_dicom_seg

            seg_path = outputs.path(f"{name}_seg.dcm")
            try:
                write_dicom_seg(scan.source_files, on_input.transpose(2, 1, 0), seg_path, model_name)
                written["dicom_seg"] = str(seg_path)
            except Exception as error:  # a series highdicom cannot reference: the NIfTI mask holds the same labels
                seg_path.unlink(missing_ok=True)
                log(f"{scan.source}: no DICOM Segmentation written ({type(error).__name__}: "
                    f"{' '.join(str(error).split())[:200]}); {mask_path.name} holds the same labels.")
                written["dicom_seg"] = ""
    else:
        mask_path = outputs.path(f"{name}_mask.png")
        cv2.imwrite(str(mask_path), (labels[0] > 0).astype(np.uint8) * 255)
    with_lung = np.flatnonzero(labels.any(axis=(1, 2))) if labels.any() else np.arange(len(labels))
    shown = with_lung[np.linspace(0, len(with_lung) - 1, min(6, len(with_lung))).astype(int)]
    pictures = [mask_overlay(window_hu(scan.hu[k], -1000, 400), labels[k]) for k in shown]
    title = f"{name}: right lung green, left lung blue" if scan.kind == "volume" else f"{name}: predicted lung"
    preview(pictures, [f"slice {k + 1} of {len(labels)}" for k in shown], title, outputs.path(f"{name}_preview.png"))
    return {"mask": str(mask_path), **written, "preview": str(outputs.folder / f"{name}_preview.png")}
