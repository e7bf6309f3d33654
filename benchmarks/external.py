"""How the models generalise: CT volumes from other collections, segmented as a user segments them.

    .venv/bin/python benchmarks/external.py                       # the committed models in models/
    .venv/bin/python benchmarks/external.py --models-dir outputs/models --label mine

The Kaggle slices all come from one collection; cross-validation over them cannot show how a
model does on another scanner. This runs the own-scan path (``scans.predict_scans``, what
``scripts/predict.sh`` calls) on every volume in ``../shared/data/external-ct`` (see its SOURCE.md)
and on the LIDC slice, reads back the mask file it wrote, and compares it with the volume's
reference lung mask from another tool, voxel by voxel in world coordinates (each file's own
affine; the reference is taken onto the mask's grid by nearest neighbour). Per volume and model:
volumetric Dice on the slices where the reference has lung, lung mL (ours and the reference's),
"lung" in mL on slices where the reference has none, LAA-950 and PD15 inside each mask on the
same CT, and the time. Nothing is ever trained on these volumes; they have served as a validation set
(the gas pockets were adopted on them), and volumes kept apart from this repository are the test.

Writes ``benchmarks/results/external[-LABEL].json`` and, per volume, a picture of one slice with
both masks (``external[-LABEL]-<volume>.png``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "benchmarks" / "results"
SHARED = REPO_ROOT.parent / "shared" / "data"
MODELS = ("unet", "resunet")
TARGETS = {"cip-copdgene-64": {"dice": 0.95, "false_lung_ml": 2.0, "laa950_points": 2.0},
           "totalsegmentator-example-ct": {"dice": 0.90, "false_lung_ml": 2.0},
           "totalsegmentator-example-ct-dicom": {"false_lung_ml": 2.0}}


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def read_reference(path: Path, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """A reference mask (bool) and its RAS affine, from NIfTI (``labels``: the values that are lung)
    or NRRD (any value > 0, space left-posterior-superior)."""
    if path.suffix == ".nrrd":
        import nrrd

        data, header = nrrd.read(str(path))
        if header.get("space") not in ("left-posterior-superior", "LPS"):
            raise ValueError(f"{path}: space {header.get('space')!r}, expected left-posterior-superior")
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(header["space directions"], float).T  # columns: the array axes
        affine[:3, 3] = np.asarray(header["space origin"], float)
        return data > 0, lps_to_ras(affine)
    import nibabel as nib

    image = nib.load(path)
    data = np.asarray(image.dataobj)
    return (np.isin(data, labels) if labels is not None else data > 0), image.affine


def onto_grid(reference: np.ndarray, reference_affine: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """The reference mask on another grid (``shape``, ``affine``), nearest neighbour in world
    coordinates; voxels outside the reference's grid are background."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    inverse = np.linalg.inv(reference_affine)
    source = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
    inside = np.all((source >= 0) & (source < np.array(reference.shape)), axis=1)
    values = np.zeros(len(source), bool)
    values[inside] = reference[tuple(source[inside].T)]
    return values.reshape(shape)


def axial_axis(affine: np.ndarray) -> int:
    """The array axis that runs most nearly head to foot."""
    return int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))


def compare(ours: np.ndarray, reference: np.ndarray, hu: np.ndarray, affine: np.ndarray) -> dict:
    """Scores of a lung mask against a reference on the same grid, with the CT in HU on that grid."""
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    axis = axial_axis(affine)
    other = tuple(a for a in range(3) if a != axis)
    with_lung = reference.any(axis=other)
    shape = [1, 1, 1]
    shape[axis] = -1
    on_lung_slices = with_lung.reshape(shape)
    import lungseg_utils as lu

    def density(mask):
        inside = hu[mask]
        return (float(100 * np.mean(inside < -950)) if inside.size else None,
                float(np.percentile(inside, 15)) if inside.size else None)
    laa_ours, pd15_ours = density(ours)
    laa_reference, pd15_reference = density(reference)
    return {"dice": lu.overlap_scores(reference, ours & on_lung_slices)["dice"] if with_lung.any() else None,
            "lung_ml": float(np.count_nonzero(ours) * voxel_ml),
            "reference_ml": float(np.count_nonzero(reference) * voxel_ml),
            "false_lung_ml": float(np.count_nonzero(ours & ~on_lung_slices) * voxel_ml),
            "slices_with_reference_lung": int(with_lung.sum()), "slices": int(ours.shape[axis]),
            "laa950_percent": laa_ours, "reference_laa950_percent": laa_reference,
            "pd15_hu": pd15_ours, "reference_pd15_hu": pd15_reference}


def volumes(shared: Path) -> list[dict]:
    """The external volumes and their references, as SOURCE.md describes them."""
    totalseg, cip = shared / "external-ct" / "totalsegmentator-examples", shared / "external-ct" / "cip-copdgene-64"
    return [
        {"name": "totalsegmentator-example-ct", "input": totalseg / "example_ct.nii.gz",
         "reference": totalseg / "example_seg.nii.gz", "labels": [10, 11, 12, 13, 14],
         "reference_first_slice": 82,  # it covers example_ct[:, :, 82:112] but carries the whole volume's affine
         "what": "pelvis, abdomen and lung bases, 3 mm, NIfTI; reference: TotalSegmentator's lung lobes "
                 "(top 30 slices; no lung below them)"},
        {"name": "totalsegmentator-example-ct-dicom", "input": totalseg / "example_ct_dicom",
         "reference": totalseg / "example_seg_dicom.nii.gz", "labels": [10, 11, 12, 13, 14],
         "what": "upper abdomen, 20 JPEG 2000 DICOM slices; reference: TotalSegmentator (no lung)"},
        {"name": "cip-copdgene-64", "input": cip / "ct-64Dicom", "reference": cip / "wholeLung-64.nrrd",
         "labels": None,
         "what": "COPD patient, whole chest at full inspiration, 4 mm DICOM; reference: the Chest Imaging "
                 "Platform's lung mask"},
    ]


def written_mask(table, model, record: dict, input_path) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The lung mask ``predict_scans`` wrote for one volume (True = lung, on the input's array axes), its
    affine, and None; or, where the checks refused the scan (a user gets "not segmented: ..."), the mask
    the model made all the same, the scan's affine and the refusal, so that a design is scored, not stopped."""
    import nibabel as nib

    from lungseg import scans

    if len(table):
        written = nib.load(table.iloc[-1]["mask"])
        return np.asarray(written.dataobj) > 0, written.affine, None
    scan = scans.find_scans(input_path)[0][1]()
    labels = scans.segment_scan(model, scan, record)
    return (scans.from_model_axes(labels > 0, scan.orientation), scan.affine,
            "; ".join(table.attrs.get("problems", [])) or "no row")


def run_volume(case: dict, model, record: dict, model_name: str, work: Path) -> tuple[dict, dict]:
    from lungseg import scans

    out = work / f"{case['name']}-{model_name}"
    started = time.perf_counter()
    table = scans.predict_scans(model, record, case["input"], out, model_name=model_name, log=lambda line: None)
    seconds = time.perf_counter() - started
    scan = scans.find_scans(case["input"])[0][1]()
    ours, affine, refused = written_mask(table, model, record, case["input"])
    row = table.iloc[-1] if len(table) else {}
    hu = scans.from_model_axes(scan.hu, scan.orientation)  # the CT in HU on the mask's grid
    reference, reference_affine = read_reference(case["reference"], case["labels"])
    if case.get("reference_first_slice"):  # a crop that kept its volume's affine (SOURCE.md): put it where it lies
        shift = np.eye(4)
        shift[2, 3] = case["reference_first_slice"]
        reference_affine = reference_affine @ shift
    on_grid = onto_grid(reference, reference_affine, ours.shape, affine)
    result = {**compare(ours, on_grid, hu, affine), "seconds": round(seconds, 2),
              "note": row.get("note") if isinstance(row.get("note"), str) else None, "refused": refused,
              "reference_ml_own_grid": float(reference.sum() * abs(np.linalg.det(reference_affine[:3, :3])) / 1000)}
    return result, {"hu": hu, "ours": ours, "reference": on_grid, "affine": affine}


def run_lidc(shared: Path, model, record: dict, model_name: str, work: Path, figure: Path | None = None) -> dict:
    from lungseg import scans

    started = time.perf_counter()
    table = scans.predict_scans(model, record, shared / "lidc-lungmask-testdata", work / f"lidc-{model_name}",
                             model_name=model_name, log=lambda line: None)
    row = table.iloc[-1]
    if figure is not None:  # the README's picture: a full-resolution slice from another collection
        lidc_picture(shared, model, record, model_name, int(row["lung_pixels"]) // int(row["slices"]), figure)
    return {"lung_pixels_per_slice": int(row["lung_pixels"]) / int(row["slices"]),
            "seconds": round(time.perf_counter() - started, 2),
            "reference": "lungmask R231: 50,644 per slice (its own test)"}


def lidc_picture(shared: Path, model, record: dict, model_name: str, lung_pixels: int, path: Path) -> None:
    """The LIDC slice at its full 512x512 resolution: the CT, and the model's right (green) and left (blue) lung."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import lungseg_utils as lu
    from lungseg import scans

    scan = scans.read_scan(shared / "lidc-lungmask-testdata")
    labels = scans.segment_scan(model, scan, record)
    image = lu.window_hu(scan.hu[0], -1000, 400)
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    axes[0].imshow(image, cmap="gray"), axes[0].set_title("CT slice, 512x512, 0.625 mm pixels", fontsize=10)
    axes[1].imshow(scans.mask_overlay(image, labels[0]))
    axes[1].set_title(f"{model_name}: right lung green, left lung blue", fontsize=10)
    for axis in axes:
        axis.set_xticks([]), axis.set_yticks([])
    figure.suptitle("A full-resolution chest CT slice from another collection (LIDC-IDRI), never trained on:\n"
                    f"{lung_pixels:,} lung pixels (lungmask's R231: 50,644)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def picture(case: dict, arrays: dict, path: Path, title: str) -> None:
    """The slice with the most reference lung (or the most found lung): CT, reference and ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = axial_axis(arrays["affine"])
    other = tuple(a for a in range(3) if a != axis)
    amount = arrays["reference"].sum(axis=other) if arrays["reference"].any() else arrays["ours"].sum(axis=other)
    k = int(np.argmax(amount))

    def cut(volume):  # an axial slice, shown with the patient's front at the top and right on the left
        plane = np.take(volume, k, axis=axis)
        return np.rot90(plane) if axis == 2 else plane
    hu = cut(arrays["hu"])
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    for ax, mask, label in [(axes[0], arrays["reference"], "reference"), (axes[1], arrays["ours"], "lungseg")]:
        ax.imshow(np.clip((hu + 1000) / 1400, 0, 1), cmap="gray")
        if cut(mask).any():
            ax.contour(cut(mask), [0.5], colors="lime", linewidths=1)
        ax.set_title(label, fontsize=10), ax.set_xticks([]), ax.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "models"), help="holds unet.keras, resunet.keras")
    parser.add_argument("--models-from-commit", metavar="COMMIT",
                        help="the committed models of an earlier commit of this repository (git show), instead")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="which (default: both)")
    parser.add_argument("--label", default="", help="results go to external-LABEL.json")
    parser.add_argument("--shared", default=str(SHARED), help="the shared data folder")
    args = parser.parse_args(argv)
    import lungseg_utils as lu
    from lungseg import report

    shared, models_dir = Path(args.shared), Path(args.models_dir)
    suffix = f"-{args.label}" if args.label else ""
    command = "python benchmarks/external.py" + (f" --models-dir {args.models_dir}" if args.models_dir != str(
        REPO_ROOT / "models") else "") + (f" --models-from-commit {args.models_from_commit}" if args.models_from_commit
                                          else "") + (f" --models {' '.join(args.models)}" if args.models != list(MODELS)
                                                      else "") + (f" --label {args.label}" if args.label else "")
    if args.models_from_commit:
        models_dir = Path(tempfile.mkdtemp(prefix="lungseg-models-"))
        for name in MODELS:
            for extension in (".keras", ".json"):
                blob = subprocess.run(["git", "show", f"{args.models_from_commit}:models/{name}{extension}"],
                                      cwd=REPO_ROOT, capture_output=True, check=True).stdout
                (models_dir / f"{name}{extension}").write_bytes(blob)
    results = {"command": command,
               "date": time.strftime("%Y-%m-%d"), "device": report.describe_device(), "versions": report.library_versions(),
               "platform": platform.platform(), "targets": TARGETS, "volumes": {}, "lidc": {}, "models": {}}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            model, record = lu.load_trained_model(models_dir / f"{name}.keras")
            results["models"][name] = {"file": str(models_dir / f"{name}.keras"),
                                       "augmentation": record.get("augmentation"),
                                       "hu_calibration": (record.get("hu_calibration") or {}).get("scale")}
            for case in volumes(shared):
                result, arrays = run_volume(case, model, record, name, Path(work))
                results["volumes"].setdefault(case["name"], {"what": case["what"], "input": str(case["input"].relative_to(
                    shared.parent.parent)), "models": {}})["models"][name] = result
                print(f"{name:8s} {case['name']:34s} " + ", ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()), flush=True)
                if name == "resunet":
                    picture(case, arrays, RESULTS / f"external{suffix}-{case['name']}.png",
                            f"{case['name']} ({name}{', ' + args.label if args.label else ''}): Dice "
                            + (f"{result['dice']:.3f}" if result["dice"] is not None else "n/a")
                            + f", {result['lung_ml']:.0f} mL found / {result['reference_ml']:.0f} mL")
            results["lidc"][name] = run_lidc(shared, model, record, name, Path(work),
                                             RESULTS / f"external{suffix}-lidc.png" if name == "resunet" else None)
            print(f"{name:8s} lidc: {results['lidc'][name]}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"external{suffix}.json"
    target.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("wrote", target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
