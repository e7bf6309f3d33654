"""What happens to the files after ``model.fit`` in 03 and 04: the best epoch's model becomes
``<name>.keras`` only when training has ended, and the record of how it was trained is written
beside it. File bookkeeping that no lesson teaches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.errors import LungsegError
from lungseg.report import describe_device, library_versions, write_json


def finish_training(model, name: str, models_dir, settings: dict) -> dict:
    """After ``fit``: move ``<name>.in-progress.keras`` and its history to ``<name>.keras`` and
    ``<name>_history.csv``, write ``<name>.json`` (settings, best epoch, timings, device, versions),
    and return that record. A run whose loss became NaN keeps the previous model and says so."""
    models_dir = Path(models_dir)
    best_model, history_csv = models_dir / f"{name}.in-progress.keras", models_dir / f"{name}.in-progress_history.csv"
    history = pd.read_csv(history_csv)
    if not np.isfinite(history.loss).all() or not best_model.is_file():
        for leftover in (best_model, history_csv):
            leftover.unlink(missing_ok=True)
        raise LungsegError(f"Training {name} stopped at epoch {len(history)}: the loss became NaN. Nothing was "
                           f"saved; an earlier {name}.keras is kept. Lower LEARNING_RATE, or look for NaN in the data.")
    best = int(history.val_iou_coef.idxmax())
    record = {"model": name, **settings, "parameters": int(model.count_params()), "best_epoch": best + 1,
              "best_val_iou": float(history.val_iou_coef[best]), "best_val_dice": float(history.val_dice_coef[best]),
              "seconds_per_epoch": float(history.seconds[1:].mean() if len(history) > 1 else history.seconds[0]),
              "first_epoch_seconds": float(history.seconds[0]), "training_seconds": float(history.seconds.sum()),
              "device": describe_device(), "versions": library_versions(), "model_file": str(models_dir / f"{name}.keras")}
    best_model.replace(models_dir / f"{name}.keras")
    history_csv.replace(models_dir / f"{name}_history.csv")
    write_json(models_dir / f"{name}.json", record)
    return record
