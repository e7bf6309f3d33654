"""06's example scans. The small one ships with the repository (examples/cip-copdgene-64); its download into
an EXAMPLE_DIR is served from a local stand-in of the pinned source (a file:// URL, as GitHub serves it over
https). The full one's client (idc-index, which this machine cannot run against IDC) is replaced by a function
that lays out a real CT series and a real DICOM SEG of its lungs as the client does, in nested folders with
other files beside."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from lungseg import examples
from lungseg.errors import LungsegError


def stand_in(tmp_path):
    """A copy of the pinned source's files, laid out as in the repository (Testing/Data/Input/...)."""
    source = tmp_path / "source"
    for name in examples.cip_checksums():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(examples.SHIPPED / name, source / name)
    return source


def test_the_small_one_downloads_checks_and_then_uses_the_cache(tmp_path, capsys):
    target = tmp_path / "example"
    example = examples.small_example(target, base_url=stand_in(tmp_path).as_uri() + "/")
    assert example.series == target / "ct-64Dicom" and examples._complete(target, examples.cip_checksums())
    assert len(list(example.series.glob("*.dcm"))) == 79
    assert "Downloading the small example scan (80 files" in capsys.readouterr().out
    assert examples.small_example(target, base_url="file:///nowhere/").series == example.series  # cached
    assert "Downloading" not in capsys.readouterr().out


def test_a_damaged_download_is_refused_and_nothing_is_kept(tmp_path):
    source = stand_in(tmp_path)
    damaged = source / "ct-64Dicom" / "IMG0040.dcm"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    target = tmp_path / "example"
    with pytest.raises(LungsegError, match=r"IMG0040.dcm: the download's SHA-256 is not the pinned one"):
        examples.small_example(target, base_url=source.as_uri() + "/")
    assert not list(target.rglob("*.dcm"))  # nothing half-checked is left in place


def test_no_network_says_what_to_do(tmp_path):
    with pytest.raises(LungsegError, match=r"Could not download .*IMG0001.dcm.*Leave EXAMPLE_DIR empty to use the "
                                           r"copy that ships with lungseg \(examples/cip-copdgene-64\)"):
        examples.small_example(tmp_path / "example", base_url=(tmp_path / "offline").as_uri() + "/")


def test_a_different_file_already_there_is_left_alone(tmp_path):
    target = tmp_path / "example"
    (target / "ct-64Dicom").mkdir(parents=True)
    mine = target / "ct-64Dicom" / "IMG0001.dcm"
    mine.write_bytes(b"my own file")
    with pytest.raises(LungsegError, match=r"IMG0001.dcm is not the example scan's file .* left as it is"):
        examples.small_example(target, base_url=stand_in(tmp_path).as_uri() + "/")
    assert mine.read_bytes() == b"my own file"


def test_the_shipped_copy_is_complete_and_used_without_a_folder(capsys):
    assert examples._complete(examples.SHIPPED, examples.cip_checksums())  # every file, as its SHA256SUMS says
    assert len(examples.cip_checksums()) == 80  # 79 slices and the reference mask
    assert examples.small_example().series == examples.SHIPPED / "ct-64Dicom"
    assert capsys.readouterr().out == ""  # nothing downloaded, nothing to say
    assert {"SOURCE.md", "CIP_License.txt"} <= {p.name for p in examples.SHIPPED.iterdir()}


def test_a_changed_shipped_copy_is_said_and_fetched_instead(tmp_path, capsys, monkeypatch):
    source = stand_in(tmp_path)
    shipped = tmp_path / "repo" / "examples" / "cip-copdgene-64"
    shutil.copytree(examples.SHIPPED, shipped)
    (shipped / "ct-64Dicom" / "IMG0005.dcm").unlink()  # a file lost
    monkeypatch.setattr(examples, "SHIPPED", shipped)
    monkeypatch.setattr(examples, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(examples, "DATA", tmp_path / "repo" / "data")
    example = examples.small_example(base_url=source.as_uri() + "/")
    assert example.series == tmp_path / "repo" / "data" / "cip-copdgene-64" / "ct-64Dicom"
    assert len(list(example.series.glob("*.dcm"))) == 79
    assert "examples/cip-copdgene-64/ is incomplete or changed (git checkout -- examples/cip-copdgene-64 restores " \
           "it); fetching it into data/ instead." in capsys.readouterr().out


# --------------------------------------------------------------------------- the full one, through a stand-in client
@pytest.fixture(scope="module")
def seg_of_the_cip_lungs(tmp_path_factory):
    """A DICOM SEG of CIP's reference lungs (right and left), referencing the real CIP series frame by frame."""
    from lungseg.dicom import write_dicom_seg
    from lungseg.scans import read_scan, split_lungs

    small = examples.small_example()
    scan = read_scan(small.series)
    reference = examples.reference_mask(small, scan)
    path = tmp_path_factory.mktemp("seg") / "lungs.dcm"
    write_dicom_seg(scan.source_files, split_lungs(reference), path, model_name="reference")
    spec = {"ct": str(pydicom.dcmread(scan.source_files[0], stop_before_pixels=True).SeriesInstanceUID),
            "seg": str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID), "instances": 79}
    return small, reference, path, spec


def client_stand_in(seg_path, calls):
    """Lays the series out as idc-index does (collection/patient/study/modality_series/...), with a stray file."""
    def download(series_uids, target):
        calls.append(list(series_uids))
        ct = target / "cip" / "P1" / "S1" / "CT_1"
        ct.mkdir(parents=True)
        for path in (examples.SHIPPED / "ct-64Dicom").glob("*.dcm"):
            shutil.copyfile(path, ct / f"{path.stem}-copy.dcm")
        (target / "cip" / "P1" / "S1" / "SEG_2").mkdir(parents=True)
        shutil.copyfile(seg_path, target / "cip" / "P1" / "S1" / "SEG_2" / "x.dcm")
        (target / "manifest.txt").write_text("not DICOM")
    return download


def test_the_full_one_is_arranged_checked_and_its_reference_read_from_the_seg(tmp_path, seg_of_the_cip_lungs):
    from lungseg.scans import read_scan

    small, reference, seg_path, spec = seg_of_the_cip_lungs
    calls = []
    (tmp_path / "full").mkdir()  # an empty folder given as EXAMPLE_DIR is used
    example = examples.full_example(tmp_path / "full", download=client_stand_in(seg_path, calls), spec=spec)
    assert calls == [[spec["ct"], spec["seg"]]]
    assert len(list(example.series.glob("*.dcm"))) == 79 and example.reference.is_file()
    scan = read_scan(example.series)
    assert np.array_equal(examples.reference_mask(example, scan), reference)  # the SEG's lungs = CIP's mask
    again = examples.full_example(tmp_path / "full", download=lambda *args: calls.append("again"), spec=spec)
    assert again.series == example.series and calls == [[spec["ct"], spec["seg"]]]  # cached, checked
    victim = next(example.series.glob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x01")
    with pytest.raises(LungsegError, match=r"differ from the SHA-256 sums written when they were downloaded"):
        examples.full_example(tmp_path / "full", download=client_stand_in(seg_path, []), spec=spec)


def test_an_incomplete_download_keeps_nothing(tmp_path, seg_of_the_cip_lungs):
    _, _, seg_path, spec = seg_of_the_cip_lungs
    with pytest.raises(LungsegError, match=r"holds 79 of the CT's 134 slices: nothing was kept"):
        examples.full_example(tmp_path / "full", download=client_stand_in(seg_path, []), spec={**spec, "instances": 134})
    assert not (tmp_path / "full").exists() and not list(tmp_path.glob(".example-*"))


def test_auto_falls_back_to_the_shipped_one_and_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    def offline(series_uids, target):
        raise OSError("network unreachable")
    monkeypatch.setattr(examples, "DATA", tmp_path / "data")
    example = examples.get_example("auto", "", download=offline)
    assert example.series == examples.SHIPPED / "ct-64Dicom"
    assert capsys.readouterr().out == ("Example: the small scan that ships with lungseg; the full-resolution one "
                                       "could not be downloaded (OSError).\n")
    monkeypatch.setattr(examples, "_idc_client_at_hand", lambda: False)  # no idc-index: nothing is tried
    assert examples.get_example("auto").series == examples.SHIPPED / "ct-64Dicom"
    assert capsys.readouterr().out == ("Example: the small scan that ships with lungseg (the full-resolution one "
                                       "needs idc-index: pip install idc-index).\n")
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]  # nothing downloaded
    with pytest.raises(LungsegError, match=r'Could not download the full-resolution example .*EXAMPLE = "small"'):
        examples.get_example("full", tmp_path / "full", download=offline)
    with pytest.raises(LungsegError, match=r'EXAMPLE=\'big\': use "auto", "full"'):
        examples.get_example("big")
