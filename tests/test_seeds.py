"""The seeds harness (benchmarks/seeds.py) and its table: the arithmetic, on hand-made scores."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import render_results  # noqa: E402
import seeds  # noqa: E402


def _lesions(kept: dict, dice: dict) -> dict:
    return {kind: {"kept_share": kept.get(kind), "dice": dice[kind]} for kind in dice}


def test_flatten_takes_the_least_kept_lesion_and_the_lowest_dice():
    external = {"cip-copdgene-64": {"dice": 0.97, "lung_ml": 4500.0, "laa950_percent": 18.5,
                                    "reference_laa950_percent": 19.7},
                "totalsegmentator-example-ct": {"dice": 0.85, "false_lung_ml": 3.0},
                "totalsegmentator-example-ct-dicom": {"lung_ml": 5.5, "refused": "the lung found has a mean of 19 HU"},
                "lidc": 48000.0}
    cip = _lesions({"mass": 0.2, "nodules": 0.6}, {"none": 0.97, "mass": 0.95, "nodules": 0.93})
    kaggle = _lesions({"mass": None, "nodules": 0.4}, {"none": 0.98, "mass": 0.96, "nodules": 0.97})
    flat = seeds.flatten(external, cip, kaggle, {"dice_mean": 0.988, "dice_min": 0.96})
    assert flat["cip_laa950_points"] == pytest.approx(1.2)
    assert flat["pathology_cip_kept_min"] == 0.2 and flat["pathology_cip_dice_min"] == 0.93
    assert flat["pathology_kaggle_kept_min"] == 0.4  # a lesion with no pixels (None) is left out, not taken as 0
    assert flat["pathology_kaggle_dice_min"] == 0.96 and flat["pathology_kaggle_mass_kept"] is None
    assert flat["upper_abdomen_lung_ml"] == 5.5 and flat["teaching_test_dice"] == 0.988
    assert flat["external_refused"] == 1  # a scan a user gets "not segmented" for is counted, and still scored


def test_summarise_gives_each_seed_the_mean_and_the_range():
    summary = seeds.summarise({0: {"cip_dice": 0.97, "kept": None}, 1: {"cip_dice": 0.88, "kept": 0.5},
                               2: {"cip_dice": 0.94, "kept": 0.3}})
    dice = summary["cip_dice"]
    assert dice["per_seed"] == {0: 0.97, 1: 0.88, 2: 0.94} and dice["seeds"] == 3
    assert dice["mean"] == pytest.approx(0.93) and dice["range"] == pytest.approx(0.09)
    assert (dice["min"], dice["max"]) == (0.88, 0.97)
    kept = summary["kept"]  # a seed without the score is not counted
    assert kept["seeds"] == 2 and kept["mean"] == pytest.approx(0.4) and kept["range"] == pytest.approx(0.2)
    assert seeds.summarise({0: {"x": None}})["x"]["mean"] is None


def test_the_results_table_shows_mean_and_range_per_design():
    run = {"label": "defaults", "seeds": [0, 1, 2], "command": "python benchmarks/seeds.py --seeds 0 1 2",
           "device": "CPU", "date": "2026-12-07",
           "summary": seeds.summarise({0: {"cip_dice": 0.97}, 1: {"cip_dice": 0.88}, 2: {"cip_dice": 0.94}})}
    lines = render_results.seeds_section([run])
    row = next(line for line in lines if line.startswith("| defaults |"))
    assert "| 0, 1, 2 |" in row and "0.930 (0.090)" in row
    assert row.count("n/a") == len(render_results.SEED_SCORES) - 2  # and 'refused' 0: an older harness stopped at one


def test_the_mean_kept_share_is_taken_per_seed_over_the_lesion_types():
    summary = seeds.summarise({0: {"pathology_cip_mass_kept": 0.2, "pathology_cip_nodules_kept": 0.6},
                               1: {"pathology_cip_mass_kept": 0.0, "pathology_cip_nodules_kept": None}})
    kept = render_results._kept_mean(summary, "cip")
    assert kept["mean"] == pytest.approx((0.4 + 0.0) / 2) and kept["range"] == pytest.approx(0.4)
    assert render_results._kept_mean(summary, "kaggle") == {}
