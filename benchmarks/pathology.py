"""Is diseased lung still lung? Lesions written into real lungs, segmented as a user segments them.

    .venv/bin/python benchmarks/pathology.py                       # the committed models in models/
    .venv/bin/python benchmarks/pathology.py --models-dir outputs/models --label mine

People segment lungs mostly because something is wrong in them, and the Kaggle slices hold mostly
clear lungs. This benchmark writes lesions *inside the reference lung* of real CT and asks how much
of each lesion the model still calls lung, and what the whole-lung Dice becomes. The reference mask
does not change: disease inside the lung is lung, as lungmask's R231 and TotalSegmentator count it.

Two sources, neither trained on:
- the COPD chest of ``../shared/data/external-ct/cip-copdgene-64`` (``ct-64.nrrd`` with the Chest
  Imaging Platform's ``wholeLung-64.nrrd``), written to NIfTI with each lesion and run through
  ``scans.predict_scans``, the path of ``scripts/predict.sh`` (with its 3D step);
- the Kaggle slices that the evaluated model neither trained nor validated on (its record's lists),
  each segmented as a slice is (``scans.segment_scan``).

The lesions are built here, from geometry in millimetres of patient space (spheres, shells,
bands, lobes cut by height and depth) with HU from radiology, by code that shares nothing with the
training-time lesions of notebook 02 (Fourier-outlined blobs in windowed pixels), so that it measures
generalisation and not that generator:

| type | where | HU |
|---|---|---|
| consolidation | the back half of one lung's lower 45% (a lower lobe) | +35 (SD 15) |
| mass_chest_wall | a 40 mm sphere on the lateral pleura at mid height | +40 |
| mass_mediastinum | a 40 mm sphere on the medial (mediastinal) pleura | +40 |
| nodules | 8 spheres of 12-30 mm, half on the pleura | +30 |
| patchy | 12 spheres of 16-36 mm in both lower lungs, each its own density | -200..+80 |
| ground_glass | one lower lung: lung raised to about -620 (vessels kept) | -620 (SD 30) |
| atelectasis | the dependent 20 mm along the back of both lower lungs | +30 |
| cavity | a 36 mm sphere, 6 mm wall, air inside | +40 wall, -1000 inside |

Not pleural effusion: it lies outside the lung, and a lung mask leaves it out.

Writes ``benchmarks/results/pathology[-LABEL].json`` and a picture of the chest-wall mass
(``pathology[-LABEL]-mass.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "benchmarks" / "results"
SHARED = REPO_ROOT.parent / "shared" / "data"
MODELS = ("unet", "resunet")
KAGGLE_SPACING_MM = float(np.sqrt(0.703125))  # lung_stats.csv's fixed pixel area
TARGETS = {"kept_share": 0.90, "dice": 0.96}
SEED = 2020  # the lesions' positions and sizes; fixed, and never the training seed


# --------------------------------------------------------------------------- geometry
def world_mm(shape, affine) -> np.ndarray:
    """The RAS position in mm (x to the patient's right, y to the front, z up) of every voxel."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def slice_world_mm(shape, spacing_mm: float) -> np.ndarray:
    """A Kaggle slice (rows front to back, columns from the patient's right to left) as a one-slice
    'volume' in the same RAS convention, so that the lesions below are built by the same code."""
    rows, columns = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    return np.stack([-columns * spacing_mm, -rows * spacing_mm, np.zeros(shape)], axis=-1)


def sides(lung: np.ndarray, xyz: np.ndarray) -> dict:
    """The reference lung cut at the middle of its left-right extent: {'right': mask, 'left': mask}."""
    x = xyz[..., 0]
    middle = (x[lung].min() + x[lung].max()) / 2
    return {"right": lung & (x > middle), "left": lung & (x <= middle)}


def lower(part: np.ndarray, xyz: np.ndarray, fraction: float) -> np.ndarray:
    """The lowest ``fraction`` of a lung by height (all of it on a single slice)."""
    z = xyz[..., 2][part]
    if np.ptp(z) == 0:
        return part
    return part & (xyz[..., 2] <= z.min() + fraction * np.ptp(z))


def sphere(xyz: np.ndarray, centre, diameter_mm: float) -> np.ndarray:
    return np.sum((xyz - np.asarray(centre)) ** 2, axis=-1) <= (diameter_mm / 2) ** 2


def on_pleura(part: np.ndarray, xyz: np.ndarray, direction, inward_mm: float, height: float = 0.5):
    """A point ``inward_mm`` inside the lung from its outermost voxel in ``direction`` (a unit vector in
    RAS), near ``height`` (0 base .. 1 apex) of the lung: where a lesion sits on the pleura."""
    z = xyz[..., 2]
    zs = z[part]
    band = part & (np.abs(z - (zs.min() + height * np.ptp(zs))) <= max(np.ptp(zs) * 0.08, 1e-6))
    points = xyz[band]
    outermost = points[np.argmax(points @ np.asarray(direction, float))]
    return outermost - inward_mm * np.asarray(direction, float)


def boundary_points(part: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Positions of the lung voxels that touch non-lung (the pleural surface), in mm."""
    edge = part & ~ndimage.binary_erosion(part)
    return xyz[edge]


def interior_points(part: np.ndarray, xyz: np.ndarray, depth_mm: float, spacing_mm: float) -> np.ndarray:
    """Positions of lung voxels at least ``depth_mm`` from the lung's edge."""
    distance = ndimage.distance_transform_edt(part) * spacing_mm
    return xyz[part & (distance >= depth_mm)]


# --------------------------------------------------------------------------- lesions
def lesion(kind: str, lung: np.ndarray, xyz: np.ndarray, hu: np.ndarray, spacing_mm: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(where, value): a lesion of ``kind`` as a boolean mask inside ``lung`` and the HU it takes there."""
    halves = sides(lung, xyz)
    noise = rng.normal(0, 15, hu.shape)
    x_outward = {"right": (1.0, 0.0, 0.0), "left": (-1.0, 0.0, 0.0)}  # RAS: +x is the patient's right
    if kind == "consolidation":  # the back half of the right lower lung
        part = lower(halves["right"], xyz, 0.45)
        y = xyz[..., 1]
        where = part & (y <= np.median(y[part]))
        return where, 35 + noise
    if kind == "mass_chest_wall":  # a 40 mm mass whose base lies on the lateral chest wall
        centre = on_pleura(halves["right"], xyz, x_outward["right"], 14.0)
        return lung & sphere(xyz, centre, 40), 40 + noise
    if kind == "mass_mediastinum":  # a 40 mm mass on the left lung's mediastinal surface
        centre = on_pleura(halves["left"], xyz, x_outward["right"], 14.0)  # towards the middle
        return lung & sphere(xyz, centre, 40), 40 + noise
    if kind == "nodules":  # 8 solid nodules of 12-30 mm, half on the pleura
        where = np.zeros(lung.shape, bool)
        surface = boundary_points(lung, xyz)
        for k, diameter in enumerate(np.linspace(12, 30, 8)):
            if k % 2:
                inner = interior_points(lung, xyz, diameter / 2 + spacing_mm, spacing_mm)
                pool = inner if len(inner) else surface
                centre = pool[rng.integers(len(pool))]
            else:
                point = surface[rng.integers(len(surface))]
                towards = np.mean(xyz[lung], axis=0) - point
                centre = point + 0.3 * diameter * towards / (np.linalg.norm(towards) + 1e-9)
            where |= sphere(xyz, centre, diameter)
        return lung & where, 30 + noise
    if kind == "patchy":  # bronchopneumonia-like patches in both lower lungs, each its own density
        part = lower(halves["right"], xyz, 0.5) | lower(halves["left"], xyz, 0.5)
        pool = xyz[part]
        where, value = np.zeros(lung.shape, bool), np.zeros(hu.shape)
        for _ in range(12):
            patch = sphere(xyz, pool[rng.integers(len(pool))], rng.uniform(16, 36)) & ~where
            value[patch] = rng.uniform(-200, 80)
            where |= patch
        return lung & where, value + noise
    if kind == "ground_glass":  # hazy lung in the left lower lung: denser, vessels still visible
        where = lower(halves["left"], xyz, 0.45)
        return where, np.maximum(hu, -620 + 2 * noise)
    if kind == "atelectasis":  # the dependent (back) 20 mm of both lower lungs
        part = lower(lung, xyz, 0.6)
        y = xyz[..., 1]
        back = np.full(lung.shape, np.inf)
        # per column of constant (x, z): the lung's hindmost y
        key = np.round(xyz[..., 0] / spacing_mm).astype(int) * 100003 + np.round(xyz[..., 2] / 0.5).astype(int)
        order = np.unique(key[part], return_inverse=True)
        hindmost = np.full(len(order[0]), np.inf)
        np.minimum.at(hindmost, order[1], y[part])
        back[part] = hindmost[order[1]]
        return part & (y - back <= 20), 30 + noise
    if kind == "cavity":  # a 36 mm cavity with a 6 mm wall, deep in the right lung
        inner = interior_points(halves["right"], xyz, 20, spacing_mm)
        pool = inner if len(inner) else xyz[halves["right"]]
        centre = pool[rng.integers(len(pool))]
        ball, hollow = sphere(xyz, centre, 36), sphere(xyz, centre, 24)
        value = np.where(hollow, -1000 + noise, 40 + noise)
        return lung & ball, value
    raise ValueError(f"unknown lesion type {kind!r}")


TYPES = ("consolidation", "mass_chest_wall", "mass_mediastinum", "nodules", "patchy", "ground_glass",
         "atelectasis", "cavity")


def with_lesion(hu: np.ndarray, where: np.ndarray, value: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """The CT with the lesion written in: a soft edge of about one voxel, and nothing outside the lung."""
    alpha = np.clip(ndimage.gaussian_filter(where.astype(np.float32), 0.6), 0, 1) * lung
    alpha[where] = 1.0
    return ((1 - alpha) * hu + alpha * value).astype(np.float32)


def scores(predicted: np.ndarray, reference: np.ndarray, where: np.ndarray) -> dict:
    """Share of the lesion called lung, whole-lung Dice on the slices with reference lung."""
    import lungseg_utils as lu

    with_lung = reference.any(axis=tuple(range(1, reference.ndim))) if reference.ndim == 3 else None
    ours = predicted & with_lung[:, None, None] if with_lung is not None else predicted
    return {"kept_share": float(predicted[where].mean()) if where.any() else None,
            "dice": lu.overlap_scores(reference, ours)["dice"],
            "lesion_voxels": int(where.sum())}


# --------------------------------------------------------------------------- the two sources
def cip_volume(shared: Path):
    """The CIP chest in HU and its reference lung, with a RAS affine, as array[x, y, z]."""
    import nrrd

    folder = shared / "external-ct" / "cip-copdgene-64"
    hu, header = nrrd.read(str(folder / "ct-64.nrrd"))
    lung, _ = nrrd.read(str(folder / "wholeLung-64.nrrd"))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], float).T
    affine[:3, 3] = np.asarray(header["space origin"], float)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    return hu.astype(np.float32), lung > 0, affine


def run_cip(model, record: dict, name: str, shared: Path, work: Path, rng_seed: int = SEED) -> dict:
    import nibabel as nib

    from lungseg import scans

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from external import written_mask  # a refused scan is scored on the model's mask, as for the volumes

    hu, lung, affine = cip_volume(shared)
    xyz = world_mm(hu.shape, affine)
    spacing = float(np.abs(affine[:3, :3]).max(axis=0).min())
    results, pictures = {}, {}
    for kind in ("none",) + TYPES:
        rng = np.random.default_rng(rng_seed)
        where, value = (np.zeros(lung.shape, bool), hu) if kind == "none" else lesion(kind, lung, xyz, hu, spacing, rng)
        ct = hu if kind == "none" else with_lesion(hu, where, value, lung)
        path = work / f"cip-{kind}.nii.gz"
        image = nib.Nifti1Image(np.rint(ct).astype(np.int16), affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, path)
        table = scans.predict_scans(model, record, path, work / f"out-{name}-{kind}", model_name=name, log=lambda _: None)
        predicted, _, refused = written_mask(table, model, record, path)
        # array axes (x, y, z): move z first for the per-slice Dice
        result = scores(np.moveaxis(predicted, 2, 0), np.moveaxis(lung, 2, 0), np.moveaxis(where, 2, 0))
        result["lesion_ml"] = float(where.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000)
        result["refused"] = refused
        # measurements.csv's dense-lung shares, in the model's mask and in the reference's
        from lungseg.measuring import CONSOLIDATION_HU, HAA_HU, share_percent
        for key, band in (("haa_percent", HAA_HU), ("consolidation_percent", CONSOLIDATION_HU)):
            result[key] = share_percent(ct[predicted], band)
            result[f"reference_{key}"] = share_percent(ct[lung], band)
        results[kind] = result
        if kind == "mass_chest_wall":
            pictures = {"ct": ct, "reference": lung, "ours": predicted, "where": where}
    return results, pictures


def kaggle_slices(record: dict, data_dir: Path) -> list[str]:
    """The slices of the Kaggle folder that this model neither trained nor validated on."""
    seen = set(record.get("training_slices", [])) | set(record.get("validation_slices", []))
    return [p.name for p in sorted((data_dir / "2d_images").glob("*.tif")) if p.name not in seen]


def run_kaggle(model, record: dict, data_dir: Path, rng_seed: int = SEED) -> dict:
    import lungseg_utils as lu
    from lungseg import scans

    names = kaggle_slices(record, data_dir)
    per_type = {kind: [] for kind in ("none",) + TYPES}
    for index, name in enumerate(names):
        hu = lu.to_standard_hu(lu.read_slice(data_dir / "2d_images" / name), record["hu_calibration"])
        lung = lu.read_mask(data_dir / "2d_masks" / name).astype(bool)
        if len(np.unique(np.nonzero(lung)[1])) < 10:
            continue
        xyz = slice_world_mm(hu.shape, KAGGLE_SPACING_MM)
        for kind in per_type:
            rng = np.random.default_rng(rng_seed + index)
            try:
                where, value = (np.zeros(lung.shape, bool), hu) if kind == "none" else lesion(
                    kind, lung, xyz, hu, KAGGLE_SPACING_MM, rng)
            except ValueError:
                continue
            ct = hu if kind == "none" else with_lesion(hu, where, value, lung)
            scan = scans.Scan(name, "slice", ct[None], (KAGGLE_SPACING_MM, KAGGLE_SPACING_MM))
            predicted = scans.segment_scan(model, scan, record)[0] > 0
            per_type[kind].append(scores(predicted, lung, where))
    summary = {}
    for kind, rows in per_type.items():
        kept = [r["kept_share"] for r in rows if r["kept_share"] is not None]
        lesion_px = sum(r["lesion_voxels"] for r in rows)
        summary[kind] = {"slices": len(rows), "dice": float(np.mean([r["dice"] for r in rows])),
                         "dice_min": float(np.min([r["dice"] for r in rows])),
                         # pooled over slices: the share of all lesion pixels called lung
                         "kept_share": (float(sum(r["kept_share"] * r["lesion_voxels"] for r in rows
                                                  if r["kept_share"] is not None) / lesion_px) if lesion_px else None),
                         "kept_share_min": float(np.min(kept)) if kept else None}
    return summary, names


def picture(arrays: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = int(np.argmax(arrays["where"].sum(axis=(0, 1))))
    cut = [np.rot90(arrays[key][:, :, k]) for key in ("ct", "reference", "ours", "where")]
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    for ax, mask, label in [(axes[0], cut[1], "reference (lesion in red)"), (axes[1], cut[2], "lungseg")]:
        ax.imshow(np.clip((cut[0] + 1000) / 1400, 0, 1), cmap="gray")
        ax.contour(mask, [0.5], colors="lime", linewidths=1)
        ax.contour(cut[3], [0.5], colors="red", linewidths=0.8)
        ax.set_title(label, fontsize=10), ax.set_xticks([]), ax.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "models"), help="holds unet.keras, resunet.keras")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="which (default: both)")
    parser.add_argument("--data-dir", default=str(SHARED / "finding-lungs-in-ct-data"), help="the Kaggle slices")
    parser.add_argument("--label", default="", help="results go to pathology-LABEL.json")
    parser.add_argument("--shared", default=str(SHARED), help="the shared data folder")
    args = parser.parse_args(argv)
    import lungseg_utils as lu
    from lungseg import report

    suffix = f"-{args.label}" if args.label else ""
    command = "python benchmarks/pathology.py" + (f" --models-dir {args.models_dir}" if args.models_dir != str(
        REPO_ROOT / "models") else "") + (f" --models {' '.join(args.models)}" if args.models != list(MODELS) else "") + (
        f" --label {args.label}" if args.label else "")
    results = {"command": command, "label": args.label, "date": time.strftime("%Y-%m-%d"), "device": report.describe_device(),
               "versions": report.library_versions(), "targets": TARGETS, "types": list(TYPES), "seed": SEED,
               "models": {}}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            started = time.perf_counter()
            model, record = lu.load_trained_model(Path(args.models_dir) / f"{name}.keras")
            cip, arrays = run_cip(model, record, name, Path(args.shared), Path(work))
            kaggle, names = run_kaggle(model, record, Path(args.data_dir))
            results["models"][name] = {"cip-copdgene-64": cip, "kaggle-held-out": kaggle,
                                       "kaggle_slices": len(names), "seconds": round(time.perf_counter() - started, 1)}
            for kind in ("none",) + TYPES:
                c, k = cip[kind], kaggle[kind]
                print(f"{name:8s} {kind:17s} CIP kept {c['kept_share'] if c['kept_share'] is not None else float('nan'):.2f}"
                      f" Dice {c['dice']:.3f} ({c.get('lesion_ml', 0):.0f} mL) | Kaggle kept "
                      f"{k['kept_share'] if k['kept_share'] is not None else float('nan'):.2f} Dice {k['dice']:.3f}",
                      flush=True)
            if name == "resunet" and arrays:
                picture(arrays, RESULTS / f"pathology{suffix}-mass.png",
                        f"a 40 mm mass on the chest wall ({name}{', ' + args.label if args.label else ''}): "
                        f"{100 * cip['mass_chest_wall']['kept_share']:.0f}% of it called lung")
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"pathology{suffix}.json"
    target.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("wrote", target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
