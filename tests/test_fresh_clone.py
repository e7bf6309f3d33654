"""The README's first command as a new user meets it: a fresh clone with nothing beside it (no ../shared),
no network and no Kaggle credentials. `bash scripts/run.sh --quick` must run all six notebooks to the end:
01-05 on labelled phantoms, 06 on the example scan that ships with the repository, against its reference.

The clone holds the files `git clone` of this checkout would give (tracked, and new files git does not
ignore). Its .venv is this test's environment, so setup.sh finds everything installed. The network is cut
inside every Python process of the run, the notebooks' kernels included (a sitecustomize on PYTHONPATH
refuses every address but this machine's own, which the kernels use to talk to papermill)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO_ROOT

OFFLINE = r'''
import errno, os, socket

_getaddrinfo, _connect, _connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

def _local(host):
    local = host in (None, "", "localhost", "::1") or str(host).startswith("127.")
    if not local:
        with open(os.path.join(os.path.dirname(__file__), "refused.txt"), "a") as log:
            log.write(f"{host}\n")
    return local

def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known: {host} (no network in this test)")
    return _getaddrinfo(host, *args, **kwargs)

def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        raise OSError(errno.ENETUNREACH, f"Network is unreachable: {address[0]} (no network in this test)")

def connect(self, address):
    _check(self, address)
    return _connect(self, address)

def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)

socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = getaddrinfo, connect, connect_ex
'''


def clone_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [name for name in listed if name and (REPO_ROOT / name).is_file()]


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    venv = Path(sys.prefix)
    if not (venv / ".requirements.sha256").is_file():
        pytest.skip("the tests do not run in the .venv that scripts/setup.sh made")
    top = tmp_path_factory.mktemp("nothing-beside")
    clone = top / "lungseg"
    for name in clone_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_bytes((REPO_ROOT / name).read_bytes())
    (clone / ".venv").symlink_to(venv, target_is_directory=True)
    (top / "offline").mkdir()
    (top / "offline" / "sitecustomize.py").write_text(OFFLINE)
    (top / "home").mkdir()
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("KAGGLE_", "LUNGSEG_", "PYTEST_")) and name != "VIRTUAL_ENV"}
    environment.update(PYTHONPATH=str(top / "offline"), HOME=str(top / "home"), MPLCONFIGDIR=str(top / "home"))
    run = subprocess.run(["bash", "scripts/run.sh", "--quick"], cwd=clone, env=environment, capture_output=True,
                         text=True, timeout=1500)
    return top, clone, run


def test_the_main_command_runs_to_the_end_offline(fresh_clone):
    top, clone, run = fresh_clone
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    executed = sorted(p.name for p in (clone / "outputs" / "notebooks").glob("*.ipynb"))
    assert executed == sorted(p.with_suffix(".ipynb").name for p in (clone / "notebooks").glob("[0-9][0-9]_*.py"))
    assert len(executed) == 6
    assert sorted(p.name for p in top.iterdir()) == ["home", "lungseg", "offline"]  # nothing written beside it


def test_the_network_was_cut_and_the_phantoms_said_so(fresh_clone):
    top, clone, _ = fresh_clone
    assert "api.kaggle.com" in (top / "offline" / "refused.txt").read_text().split()  # kagglehub tried, was refused
    download = _outputs(clone / "outputs" / "notebooks" / "01_download.ipynb")
    assert "kagglehub could not download" in download and "using SYNTHETIC phantoms, NOT real CT" in download


def test_06_segments_the_shipped_example_against_its_reference(fresh_clone):
    _, clone, _ = fresh_clone
    text = _outputs(clone / "outputs" / "notebooks" / "06_your_scan.ipynb")
    assert "Example: the small scan that ships with lungseg" in text
    assert "Dice with the reference" in text and "79 slices of 64x64" in text
    assert not (clone / "data").exists()  # nothing downloaded


def _outputs(path: Path) -> str:
    texts = []
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{path.name}: {output.get('evalue')}"
            texts.append(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                         + output.get("data", {}).get("text/html", ""))
    return "\n".join(texts)
