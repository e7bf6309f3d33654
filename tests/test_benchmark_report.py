"""RESULTS.md and the README's results table, rendered by benchmarks/render_results.py from benchmarks/results/*.json."""

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import render_results  # noqa: E402

DEFAULTS = {"img_size": 256, "hu_min": -1000, "hu_max": 400, "epochs": 25, "batch_size": 8, "learning_rate": 0.003,
            "base_filters": 8, "augmentation": {"rotation_degrees": 0.0, "flip_left_right": False, "flip_up_down": False},
            "split": [0.7, 0.15, 0.15], "split_seed": 0}


def test_augmentation_is_described_in_words():
    assert render_results.describe_augmentation(DEFAULTS["augmentation"]) == "off"
    assert render_results.describe_augmentation(None) == "off"
    assert (render_results.describe_augmentation({"rotation_degrees": 10.0, "flip_left_right": True, "flip_up_down": False})
            == "left-right flips + rotations up to ±10°")
    assert (render_results.describe_augmentation({**DEFAULTS["augmentation"], "hu_shift": 40.0, "noise_hu": 15.0})
            == "HU shift ±40 + noise 15 HU")
    # a run recorded before the intensity options existed had them off
    newer = {**DEFAULTS, "augmentation": {**DEFAULTS["augmentation"], "hu_shift": 0.0, "hu_contrast": 0.0, "noise_hu": 0.0}}
    assert render_results.setting_differences(newer, DEFAULTS) == "–"
    assert render_results.setting_differences({**newer, "augmentation": {"hu_contrast": 0.1}}, DEFAULTS) == (
        "augmentation contrast ±0.1")


def test_a_row_is_described_and_repeated_by_its_recorded_settings():
    settings = {**DEFAULTS, "learning_rate": 0.001, "img_size": 384,
                "augmentation": {"rotation_degrees": 10.0, "flip_left_right": False, "flip_up_down": False}}
    benchmark = {"label": "old", "runs": [{"seed": 0, "settings": settings}, {"seed": 1, "settings": settings}]}
    assert (render_results.setting_differences(settings, DEFAULTS)
            == "img_size 384; learning_rate 0.001; augmentation rotations up to ±10°")
    assert render_results.setting_differences(DEFAULTS, DEFAULTS) == "–"
    assert render_results.repeat_command(benchmark, DEFAULTS) == (
        "python benchmarks/benchmark.py --data-dir DATA --seeds 0 1 --label old "
        "-p IMG_SIZE 384 -p LEARNING_RATE 0.001 -p ROTATION_DEGREES 10.0")


def test_mixed_precision_counts_as_off_where_a_run_did_not_record_it():
    older = dict(DEFAULTS)  # recorded before MIXED_PRECISION existed
    newer = {**DEFAULTS, "mixed_precision": False}
    assert render_results.setting_differences(newer, older) == "–"
    assert render_results.setting_differences(older, newer) == "–"
    assert render_results.setting_differences({**newer, "mixed_precision": True, "epochs": 15}, older) == (
        "epochs 15; mixed_precision True")
    assert render_results.setting_differences({**older, "mixed_precision": None}, newer) == "–"  # crossval's .get
    bf16 = {"label": "bf16", "runs": [{"seed": 0, "settings": {**DEFAULTS, "mixed_precision": True}}]}
    assert render_results.repeat_command(bf16, older).endswith("--label bf16 -p MIXED_PRECISION True")
    assert render_results.repeat_command({**bf16, "runs": [{"seed": 0, "settings": newer}]}, older).endswith("bf16")


def test_commands_name_the_data_folder_portably():
    command = "python benchmarks/benchmark.py --data-dir /work/shared/data/finding-lungs-in-ct-data --seeds 0"
    assert render_results._portable(command) == (
        "python benchmarks/benchmark.py --data-dir DATA --seeds 0")
    assert render_results._portable("python x.py --data-dir ../shared/data/finding-lungs-in-ct-data") == (
        "python x.py --data-dir DATA")


def test_results_page_and_readme_table_are_the_rendering_of_the_committed_results():
    """RESULTS.md and the README's table say what benchmarks/results/*.json say (re-render after a benchmark)."""
    assert (REPO_ROOT / "RESULTS.md").read_text() == render_results.results_page()
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index(render_results.START) + len(render_results.START) + 1
    table = readme[start:readme.index(render_results.END)].rstrip("\n")
    assert table == render_results.summary_table()
    cv = json.loads((REPO_ROOT / "benchmarks" / "results" / "cv.json").read_text())
    assert f"| Residual U-Net | {cv['variants']['resunet']['dice_mean']:.4f} |" in table


def test_the_speed_section_names_every_stage_and_the_rates():
    speed = {"command": "python benchmarks/speed.py --data-dir /x/shared/data/finding-lungs-in-ct-data", "device": "CPU",
             "date": "2026-11-23",
             "pipeline": {"seconds": 400.4, "notebooks_s": {"01_download": 8, "03_unet": 200}, "command": "python -m lungseg.runner",
                          "training": {"unet": {"training_seconds": 190.0, "seconds_per_epoch": 7.4, "first_epoch_seconds": 12.0}}},
             "training_steps": {"batch_size": 8, "img_size": 256, "ms_per_step": {"unet": {"float32": 400.0, "XLA": 500.0}}},
             "inference": {"slices": 217, "size": [512, 512],
                           "stages_ms_per_slice": {"unet": {"read file": 0.4, "clean_mask": 3.5}},
                           "slices_per_s": {"unet": {"predict_masks with post-processing (batch 8)": 45.2}}}}
    text = "\n".join(render_results.speed_section(speed))
    assert "`python benchmarks/speed.py --data-dir DATA`" in text
    assert "400 s. By notebook: 01_download 8 s, 03_unet 200 s" in text and "U-Net 190 s (7.4 s/epoch, the first 12.0 s)" in text
    assert "U-Net float32 400, XLA 500" in text
    assert "| clean_mask | 3.50 |" in text and "| **slices/s**, predict_masks with post-processing (batch 8) | **45** |" in text


def test_a_cross_validation_finished_in_parts_records_the_command_for_all_folds():
    import crossval

    argv = ["--data-dir", "d", "--label", "x", "-p", "EPOCHS", "40", "--folds", "2", "3", "4", "-p", "SEED", "1"]
    assert crossval.whole_run(argv) == ["--data-dir", "d", "--label", "x", "-p", "EPOCHS", "40", "-p", "SEED", "1"]
    assert crossval.whole_run(["--folds=3", "--label", "x"]) == ["--label", "x"]
    assert crossval.whole_run(["--label", "x", "--folds", "0"]) == ["--label", "x"]
