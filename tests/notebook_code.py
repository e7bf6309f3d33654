"""Run the notebooks' own code in the test process, so that tests exercise the cells a learner reads
(not a copy of them): the definitions of some names, or every cell in order with parameters."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import jupytext

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def code_cells(stem: str) -> list:
    return [cell for cell in jupytext.read(NOTEBOOKS / f"{stem}.py").cells if cell.cell_type == "code"]


def _only_imports(source: str) -> bool:
    body = ast.parse(source).body
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


def definitions(stem: str, *names: str) -> dict:
    """A namespace with the notebook's imports and the cells that define ``names`` (functions or classes)."""
    namespace: dict = {}
    wanted = set(names)
    for cell in code_cells(stem):
        tree = ast.parse(cell.source)
        defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        if _only_imports(cell.source) or defined & wanted:
            exec(compile(cell.source, f"<{stem}>", "exec"), namespace)
    missing = wanted - namespace.keys()
    assert not missing, f"{stem} defines no {sorted(missing)}"
    return namespace


def run_cells(stem: str, parameters: dict, stop_after: str | None = None) -> dict:
    """Execute the notebook's code cells in order, in ``notebooks/`` as the kernel would, with
    ``parameters`` replacing those of the parameters cell; stop after the cell containing ``stop_after``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    namespace: dict = {}
    cells = code_cells(stem)
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in cells) == 1, f"{stem}: no parameters cell"
    cwd = os.getcwd()
    os.chdir(NOTEBOOKS)
    try:
        for cell in cells:
            exec(compile(cell.source, f"<{stem}>", "exec"), namespace)
            plt.close("all")  # as Jupyter's inline backend closes a cell's figures once it has shown them
            if "parameters" in cell.metadata.get("tags", []):
                unknown = set(parameters) - namespace.keys()
                assert not unknown, f"{stem} declares no parameter {sorted(unknown)}"
                namespace.update(parameters)
            if stop_after and stop_after in cell.source:
                break
    finally:
        os.chdir(cwd)
    return namespace
