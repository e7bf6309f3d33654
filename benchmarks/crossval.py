"""5-fold cross-validation over all real slices: every slice is tested exactly once, by models that
never trained or validated on it. This, not the notebooks' one 33-slice test split, decides
defaults and ablations.

    .venv/bin/python benchmarks/crossval.py --data-dir ../shared/data/finding-lungs-in-ct-data
    .venv/bin/python benchmarks/crossval.py --label augmentation -p ROTATION_DEGREES 10.0 -p FLIP_LEFT_RIGHT True
    .venv/bin/python benchmarks/crossval.py --rescore          # score the trained folds again, no training

For each fold k, notebooks 01-04 run exactly as a user runs them, with ``-p SPLIT_MANIFEST`` the
fold's split (``lungseg.data.kfold_split``: fold k of scikit-learn's KFold as the test slices, the
validation slices, which pick the epoch, from the rest), into ``outputs/cv[-LABEL]/fold_k``. Each model is then scored on its fold's
test slices at native 512x512 with the notebooks' own functions (``lungseg_utils``): alone, with
test-time augmentation (the mean probability of the slice and its left-right mirror), and the two
models' ensemble (mean probability); without and with post-processing.

Writes ``benchmarks/results/cv[-LABEL].json`` (summary: per-slice mean Dice/IoU over all slices and
over the slices whose labels 01's audit finds sound, worst slices, pooled Dice, the spread over
folds, paired comparisons over all slices), ``cv[-LABEL]-per-slice.csv`` and the fold manifest
``cv-folds.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from lungseg import runner  # noqa: E402
from lungseg.data import dataset_calibration, find_pairs, kfold_split, pixel_area_mm2  # noqa: E402
from lungseg.report import write_json  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
MODELS = ("unet", "resunet")
FOLDS = 5


def fold_manifest(names, folds: int = FOLDS, seed: int = 0) -> pd.DataFrame:
    """Which fold tests each slice (``kfold_split``, all folds at once)."""
    test_fold = {}
    for fold in range(folds):
        split = kfold_split(names, fold, folds, seed=seed)
        test_fold.update(dict.fromkeys(split.name[split.split == "test"], fold))
    return pd.DataFrame({"name": sorted(test_fold), "test_fold": [test_fold[n] for n in sorted(test_fold)]})


def probabilities(model, images: list, record: dict, tta: bool) -> list:
    """Lung probabilities at native size; with ``tta``, averaged with those of the left-right mirror."""
    import lungseg_utils as lu

    plain = lu.predict_probabilities(model, images, record)
    if not tta:
        return plain
    mirrored = lu.predict_probabilities(model, [image[:, ::-1] for image in images], record)
    return [(p + m[:, ::-1]) / 2 for p, m in zip(plain, mirrored)]


def score_fold(fold: int, out: Path, spacing_mm: float) -> pd.DataFrame:
    """Per-slice scores of every variant on the fold's test slices, at native resolution."""
    import lungseg_utils as lu

    split = pd.read_csv(out / "data" / "split_manifest.csv")
    pairs = pd.read_csv(out / "data" / "pairs.csv").merge(split, on="name").query("split == 'test'")
    calibration = dataset_calibration(json.loads((out / "data" / "dataset.json").read_text()))
    images = [lu.to_standard_hu(lu.read_slice(p), calibration) for p in pairs.image_path]
    masks = [lu.read_mask(p) for p in pairs.mask_path]
    maps = {}
    for name in MODELS:
        model, record = lu.load_trained_model(out / "models" / f"{name}.keras")
        seen = set(record.get("training_slices", [])) | set(record.get("validation_slices", []))
        if seen & set(pairs.name):
            raise RuntimeError(f"fold {fold}: {name} trained or validated on test slices {sorted(seen & set(pairs.name))}")
        for tta in (False, True):
            maps[name, tta] = probabilities(model, images, record, tta)
    for tta in (False, True):
        maps["ensemble", tta] = [(a + b) / 2 for a, b in zip(maps["unet", tta], maps["resunet", tta])]
    rows = []
    for (variant, tta), maps_ in maps.items():
        for post in (False, True):
            for name, truth, probability in zip(pairs.name, masks, maps_):
                predicted = (probability >= 0.5).astype(np.uint8)
                if post:
                    predicted = lu.clean_mask(predicted)
                t, p = truth.astype(bool), predicted.astype(bool)
                rows.append({"fold": fold, "model": variant, "tta": tta, "postprocessed": post, "name": name,
                             **lu.score_slice(truth, predicted, spacing_mm), "tp": int(np.count_nonzero(t & p)),
                             "truth_px": int(t.sum()), "predicted_px": int(p.sum())})
    return pd.DataFrame(rows)


def summarise(per_slice: pd.DataFrame, flagged: set) -> dict:
    """Each variant over all slices: mean, std, worst slices, pooled Dice, the spread of the folds'
    means; the same over the slices with sound labels; paired comparisons over all slices."""
    import lungseg_utils as lu

    summary = {}
    for (model, tta, post), rows in per_slice.groupby(["model", "tta", "postprocessed"]):
        sound = rows[~rows.name.isin(flagged)]
        folds = rows.groupby("fold").dice.mean()
        worst = rows.nsmallest(5, "dice")
        summary[f"{model}{'+tta' if tta else ''}{'+post' if post else ''}"] = {
            "model": model, "tta": bool(tta), "postprocessed": bool(post), "slices": int(len(rows)),
            "dice_mean": float(rows.dice.mean()), "dice_std": float(rows.dice.std()), "iou_mean": float(rows.iou.mean()),
            "dice_min": float(rows.dice.min()), "hd95_mm_mean": float(rows.hd95_mm.mean()),
            "pooled_dice": float(2 * rows.tp.sum() / (rows.truth_px.sum() + rows.predicted_px.sum())),
            "worst": [{"name": r.name, "dice": float(r.dice), "flagged": r.name in flagged} for r in worst.itertuples()],
            "fold_dice_means": [float(v) for v in folds], "fold_dice_std": float(folds.std()),
            "sound_slices": int(len(sound)), "sound_dice_mean": float(sound.dice.mean()),
            "sound_iou_mean": float(sound.iou.mean()), "sound_dice_min": float(sound.dice.min()),
            "sound_pooled_dice": float(2 * sound.tp.sum() / (sound.truth_px.sum() + sound.predicted_px.sum())),
        }
    raw = per_slice[~per_slice.postprocessed]
    dice = raw.assign(variant=raw.model + np.where(raw.tta, "+tta", "")).pivot(index="name", columns="variant",
                                                                                values="dice")
    compared = {"unet - resunet": ("unet", "resunet"), "unet+tta - unet": ("unet+tta", "unet"),
             "resunet+tta - resunet": ("resunet+tta", "resunet"), "ensemble - resunet": ("ensemble", "resunet"),
             "ensemble - unet": ("ensemble", "unet"), "ensemble+tta - ensemble": ("ensemble+tta", "ensemble")}
    comparisons = {}
    for label, (a, b) in compared.items():
        comparisons[label] = lu.paired_comparison(dice[a], dice[b])
        sound = dice[~dice.index.isin(flagged)]
        comparisons[label]["sound"] = lu.paired_comparison(sound[a], sound[b])
    return {"variants": summary, "paired_dice": comparisons}


def versus(per_slice: pd.DataFrame, default: pd.DataFrame, flagged: set) -> dict:
    """Each model of a configuration minus the same model at the defaults, paired over the slices
    (raw masks, no test-time augmentation), over all slices and over the sound ones."""
    import lungseg_utils as lu

    def dice(table, model):
        rows = table[(table.model == model) & ~table.tta & ~table.postprocessed]
        return rows.set_index("name").dice.sort_index()

    result = {}
    for model in (*MODELS, "ensemble"):
        mine, theirs = dice(per_slice, model), dice(default, model)
        sound = ~mine.index.isin(flagged)
        result[model] = {**lu.paired_comparison(mine, theirs), "sound": lu.paired_comparison(mine[sound], theirs[sound])}
    return result


def whole_run(argv: list[str]) -> list[str]:
    """The arguments without ``--folds K ...``: the command that trains all the folds and scores them."""
    kept, skipping = [], False
    for arg in argv:
        if arg == "--folds" or arg.startswith("--folds="):
            skipping = arg == "--folds"
            continue
        if skipping and arg.isdigit():
            continue
        skipping = False
        kept.append(arg)
    return kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "finding-lungs-in-ct-data"))
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--label", default="", help="name of a non-default configuration (an ablation)")
    parser.add_argument("--folds", nargs="+", type=int, default=list(range(FOLDS)), help="train only these folds")
    parser.add_argument("--rescore", action="store_true", help="score the folds already trained; train nothing")
    parser.add_argument("--versus", help="a per-slice CSV of an earlier run (relative to the repository) to pair "
                                         "this run with, e.g. benchmarks/results/previous-defaults/cv-per-slice.csv")
    args = parser.parse_args(argv)
    os.environ["LUNGSEG_DATA_DIR"] = str(Path(args.data_dir).resolve())
    parameters = {k: runner.parse_value(v) for k, v in args.parameter}
    if {"SPLIT_MANIFEST", "SPLIT", "SPLIT_SEED"} & set(parameters):
        parser.error("the folds are the script's: give --folds, not -p SPLIT_MANIFEST/SPLIT/SPLIT_SEED")
    runner.check_parameters(parameters, ["01", "02", "03", "04"])
    suffix = f"-{args.label}" if args.label else ""
    base = REPO_ROOT / "outputs" / f"cv{suffix}"

    for fold in ([] if args.rescore else args.folds):
        out = base / f"fold_{fold}"
        print(f"=== fold {fold} of {FOLDS} -> {out}", flush=True)
        started = time.perf_counter()
        manifest = out / "fold_split.csv"  # this fold's split, which 02 uses as it is
        out.mkdir(parents=True, exist_ok=True)
        kfold_split(find_pairs(args.data_dir).name, fold, FOLDS).to_csv(manifest, index=False)
        runner.run_pipeline({**parameters, "SPLIT_MANIFEST": str(manifest.relative_to(REPO_ROOT))},
                            str(out.relative_to(REPO_ROOT)), only=["01", "02", "03", "04"])
        write_json(out / "fold_seconds.json", {"pipeline_01_04_seconds": time.perf_counter() - started})
    trained = [fold for fold in range(FOLDS) if all((base / f"fold_{fold}" / "models" / f"{m}.keras").is_file()
                                                     for m in MODELS)]
    if trained != list(range(FOLDS)):
        print(f"folds trained so far: {trained}; score when all {FOLDS} are (then run with --rescore)")
        return 0
    data = base / "fold_0" / "data"
    pairs = pd.read_csv(data / "pairs.csv")
    dataset = json.loads((data / "dataset.json").read_text())
    if dataset.get("synthetic"):
        raise SystemExit("cross-validation ran on SYNTHETIC phantoms: give --data-dir the real slices")
    spacing_mm = float(np.sqrt(pixel_area_mm2(Path(dataset["root"]) / "lung_stats.csv")))
    audit = pd.read_csv(data / "label_audit.csv").fillna("")  # 01's label audit
    flagged = set(audit.name[audit.flagged])
    manifest = fold_manifest(pairs.name).merge(audit, on="name")
    for fold in range(FOLDS):  # the folds' own manifests agree with the fold manifest
        split = pd.read_csv(base / f"fold_{fold}" / "data" / "split_manifest.csv")
        assert set(split.name[split.split == "test"]) == set(manifest.name[manifest.test_fold == fold]), fold
    per_slice = pd.concat([score_fold(fold, base / f"fold_{fold}", spacing_mm) for fold in range(FOLDS)])
    assert per_slice.groupby(["model", "tta", "postprocessed"]).name.nunique().eq(len(pairs)).all()
    records = {fold: {m: json.loads((base / f"fold_{fold}" / "models" / f"{m}.json").read_text()) for m in MODELS}
               for fold in range(FOLDS)}
    first = records[0]["unet"]
    result = {
        "label": args.label or "default", "overrides": parameters, "folds": FOLDS,
        "data": f"{len(pairs)} real slices in {Path(args.data_dir).name}, each tested once, native 512x512",
        "flagged_labels": audit[audit.flagged][["name", "reasons"]].to_dict("records"),
        "device": first["device"], "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/crossval.py " + " ".join(whole_run(sys.argv[1:] if argv is None else argv)),
        "settings": {k: first.get(k) for k in ("img_size", "hu_min", "hu_max", "epochs", "batch_size", "learning_rate",
                                               "base_filters", "augmentation", "train_on_flagged", "mixed_precision",
                                               "dice_weight", "seed")}
        | {"hu_calibration_scale": (first.get("hu_calibration") or {}).get("scale"), "gas_pockets": first.get("gas_pockets"),
           "lesions": first.get("lesions"), "resolution": first.get("resolution")},
        "training": {m: {"seconds_per_epoch_mean": float(np.mean([records[f][m]["seconds_per_epoch"] for f in records])),
                         "training_seconds_mean": float(np.mean([records[f][m]["training_seconds"] for f in records])),
                         "best_epochs": [records[f][m]["best_epoch"] for f in records]} for m in MODELS},
        **summarise(per_slice, flagged), "versions": first["versions"],
    }
    earlier = RESULTS / f"cv{suffix}.json"
    if args.rescore and earlier.is_file():  # scored again: the command that trained the folds still repeats it
        result["command"] = json.loads(earlier.read_text())["command"]
    default_scores = RESULTS / "cv-per-slice.csv"
    if args.label and default_scores.is_file():  # an ablation: paired with the defaults, slice by slice
        result["versus_default"] = versus(per_slice, pd.read_csv(default_scores), flagged)
    if args.versus:  # e.g. new defaults against the previous ones, slice by slice
        result["versus"] = {"against": args.versus, **versus(per_slice, pd.read_csv(REPO_ROOT / args.versus), flagged)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"cv{suffix}.json", result)
    per_slice.round(6).to_csv(RESULTS / f"cv{suffix}-per-slice.csv", index=False)
    manifest.to_csv(RESULTS / "cv-folds.csv", index=False)
    table = pd.DataFrame(result["variants"]).T[["dice_mean", "iou_mean", "dice_min", "pooled_dice", "fold_dice_std",
                                                  "sound_dice_mean", "sound_dice_min", "hd95_mm_mean"]]
    print(table.astype(float).round(4).to_string())
    print(pd.DataFrame(result["paired_dice"]).T.drop(columns="sound").to_string())
    print("wrote", RESULTS / f"cv{suffix}.json", "and the per-slice scores and fold manifest beside it")
    shutil.copy(RESULTS / f"cv{suffix}.json", base / f"cv{suffix}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
