"""06's example scan, fetched from a local stand-in of its pinned source: the real files beside the repository
(../shared), served through a file:// URL as the GitHub copy is served over https."""

from __future__ import annotations

import shutil

import pytest

from lungseg import example_scan
from lungseg.errors import LungsegError

pytestmark = pytest.mark.skipif(not example_scan._complete(example_scan.SHARED),
                                reason="../shared/data/external-ct/cip-copdgene-64 is not beside the repository")


def stand_in(tmp_path):
    """A copy of the pinned source's files, laid out as in the repository (Testing/Data/Input/...)."""
    source = tmp_path / "source"
    for name in example_scan.checksums():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(example_scan.SHARED / name, source / name)
    return source


def test_downloads_checks_and_then_uses_the_cache(tmp_path, capsys):
    target = tmp_path / "example"
    folder = example_scan.get_example_scan(target, base_url=stand_in(tmp_path).as_uri() + "/")
    assert folder == target and example_scan._complete(target)
    assert len(list((target / "ct-64Dicom").glob("*.dcm"))) == 79
    assert "Downloading the example scan (80 files" in capsys.readouterr().out
    assert example_scan.get_example_scan(target, base_url="file:///nowhere/") == target  # cached: no download
    assert "Downloading" not in capsys.readouterr().out


def test_a_damaged_download_is_refused_and_nothing_is_kept(tmp_path):
    source = stand_in(tmp_path)
    damaged = source / "ct-64Dicom" / "IMG0040.dcm"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    target = tmp_path / "example"
    with pytest.raises(LungsegError, match=r"IMG0040.dcm: the download's SHA-256 is not the pinned one"):
        example_scan.get_example_scan(target, base_url=source.as_uri() + "/")
    assert not list(target.rglob("*.dcm"))  # nothing half-checked is left in place


def test_no_network_says_what_to_do(tmp_path):
    with pytest.raises(LungsegError, match=r"Could not download .*IMG0001.dcm.*set SCAN to a CT of your own"):
        example_scan.get_example_scan(tmp_path / "example", base_url=(tmp_path / "offline").as_uri() + "/")


def test_a_different_file_already_there_is_left_alone(tmp_path):
    target = tmp_path / "example"
    (target / "ct-64Dicom").mkdir(parents=True)
    mine = target / "ct-64Dicom" / "IMG0001.dcm"
    mine.write_bytes(b"my own file")
    with pytest.raises(LungsegError, match=r"IMG0001.dcm is not the example scan's file .* left as it is"):
        example_scan.get_example_scan(target, base_url=stand_in(tmp_path).as_uri() + "/")
    assert mine.read_bytes() == b"my own file"


def test_without_a_folder_it_uses_the_copy_beside_the_repository():
    assert example_scan.get_example_scan() == example_scan.SHARED
