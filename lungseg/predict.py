"""Segment the lungs in your own CT: ``bash scripts/predict.sh INPUT [OUTPUT_DIR] [options]``.

INPUT is a DICOM series folder (the largest series; --series picks another), a NIfTI file (.nii,
.nii.gz), a CT slice (DICOM, TIFF in HU, 16-bit PNG holding HU+1024) or a folder of slices or NIfTI
files. OUTPUT_DIR (default: outputs/predictions in the repository) receives, per scan, a mask
(<name>_mask.nii.gz with the input's geometry, labels 1 right lung and 2 left lung; <name>_mask.png
for a slice), <name>_preview.png, and measurements.csv / measurements.json for all. Nothing is
downloaded: without models of your own in outputs/models, the committed ones in models/ are used.

Examples::

    bash scripts/predict.sh ~/scans/patient01/                 # a DICOM series folder
    bash scripts/predict.sh chest.nii.gz results/ --model unet
    bash scripts/predict.sh slice.tif --pixel-spacing 0.84     # a TIFF carries no pixel size
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()  # start-up is counted from here: Python's own start is a fraction of a second
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "resunet"  # generalises better to other scanners than the U-Net (RESULTS.md)


def find_model(choice: str) -> Path:
    """``unet``/``resunet``: yours in outputs/models when you trained one, else the committed one in models/;
    anything else is the path of a .keras file (its .json record beside it)."""
    if choice in ("unet", "resunet"):
        yours = REPO_ROOT / "outputs" / "models" / f"{choice}.keras"
        return yours if yours.is_file() and yours.with_suffix(".json").is_file() else REPO_ROOT / "models" / f"{choice}.keras"
    path = Path(choice).expanduser()
    if path.suffix != ".keras":
        raise SystemExit(f"--model {choice}: give unet, resunet, or the path of a .keras file (with its .json beside it).")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a DICOM series folder, a NIfTI file, a slice, or a folder of slices")
    parser.add_argument("output_dir", nargs="?", default=str(REPO_ROOT / "outputs" / "predictions"),
                        help="where the masks, previews and measurements go (default: outputs/predictions)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"unet, resunet or a .keras path (default: {DEFAULT_MODEL})")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per network call (default: 8)")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="keep the raw masks (no removal of small islands, no filling of small holes)")
    parser.add_argument("--series", help="the Series Instance UID to segment when a folder holds several")
    parser.add_argument("--pixel-spacing", type=float, metavar="MM",
                        help="pixel size in mm for TIFF/PNG slices, which do not carry it (for area_mm2), and for "
                             "DICOM without PixelSpacing or ImagerPixelSpacing")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: 0.5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    options = {option for action in parser._actions for option in action.option_strings}
    for argument in sys.argv[1:] if argv is None else argv:  # a file named like an option: -scan.nii.gz
        if argument.startswith("-") and argument.split("=")[0] not in options and Path(argument).exists():
            parser.error(f"{argument} is taken for an option; give the file as ./{argument}")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: give a positive number of slices")
    if not 0 < args.threshold < 1:
        parser.error(f"--threshold {args.threshold}: give a probability between 0 and 1")
    if args.pixel_spacing is not None and not 0 < args.pixel_spacing < math.inf:  # nan and inf too
        parser.error(f"--pixel-spacing {args.pixel_spacing}: give the pixel size in mm, a positive number")

    import lungseg_utils as lu  # TensorFlow and Keras: most of the start-up
    from lungseg import scans

    started = STARTED
    try:
        model_path = find_model(args.model)
        model, record = lu.load_trained_model(model_path)
        scans.prepare_network(model, record, args.batch_size)
        print(f"model: {model_path} ({record.get('model', args.model)}, {record.get('img_size')} px, validation Dice "
              f"{record.get('best_val_dice', float('nan')):.4f}{lu.data_label(bool(record.get('synthetic')))}); "
              f"start-up {time.perf_counter() - started:.1f} s (libraries, model and its trace, once for all scans)", flush=True)
        segmenting = time.perf_counter()
        table = scans.predict_scans(model, record, args.input, args.output_dir, threshold=args.threshold,
                                 postprocess=not args.no_postprocess, batch_size=args.batch_size, series=args.series,
                                 pixel_spacing_mm=args.pixel_spacing, progress=not args.no_progress,
                                 model_name=record.get("model", args.model),
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
    except lu.LungsegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted (Ctrl-C): the scans finished so far have their files and their rows in measurements.csv.",
              file=sys.stderr)
        return 130
    problems, flagged, seconds = table.attrs["problems"], table.attrs["flagged"], time.perf_counter() - segmenting
    slices = table.attrs["slices"]
    rate = f" ({slices / seconds:.0f} slices/s, reading and writing included)" if slices and seconds > 0 else ""
    print(f"segmented {table.attrs['segmented']} scan(s), {slices} slices, in {seconds:.1f} s{rate} "
          f"into {Path(args.output_dir).resolve()}"
          + (f"; {len(problems)} input(s) could not be used (listed above)" if problems else "")
          + (f"; {len(flagged)} scan(s) segmented but not measured: no voxel size, lungs that cannot be a human's "
             "at theirs, or a field of view that cuts them (listed above; the note column says what to check)"
             if flagged else ""))
    return 1 if problems or flagged else 0


if __name__ == "__main__":
    sys.exit(main())
