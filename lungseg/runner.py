"""Run the notebooks in order with papermill: ``python -m lungseg.runner [options]``.

Each notebook is read from its py:percent source (the source of truth), given the parameters
it declares, executed with the kernel's working directory in ``notebooks/``, and saved, executed,
to ``<OUTPUT_DIR>/notebooks/``. The run stops at the first failing notebook and names the cell.

Examples::

    python -m lungseg.runner                          # the whole pipeline, default settings
    python -m lungseg.runner --quick                  # a few minutes on 2 CPU cores
    python -m lungseg.runner -p EPOCHS 50 -p IMG_SIZE 384 --only 03 04 05
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
QUICK = {"IMG_SIZE": 64, "EPOCHS": 3, "BASE_FILTERS": 8, "BATCH_SIZE": 8, "SYNTHETIC_COUNT": 24}
PATH_PARAMETERS = ("DATA_DIR", "ARCHIVE", "MODELS_DIR", "SCAN", "EXAMPLE_DIR")  # given on the command line: resolved here
SYNTHETIC_NOTE = "[SYNTHETIC DATA - not real CT]"
# 02's settings that only the benchmark changes, out of the lesson's Parameters cell: the kernels get them as
# $LUNGSEG_<NAME> (lungseg.data.benchmark_settings reads them).
BENCHMARK_PARAMETERS = {"SPLIT_MANIFEST": "", "TRAIN_ON_FLAGGED": True}


class NotebookFailed(RuntimeError):
    pass


def notebook_sources(only=None) -> list[Path]:
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if only:
        sources = [s for s in sources if s.name[:2] in only]
        if not sources:
            raise SystemExit(f"--only {' '.join(only)} matches no notebook in {NOTEBOOKS}")
    return sources


def declared_defaults(notebook) -> dict:
    """Names assigned in the cell tagged 'parameters', with their default values (None where the
    default is not a plain literal, e.g. an expression)."""
    def literal(node):
        try:
            return ast.literal_eval(node)
        except ValueError:
            return None

    for cell in notebook.cells:
        if "parameters" in cell.metadata.get("tags", []):
            return {t.id: literal(node.value) for node in ast.parse(cell.source).body
                    if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    return {}


def declared_parameters(notebook) -> set[str]:
    return set(declared_defaults(notebook))


class _Progress:
    """Streams what a running notebook prints (e.g. one line per training epoch) to the console, indented."""

    def __init__(self, log):
        self.log, self.pending = log, ""

    def write(self, text: str) -> None:
        self.pending += text
        *lines, self.pending = self.pending.replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip():
                self.log("    " + line)

    def flush(self) -> None:
        pass


def check_parameters(given: dict, only=None) -> None:
    """Every ``-p NAME VALUE`` must be declared by a selected notebook, with a value of its default's type.
    Raises SystemExit with a message naming the parameter (and close matches for a misspelt name)."""
    import difflib

    import jupytext

    defaults = {}
    for source in notebook_sources(only):
        defaults.update(declared_defaults(jupytext.read(source)))
        if source.name.startswith("02"):
            defaults.update(BENCHMARK_PARAMETERS)
    for name, value in given.items():
        if name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise SystemExit(f"-p {name}: no selected notebook has this parameter.{hint} "
                             f"Parameters: {', '.join(sorted(defaults))}.")
        default = defaults[name]
        if default is None:  # not a literal: nothing to compare the type with
            continue
        if isinstance(default, bool) or isinstance(value, bool):
            fits = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, int):
            fits = isinstance(value, int)
        elif isinstance(default, float):
            fits = isinstance(value, (int, float))
        else:
            fits = isinstance(value, type(default))
        if not fits:
            raise SystemExit(f"-p {name} {value!r}: expected {type(default).__name__} like the default "
                             f"{default!r}, got {type(value).__name__}.")


def resolve_paths(parameters: dict, environ=None) -> dict:
    """Paths typed on the command line mean what they mean in the user's shell: ``~`` expanded and
    relative paths taken from the folder the command was run in (the kernels run in ``notebooks/``).
    The same for ``$LUNGSEG_DATA_DIR``, which the kernels inherit (changed in ``environ``)."""
    import os

    environ = os.environ if environ is None else environ
    if environ.get("LUNGSEG_DATA_DIR"):
        environ["LUNGSEG_DATA_DIR"] = str(Path(environ["LUNGSEG_DATA_DIR"]).expanduser().resolve())
    return {name: str(Path(value).expanduser().resolve()) if name in PATH_PARAMETERS and isinstance(value, str)
            and value else value for name, value in parameters.items()}


def _synthetic(output_dir: str) -> bool:
    record = REPO_ROOT / output_dir / "data" / "dataset.json"
    try:
        return bool(json.loads(record.read_text()).get("synthetic"))
    except (OSError, ValueError):
        return False


def run_pipeline(parameters: dict, output_dir: str = "outputs", only=None, prepare_only: bool = False,
                 log=print) -> list[Path]:
    """Execute (or, with ``prepare_only``, only parameterise) the notebooks; return the output paths.
    What the notebooks print is shown as they run, through ``log``."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the kernels inherit it: less TensorFlow chatter
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # no "Debugger warning: ... frozen modules" lines

    parameters = dict(parameters)
    benchmark = {f"LUNGSEG_{name}": str(parameters.pop(name)) for name in BENCHMARK_PARAMETERS if name in parameters}
    saved = {name: os.environ.get(name) for name in benchmark}
    os.environ.update(benchmark)  # the kernels inherit them; restored when the run ends
    try:
        return _run(parameters, output_dir, only, prepare_only, log)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(parameters: dict, output_dir: str, only, prepare_only: bool, log) -> list[Path]:
    import jupytext
    import papermill
    from traitlets.config import Config

    parameters = {**parameters, "OUTPUT_DIR": output_dir}
    executed_dir = REPO_ROOT / output_dir / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sources = notebook_sources(only)
    for number, source in enumerate(sources, start=1):
        # Executed runs start from the .py source of truth; prepared copies (for nbval) from the
        # committed .ipynb, whose outputs are what nbval compares against.
        notebook = jupytext.read(source.with_suffix(".ipynb") if prepare_only else source)
        given = {k: v for k, v in parameters.items() if k in declared_parameters(notebook)}
        given = {k: v for k, v in given.items() if not (k == "OUTPUT_DIR" and v == "outputs")}
        target = executed_dir / f"{source.stem}.ipynb"
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "defaults"
        log(f"[{number}/{len(sources)}] {source.stem} ({shown})", flush=True)
        started = time.perf_counter()
        # The kernel talks to us over local sockets (IPC) in a private folder, not unencrypted TCP.
        with tempfile.TemporaryDirectory(prefix="lungseg-kernel-") as sockets:
            config = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "kernel")}})
            try:
                papermill.execute_notebook(notebook, str(target), parameters=given, cwd=str(NOTEBOOKS),
                                           kernel_name="python3", progress_bar=False, prepare_only=prepare_only,
                                           stdout_file=_Progress(log), config=config,
                                           # no kernel log lines on the console (e.g. after Ctrl-C)
                                           extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
            except papermill.PapermillExecutionError as error:
                log("    FAILED")
                raise NotebookFailed(
                    f"{source.stem} failed in cell {error.cell_index} (execution count {error.exec_count}): "
                    f"{error.ename}: {error.evalue}\nThe executed notebook, with the error, is {target}"
                ) from None
        if not prepare_only:
            note = f" {SYNTHETIC_NOTE}" if _synthetic(output_dir) else ""
            log(f"    done in {time.perf_counter() - started:.0f} s -> {target}{note}")
        written.append(target)
    return written


def describe_runtime() -> str:
    """One line for a notebook's first cell: GPU or CPU; on a CPU, what training costs and how Colab gives a GPU."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        found = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True).stdout.split("\n")[0].strip()
        if found:
            return f"Runtime: GPU ({found})."
    return ("Runtime: CPU. At the defaults, training took 4-12 minutes for the U-Net (03) and 6-14 for the Residual "
            "U-Net (04) on 2 CPU cores; in Colab, Runtime > Change runtime type > a GPU makes it faster.")


def ensure_inputs(notebook: str, output_dir: str = "outputs", img_size: int | None = None, data_dir: str = "") -> None:
    """Run the notebooks that make ``notebook``'s inputs when they are missing, saying so in one line,
    so that every notebook also runs alone (in Colab, each on a fresh machine).

    02 needs 01's pairs; 03 and 04 need 02's arrays at ``img_size``; 05 needs 01's pairs and 02's split.
    ``data_dir`` (the notebook's ``DATA_DIR``) goes to 01 (empty: 01 decides, ``$LUNGSEG_DATA_DIR`` first); where
    01 last read another folder than the one given, it runs again."""
    data = REPO_ROOT / output_dir / "data"
    made_by_01 = ("dataset.json", "pairs.csv") + (("label_audit.csv",) if notebook == "05" else ())  # 05 reads the audit
    needed = [] if all((data / name).is_file() for name in made_by_01) else ["01"]
    folder = Path(data_dir).expanduser().resolve() if data_dir else None  # relative: from notebooks/, as 01 takes it
    if folder and not needed and Path(json.loads((data / "dataset.json").read_text())["root"]) != folder:
        needed = ["01"]  # 01 read another folder: its pairs are not this data's
    if notebook in ("03", "04"):
        settings = data / "preprocess.json"
        arrays_fit = (data / "arrays.npz").is_file() and settings.is_file() and \
            json.loads(settings.read_text()).get("img_size") == img_size
        if needed or not arrays_fit:
            needed.append("02")
    elif notebook == "05" and (needed or not (data / "split_manifest.csv").is_file()):
        needed.append("02")
    if needed:
        names = " and ".join(source.stem for source in notebook_sources(needed))
        print(f"{Path(output_dir) / 'data'} lacks the inputs of {notebook}: running {names} first, with their defaults"
              + (f" and IMG_SIZE={img_size}" if img_size and "02" in needed else "")
              + (f", DATA_DIR={folder.name}" if folder and "01" in needed else "") + ".", flush=True)
        given = {**({"IMG_SIZE": img_size} if img_size else {}), **({"DATA_DIR": str(folder)} if folder else {})}
        run_pipeline(given, output_dir, only=needed,
                     log=lambda *args, **kwargs: print(*args, **{**kwargs, "flush": True}))  # their progress, as it comes
        if json.loads((data / "dataset.json").read_text()).get("synthetic"):
            print("NOTE: 01 found no real data (no DATA_DIR, and neither kagglehub nor Kaggle credentials could "
                  "download it), so this run uses SYNTHETIC phantoms, not real CT. Set DATA_DIR in the Parameters "
                  "cell to a folder holding the data, or run where kaggle.com can be reached.", flush=True)


def publish(executed: list[Path]) -> None:
    """Copy executed notebooks over the committed ``notebooks/NN_*.ipynb`` (inputs are unchanged:
    they came from the .py), without papermill's timing metadata, so GitHub and Colab readers see
    the outputs of a real run."""
    import jupytext

    for path in executed:
        notebook = jupytext.read(path)
        if any("injected-parameters" in cell.metadata.get("tags", []) for cell in notebook.cells):
            raise ValueError(f"{path.name} ran with parameters other than its defaults; only a run with the "
                             "defaults is published (give the data folder through LUNGSEG_DATA_DIR).")
        notebook.metadata.pop("papermill", None)
        for cell in notebook.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
        jupytext.write(notebook, NOTEBOOKS / path.name, fmt="ipynb")


def parse_value(text: str):
    """Command-line values: Python literals where they parse (64, 1e-3, True, [0.7, 0.15, 0.15]), else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter, e.g. -p EPOCHS 10 (given only to notebooks that declare it)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the quick configuration {QUICK} (explicit -p values win)")
    parser.add_argument("--output-dir", default="outputs", help="relative to the repository (default: outputs)")
    parser.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks, e.g. --only 03 04")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write parameterised copies of the committed .ipynb (outputs kept), run nothing")
    parser.add_argument("--publish", action="store_true",
                        help="after a successful run, copy the executed notebooks (with outputs) into notebooks/")
    args = parser.parse_args(argv)
    given = resolve_paths({k: parse_value(v) for k, v in args.parameter})
    if args.only:
        args.only = [number.zfill(2) for number in args.only]  # --only 3 means 03
    check_parameters(given, args.only)
    parameters = {**(QUICK if args.quick else {}), **given}
    if args.publish and (parameters or args.output_dir != "outputs"):
        parser.error("--publish runs the defaults only (no --quick, -p or --output-dir); "
                     "give the data folder through LUNGSEG_DATA_DIR")
    started = time.perf_counter()
    signal.signal(signal.SIGINT, _quiet_interrupt)
    try:
        executed = run_pipeline(parameters, args.output_dir, args.only, args.prepare_only)
    except NotebookFailed as error:
        print(f"\n{error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{interrupted(args.output_dir)}", file=sys.stderr)
        return 130
    if args.publish and not args.prepare_only:
        publish(executed)
        print("published the executed notebooks into", NOTEBOOKS)
    note = f" {SYNTHETIC_NOTE}: the data were synthetic phantoms" if _synthetic(args.output_dir) else ""
    print(f"pipeline finished in {time.perf_counter() - started:.0f} s; outputs in {REPO_ROOT / args.output_dir}{note}")
    return 0


def _quiet_interrupt(signum, frame):
    """Ctrl-C: silence logging first, so that the kernel dying under the same Ctrl-C adds no lines
    (nbclient's 'Kernel died', asyncio's 'Task exception was never retrieved') to the one we print."""
    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt


def interrupted(output_dir: str) -> str:
    """After Ctrl-C: remove what an interrupted training leaves (``*.in-progress*``, never read as a
    result) and say, in one line, what was kept."""
    models = REPO_ROOT / output_dir / "models"
    leftovers = sorted(models.glob("*.in-progress*")) if models.is_dir() else []
    for path in leftovers:
        path.unlink()
    removed = f"; removed the interrupted training's {', '.join(p.name for p in leftovers)}" if leftovers else ""
    return (f"Interrupted (Ctrl-C). Kept everything the finished notebooks wrote in {REPO_ROOT / output_dir}: "
            f"a model is replaced only when its training ends{removed}.")


if __name__ == "__main__":
    sys.exit(main())
