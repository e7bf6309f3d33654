"""Benchmark: run the whole pipeline (01-06) on the real slices at the committed defaults, once per
training seed, and record accuracy at native resolution, training and inference speed, memory.

    .venv/bin/python benchmarks/benchmark.py --data-dir ../shared/data/finding-lungs-in-ct-data --seeds 0 1 2
    .venv/bin/python benchmarks/benchmark.py --label filters16 -p BASE_FILTERS 16 --seeds 0   # an ablation
    .venv/bin/python benchmarks/benchmark.py --readme                                    # RESULTS.md and the README table only

Writes ``outputs/benchmark[-LABEL].json`` (and a copy in ``benchmarks/results/``) and prints a table.
The split is the same for every seed (02's SPLIT_SEED); SEED changes the training (initial weights,
shuffling, augmentation), so the spread over seeds is the training noise on one test set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from lungseg import runner  # noqa: E402
from lungseg.portable import make_portable  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from render_results import _portable, aggregate, update_readme  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
MODELS_DIR = REPO_ROOT / "models"  # the committed models
MODELS = ("unet", "resunet")
REFERENCE = {"source": "Kaggle U-Net notebook on this dataset (its own split, 25 epochs)", "dice": 0.9650, "iou": 0.9317}


def time_inference(output_dir: Path, name: str, repeats: int = 3) -> dict:
    """Slices per second through ``predict_masks`` (windowing, resizing, network, resizing back,
    thresholding, post-processing) on the test slices at 512x512: one at a time, and in one batch."""
    import lungseg_utils as lu

    model, settings = lu.load_trained_model(output_dir / "models" / f"{name}.keras")
    names = json.loads((output_dir / "evaluation" / "evaluation.json").read_text())["test_names"]
    paths = pd.read_csv(output_dir / "data" / "pairs.csv").set_index("name").image_path
    calibration = settings.get("hu_calibration", {"scale": 1.0, "offset": 0.0})  # the training data's
    images = [lu.to_standard_hu(lu.read_slice(paths[n]), calibration) for n in names]
    lu.predict_masks(model, images[:8], settings, postprocess=True)  # warm-up: graph tracing
    single, batched = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for image in images:
            lu.predict_masks(model, image, settings, postprocess=True)
        single.append(len(images) / (time.perf_counter() - started))
        started = time.perf_counter()
        lu.predict_masks(model, images, settings, postprocess=True, batch_size=len(images))
        batched.append(len(images) / (time.perf_counter() - started))
    return {"slices_per_s_batch1": float(np.median(single)), "slices_per_s_batched": float(np.median(batched)),
            "batched_size": len(images)}


def commit_models(output_dir: Path, data_dir: str) -> None:
    """Copy the trained models of a run at the defaults into the repository's ``models/``: without
    optimizer state (about 2 MB each), with their record (plus the test slices and the per-slice
    test Dice that 05 measured, which a test reproduces) and their training history."""
    import keras

    import lungseg_utils as lu
    from lungseg import report

    evaluation = json.loads((output_dir / "evaluation" / "evaluation.json").read_text())
    summary = pd.read_csv(output_dir / "evaluation" / "summary.csv")
    MODELS_DIR.mkdir(exist_ok=True)
    for name in MODELS:
        model, record = lu.load_trained_model(output_dir / "models" / f"{name}.keras")
        slim = keras.models.clone_model(model)
        slim.set_weights(model.get_weights())
        slim.compile(loss=lu.bce_dice_loss, metrics=[lu.dice_coef, lu.iou_coef])
        slim.save(MODELS_DIR / f"{name}.keras")
        make_portable(MODELS_DIR / f"{name}.keras")  # loads on Keras 3.8 and newer too (Colab brings its own)
        native = summary[(summary.model == name) & (summary.resolution == "native") & ~summary.postprocessed]
        record.update(model_file=f"models/{name}.keras", data_root=_portable(str(Path(data_dir).resolve())),
                      test_slices=evaluation["test_names"], test_dice_native=float(native.dice_mean.iloc[0]),
                      produced_by=_portable(" ".join(["python benchmarks/benchmark.py", *sys.argv[1:]])) + " (its seed 0)")
        report.write_json(MODELS_DIR / f"{name}.json", record)
        shutil.copy(output_dir / "models" / f"{name}_history.csv", MODELS_DIR / f"{name}_history.csv")
    print("committed models written to", MODELS_DIR)


def run_seed(seed: int, parameters: dict, output_dir: str, publish: bool) -> dict:
    started = time.perf_counter()
    executed = runner.run_pipeline({**parameters, **({"SEED": seed} if seed != 0 else {})}, output_dir)
    pipeline_seconds = time.perf_counter() - started
    out = REPO_ROOT / output_dir
    if publish:
        runner.publish(executed)
        commit_models(out, os.environ["LUNGSEG_DATA_DIR"])
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    summary = pd.read_csv(out / "evaluation" / "summary.csv")
    per_model = {}
    for name in MODELS:
        record = json.loads((out / "models" / f"{name}.json").read_text())
        rows = summary[(summary.model == name) & (summary.resolution == "native")].set_index("postprocessed")
        raw, post = rows.loc[False], rows.loc[True]
        per_model[name] = {
            "dice_mean": raw.dice_mean, "dice_std": raw.dice_std, "dice_min": raw.dice_min, "iou_mean": raw.iou_mean,
            "pooled_dice": raw.pooled_dice, "hd95_mm_mean": raw.hd95_mm_mean,
            "postprocessed_dice_mean": post.dice_mean, "postprocessed_dice_min": post.dice_min,
            "postprocessed_hd95_mm_mean": post.hd95_mm_mean,
            "model_resolution_dice_mean": float(summary[(summary.model == name) & (summary.resolution != "native")].dice_mean.iloc[0]),
            "best_val_dice": record["best_val_dice"], "best_val_iou": record["best_val_iou"],
            "parameters": record["parameters"], "best_epoch": record["best_epoch"],
            "seconds_per_epoch": record["seconds_per_epoch"], "training_seconds": record["training_seconds"],
            **time_inference(out, name),
        }
    return {"seed": seed, "pipeline_seconds": pipeline_seconds, "notebooks": [path.stem for path in executed],
            "models": per_model,
            "paired_dice_unet_minus_resunet": evaluation["paired_dice"], "test_slices": evaluation["test_slices"],
            "device": record["device"], "settings": {k: record.get(k) for k in (
                "img_size", "hu_min", "hu_max", "epochs", "batch_size", "learning_rate", "base_filters",
                "augmentation", "split", "split_seed", "split_method")}, "versions": record["versions"]}


def pipeline_span(benchmark: dict) -> str:
    """'01–06': the notebooks a run executed (runs recorded before 06 existed ran 01–05)."""
    names = benchmark["runs"][0].get("notebooks") or ["01", "05"]
    return f"{names[0][:2]}–{names[-1][:2]}"


def print_table(benchmark: dict) -> None:
    rows = []
    for run in benchmark["runs"]:
        for name, values in run["models"].items():
            rows.append({"seed": run["seed"], "model": name, "Dice": values["dice_mean"], "IoU": values["iou_mean"],
                         "worst": values["dice_min"], "pooled": values["pooled_dice"], "HD95 mm": values["hd95_mm_mean"],
                         "Dice pp": values["postprocessed_dice_mean"], "s/epoch": values["seconds_per_epoch"],
                         "train s": values["training_seconds"], "slices/s b1": values["slices_per_s_batch1"],
                         "slices/s batch": values["slices_per_s_batched"]})
    print(pd.DataFrame(rows).round(4).to_string(index=False))
    print(f"device: {benchmark['device']}; pipeline {pipeline_span(benchmark)}: "
          f"{benchmark['summary']['pipeline_seconds_mean']:.0f} s per seed; "
          f"peak RSS of the notebook kernels: {benchmark['peak_rss_mb']:.0f} MB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "finding-lungs-in-ct-data"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--label", default="", help="name of a non-default configuration (an ablation)")
    parser.add_argument("--publish", action="store_true",
                        help="run the first seed in outputs/, copy its executed notebooks into notebooks/ and its "
                             "models into models/")
    parser.add_argument("--append", action="store_true",
                        help="add these seeds' runs to an existing outputs/benchmark[-LABEL].json of the same settings")
    parser.add_argument("--readme", action="store_true", help="only regenerate RESULTS.md and the README's results table")
    args = parser.parse_args(argv)
    if args.readme:
        update_readme()
        return 0
    # The data folder travels as LUNGSEG_DATA_DIR, so that the first seed runs the notebooks with
    # their defaults exactly (a run that --publish can commit).
    os.environ["LUNGSEG_DATA_DIR"] = str(Path(args.data_dir).resolve())
    parameters = {k: runner.parse_value(v) for k, v in args.parameter}
    if args.publish and (parameters or args.seeds[0] != 0):
        parser.error("--publish needs the defaults: no -p, and 0 as the first seed")
    suffix = f"-{args.label}" if args.label else ""
    runs = []
    for index, seed in enumerate(args.seeds):
        publish = args.publish and index == 0
        output_dir = "outputs" if publish else f"outputs/benchmark{suffix}/seed_{seed}"
        print(f"=== seed {seed} -> {output_dir}")
        runs.append(run_seed(seed, parameters, output_dir, publish))
    benchmark = {
        "label": args.label or "default", "overrides": parameters,
        "data": f"real slices in {Path(args.data_dir).name} ({runs[0]['test_slices']} test slices, native 512x512)",
        "device": runs[0]["device"], "machine": platform.platform(), "command": "python benchmarks/benchmark.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d"), "reference_reported": REFERENCE,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "summary": aggregate(runs), "runs": runs,
    }
    target = REPO_ROOT / "outputs" / f"benchmark{suffix}.json"
    if args.append and target.is_file():
        earlier = json.loads(target.read_text())
        if earlier["overrides"] != benchmark["overrides"]:
            parser.error(f"--append: {target} was measured with other settings: {earlier['overrides']}")
        runs = earlier["runs"] + runs
        benchmark.update(runs=runs, summary=aggregate(runs), command=earlier["command"] + " (+ " + benchmark["command"] + ")",
                         peak_rss_mb=max(earlier["peak_rss_mb"], benchmark["peak_rss_mb"]))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(benchmark, indent=2, default=float) + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(target, RESULTS / target.name)
    print_table(benchmark)
    print("wrote", target, "and", RESULTS / target.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
