"""Figures: slices with masks, augmented pairs, training curves, error overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

SYNTHETIC_LABEL = "SYNTHETIC DATA - not real CT"


def data_label(synthetic: bool) -> str:
    """A suffix for figure titles and file records, so that synthetic results are never mistaken
    for real ones."""
    return f" [{SYNTHETIC_LABEL}]" if synthetic else ""


def save_figure(figure, path: str | Path | None, synthetic: bool = False):
    """Stamp synthetic figures, save to ``path`` (PNG, 100 dpi) if given, and return the figure."""
    if synthetic:
        figure.text(0.5, 0.0, SYNTHETIC_LABEL, ha="center", va="top", color="red", fontsize=11)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
    return figure


def show_pairs(rows: list[list[np.ndarray]], column_titles: list[str], row_titles: list[str] | None = None,
               title: str = "", path=None, synthetic: bool = False, size: float = 2.6):
    """A grid of grey images; masks are shown black/white. ``rows``: lists of 2-D arrays."""
    figure, axes = plt.subplots(len(rows), len(rows[0]), figsize=(size * len(rows[0]), size * len(rows)),
                                squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axes[r, c].imshow(image, cmap="gray")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(column_titles[c], fontsize=10)
        if row_titles:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=8)
    figure.suptitle(title + data_label(synthetic), fontsize=11)
    figure.tight_layout()
    return save_figure(figure, path, synthetic)


def plot_history(histories: dict[str, pd.DataFrame], path=None, synthetic: bool = False):
    """Loss, Dice and IoU per epoch, training (dashed) and validation (solid), for one or more models."""
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for (name, history), colour in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        epochs = history["epoch"] + 1
        for axis, metric in zip(axes, ("loss", "dice_coef", "iou_coef")):
            axis.plot(epochs, history[metric], "--", color=colour, alpha=0.6, label=f"{name} train")
            axis.plot(epochs, history[f"val_{metric}"], "-", color=colour, label=f"{name} validation")
            axis.set_title(metric), axis.set_xlabel("epoch"), axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].legend(fontsize=8)
    figure.suptitle("Training curves" + data_label(synthetic))
    figure.tight_layout()
    return save_figure(figure, path, synthetic)


def error_overlay(image01: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with false positives in red and false negatives in blue."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    false_positive = prediction.astype(bool) & ~truth.astype(bool)
    false_negative = truth.astype(bool) & ~prediction.astype(bool)
    rgb[false_positive] = [1.0, 0.1, 0.1]
    rgb[false_negative] = [0.1, 0.4, 1.0]
    return rgb


def mask_overlay(image01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB picture of a windowed slice with the mask's outline-filled area tinted green."""
    rgb = np.repeat(image01[..., None], 3, axis=-1).astype(np.float32)
    rgb[mask.astype(bool)] = 0.55 * rgb[mask.astype(bool)] + 0.45 * np.array([0.1, 1.0, 0.2])
    return rgb
