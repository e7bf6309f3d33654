"""Memory and time of ``scripts/predict.sh`` on a large scan: a 600-slice 512x512 NIfTI made of real slices.

    .venv/bin/python benchmarks/large_scan.py --data-dir ../shared/data/finding-lungs-in-ct-data

The scan repeats six real Kaggle slices (calibrated to standard HU) 100 times, 0.5 mm apart: no
anatomy, only the size of a thin-slice chest CT (300 mm: a lung's length, which predict.sh checks). predict.sh runs on it under ``/usr/bin/time -v``,
which reports the peak memory (maximum resident set size) of the whole command.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "finding-lungs-in-ct-data"))
    parser.add_argument("--slices", type=int, default=600)
    args = parser.parse_args(argv)
    import nibabel as nib

    import lungseg_utils as lu
    from lungseg import report

    record = json.loads((REPO_ROOT / "models" / "resunet.json").read_text())
    files = sorted((Path(args.data_dir) / "2d_images").glob("*.tif"))[:6]
    slices = [np.round(lu.to_standard_hu(lu.read_slice(f), record["hu_calibration"])).astype(np.int16) for f in files]
    volume = np.stack([slices[k % len(slices)] for k in range(args.slices)], axis=-1).transpose(1, 0, 2)
    with tempfile.TemporaryDirectory() as work:
        scan = Path(work) / "large.nii.gz"
        nib.save(nib.Nifti1Image(volume, np.diag([-0.7, -0.7, 0.5, 1.0])), scan)
        done = subprocess.run(["/usr/bin/time", "-v", "bash", str(REPO_ROOT / "scripts" / "predict.sh"), str(scan),
                               str(Path(work) / "out"), "--no-progress"], capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-2000:])
        return done.returncode
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", done.stderr).group(1)
    print(f"{args.slices} slices of 512x512: peak memory {peak_kb / 1e6:.1f} GB, wall time {wall} "
          f"({report.describe_device()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
