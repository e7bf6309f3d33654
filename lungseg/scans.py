"""Your own CT scans, the whole path: read (:mod:`lungseg.reading`), segment (:mod:`lungseg.segmenting`),
judge the mask in 3D and split it into right and left lung (:mod:`lungseg.anatomy`), measure
(:mod:`lungseg.measuring`) and write the mask, a preview and the measurements (:mod:`lungseg.writing`).
``bash scripts/predict.sh INPUT [OUTPUT_DIR]`` calls :func:`predict_scans`; notebook 06 shows the
idea in a few cells. Each stage's names are also importable from here (``scans.find_scans``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungseg.anatomy import body_midline, inside_body, keep_lungs, split_lungs  # noqa: F401
from lungseg.errors import LungsegError
from lungseg.measuring import (CUT_FIELD_OF_VIEW, IMPLAUSIBLE, NO_LUNG_ML, UNMEASURED, implausible_lungs,  # noqa: F401
                               scan_measurements)
from lungseg.reading import (MODEL_AXES, NIFTI_SUFFIXES, NotCT, Scan, check_air, find_scans,  # noqa: F401
                             from_model_axes, outside_air_hu, read_dicom_series, read_image_slice, read_nifti,
                             read_nrrd, read_scan, series_tag, to_model_axes)
from lungseg.report import library_versions
from lungseg.segmenting import prepare_network, segment_scan  # noqa: F401
from lungseg.writing import LABEL_COLOURS, mask_overlay, write_scan_outputs  # noqa: F401

__all__ = ["predict_scans", "Scan", "MODEL_AXES", "NIFTI_SUFFIXES", "find_scans", "read_scan", "read_nifti",
           "read_dicom_series", "read_image_slice", "read_nrrd", "NotCT", "series_tag", "to_model_axes",
           "from_model_axes", "check_air", "outside_air_hu", "segment_scan", "prepare_network", "keep_lungs",
           "split_lungs", "body_midline", "inside_body", "scan_measurements", "implausible_lungs", "IMPLAUSIBLE",
           "NO_LUNG_ML", "write_scan_outputs", "mask_overlay", "LABEL_COLOURS"]


def predict_scans(model, settings: dict, input_path, output_dir, *, threshold: float = 0.5, postprocess: bool = True,
                  batch_size: int = 8, series: str | None = None, pixel_spacing_mm: float | None = None,
                  progress: bool = False, model_name: str = "", log=print) -> pd.DataFrame:
    """Segment the lungs in your CT (see find_scans for what ``input_path`` may be) and write, into
    ``output_dir``, each scan's mask and preview and ``measurements.csv``/``.json``. Returns the
    measurements (with rows of earlier runs into the same folder); ``.attrs["problems"]`` lists the
    inputs that could not be used, ``.attrs["flagged"]`` the scans whose lungs cannot be a human's at their
    voxel size (segmented, not measured), ``.attrs["segmented"]`` counts the scans of this call."""
    from lungseg.outputs import OutputFolder  # never replaces your files; records each scan as it is written

    outputs = OutputFolder(output_dir)
    record = {"model": model_name or model.name, "threshold": threshold, "postprocess": postprocess,
              "settings": {key: settings.get(key) for key in ("img_size", "hu_min", "hu_max", "epochs", "base_filters",
                                                                "best_val_dice", "model_file")},
              "labels": {"0": "background", "1": "right lung", "2": "left lung (volumes)"},
              "versions": library_versions()}
    rows, problems, flagged = [], [], []
    try:
        for source, read in find_scans(input_path, series, pixel_spacing_mm, exclude=outputs.own_files()):
            try:
                scan = read()
                air = check_air(scan)  # refuses values about 1024 off HU; says a scale
                scan.notes += [air] if air else []
                for note in scan.notes:
                    log(" ".join(note.split()))
                labels = segment_scan(model, scan, settings, threshold, postprocess, batch_size, progress)
                lung_hu = scan.hu[labels > 0]
                if lung_hu.size and not -1000 <= lung_hu.mean() <= -200 and settings.get("synthetic"):
                    raise LungsegError(f"{source}: the lung found has a mean of {lung_hu.mean():.0f} HU, which no lung "
                                       "has, and the model learnt SYNTHETIC phantoms, not real CT: use a model trained "
                                       "on the real slices (the committed ones in models/, or 03/04 run on them).")
                if lung_hu.size and not -1000 <= lung_hu.mean() <= -200:
                    raise LungsegError(f"{source}: the lung found has a mean of {lung_hu.mean():.0f} HU, which no lung "
                                       "has: its values are not HU. Convert it to HU (a 16-bit PNG holds HU+1024; "
                                       "DICOM needs its rescale slope and intercept).")
                scan.name = outputs.name_for(scan.name, source)  # two patients' chest.nii.gz: chest, chest-2
                rows.append({**scan_measurements(scan, labels, pixel_spacing_mm),
                             **write_scan_outputs(scan, labels, outputs, record["model"], log),
                             "input": str(Path(source).resolve())})
                if "note" in rows[-1]:
                    log(f"{source}: {rows[-1]['note']}")
                if str(rows[-1].get("note", "")).startswith((IMPLAUSIBLE, UNMEASURED, CUT_FIELD_OF_VIEW)):
                    flagged.append(f"{source}: {rows[-1]['note']}")
            except NotCT as error:  # a mask beside the scan in a folder: said; given alone, a problem
                if not Path(input_path).expanduser().is_dir():
                    problems.append(" ".join(str(error).split()))
                log(("" if Path(input_path).expanduser().is_dir() else "not segmented: ") + " ".join(str(error).split()))
            except LungsegError as error:
                problems.append(" ".join(str(error).split()))  # one line per input
                log(f"not segmented: {problems[-1]}")
            except Exception as error:  # what no check foresaw stays one scan's line; the next scans still run
                problems.append(" ".join(f"{source}: an unexpected {type(error).__name__} ({error}). The other scans "
                                         "are not affected; please report it with this line.".split()))
                log(f"not segmented: {problems[-1]}")
            if rows:
                outputs.save(rows, {**record, "problems": problems})  # each scan recorded as soon as it is done
        table = outputs.save(rows, {**record, "problems": problems})
    finally:
        outputs.close()
    segmented = len(rows)
    table.attrs.update(problems=problems, segmented=segmented, flagged=flagged,
                       slices=int(sum(row["slices"] for row in rows)))
    return table
