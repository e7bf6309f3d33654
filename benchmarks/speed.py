"""Where the time goes on this machine: the pipeline notebook by notebook, training steps with and
without XLA or bfloat16, inference at 512x512 stage by stage, and the own-scan path (predict.sh).

    .venv/bin/python benchmarks/speed.py --data-dir ../shared/data/finding-lungs-in-ct-data
    .venv/bin/python benchmarks/speed.py --data-dir ... --parts inference training_steps   # ~5 min
    .venv/bin/python benchmarks/speed.py --data-dir ... --parts own_scan                   # ~1 min

Inference uses the committed models (``models/``) on every slice of the data folder at its native
512x512: reading the file, windowing + resizing to the model's size, the network, resizing the
probabilities back + thresholding, and ``clean_mask``; then the whole of ``predict_masks`` with
post-processing, as 05 and ``scripts/predict.sh`` run it. Training steps: the committed
architectures at 256 px, batch 8, float32 (the default), with ``jit_compile`` (XLA), and under
Keras' ``mixed_bfloat16`` policy. The pipeline: ``python -m lungseg.runner`` at the defaults into
``outputs/profile`` (about 7 minutes on 2 cores), each notebook's seconds and each model's training
seconds. Run it on an otherwise idle machine; it writes ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "benchmarks" / "results"
MODELS = ("unet", "resunet")


def timed(function, repeats: int = 3):
    """The fastest of ``repeats`` runs (seconds) and the last result: the least disturbed figure."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def inference(data_dir: Path, batch_sizes=(8, 32)) -> dict:
    import lungseg_utils as lu
    import tensorflow as tf

    paths = sorted((data_dir / "2d_images").glob("*.tif"))
    n = len(paths)
    read_s, images = timed(lambda: [lu.read_slice(p) for p in paths])
    out = {"slices": n, "size": list(images[0].shape), "stages_ms_per_slice": {}, "slices_per_s": {}}
    for name in MODELS:
        model, record = lu.load_trained_model(REPO_ROOT / "models" / f"{name}.keras")
        size = record["img_size"]
        pre_s, batch = timed(lambda: np.stack([lu.preprocess_slice(i, size, record["hu_min"], record["hu_max"])
                                               for i in images])[..., None])
        network = {}
        for batch_size in batch_sizes:
            model.predict(batch[:batch_size], batch_size=batch_size, verbose=0)  # warm-up: tracing
            network[f"predict, batch {batch_size}"], probabilities = timed(
                lambda: model.predict(batch, batch_size=batch_size, verbose=0)[..., 0])
        xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
        run_xla = lambda: np.concatenate([xla(batch[i:i + 32]).numpy() for i in range(0, n, 32)])[..., 0]  # noqa: E731
        run_xla()
        network["XLA (jit_compile), batch 32"], _ = timed(run_xla)
        back_s, masks = timed(lambda: [(lu.resize_image(p, i.shape) >= 0.5).astype(np.uint8)
                                       for p, i in zip(probabilities, images)])
        clean_s, _ = timed(lambda: [lu.clean_mask(m) for m in masks])
        whole_s, _ = timed(lambda: lu.predict_masks(model, images, record, postprocess=True))
        per = lambda s: round(1000 * s / n, 2)  # noqa: E731
        out["stages_ms_per_slice"][name] = {"read file": per(read_s), "window + resize": per(pre_s),
                                            **{f"network: {k}": per(v) for k, v in network.items()},
                                            "resize back + threshold": per(back_s), "clean_mask": per(clean_s)}
        out["slices_per_s"][name] = {"predict_masks with post-processing (batch 8)": round(n / whole_s, 1),
                                     "the same, with reading the files": round(n / (whole_s + read_s), 1)}
    return out


def training_steps(steps: int = 16, rounds: int = 3) -> dict:
    """ms per training step (batch 8, 256 px) of each architecture: float32, XLA, mixed bfloat16."""
    code = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import keras, numpy as np
import lungseg_utils as lu
name, variant, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
config = keras.saving.load_model(f"{sys.argv[1]}/models/{name}.keras", compile=False).get_config()
def use_policy(node):  # rebuild the same architecture with every layer under the policy
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy":
            node["config"]["name"] = "mixed_bfloat16"
        for value in node.values():
            use_policy(value)
    elif isinstance(node, list):
        for value in node:
            use_policy(value)
if variant == "mixed_bfloat16":
    use_policy(config)
model = keras.Model.from_config(config)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=lu.bce_dice_loss, jit_compile=variant == "XLA")
rng = np.random.default_rng(0)
x = rng.random((8 * steps, 256, 256, 1), dtype=np.float32); y = (x > 0.5).astype("float32")
model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # tracing, compiling and a first epoch
times = []
for _ in range(3):  # the fastest of 3 epochs: the least disturbed
    started = time.perf_counter()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    times.append(time.perf_counter() - started)
print(json.dumps(1000 * min(times) / steps))
'''
    results = {}
    for _ in range(rounds):  # interleaved, so that a slow spell of the machine does not favour one variant
        for name in MODELS:
            for variant in ("float32", "XLA", "mixed_bfloat16"):  # a process each: the policy is global
                done = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), name, variant, str(steps)],
                                      capture_output=True, text=True, check=True)
                ms = json.loads(done.stdout.strip().splitlines()[-1])
                mine = results.setdefault(name, {})
                mine[variant] = round(min(ms, mine.get(variant, ms)), 1)
    return {"ms_per_step": results, "batch_size": 8, "img_size": 256, "steps": steps,
            "measured": f"the fastest of {rounds} interleaved rounds of 3 epochs of {steps} steps each"}


def pipeline(data_dir: Path) -> dict:
    """The default pipeline, timed per notebook (the runner's 'done in' lines) and per model."""
    output = "outputs/profile"
    command = [sys.executable, "-m", "lungseg.runner", "--output-dir", output, "-p", "DATA_DIR", str(data_dir)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    total = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"the pipeline failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    notebooks, current = {}, None
    for line in done.stdout.splitlines():
        if match := re.match(r"\[\d+/\d+\] (\d\d_\w+)", line):
            current = match.group(1)
        elif match := re.match(r"\s+done in (\d+) s", line):
            notebooks[current] = int(match.group(1))
    training = {}
    for name in MODELS:
        record = json.loads((REPO_ROOT / output / "models" / f"{name}.json").read_text())
        training[name] = {k: round(record[k], 1) for k in ("training_seconds", "seconds_per_epoch", "first_epoch_seconds")}
    return {"seconds": round(total, 1), "notebooks_s": notebooks, "training": training,
            "command": "python -m lungseg.runner"}


def own_scan(data_dir: Path, slices: int = 133) -> dict:
    """The own-scan path as users run it, beside the bare network: ``scripts/predict.sh`` in a fresh process
    (start-up apart), then in this process, warm, ``predict_scans`` (reading to files), ``segment_scan``
    (the slices and the 3D step) and the network alone, on a NIfTI of ``slices`` real 512x512 slices
    (calibrated to standard HU, 0.7 mm pixels, 2.5 mm apart: no anatomy across slices, a chest's size)."""
    import tempfile

    import nibabel as nib

    import lungseg_utils as lu
    from lungseg import scans, segmenting

    model, record = lu.load_trained_model(REPO_ROOT / "models" / "resunet.keras")
    files = sorted((data_dir / "2d_images").glob("*.tif"))[:slices]
    hu = [np.round(lu.to_standard_hu(lu.read_slice(f), record["hu_calibration"])).astype(np.int16) for f in files]
    with tempfile.TemporaryDirectory() as work:
        scan_path = Path(work) / "chest.nii.gz"
        nib.save(nib.Nifti1Image(np.stack(hu, axis=-1).transpose(1, 0, 2), np.diag([-0.7, -0.7, 2.5, 1.0])), scan_path)
        started = time.perf_counter()
        done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "predict.sh"), str(scan_path), str(Path(work) / "sh"),
                               "--no-progress"], capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"predict.sh failed:\n{done.stderr[-3000:]}")
        start_up = re.search(r"start-up ([\d.]+) s", done.stdout)
        segmenting_s = re.search(r"in ([\d.]+) s \(", done.stdout)
        scan = scans.read_scan(scan_path)
        scans.segment_scan(model, scan, record)  # warm-up: the network's one trace
        runs = iter(range(10))
        whole_s, _ = timed(lambda: scans.predict_scans(model, record, scan_path, Path(work) / f"py{next(runs)}",
                                                       log=lambda line: None))
        segment_s, _ = timed(lambda: scans.segment_scan(model, scan, record))
        batch = np.stack([lu.preprocess_slice(h, record["img_size"], record["hu_min"], record["hu_max"]) for h in hu])[..., None]
        network = segmenting._network(model)  # the own-scan path's traced forward pass
        traced_s, _ = timed(lambda: [network(batch[i:i + 8]).numpy() for i in range(0, len(batch), 8)], 5)
        predict_s, _ = timed(lambda: [model.predict(batch[i:i + 32], batch_size=8, verbose=0)
                                      for i in range(0, len(batch), 32)], 5)
    rate = lambda seconds: round(len(hu) / seconds, 1) if seconds else None  # noqa: E731
    return {"slices": len(hu), "size": list(hu[0].shape), "model": "resunet",
            "predict_sh": {"wall_s": round(wall, 1), "start_up_s": float(start_up.group(1)) if start_up else None,
                           "segmenting_s": float(segmenting_s.group(1)) if segmenting_s else None},
            "slices_per_s": {"predict_scans: reading to files (start-up apart)": rate(whole_s),
                             "segment_scan: the slices and the 3D step": rate(segment_s),
                             "the network alone, one traced call per batch of 8 (the path's)": rate(traced_s),
                             "the network alone, model.predict per 32 slices (before)": rate(predict_s)}}


PARTS = {"inference": inference, "training_steps": lambda _: training_steps(), "pipeline": pipeline, "own_scan": own_scan}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="measure only these; the others are kept from an earlier speed.json")
    args = parser.parse_args(argv)
    from lungseg import report

    data_dir = args.data_dir.resolve()
    path = RESULTS / "speed.json"
    record = json.loads(path.read_text()) if path.is_file() and set(args.parts) != set(PARTS) else {}
    today = time.strftime("%Y-%m-%d")
    record.update({"device": report.describe_device(), "versions": report.library_versions(),
                   "command": f"python benchmarks/speed.py --data-dir {shlex.quote(str(args.data_dir))}"})
    record.setdefault("date", today)  # of the whole; a part measured alone carries its own
    for part in args.parts:
        record[part] = {**PARTS[part](data_dir), "date": today}
    if set(args.parts) == set(PARTS):
        record["date"] = today
    report.write_json(path, record)
    print(json.dumps(record, indent=1))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
