"""06's example scans: whole chest CTs with a reference lung mask, wherever the notebook runs.

- ``"small"``: the Chest Imaging Platform's test case (a COPD chest downsampled 8x by its authors: 64x64
  pixels of 4.17 mm, 79 slices 4 mm apart, 1 MB, BSD-style licence) and CIP's lung mask. It **ships with
  the repository** (``examples/cip-copdgene-64``, with its source, licence and SHA-256 sums), so 06 runs to
  its end without a network; each file is checked against the sums before use. Given an ``EXAMPLE_DIR``,
  the same files are downloaded into it from the pinned commit of github.com/acil-bwh/ChestImagingPlatform.
- ``"full"``: NSCLC-Radiomics patient LUNG1-001 from NCI's Imaging Data Commons (IDC), at full resolution:
  134 slices of 512x512, 3 mm apart, with the radiotherapy team's lung contours as a DICOM Segmentation
  (88 MB, CC BY-NC 3.0). Fetched with IDC's own client, ``idc-index``, by the series' UIDs. IDC gives a
  series a new UUID whenever its files change; the UUIDs below pin this version. This machine cannot reach
  IDC, so the files' SHA-256 sums are written at the first download and checked at every later use.
- ``"auto"``: the full one where it can be had, else the shipped small one, said in one line.

Nothing already in a folder is replaced.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg.errors import LungsegError

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "data"


@dataclass
class Example:
    """A CT series folder and its reference lung mask (NRRD or DICOM SEG), with what to say about them."""
    name: str
    series: Path
    reference: Path
    description: str


# ----------------------------------------------------------------------------- the small one (CIP)
CIP_COMMIT = "c73ca30a5f6d4e22ee2b812c7d38622190b03a0a"
CIP_URL = f"https://raw.githubusercontent.com/acil-bwh/ChestImagingPlatform/{CIP_COMMIT}/Testing/Data/Input/"
SHIPPED = REPO_ROOT / "examples" / "cip-copdgene-64"  # in the repository: no download needed
CIP_DESCRIPTION = ("a COPD patient's whole chest (Chest Imaging Platform), downsampled 8x by its authors: 64x64 "
                   "pixels of 4.17 mm, 79 slices 4 mm apart; reference: CIP's automatic lung mask")


def cip_checksums() -> dict:
    """{relative path: SHA-256} of the files the small example needs, pinned beside the shipped copy."""
    lines = (SHIPPED / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _complete(folder: Path, checksums: dict) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in checksums.items())


def _refuse_other_files(folder: Path, checksums: dict, parameter: str) -> None:
    for name, digest in checksums.items():
        path = folder / name
        if path.is_file() and _sha256(path) != digest:
            raise LungsegError(f"{path} is not the example scan's file (its SHA-256 differs). It is left as it is: "
                               f"give {parameter} another folder, or move this one away.")


def small_example(folder: str | Path = "", base_url: str = CIP_URL) -> Example:
    """The CIP chest CT: the copy that ships with the repository, or, given ``folder``, the one in it
    (downloaded into it when it is empty)."""
    wanted = cip_checksums()
    if not folder:
        if _complete(SHIPPED, wanted):
            return Example("cip-copdgene-64", SHIPPED / "ct-64Dicom", SHIPPED / "wholeLung-64.nrrd", CIP_DESCRIPTION)
        shipped = SHIPPED.relative_to(REPO_ROOT).as_posix()
        print(f"The example scan in {shipped}/ is incomplete or changed (git checkout -- {shipped} restores it); "
              f"fetching it into data/ instead.", flush=True)
    folder = Path(folder).expanduser() if folder else DATA / "cip-copdgene-64"
    _refuse_other_files(folder, wanted, "EXAMPLE_DIR")
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        print(f"Downloading the small example scan ({len(missing)} files, about 1 MB) from the Chest Imaging "
              f"Platform's repository at commit {CIP_COMMIT[:7]} into {folder.name}/ ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".example-", dir=folder) as partial:
            for name in missing:
                _fetch(base_url + name, Path(partial) / name, wanted[name], folder)
            for name in missing:  # all checked: now into place
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(partial) / name).replace(folder / name)
    return Example("cip-copdgene-64", folder / "ct-64Dicom", folder / "wholeLung-64.nrrd", CIP_DESCRIPTION)


def _fetch(url: str, target: Path, digest: str, folder: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as error:
        raise LungsegError(f"Could not download {url} ({error}). Leave EXAMPLE_DIR empty to use the copy that "
                           f"ships with lungseg ({SHIPPED.relative_to(REPO_ROOT).as_posix()}), or copy its files "
                           f"into {folder}.") from None
    if _sha256(target) != digest:
        raise LungsegError(f"{url}: the download's SHA-256 is not the pinned one (a damaged or changed file); "
                           "nothing was kept. Run the cell again; if it persists, set SCAN to your own CT.")


# ----------------------------------------------------------------------------- the full one (IDC)
FULL = {"patient": "LUNG1-001", "collection": "nsclc_radiomics", "instances": 134,
        "ct": "1.3.6.1.4.1.32722.99.99.298991776521342375010861296712563382046",
        "ct_uuid": "40db0070-9773-413a-8d7e-c91c37c0006b",
        "seg": "1.2.276.0.7230010.3.1.3.2323910823.20524.1597260509.554",
        "seg_uuid": "2c0bd819-021d-4d13-a56c-4b306fc97f36"}  # from idc-index-data 25.0.5
FULL_DESCRIPTION = ("NSCLC-Radiomics LUNG1-001 (a lung cancer patient; TCIA, CC BY-NC 3.0, doi:10.7937/K9/TCIA.2015."
                    "PF0M9REI) from the Imaging Data Commons, at full resolution: 134 slices of 512x512, 3 mm apart; "
                    "reference: the radiotherapy team's Lung-Left and Lung-Right contours (DICOM SEG)")


def download_with_idc_index(series_uids: list, target: Path) -> None:
    """IDC's client fetches the series (from IDC's public cloud buckets). In Colab it is installed first."""
    try:
        from idc_index import IDCClient
    except ImportError:
        if "google.colab" not in sys.modules:
            raise LungsegError("The full-resolution example needs IDC's client: pip install idc-index (into the "
                               "environment lungseg runs in), or set EXAMPLE = \"small\".") from None
        import subprocess

        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "idc-index"], check=True)
        from idc_index import IDCClient
    print("Downloading the full-resolution example scan (about 88 MB) from the Imaging Data Commons ...", flush=True)
    IDCClient().download_from_selection(seriesInstanceUID=list(series_uids), downloadDir=str(target))


def full_example(folder: str | Path = "", download=download_with_idc_index, spec: dict = FULL) -> Example:
    """LUNG1-001's CT series and lung SEG in ``folder`` (default ``data/nsclc-radiomics-lung1-001``): downloaded
    once, its files checked against the SHA-256 sums written then. ``download(series_uids, folder)`` fetches;
    ``spec``: the series' UIDs and slice count."""
    import pydicom

    from lungseg.files import is_dicom

    folder = Path(folder).expanduser() if folder else DATA / "nsclc-radiomics-lung1-001"
    sums = folder / "SHA256SUMS"
    if sums.is_file():
        recorded = {name: digest for digest, name in (line.split() for line in sums.read_text().splitlines() if line)}
        if not _complete(folder, recorded):
            raise LungsegError(f"{folder}: its files differ from the SHA-256 sums written when they were downloaded "
                               f"({sums.name}). Delete the folder to download them again.")
        return Example(FULL["patient"], folder / "ct", folder / "lungs_seg.dcm", FULL_DESCRIPTION)
    if folder.exists() and any(folder.iterdir()):
        raise LungsegError(f"{folder} holds files but no SHA256SUMS: not a finished download of the example. It is "
                           "left as it is: give EXAMPLE_DIR another folder, or move this one away.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".example-", dir=folder.parent) as partial:
        fetched, arranged = Path(partial) / "fetched", Path(partial) / "arranged"
        download([spec["ct"], spec["seg"]], fetched)
        (arranged / "ct").mkdir(parents=True)
        for path in sorted(p for p in fetched.rglob("*") if p.is_file() and is_dicom(p)):
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            series = str(header.get("SeriesInstanceUID", ""))
            if series == spec["ct"]:
                path.replace(arranged / "ct" / f"{header.SOPInstanceUID}.dcm")
            elif series == spec["seg"]:
                path.replace(arranged / "lungs_seg.dcm")
        slices = len(list((arranged / "ct").iterdir()))
        if slices != spec["instances"] or not (arranged / "lungs_seg.dcm").is_file():
            raise LungsegError(f"The download holds {slices} of the CT's {spec['instances']} slices"
                               f"{'' if (arranged / 'lungs_seg.dcm').is_file() else ' and no lung SEG'}: nothing was "
                               "kept. Run the cell again, or set EXAMPLE = \"small\".")
        files = sorted(p for p in arranged.rglob("*") if p.is_file())
        (arranged / "SHA256SUMS").write_text("".join(f"{_sha256(p)}  {p.relative_to(arranged).as_posix()}\n" for p in files))
        if folder.exists():
            folder.rmdir()  # empty (a folder with files was refused above)
        arranged.replace(folder)
    return Example(FULL["patient"], folder / "ct", folder / "lungs_seg.dcm", FULL_DESCRIPTION)


def _idc_client_at_hand() -> bool:
    """idc-index is installed, or can be (in Colab, download_with_idc_index installs it)."""
    import importlib.util

    return "google.colab" in sys.modules or importlib.util.find_spec("idc_index") is not None


def get_example(which: str = "auto", folder: str | Path = "", download=None) -> Example:
    """``"full"``, ``"small"``, or ``"auto"``: the full-resolution scan where it can be had, else the small one
    that ships with the repository, said in one line. ``download``: the full one's fetcher (default: IDC's
    client)."""
    if which not in ("auto", "full", "small"):
        raise LungsegError(f'EXAMPLE={which!r}: use "auto", "full" (512x512, 88 MB, from IDC) or "small" (64x64, 1 MB).')
    if which == "small":
        return small_example(folder)
    if which == "auto" and download is None and not _idc_client_at_hand():
        print("Example: the small scan that ships with lungseg (the full-resolution one needs idc-index: "
              "pip install idc-index).", flush=True)
        return small_example()
    try:
        return full_example(folder, download or download_with_idc_index)
    except LungsegError as error:
        if which == "full":
            raise
        reason = str(error)
    except Exception as error:  # no network, IDC unreachable: the client raises many kinds
        if which == "full":
            raise LungsegError(f"Could not download the full-resolution example ({type(error).__name__}: {error}). "
                               "Check the network, or set EXAMPLE = \"small\".") from None
        reason = f"the full-resolution one could not be downloaded ({type(error).__name__})."
    print(f"Example: the small scan that ships with lungseg; {reason[0].lower()}{reason[1:]}", flush=True)
    return small_example()


# ----------------------------------------------------------------------------- the reference, on the scan's grid
def reference_mask(example: Example, scan) -> np.ndarray:
    """The example's reference lungs as a bool mask[slice, row, column] on ``scan`` (read from ``example.series``)."""
    from lungseg.scans import to_model_axes

    if example.reference.suffix == ".nrrd":  # CIP: array axes x, y, z on the series' own grid
        import nrrd

        frames = nrrd.read(str(example.reference))[0].transpose(2, 1, 0) > 0  # slice (up), row, column
    else:  # a DICOM SEG referencing the series' instances: its lung segments, frame by frame
        import highdicom as hd
        import pydicom

        seg = hd.seg.segread(example.reference)
        lungs = [int(s.SegmentNumber) for s in seg.SegmentSequence if "lung" in str(s.SegmentLabel).lower()]
        if not lungs:
            raise LungsegError(f"{example.reference}: no segment labelled as lung "
                               f"({', '.join(str(s.SegmentLabel) for s in seg.SegmentSequence)}).")
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in scan.source_files]
        frames = seg.get_pixels_by_source_instance(uids, segment_numbers=lungs, combine_segments=True,
                                                   skip_overlap_checks=True, assert_missing_frames_are_empty=True,
                                                   ignore_spatial_locations=True) > 0
    mask = to_model_axes(np.asarray(frames).transpose(1, 2, 0).transpose(1, 0, 2), scan.affine)[0]
    if mask.shape != scan.hu.shape:
        raise LungsegError(f"{example.reference}: a mask of {mask.shape} for a scan of {scan.hu.shape}.")
    return mask.astype(bool)
