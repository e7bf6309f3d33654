"""Decide a training design over seeds: train its Residual U-Net with several seeds and score each
on everything that judges it, then print per seed, the mean and the range.

    .venv/bin/python benchmarks/seeds.py --seeds 0 1 2                                   # today's defaults
    .venv/bin/python benchmarks/seeds.py --label lessons -p LESIONS 0.5 --seeds 0 1 2    # a candidate design
    .venv/bin/python benchmarks/seeds.py --label lessons --rescore                       # score again, train nothing

One seed decides nothing: two seeds of the same settings have differed by 0.09 Dice on the COPD
chest. For each seed k, notebooks 01, 02 and 04 run as a user runs them (``-p SEED k`` and the
design's ``-p`` settings) into ``outputs/seeds[-LABEL]/seed_k``; 01 and 02 run once and their
``data/`` is copied to the other seeds (02 does not depend on SEED: its split and arrays are the
same for every seed). The trained ``resunet.keras`` is then scored on

- the external volumes and the LIDC slice (``external.py``'s ``run_volume``: the path of
  ``scripts/predict.sh``), which judge generalisation and are never trained on;
- the pathology benchmark (``pathology.py``: lesions written into the COPD chest and into the Kaggle
  slices the model neither trained nor validated on);
- the teaching split: 02's 33 test slices at native 512x512, post-processed, as 05 scores them.

Each seed's scores are kept in ``seed_k/scores.json`` (a run that stops goes on where it stopped);
the summary goes to ``benchmarks/results/seeds[-LABEL].json``. Screening uses the Residual U-Net
alone; the finalist then goes through the 5-fold ``crossval.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from lungseg import runner  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
SHARED = REPO_ROOT.parent / "shared" / "data"
MODEL = "resunet"
NOTEBOOKS = ["01", "02", "04"]
# The scores the summary shows first (issue 38's targets), by their key in a seed's flat scores.
HEADLINE = ["teaching_test_dice", "cip_dice", "cip_laa950_points", "example_ct_dice", "example_ct_false_lung_ml",
            "upper_abdomen_lung_ml", "pathology_cip_kept_min", "pathology_cip_dice_min",
            "pathology_kaggle_kept_min", "pathology_kaggle_dice_min"]


def flatten(external: dict, pathology_cip: dict, pathology_kaggle: dict, teaching: dict) -> dict:
    """One seed's scores as one flat dict of numbers (None where a score does not apply)."""
    cip, example, abdomen = (external[name] for name in ("cip-copdgene-64", "totalsegmentator-example-ct",
                                                          "totalsegmentator-example-ct-dicom"))
    flat = {"teaching_test_dice": teaching["dice_mean"], "teaching_test_dice_min": teaching["dice_min"],
            "cip_dice": cip["dice"], "cip_lung_ml": cip["lung_ml"],
            "cip_laa950_points": abs(cip["laa950_percent"] - cip["reference_laa950_percent"]),
            "example_ct_dice": example["dice"], "example_ct_false_lung_ml": example["false_lung_ml"],
            "upper_abdomen_lung_ml": abdomen["lung_ml"], "lidc_lung_pixels_per_slice": external["lidc"],
            "external_refused": sum(bool(case.get("refused")) for case in (cip, example, abdomen))}
    lesions = [kind for kind in pathology_cip if kind != "none"]
    for source, scores in (("cip", pathology_cip), ("kaggle", pathology_kaggle)):
        for kind, result in scores.items():
            flat[f"pathology_{source}_{kind}_dice"] = result["dice"]
            if kind != "none":
                flat[f"pathology_{source}_{kind}_kept"] = result["kept_share"]
        kept = [scores[kind]["kept_share"] for kind in lesions if scores[kind]["kept_share"] is not None]
        flat[f"pathology_{source}_kept_min"] = min(kept) if kept else None
        flat[f"pathology_{source}_dice_min"] = min(scores[kind]["dice"] for kind in scores)
    return flat


def summarise(per_seed: dict) -> dict:
    """Per score: each seed's value, and the mean, minimum, maximum and range (max - min) over the
    seeds that have one. ``per_seed``: {seed: {score: value or None}}."""
    names = list(dict.fromkeys(name for scores in per_seed.values() for name in scores))
    summary = {}
    for name in names:
        values = {seed: scores.get(name) for seed, scores in per_seed.items()}
        present = np.array([v for v in values.values() if v is not None], float)
        summary[name] = {"per_seed": values, "seeds": int(present.size),
                         **({"mean": float(present.mean()), "min": float(present.min()), "max": float(present.max()),
                             "range": float(present.max() - present.min())} if present.size else
                            {"mean": None, "min": None, "max": None, "range": None})}
    return summary


def table(summary: dict, names=None) -> pd.DataFrame:
    """The summary as rows of scores and columns: each seed, mean, range."""
    rows = {}
    for name in names or list(summary):
        if name not in summary:
            continue
        entry = summary[name]
        rows[name] = {**{f"seed {seed}": value for seed, value in entry["per_seed"].items()},
                      "mean": entry["mean"], "range": entry["range"]}
    return pd.DataFrame(rows).T


def teaching_scores(model, record: dict, out: Path) -> dict:
    """02's test slices at native resolution, post-processed, scored as 05 scores them."""
    import lungseg_utils as lu
    from lungseg.data import pixel_area_mm2

    split = pd.read_csv(out / "data" / "split_manifest.csv")
    pairs = pd.read_csv(out / "data" / "pairs.csv").set_index("name")
    dataset = json.loads((out / "data" / "dataset.json").read_text())
    spacing_mm = float(np.sqrt(pixel_area_mm2(Path(dataset["root"]) / "lung_stats.csv")))
    names = list(split.name[split.split == "test"])
    calibration = record.get("hu_calibration", {"scale": 1.0, "offset": 0.0})
    images = [lu.to_standard_hu(lu.read_slice(pairs.image_path[n]), calibration) for n in names]
    truths = [lu.read_mask(pairs.mask_path[n]) for n in names]
    predictions = lu.predict_masks(model, images, record, postprocess=True)
    dice = [lu.score_slice(t, p, spacing_mm)["dice"] for t, p in zip(truths, predictions)]
    return {"slices": len(names), "dice_mean": float(np.mean(dice)), "dice_min": float(np.min(dice))}


def score_seed(out: Path, shared: Path, data_dir: Path) -> dict:
    """Every score of one trained seed (its ``models/resunet.keras``)."""
    import external
    import pathology

    import lungseg_utils as lu

    model, record = lu.load_trained_model(out / "models" / f"{MODEL}.keras")
    started = time.perf_counter()
    ext = {}
    with tempfile.TemporaryDirectory() as work:
        for case in external.volumes(shared):
            ext[case["name"]], _ = external.run_volume(case, model, record, MODEL, Path(work))
        ext["lidc"] = external.run_lidc(shared, model, record, MODEL, Path(work))["lung_pixels_per_slice"]
        cip, _ = pathology.run_cip(model, record, MODEL, shared, Path(work))
    kaggle, _ = pathology.run_kaggle(model, record, data_dir)
    teaching = teaching_scores(model, record, out)
    return {"flat": flatten(ext, cip, kaggle, teaching), "external": ext, "pathology_cip": cip,
            "pathology_kaggle": kaggle, "teaching": teaching, "best_epoch": record.get("best_epoch"),
            "training_seconds": record.get("training_seconds"), "scoring_seconds": round(time.perf_counter() - started, 1)}


def train_seed(seed: int, parameters: dict, base: Path, first: Path | None) -> Path:
    """Train one seed into ``base/seed_<seed>``; 01 and 02 only for the first seed (the others copy its data)."""
    out = base / f"seed_{seed}"
    if first is not None and first != out and (first / "data" / "arrays.npz").is_file():
        if (out / "data").exists():
            shutil.rmtree(out / "data")
        shutil.copytree(first / "data", out / "data")
        only = ["04"]
    else:
        only = NOTEBOOKS
    runner.run_pipeline({**parameters, "SEED": seed}, str(out.relative_to(REPO_ROOT)), only=only)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(SHARED / "finding-lungs-in-ct-data"))
    parser.add_argument("--shared", default=str(SHARED), help="the shared data folder")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--label", default="", help="name of the design (empty: today's defaults)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rescore", action="store_true", help="score the seeds already trained again; train nothing")
    args = parser.parse_args(argv)
    os.environ["LUNGSEG_DATA_DIR"] = str(Path(args.data_dir).resolve())
    parameters = {k: runner.parse_value(v) for k, v in args.parameter}
    if "SEED" in parameters:
        parser.error("give --seeds, not -p SEED")
    if not args.rescore:  # a design's parameters may live only on its branch; rescoring trains nothing
        runner.check_parameters(parameters, NOTEBOOKS)
    suffix = f"-{args.label}" if args.label else ""
    base = REPO_ROOT / "outputs" / f"seeds{suffix}"
    shared, data_dir = Path(args.shared), Path(args.data_dir)
    first = None
    for seed in args.seeds:
        out = base / f"seed_{seed}"
        scores_path = out / "scores.json"
        trained = (out / "models" / f"{MODEL}.keras").is_file()
        if not args.rescore and not (trained and scores_path.is_file()):
            print(f"=== {args.label or 'defaults'}: seed {seed} -> {out}", flush=True)
            if not trained:
                train_seed(seed, parameters, base, first)
            scores_path.parent.mkdir(parents=True, exist_ok=True)
            scores_path.write_text(json.dumps(score_seed(out, shared, data_dir), indent=1, default=float) + "\n")
        elif args.rescore and trained:
            scores_path.write_text(json.dumps(score_seed(out, shared, data_dir), indent=1, default=float) + "\n")
        first = first or out
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in json.loads(scores_path.read_text())["flat"].items()
                                          if k in HEADLINE and v is not None), flush=True)
    per_seed = {seed: json.loads((base / f"seed_{seed}" / "scores.json").read_text())["flat"] for seed in args.seeds
                if (base / f"seed_{seed}" / "scores.json").is_file()}
    record = json.loads((base / f"seed_{args.seeds[0]}" / "models" / f"{MODEL}.json").read_text())
    result = {"label": args.label or "defaults", "overrides": parameters, "model": MODEL, "seeds": list(per_seed),
              "command": "python benchmarks/seeds.py" + "".join(f" -p {k} {v}" for k, v in args.parameter)
                         + (f" --label {args.label}" if args.label else "") + " --seeds " + " ".join(map(str, per_seed)),
              "date": time.strftime("%Y-%m-%d"), "device": record.get("device"), "machine": platform.platform(),
              "settings": {k: record.get(k) for k in ("epochs", "batch_size", "learning_rate", "base_filters", "img_size",
                                                      "augmentation", "gas_pockets", "lesions", "resolution")},
              "summary": summarise(per_seed)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"seeds{suffix}.json"
    target.write_text(json.dumps(result, indent=2, default=float) + "\n")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table(result["summary"], HEADLINE).astype(float).round(3).to_string())
    print("wrote", target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
