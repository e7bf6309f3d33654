"""The notebooks end to end through the runner (quick configuration), on the real slices and on the
synthetic default; failures that name the cell; the .py/.ipynb pairs in sync."""

import json
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest

from lungseg import runner

from conftest import REPO_ROOT

QUICK = dict(runner.QUICK)


def _outputs_text(notebook_path: Path) -> str:
    notebook = nbformat.read(notebook_path, as_version=4)
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{notebook_path.name}: {output.get('evalue')}"
            texts.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


@pytest.fixture(scope="module")
def real_run(real_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("real_run")
    runner.run_pipeline({**QUICK, "DATA_SOURCE": "folder", "DATA_DIR": str(real_data)}, str(output),
                        log=lambda *args, **kwargs: None)
    return output


def test_real_data_pipeline_reports_217_verified_pairs(real_run):
    assert json.loads((real_run / "data" / "dataset.json").read_text())["pairs"] == 217
    assert "verified pairs: 217" in _outputs_text(real_run / "notebooks" / "01_download.ipynb")
    manifest = pd.read_csv(real_run / "data" / "split_manifest.csv")
    assert manifest.split.value_counts().to_dict() == {"train": 151, "val": 33, "test": 33}
    settings = json.loads((real_run / "data" / "preprocess.json").read_text())
    assert settings["img_size"] == QUICK["IMG_SIZE"] and settings["synthetic"] is False


def test_real_data_pipeline_trains_and_evaluates_both_models(real_run):
    for name in ("unet", "resunet"):
        assert (real_run / "models" / f"{name}.keras").is_file()
        record = json.loads((real_run / "models" / f"{name}.json").read_text())
        assert record["epochs"] == QUICK["EPOCHS"] and record["img_size"] == QUICK["IMG_SIZE"]
        assert len(pd.read_csv(real_run / "models" / f"{name}_history.csv")) == QUICK["EPOCHS"]
    evaluation = json.loads((real_run / "evaluation" / "evaluation.json").read_text())
    assert evaluation["test_slices"] == 33 and evaluation["synthetic"] is False
    per_slice = pd.read_csv(real_run / "evaluation" / "per_slice.csv")
    native = per_slice[(per_slice.resolution == "native") & ~per_slice.postprocessed]
    assert len(native) == 2 * 33 and native.dice.between(0, 1).all()
    for figure in ("predicted_mask_visualization", "worst_slices_errors", "dice_per_slice", "training_curves",
                   "lung_area_scatter"):
        assert (real_run / "figures" / f"{figure}.png").stat().st_size > 10_000
    assert len(list((real_run / "predictions").rglob("*_mask.png"))) == 3
    for notebook in sorted((real_run / "notebooks").glob("*.ipynb")):
        _outputs_text(notebook)  # no error output anywhere


def test_synthetic_default_is_labelled_everywhere(tmp_path, monkeypatch):
    for variable in ("LUNGSEG_DATA_DIR", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle
    output = tmp_path / "out"
    runner.run_pipeline({**QUICK, "DATA_DIR": str(tmp_path / "no-data-here")}, str(output),
                        log=lambda *args, **kwargs: None)
    assert "SYNTHETIC" in _outputs_text(output / "notebooks" / "01_download.ipynb")
    for record in ("data/dataset.json", "data/preprocess.json", "models/unet.json", "models/resunet.json",
                   "evaluation/evaluation.json"):
        assert json.loads((output / record).read_text())["synthetic"] is True, record
    assert "SYNTHETIC" in json.loads((output / "evaluation" / "evaluation.json").read_text())["data"]
    names = pd.read_csv(output / "data" / "split_manifest.csv").name
    assert names.str.startswith("SYNTHETIC_").all() and len(names) == QUICK["SYNTHETIC_COUNT"]


def test_a_failing_notebook_stops_the_run_and_names_the_cell(tmp_path, real_data):
    output = tmp_path / "out"
    with pytest.raises(runner.NotebookFailed) as error:
        runner.run_pipeline({"DATA_DIR": str(real_data), "IMG_SIZE": 50}, str(output), only=["01", "02", "03"],
                            log=lambda *args, **kwargs: None)
    message = str(error.value)
    assert message.startswith("02_preprocess failed in cell") and "IMG_SIZE=50" in message
    assert "multiple of 16" in message
    assert (output / "notebooks" / "02_preprocess.ipynb").is_file()  # kept for inspection
    assert not (output / "notebooks" / "03_unet.ipynb").exists()  # never started


def test_runner_gives_each_notebook_only_its_parameters():
    download = jupytext.read(REPO_ROOT / "notebooks" / "01_download.py")
    train = jupytext.read(REPO_ROOT / "notebooks" / "03_unet.py")
    assert {"DATA_SOURCE", "DATA_DIR", "OUTPUT_DIR"} <= runner.declared_parameters(download)
    assert "EPOCHS" not in runner.declared_parameters(download)
    assert {"EPOCHS", "IMG_SIZE", "BATCH_SIZE", "LEARNING_RATE", "BASE_FILTERS", "SEED"} <= runner.declared_parameters(train)
    assert runner.parse_value("1e-3") == 0.001 and runner.parse_value("kaggle") == "kaggle"


@pytest.mark.parametrize("source", sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_notebook_pairs_are_in_sync(source):
    paired = source.with_suffix(".ipynb")
    assert paired.is_file(), f"{paired.name} is missing: run  jupytext --sync {source.relative_to(REPO_ROOT)}"
    script, notebook = jupytext.read(source), jupytext.read(paired)
    assert [(c.cell_type, c.source) for c in script.cells] == [(c.cell_type, c.source) for c in notebook.cells], (
        f"{paired.name} differs from {source.name}: run  jupytext --sync {source.relative_to(REPO_ROOT)}")
