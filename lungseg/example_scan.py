"""06's example scan: a whole chest CT with a reference lung mask, wherever the notebook runs.

The Chest Imaging Platform's test case (a COPD patient's chest at full inspiration, downsampled 8x by its
authors to 64x64 pixels of 4.17 mm, 79 slices 4 mm apart; 1 MB) and its automatic lung mask, from a pinned
commit of github.com/acil-bwh/ChestImagingPlatform (BSD-style licence). Each file is checked against the
SHA-256 in ``example_scan.sha256``; a copy already in place (``../shared`` beside the repository, or an
earlier download) is used as it is, and nothing already there is replaced.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from lungseg.errors import LungsegError

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMIT = "c73ca30a5f6d4e22ee2b812c7d38622190b03a0a"
BASE_URL = f"https://raw.githubusercontent.com/acil-bwh/ChestImagingPlatform/{COMMIT}/Testing/Data/Input/"
SHARED = REPO_ROOT.parent / "shared" / "data" / "external-ct" / "cip-copdgene-64"  # beside the repository, if there
DOWNLOADED = REPO_ROOT / "data" / "cip-copdgene-64"
SERIES, REFERENCE = "ct-64Dicom", "wholeLung-64.nrrd"  # the CT series, and CIP's automatic lung mask of it


def checksums() -> dict:
    """{relative path: SHA-256} of the files the example needs."""
    lines = (Path(__file__).with_suffix(".sha256")).read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in checksums().items())


def get_example_scan(data_dir: str | Path = "", base_url: str = BASE_URL) -> Path:
    """The folder holding ``ct-64Dicom/`` and ``wholeLung-64.nrrd``: ``data_dir`` if given (downloaded into it
    when empty), else the copy beside the repository, else ``data/cip-copdgene-64`` (downloaded once)."""
    if data_dir:
        folder = Path(data_dir).expanduser()
    else:
        folder = SHARED if _complete(SHARED) else DOWNLOADED
    wanted = checksums()
    for name, digest in wanted.items():
        path = folder / name
        if path.is_file() and _sha256(path) != digest:
            raise LungsegError(f"{path} is not the example scan's file (its SHA-256 differs). It is left as it is: "
                               "give EXAMPLE_DIR another folder, or move this one away.")
    missing = [name for name in wanted if not (folder / name).is_file()]
    if not missing:
        return folder
    print(f"Downloading the example scan ({len(missing)} files, about 1 MB) from the Chest Imaging Platform's "
          f"repository at commit {COMMIT[:7]} into {folder.name}/ ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".example-", dir=folder) as partial:
        for name in missing:
            url = base_url + name
            target = Path(partial) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
                    shutil.copyfileobj(response, out)
            except (urllib.error.URLError, OSError) as error:
                raise LungsegError(f"Could not download {url} ({error}). Without a network there is no example scan: "
                                   "set SCAN to a CT of your own (a DICOM series folder or a NIfTI file), or "
                                   f"copy the files of {BASE_URL}{SERIES}/ and {REFERENCE} into {folder}.") from None
            if _sha256(target) != wanted[name]:
                raise LungsegError(f"{url}: the download's SHA-256 is not the pinned one (a damaged or changed "
                                   "file); nothing was kept. Run the cell again; if it persists, set SCAN to your own CT.")
        for name in missing:  # all checked: now into place
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(partial) / name).replace(folder / name)
    return folder
