"""The notebooks end to end through the runner (quick configuration), on the real slices and on the
synthetic default; each notebook alone in a fresh output folder; failures that name the cell; the
.py/.ipynb pairs in sync; lungseg_utils.py made from the #@save cells."""

import ast
import json
import os
import re
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest

from lungseg import build_utils, runner
from lungseg.errors import LungsegError

from conftest import REPO_ROOT, split_sizes

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
    lines = []
    runner.run_pipeline({**QUICK, "DATA_SOURCE": "folder", "DATA_DIR": str(real_data)}, str(output),
                        log=lambda *args, **kwargs: lines.append(" ".join(map(str, args))))
    (output / "console.txt").write_text("\n".join(lines))
    return output


def test_the_runner_shows_progress_while_a_notebook_trains(real_run):
    console = (real_run / "console.txt").read_text()
    for epoch in range(1, QUICK["EPOCHS"] + 1):
        assert f"    Epoch {epoch}/{QUICK['EPOCHS']}" in console
    assert "verified pairs: " in console and "[5/6] 05_evaluate" in console and "[6/6] 06_your_scan" in console


def test_real_data_pipeline_reports_every_verified_pair(real_run, real_names):
    assert json.loads((real_run / "data" / "dataset.json").read_text())["pairs"] == len(real_names)
    assert f"verified pairs: {len(real_names)}" in _outputs_text(real_run / "notebooks" / "01_download.ipynb")
    manifest = pd.read_csv(real_run / "data" / "split_manifest.csv")
    assert manifest.split.value_counts().to_dict() == split_sizes(len(real_names))
    settings = json.loads((real_run / "data" / "preprocess.json").read_text())
    assert settings["img_size"] == QUICK["IMG_SIZE"] and settings["synthetic"] is False


def test_real_data_pipeline_trains_and_evaluates_both_models(real_run, real_names):
    for name in ("unet", "resunet"):
        assert (real_run / "models" / f"{name}.keras").is_file()
        record = json.loads((real_run / "models" / f"{name}.json").read_text())
        assert record["epochs"] == QUICK["EPOCHS"] and record["img_size"] == QUICK["IMG_SIZE"]
        assert len(pd.read_csv(real_run / "models" / f"{name}_history.csv")) == QUICK["EPOCHS"]
    evaluation = json.loads((real_run / "evaluation" / "evaluation.json").read_text())
    tested = split_sizes(len(real_names))["test"]
    assert evaluation["test_slices"] == tested and evaluation["synthetic"] is False
    per_slice = pd.read_csv(real_run / "evaluation" / "per_slice.csv")
    native = per_slice[(per_slice.resolution == "native") & ~per_slice.postprocessed]
    assert len(native) == 2 * tested and native.dice.between(0, 1).all()
    for figure in ("03_probability_map", "predicted_mask_visualization", "worst_slices_errors", "dice_per_slice",
                   "training_curves", "lung_area_scatter", "06_scan", "06_tumours"):
        assert (real_run / "figures" / f"{figure}.png").stat().st_size > 10_000
    measured = pd.read_csv(next((real_run / "predictions").glob("*/measurements.csv")))  # 06's example scan
    assert measured.kind.tolist() == ["volume"] and measured.slices.tolist() == [79]
    assert len(list((real_run / "predictions").rglob("*_mask.nii.gz"))) == 1
    for notebook in sorted((real_run / "notebooks").glob("*.ipynb")):
        _outputs_text(notebook)  # no error output anywhere


def test_synthetic_default_is_labelled_everywhere(tmp_path, no_credentials):
    if (REPO_ROOT / "data" / "finding-lungs-in-ct-data").exists():
        pytest.skip("data/finding-lungs-in-ct-data exists in this checkout: 01 would use it")
    output = tmp_path / "out"
    runner.run_pipeline(dict(QUICK), str(output),  # no DATA_DIR, no $LUNGSEG_DATA_DIR, no Kaggle credentials
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


# --------------------------------------------------------------------------- each notebook alone
@pytest.mark.parametrize("number", ["02", "03", "04", "05"])
def test_each_notebook_runs_alone_in_a_fresh_output_folder(number, real_data, tmp_path, monkeypatch, capsys):
    """As in Colab, where each notebook gets a fresh machine: what it needs and lacks, it makes (02: the
    data as 01 gets it; 03/04: 01 and 02; 05: 01 and 02, and the committed models). The command is that of
    `bash scripts/run.sh --quick --only NN` with an empty output folder."""
    monkeypatch.setenv("LUNGSEG_DATA_DIR", str(real_data))  # where 01 finds the data with its defaults
    output = tmp_path / "fresh"
    assert runner.main(["--quick", "--only", number, "--output-dir", str(output)]) == 0
    text = _outputs_text(output / "notebooks" / f"{sorted(runner.NOTEBOOKS.glob(number + '_*.py'))[0].stem}.ipynb")
    needed = {"02": "01_download", "03": "01_download and 02_preprocess", "04": "01_download and 02_preprocess",
              "05": "01_download and 02_preprocess"}[number]
    assert f"running {needed} first" in text
    if number in ("03", "04"):
        name = "unet" if number == "03" else "resunet"
        record = json.loads((output / "models" / f"{name}.json").read_text())
        assert record["img_size"] == QUICK["IMG_SIZE"] and record["synthetic"] is False
    if number == "05":
        assert "Models: the committed ones" in text
        evaluation = json.loads((output / "evaluation" / "evaluation.json").read_text())
        pairs = len(list(real_data.glob("2d_images/*.tif")))  # 217 shared; on the full set, slices the models saw
        tested = split_sizes(pairs)["test"]  # are left out of the test
        assert 0 < evaluation["test_slices"] <= tested and evaluation["models_dir"] == str(REPO_ROOT / "models")
        assert evaluation["test_slices"] == tested or pairs != 217
    assert "without encryption" not in "".join(capsys.readouterr())  # the kernels talk over IPC, not TCP


# --------------------------------------------------------------------------- the notebooks' code
NOTEBOOK_SOURCES = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def test_lungseg_utils_is_made_from_the_marked_cells():
    """One source: edit the #@save cell in the notebook, then run  python -m lungseg.build_utils."""
    assert (REPO_ROOT / "lungseg_utils.py").read_text() == build_utils.build(), (
        "lungseg_utils.py differs from the notebooks' #@save cells: run  python -m lungseg.build_utils")
    names = {node.name for node in ast.parse(build_utils.build()).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert {"read_slice", "bce_dice_loss", "dice_coef", "iou_coef", "augment_pair", "predict_masks",
            "overlap_scores", "show_pairs"} <= names


def test_lungseg_utils_stays_small_and_the_product_code_lives_in_lungseg():
    """lungseg_utils holds what several notebooks share; the own-scan tool and the bookkeeping live in
    lungseg/ (the layers: test_the_layers_run_one_way)."""
    source = build_utils.build()
    # 550 lines since 03's pipeline draws 02's gas pockets, lesions and coarser grids (issue 38)
    assert len(source.splitlines()) <= 600, "lungseg_utils.py is meant to be small: move what one notebook uses out"
    notebooks = "\n".join(path.read_text() for path in NOTEBOOK_SOURCES)
    for name in ("read_dicom_series", "read_nifti", "find_scans", "split_lungs", "keep_lungs", "predict_scans",
                 "finish_training", "describe_device", "write_json", "kfold_split"):
        assert f"def {name}(" not in notebooks, f"{name} is product code: it belongs in lungseg/"


def test_the_lessons_are_code_in_cells():
    sources = {path.stem: path.read_text() for path in NOTEBOOK_SOURCES}
    assert not any("getsource" in text for text in sources.values())
    for stem, needed in {"03_unet": ["def conv_block", "def build_unet", "def bce_dice_loss", "def make_dataset",
                                     "model.compile(", "model.fit(", "ModelCheckpoint(", "CSVLogger("],
                         "04_resunet": ["def residual_block", "def build_resunet", "Conv2DTranspose", "Concatenate",
                                        "model.compile(", "model.fit(", "ModelCheckpoint("],
                         "02_preprocess": ["def window_hu", "def resize_mask", "train_test_split", "RandomFlip",
                                           "RandomRotation"]}.items():
        for text in needed:
            assert text in sources[stem], f"{stem} lacks {text}"


def test_every_notebook_has_the_same_short_setup_cell_and_one_repository_url():
    setups = [jupytext.read(path).cells[1].source for path in NOTEBOOK_SOURCES]
    assert len(set(setups)) == 1 and len(setups[0].splitlines()) <= 8
    assert 'if "google.colab" in sys.modules' in setups[0]
    repository = re.search(r"git clone -q https://github.com/(\S+) ", setups[0]).group(1)
    for path in NOTEBOOK_SOURCES:
        badges = re.findall(r"colab.research.google.com/github/([^/]+/[^/]+)/blob/main/notebooks/(\S+?)\)", path.read_text())
        assert badges == [(repository, path.stem + ".ipynb")], path.name
    assert repository in (REPO_ROOT / "README.md").read_text()


def test_no_lint_or_nbval_markers_in_the_readers_code():
    for path in NOTEBOOK_SOURCES:
        for cell in jupytext.read(path).cells:
            assert "noqa" not in cell.source and "NBVAL" not in cell.source, path.name
    tagged = [cell for path in NOTEBOOK_SOURCES for cell in jupytext.read(path).cells
              if "nbval-check-output" in cell.metadata.get("tags", [])]
    assert len(tagged) >= 5  # the cells whose outputs nbval compares say so in their tags


# The layers, each importing only those below it (README, "Layout"): reading files, refusing bad input and
# bookkeeping at the bottom; the lesson library (lungseg_utils.py, made from the notebooks) on them; the dataset,
# the own-scan tool and the runner on top.
BOTTOM = {"errors", "files", "dicom", "checks", "report", "portable", "outputs", "synthetic", "training"}
TOP = {"data", "download", "examples", "scans", "reading", "segmenting", "anatomy", "measuring", "writing", "predict",
       "runner", "notebook", "nbval_data", "build_utils"}


def _lungseg_imports(source: str) -> set[str]:
    """The lungseg modules and lungseg_utils that ``source`` imports anywhere (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "lungseg":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("lungseg.", "lungseg_utils")):
            names.add(node.module.removeprefix("lungseg."))
        elif isinstance(node, ast.Import):
            names |= {alias.name.removeprefix("lungseg.") for alias in node.names if alias.name.startswith("lungseg")}
    return names


def test_the_layers_run_one_way():
    modules = {path.stem for path in (REPO_ROOT / "lungseg").glob("*.py")} - {"__init__"}
    assert modules == BOTTOM | TOP, "a new module in lungseg/: put it in a layer"
    for name in BOTTOM:
        above = _lungseg_imports((REPO_ROOT / "lungseg" / f"{name}.py").read_text()) & (TOP | {"lungseg_utils"})
        assert not above, f"lungseg/{name}.py is at the bottom but imports {sorted(above)}"
    library = _lungseg_imports(build_utils.build())
    assert library and library <= BOTTOM, f"lungseg_utils imports {sorted(library - BOTTOM)} from the top layer"
    assert "lungseg_utils" in _lungseg_imports((REPO_ROOT / "lungseg" / "reading.py").read_text())


def _imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_import_circles_among_the_benchmark_scripts():
    imports = {path.stem: _imported_modules(path.read_text()) for path in (REPO_ROOT / "benchmarks").glob("*.py")}
    assert "render_results" in imports["benchmark"] and "benchmark" not in imports["render_results"]


@pytest.mark.parametrize("arguments, message", [
    (["-p", "DATA_SOUCE", "synthetic"], "-p DATA_SOUCE: no selected notebook has this parameter. Did you mean DATA_SOURCE?"),
    (["-p", "EPOCH", "5"], "Did you mean EPOCHS?"),
    (["--only", "01", "-p", "EPOCHS", "5"], "-p EPOCHS: no selected notebook has this parameter."),
    (["-p", "SPLIT", "0.7,0.15,0.15"], "-p SPLIT (0.7, 0.15, 0.15): expected list"),
    (["-p", "LEARNING_RATE", "abc"], "-p LEARNING_RATE 'abc': expected float"),
    (["-p", "IMG_SIZE", "64.0"], "-p IMG_SIZE 64.0: expected int"),
    (["-p", "EPOCHS", "1.5"], "-p EPOCHS 1.5: expected int"),
])
def test_misspelt_or_mistyped_parameters_stop_the_runner_before_anything_runs(arguments, message, tmp_path):
    with pytest.raises(SystemExit, match=re.escape(message)):
        runner.main(arguments + ["--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert runner.main(["--only", "3", "--prepare-only", "-p", "EPOCHS", "5", "--output-dir", str(tmp_path / "ok")]) == 0


def test_a_notebook_alone_without_data_says_it_uses_synthetic_phantoms(tmp_path, no_credentials, capsys):
    if (REPO_ROOT / "data" / "finding-lungs-in-ct-data").exists():
        pytest.skip("data/finding-lungs-in-ct-data exists in this checkout: 01 would use it")
    runner.ensure_inputs("02", str(tmp_path / "out"))
    said = capsys.readouterr().out
    assert "running 01_download first" in said and "SYNTHETIC phantoms, not real CT" in said
    assert json.loads((tmp_path / "out" / "data" / "dataset.json").read_text())["synthetic"] is True


def test_a_notebook_given_another_data_dir_runs_01_again_with_it(tmp_path, monkeypatch, capsys):
    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"root": str((tmp_path / "old").resolve()), "synthetic": False}))
    (data / "pairs.csv").write_text("name\n")
    calls = []
    monkeypatch.setattr(runner, "run_pipeline", lambda parameters, output_dir, only=None, log=None:
                        calls.append((parameters, only)))
    monkeypatch.delenv("LUNGSEG_DATA_DIR", raising=False)
    runner.ensure_inputs("02", str(tmp_path / "out"), data_dir=str(tmp_path / "old"))  # 01 read this folder
    assert calls == []
    runner.ensure_inputs("02", str(tmp_path / "out"), data_dir=str(tmp_path / "new"))
    assert calls == [({"DATA_DIR": str((tmp_path / "new").resolve())}, ["01"])]
    said = capsys.readouterr().out
    assert "running 01_download first" in said and "DATA_DIR=new" in said


@pytest.mark.parametrize("notebook", sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_published_notebooks_come_from_one_clean_run(notebook):
    """What a reader sees on GitHub or in Colab: cells run once each, in order, with no object reprs,
    no paths of the machine that ran them (absolute, or leaving the repository), no errors and no kernel
    warnings."""
    import json
    import re

    cells = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
    assert [cell["execution_count"] for cell in cells] == list(range(1, len(cells) + 1))
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output["output_type"] == "error"]
    text = "\n".join("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
                     + "".join(output.get("data", {}).get("text/html", "")) for output in outputs)
    for unwanted in (r"<[\w.]+ (object )?at 0x[0-9a-f]+>", r"(?<![\w.])/(work|tmp|root|home|content|Users)/",
                     r"(?<![\w.])\.\./", r"Debugger warning", r"[A-Z]:\\\\"):
        assert not re.search(unwanted, text), f"{notebook.name}: {re.search(unwanted, text).group(0)!r} in its outputs"


def test_benchmark_only_settings_are_not_in_the_lessons_parameters_but_reach_the_kernels(monkeypatch):
    from lungseg.data import benchmark_settings

    assert not {"SPLIT_MANIFEST", "TRAIN_ON_FLAGGED"} & runner.declared_parameters(
        jupytext.read(REPO_ROOT / "notebooks" / "02_preprocess.py"))
    runner.check_parameters({"TRAIN_ON_FLAGGED": False, "SPLIT_MANIFEST": "fold.csv"})  # the runner takes them
    with pytest.raises(SystemExit, match="-p TRAIN_ON_FLAGGED: no selected notebook has this parameter"):
        runner.check_parameters({"TRAIN_ON_FLAGGED": False}, only=["03"])
    seen = {}
    monkeypatch.setattr(runner, "_run", lambda parameters, *args: seen.update(
        parameters=parameters, settings=benchmark_settings()) or [])
    monkeypatch.delenv("LUNGSEG_TRAIN_ON_FLAGGED", raising=False)
    runner.run_pipeline({"TRAIN_ON_FLAGGED": False, "EPOCHS": 1}, only=["02"])
    assert seen == {"parameters": {"EPOCHS": 1}, "settings": ("", False)}
    assert "LUNGSEG_TRAIN_ON_FLAGGED" not in os.environ  # restored after the run
    assert benchmark_settings({}) == ("", True)
    with pytest.raises(LungsegError, match="LUNGSEG_TRAIN_ON_FLAGGED='no': use True or False"):
        benchmark_settings({"LUNGSEG_TRAIN_ON_FLAGGED": "no"})


# --------------------------------------------------------------------------- the reader's first screen
def _before_the_first_lesson(path: Path) -> list:
    """The code cells above a notebook's first lesson heading (the first "## " heading after Parameters),
    with the imports cell and the Parameters cell left out."""
    cells, seen_parameters = [], False
    for cell in jupytext.read(path).cells:
        heading = re.match(r"## (.+)", cell.source) if cell.cell_type == "markdown" else None
        if heading and heading.group(1).startswith("Parameters"):
            seen_parameters = True
        elif heading and seen_parameters:
            return cells
        elif cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            body = ast.parse(cell.source).body
            if not (body and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)):
                cells.append(cell)
    raise AssertionError(f"{path.name} has no lesson heading after its Parameters")


@pytest.mark.parametrize("source", NOTEBOOK_SOURCES, ids=lambda p: p.stem)
def test_the_set_up_before_the_first_lesson_is_short(source):
    """At most 10 lines of set-up code (imports and Parameters aside) and at most 4 lines of output
    before the first lesson, in the published notebook too: no configuration table at the top."""
    cells = _before_the_first_lesson(source)
    lines = [line for cell in cells for line in cell.source.splitlines() if line.strip()]
    assert len(lines) <= 10, f"{source.name}: {len(lines)} lines of set-up code before its first lesson"
    published = {cell.source: cell for cell in nbformat.read(source.with_suffix(".ipynb"), as_version=4).cells}
    shown = []
    for cell in cells:
        for output in published[cell.source].get("outputs", []):
            assert "text/html" not in output.get("data", {}), f"{source.name}: a table before its first lesson"
            shown += "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")).splitlines()
    assert len([line for line in shown if line.strip()]) <= 4, f"{source.name}: {shown}"


@pytest.mark.parametrize("source", NOTEBOOK_SOURCES, ids=lambda p: p.stem)
def test_exercises_are_open_questions_and_the_run_is_shown_at_the_end(source):
    """d2l's "Try this": questions, no answers and no word of the tests that hold their solutions; the
    configuration of the run (parameters, device, versions) printed once, after the lesson."""
    text = source.read_text()
    exercises = text[text.index("# ## Try this"):text.index("# **Next →**")]
    assert "test" not in exercises.lower() and "has the answer" not in exercises, f"{source.name}: {exercises}"
    numbered = re.findall(r"^# \d\. (.*?)(?=^# \d\. |\Z)", exercises, flags=re.M | re.S)
    assert numbered and all("?" in exercise or "Segment a scan" in exercise for exercise in numbered), source.name
    calls = [cell for cell in jupytext.read(source).cells if "show_config(" in cell.source]
    assert len(calls) == 1 and text.index("show_config(globals()") > text.index("# ## This run"), source.name


def test_the_numbers_the_lessons_quote_are_those_of_the_committed_results():
    """Each decision a lesson states with a number: the number is in the notebook, and the saved result it
    comes from says the same (the cross-validations in benchmarks/results/previous-defaults, the seeds)."""
    results = REPO_ROOT / "benchmarks" / "results"
    texts = {path.stem: " ".join(path.read_text().replace("# ", " ").split()) for path in NOTEBOOK_SOURCES}

    def differences(label):
        versus = json.loads((results / "previous-defaults" / f"cv-{label}.json").read_text())["versus_default"]
        return [abs(versus[model]["mean_difference"]) for model in ("unet", "resunet")]

    for stem, quoted, label, bound in [("03_unet", "within 0.0003", "bf16", 0.0003),
                                       ("03_unet", "within 0.0002", "dice3", 0.0002),
                                       ("02_preprocess", "by less than 0.0005", "clean-training", 0.0005)]:
        assert quoted in texts[stem], f"{stem} no longer says {quoted!r}: update this test"
        assert all(round(d, 4) <= bound for d in differences(label)), (stem, quoted, differences(label))
    assert "0.001 to 0.002 higher" in texts["03_unet"]
    assert all(0.001 <= round(d, 3) <= 0.002 for d in differences("lr1e-3"))
    without, grid = (json.loads((results / f"seeds{suffix}.json").read_text())["summary"]["cip_dice"]
                     for suffix in ("", "-resolution"))
    assert f"spans {without['range']:.3f} without the coarser grid and {grid['range']:.3f} with it" in texts["02_preprocess"]
    assert without["seeds"] >= 3 and grid["seeds"] >= 3
    bases = json.loads((results / "external.json").read_text())["volumes"]["totalsegmentator-example-ct"]["models"]
    assert f"Dice {bases['resunet']['dice']:.3f} against {bases['unet']['dice']:.3f}" in texts["05_evaluate"]
    design2 = json.loads((results / "seeds-anatomic.json").read_text())["summary"]
    assert f"up to {design2['example_ct_false_lung_ml']['max']:,.0f} mL" in texts["02_preprocess"]
    assert design2["pathology_kaggle_consolidation_kept"]["min"] > 0.5  # "kept most of a consolidation"
