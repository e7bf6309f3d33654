"""Getting the data without reaching Kaggle: credentials, archives built from real files, hostile
archives, atomic installation, and the choice of source."""

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

import lungseg.download as download
from lungseg.data import find_pairs
from lungseg_utils import LungsegError
from lungseg.download import (find_kaggle_credentials, get_dataset, install_archive, install_kaggle_json,
                              safe_extract_zip)

SECRET = "0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------- credentials
def test_no_credentials(tmp_path):
    assert find_kaggle_credentials(environ={}, home=tmp_path) is None


def test_credentials_from_environment(tmp_path):
    where = find_kaggle_credentials(environ={"KAGGLE_USERNAME": "ana", "KAGGLE_KEY": SECRET}, home=tmp_path)
    assert "KAGGLE_USERNAME" in where and SECRET not in where
    with pytest.raises(LungsegError, match="KAGGLE_KEY is not set") as error:
        find_kaggle_credentials(environ={"KAGGLE_USERNAME": "ana"}, home=tmp_path)
    assert "kaggle.com/settings" in str(error.value)
    assert "KAGGLE_API_TOKEN" in find_kaggle_credentials(environ={"KAGGLE_API_TOKEN": SECRET}, home=tmp_path)


def test_credentials_from_kaggle_json(tmp_path):
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "ana", "key": SECRET}))
    where = find_kaggle_credentials(environ={}, home=tmp_path)
    assert where == str(tmp_path / ".kaggle" / "kaggle.json")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "kaggle.json").write_text(json.dumps({"username": "bo", "key": SECRET}))
    assert find_kaggle_credentials(environ={"KAGGLE_CONFIG_DIR": str(other)}, home=tmp_path) == str(other / "kaggle.json")


def test_invalid_kaggle_json_is_named_and_the_key_never_shown(tmp_path):
    (tmp_path / ".kaggle").mkdir()
    config = tmp_path / ".kaggle" / "kaggle.json"
    config.write_text(json.dumps({"username": "", "key": SECRET}))
    with pytest.raises(LungsegError) as error:
        find_kaggle_credentials(environ={}, home=tmp_path)
    assert str(config) in str(error.value) and SECRET not in str(error.value)
    config.write_text("{not json")
    with pytest.raises(LungsegError, match="not a valid kaggle.json"):
        find_kaggle_credentials(environ={}, home=tmp_path)


def test_uploaded_kaggle_json_is_stored_private(tmp_path):
    content = json.dumps({"username": "ana", "key": SECRET}).encode()
    target = install_kaggle_json(content, home=tmp_path)
    assert target == tmp_path / ".kaggle" / "kaggle.json" and target.read_bytes() == content
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    with pytest.raises(LungsegError, match="already exists"):  # other credentials are not overwritten
        install_kaggle_json(json.dumps({"username": "bo", "key": SECRET}).encode(), home=tmp_path)
    assert target.read_bytes() == content
    with pytest.raises(LungsegError, match="not a valid kaggle.json"):
        install_kaggle_json(b"[]", home=tmp_path / "other")


# --------------------------------------------------------------------------- archives from real files
def _zip_folder(archive: Path, folder: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, prefix + str(path.relative_to(folder)))
    return archive


def _kaggle_style_zip(tmp_path: Path, source: Path, nested: str = "") -> Path:
    """The whole-dataset zip as Kaggle serves it: inner 2d_images.zip / 2d_masks.zip + lung_stats.csv."""
    images = _zip_folder(tmp_path / "2d_images.zip", source / "2d_images", "2d_images/")
    masks = _zip_folder(tmp_path / "2d_masks.zip", source / "2d_masks")  # this one without a folder inside
    archive = tmp_path / "finding-lungs-in-ct-data.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(images, nested + "2d_images.zip")
        bundle.write(masks, nested + "2d_masks.zip")
        bundle.write(source / "lung_stats.csv", nested + "lung_stats.csv")
        bundle.writestr(nested + "3d_images.zip", b"not needed")
    return archive


@pytest.mark.parametrize("nested", ["", "finding-lungs-in-ct-data/"])
def test_whole_kaggle_zip(tmp_path, small_kaggle_folder, nested):
    archive = _kaggle_style_zip(tmp_path, small_kaggle_folder, nested)
    target = install_archive(archive, tmp_path / "data" / "lungs")
    pairs = find_pairs(target)
    assert len(pairs) == 6 and (target / "lung_stats.csv").is_file()
    assert sorted(p.name for p in (target / "2d_masks").iterdir()) == sorted(pairs.name)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["lungs"]  # no staging left behind


def test_folder_with_the_two_2d_zips(tmp_path, small_kaggle_folder):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _zip_folder(downloads / "2d_images.zip", small_kaggle_folder / "2d_images")
    _zip_folder(downloads / "2d_masks.zip", small_kaggle_folder / "2d_masks")
    target = install_archive(downloads, tmp_path / "lungs")
    assert len(find_pairs(target)) == 6
    assert sorted(p.name for p in downloads.iterdir()) == ["2d_images.zip", "2d_masks.zip"]  # left as it was


def test_zip_of_folders(tmp_path, small_kaggle_folder):
    archive = _zip_folder(tmp_path / "folders.zip", small_kaggle_folder, "top/")
    assert len(find_pairs(install_archive(archive, tmp_path / "lungs"))) == 6


def test_existing_folder_is_never_overwritten(tmp_path, small_kaggle_folder):
    archive = _kaggle_style_zip(tmp_path, small_kaggle_folder)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(LungsegError, match="refusing to overwrite"):
        install_archive(archive, target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_partial_download_leaves_nothing_that_looks_complete(tmp_path, small_kaggle_folder):
    archive = _kaggle_style_zip(tmp_path, small_kaggle_folder)
    truncated = tmp_path / "partial.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(LungsegError, match="partial download"):
        install_archive(truncated, tmp_path / "data" / "lungs")
    assert list((tmp_path / "data").iterdir()) == []


def test_archive_without_the_data(tmp_path):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("readme.txt", "hello")
    with pytest.raises(LungsegError, match="expected 2d_images"):
        install_archive(archive, tmp_path / "lungs")
    assert not (tmp_path / "lungs").exists()


# --------------------------------------------------------------------------- hostile archives
def _hostile(tmp_path: Path, name: str, link: bool = False) -> Path:
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("2d_images/ok.txt", "fine")
        info = zipfile.ZipInfo(name)
        if link:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, "/etc/passwd" if link else "evil")
    return archive


@pytest.mark.parametrize("entry, problem", [
    ("../escape.txt", "'..'"), ("2d_images/../../escape.txt", "'..'"), ("/tmp/absolute.txt", "absolute"),
    ("C:/windows.txt", "absolute"), ("..\\backslash.txt", "'..'"),
])
def test_hostile_entries_are_refused_and_nothing_is_written(tmp_path, entry, problem):
    target = tmp_path / "target"
    with pytest.raises(LungsegError, match=problem) as error:
        safe_extract_zip(_hostile(tmp_path, entry), target)
    assert repr(entry) in str(error.value)
    assert not target.exists()  # checked before anything was written
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_symbolic_link_is_refused(tmp_path):
    with pytest.raises(LungsegError, match="symbolic link"):
        safe_extract_zip(_hostile(tmp_path, "2d_images/link", link=True), tmp_path / "target")


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("big.bin", b"\0" * 5_000_000)
    with pytest.raises(LungsegError, match="zip bomb"):
        safe_extract_zip(archive, tmp_path / "target", max_bytes=1_000_000)


def test_hostile_inner_zip_is_refused(tmp_path, small_kaggle_folder):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as bundle:
        bundle.writestr("../../outside.tif", "evil")
    archive = tmp_path / "outer.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("2d_images.zip", inner.getvalue())
        bundle.writestr("2d_masks.zip", inner.getvalue())
    with pytest.raises(LungsegError, match="outside.tif"):
        install_archive(archive, tmp_path / "data" / "lungs")
    assert not list(tmp_path.rglob("outside.tif"))
    assert list((tmp_path / "data").iterdir()) == []


# --------------------------------------------------------------------------- choosing the source
def test_unknown_source(tmp_path):
    with pytest.raises(LungsegError, match="DATA_SOURCE='kagle' is unknown"):
        get_dataset("kagle", tmp_path / "data", tmp_path / "out")


def test_auto_uses_the_data_folder(small_kaggle_folder, tmp_path):
    record = get_dataset("auto", small_kaggle_folder, tmp_path / "out")
    assert record == {"source": "folder", "synthetic": False, "root": str(small_kaggle_folder.resolve())}


def test_auto_falls_back_to_synthetic_without_data_or_credentials(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "find_kaggle_credentials", lambda: None)
    record = get_dataset("auto", tmp_path / "nothing", tmp_path / "out", synthetic_count=4)
    assert record["synthetic"] is True and record["source"] == "synthetic"
    pairs = find_pairs(record["root"])
    assert len(pairs) == 4 and all(name.startswith("SYNTHETIC_") for name in pairs.name)
    assert "SYNTHETIC" in (Path(record["root"]) / "README.txt").read_text()


def test_kaggle_with_data_in_place_downloads_nothing(small_kaggle_folder, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded although the data was in place")

    monkeypatch.setattr(download, "download_from_kaggle", no_network)
    assert get_dataset("kaggle", small_kaggle_folder, tmp_path / "out")["source"] == "kaggle"


def test_kaggle_without_credentials_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "find_kaggle_credentials", lambda: None)
    with pytest.raises(LungsegError, match="kaggle.com/settings.*kaggle.json"):
        get_dataset("kaggle", tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "data").exists()


def test_archive_source_installs_once(tmp_path, small_kaggle_folder):
    archive = _kaggle_style_zip(tmp_path, small_kaggle_folder)
    first = get_dataset("archive", tmp_path / "data", tmp_path / "out", archive=archive)
    archive.unlink()  # a second run must not need it
    second = get_dataset("archive", tmp_path / "data", tmp_path / "out", archive=archive)
    assert first == second and len(find_pairs(second["root"])) == 6
    with pytest.raises(LungsegError, match="needs ARCHIVE"):
        get_dataset("archive", tmp_path / "elsewhere", tmp_path / "out")


# --------------------------------------------------------------------------- kagglehub (no account), stood in for
def _kagglehub_cache(tmp_path, small_kaggle_folder) -> Path:
    """What kagglehub.dataset_download returns: a folder in its cache holding the dataset's files, extracted."""
    cache = tmp_path / "kagglehub-cache" / "datasets" / "kmader" / "finding-lungs-in-ct-data" / "versions" / "2"
    cache.mkdir(parents=True)
    _zip_folder(cache / "2d_images.zip", small_kaggle_folder / "2d_images", "2d_images/")
    _zip_folder(cache / "2d_masks.zip", small_kaggle_folder / "2d_masks")
    (cache / "lung_stats.csv").write_bytes((small_kaggle_folder / "lung_stats.csv").read_bytes())
    return cache


def test_auto_downloads_with_kagglehub_without_an_account(tmp_path, small_kaggle_folder, monkeypatch, capsys):
    import kagglehub

    cache = _kagglehub_cache(tmp_path, small_kaggle_folder)
    asked = []
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, *a, **k: asked.append(handle) or str(cache))
    monkeypatch.setattr(download, "find_kaggle_credentials", lambda: None)  # no token anywhere
    record = get_dataset("auto", tmp_path / "data", tmp_path / "out")
    assert asked == ["kmader/finding-lungs-in-ct-data"]
    assert record == {"source": "kagglehub", "synthetic": False, "root": str((tmp_path / "data").resolve())}
    assert len(find_pairs(tmp_path / "data")) == 6 and "no account needed" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["2d_images.zip", "2d_masks.zip", "lung_stats.csv"]  # cache kept
    monkeypatch.setattr(kagglehub, "dataset_download", lambda *a, **k: pytest.fail("downloaded again"))
    assert get_dataset("kagglehub", tmp_path / "data", tmp_path / "out")["root"] == record["root"]


def test_without_network_auto_tries_the_token_then_says_phantoms(tmp_path, monkeypatch, capsys):
    import kagglehub

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'\nmore lines")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    monkeypatch.setattr(download, "find_kaggle_credentials", lambda: "~/.kaggle/kaggle.json")
    def kaggle_offline_too(target):  # with a token, the kaggle package is tried second
        raise LungsegError("kaggle: offline too")

    monkeypatch.setattr(download, "download_from_kaggle", kaggle_offline_too)
    with pytest.raises(LungsegError, match="kaggle: offline too"):
        get_dataset("auto", tmp_path / "data", tmp_path / "out")
    monkeypatch.setattr(download, "find_kaggle_credentials", lambda: None)
    record = get_dataset("auto", tmp_path / "data2", tmp_path / "out", synthetic_count=3)
    said = capsys.readouterr().out
    assert record["synthetic"] is True
    assert "kagglehub could not download kmader/finding-lungs-in-ct-data (ConnectionError: Failed to resolve" in said
    assert "SYNTHETIC phantoms, NOT real CT" in said and "more lines" not in said
