"""Bad or unusual input as a new user gives it: paths typed in a shell, a misspelt data folder,
Ctrl-C, broken files, damaged models and records, archives of the wrong kind. Each must end in one
clear message that names the file or parameter and the fix, and leave what the user had intact."""

import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

import lungseg_utils as lu
from lungseg import runner
from lungseg.data import check_lung_stats, pixel_area_mm2, verify_pairs, find_pairs
from lungseg.download import get_dataset, install_archive
from lungseg.synthetic import write_synthetic_dataset
from lungseg_utils import LungsegError

from conftest import REPO_ROOT, write_training_inputs


# --------------------------------------------------------------------------- the data folder (item 3)
def test_paths_typed_on_the_command_line_are_taken_from_the_users_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    environ = {"LUNGSEG_DATA_DIR": "lungs"}
    given = runner.resolve_paths({"DATA_DIR": "data/lungs", "ARCHIVE": "~/lungs.zip", "EPOCHS": 5, "MODELS_DIR": ""},
                                 environ)
    assert given == {"DATA_DIR": str(tmp_path / "data" / "lungs"), "ARCHIVE": str(tmp_path / "home" / "lungs.zip"),
                     "EPOCHS": 5, "MODELS_DIR": ""}
    assert environ["LUNGSEG_DATA_DIR"] == str(tmp_path / "lungs")


def test_a_named_data_folder_without_data_stops_instead_of_using_phantoms(tmp_path, no_credentials):
    for named in (tmp_path / "misspelt", tmp_path / "empty"):
        if named.name == "empty":
            named.mkdir()
        with pytest.raises(LungsegError, match=f"{named}, (does not exist|is empty).*DATA_SOURCE='synthetic'"):
            get_dataset("auto", named, tmp_path / "out", named=True)
    assert not (tmp_path / "out").exists()  # no phantoms were written
    assert get_dataset("auto", tmp_path / "misspelt", tmp_path / "out", synthetic_count=2)["synthetic"]  # not named


def test_the_runner_stops_on_a_misspelt_relative_data_folder(tmp_path, monkeypatch, no_credentials, capsys):
    monkeypatch.chdir(tmp_path)
    assert runner.main(["--only", "01", "-p", "DATA_DIR", "lugns", "--output-dir", str(tmp_path / "out")]) == 1
    said = capsys.readouterr()
    assert f"{tmp_path / 'lugns'}, does not exist" in said.err
    assert not (tmp_path / "out" / "synthetic_data").exists() and not (tmp_path / "out" / "data").exists()


def test_the_runner_says_synthetic_in_its_progress_and_final_lines(tmp_path, capsys):
    assert runner.main(["--only", "01", "-p", "DATA_SOURCE", "synthetic", "-p", "SYNTHETIC_COUNT", "4",
                        "--output-dir", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    done = [line for line in lines if line.strip().startswith("done in")]
    assert len(done) == 1 and done[0].endswith(runner.SYNTHETIC_NOTE)
    assert lines[-1].startswith("pipeline finished") and runner.SYNTHETIC_NOTE in lines[-1]


def test_phantoms_follow_the_requested_count_and_seed(tmp_path):
    folder = tmp_path / "synthetic_data"
    write_synthetic_dataset(folder, count=5, seed=0, size=64)
    first = tifffile.imread(folder / "2d_images" / "SYNTHETIC_0000.tif")
    write_synthetic_dataset(folder, count=3, seed=0, size=64)
    assert len(list((folder / "2d_images").iterdir())) == 3
    write_synthetic_dataset(folder, count=3, seed=1, size=64)
    assert not np.array_equal(tifffile.imread(folder / "2d_images" / "SYNTHETIC_0000.tif"), first)
    mine = tmp_path / "mine"
    (mine / "2d_images").mkdir(parents=True)
    with pytest.raises(LungsegError, match="not made by lungseg.synthetic"):
        write_synthetic_dataset(mine, count=3, size=64)
    assert (mine / "2d_images").is_dir()


# --------------------------------------------------------------------------- Ctrl-C (item 5)
def test_ctrl_c_ends_with_one_line_and_removes_the_interrupted_trainings_leftovers(real_arrays, tmp_path):
    output = write_training_inputs(real_arrays, tmp_path / "out")
    earlier = {"unet.keras": b"an earlier model", "unet_history.csv": b"epoch\n0\n", "unet.json": b"{}"}
    (output / "models").mkdir()
    for name, content in earlier.items():
        (output / "models" / name).write_bytes(content)
    command = [sys.executable, "-m", "lungseg.runner", "--quick", "--only", "03", "-p", "EPOCHS", "20",
               "--output-dir", str(output)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True,  # a terminal's Ctrl-C reaches the runner's process group
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:
        if "Epoch 2/20" in line:
            break
    assert (output / "models" / "unet.in-progress.keras").is_file()
    os.killpg(process.pid, signal.SIGINT)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 130
    assert [line for line in errors.splitlines() if line.strip()] == [
        f"Interrupted (Ctrl-C). Kept everything the finished notebooks wrote in {output}: a model is replaced only "
        "when its training ends; removed the interrupted training's unet.in-progress.keras, "
        "unet.in-progress_history.csv."]
    assert {p.name: p.read_bytes() for p in (output / "models").iterdir()} == earlier


# --------------------------------------------------------------------------- raw errors (item 7)
def test_an_empty_or_broken_lung_stats_csv_is_named(tmp_path, real_data):
    facts = verify_pairs(find_pairs(real_data).iloc[:2])
    for content in ("", "\x00\x01\x02garbage\n\"unclosed"):
        stats = tmp_path / "lung_stats.csv"
        stats.write_text(content)
        for check in (lambda: check_lung_stats(stats, facts), lambda: pixel_area_mm2(stats)):
            with pytest.raises(LungsegError, match=f"{stats}: (empty or not a CSV|expected columns).*delete it"):
                check()


def test_a_truncated_model_or_a_broken_record_is_named(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "unet.keras").write_bytes((REPO_ROOT / "models" / "unet.keras").read_bytes()[:100_000])
    (models / "unet.json").write_text((REPO_ROOT / "models" / "unet.json").read_text())
    with pytest.raises(LungsegError, match=f"{models / 'unet.keras'}: cannot be loaded as a Keras model.*truncated"):
        lu.load_trained_model(models / "unet.keras")
    (models / "unet.keras").write_bytes((REPO_ROOT / "models" / "unet.keras").read_bytes())
    for record in ('{"img_size": 256,', '{"img_size": 256}', "[]"):
        (models / "unet.json").write_text(record)
        with pytest.raises(LungsegError, match=f"{models / 'unet.json'}: not a model record"):
            lu.load_trained_model(models / "unet.keras")


def test_predicting_without_the_models_record_says_what_it_needs(trained_unet, real_data):
    model, _ = trained_unet
    image = lu.read_slice(sorted((real_data / "2d_images").iterdir())[0])
    with pytest.raises(LungsegError, match="settings lacks img_size, hu_min, hu_max: give the model's record"):
        lu.predict_masks(model, image, {})


def test_the_settings_of_06_are_checked_before_anything_is_downloaded_or_loaded(tmp_path):
    from notebook_code import run_cells

    with pytest.raises(LungsegError, match=r"SCAN='no-such-folder' does not exist .*in Colab, upload it first"):
        run_cells("06_your_scan", {"SCAN": "no-such-folder", "OUTPUT_DIR": str(tmp_path), "EXAMPLE_DIR": str(tmp_path / "x")},
                  stop_after="check_scan_settings(")
    with pytest.raises(LungsegError, match=r"MODEL='foo' is not one of \['unet', 'resunet'\]"):
        run_cells("06_your_scan", {"MODEL": "foo", "OUTPUT_DIR": str(tmp_path)}, stop_after="check_scan_settings(")
    assert not (tmp_path / "x").exists()  # nothing downloaded


# --------------------------------------------------------------------------- smaller ones (item 8)
def _zip(path: Path, files: dict) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, content in files.items():
            bundle.writestr(name, content)
    return path


def test_archive_errors_name_the_archive_not_a_deleted_staging_folder(tmp_path):
    archive = _zip(tmp_path / "download.zip", {"readme.txt": "no slices here"})
    with pytest.raises(LungsegError) as error:
        install_archive(archive, tmp_path / "data")
    assert str(archive) in str(error.value) and ".partial-" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download.zip"]


def test_a_tar_archive_is_told_what_it_is(tmp_path, small_kaggle_folder):
    archive = tmp_path / "lungs.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(small_kaggle_folder, arcname="lungs")
    with pytest.raises(LungsegError, match="a tar archive, not a zip.*tar -xf lungs.tar.gz.*DATA_SOURCE='folder'"):
        install_archive(archive, tmp_path / "data")


def test_an_existing_empty_data_folder_is_filled(tmp_path, small_kaggle_folder):
    archive = tmp_path / "lungs.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(small_kaggle_folder.rglob("*")):
            bundle.write(path, path.relative_to(small_kaggle_folder))
    target = tmp_path / "data"
    target.mkdir()
    install_archive(archive, target)
    assert len(find_pairs(target)) == len(find_pairs(small_kaggle_folder))
    with pytest.raises(LungsegError, match="already exists and is not empty"):
        install_archive(archive, target)


def test_a_corrupt_tiff_gives_our_message_only(tmp_path, real_data, capfd):
    broken = tmp_path / "broken.tif"
    broken.write_bytes((real_data / "2d_images" / "ID_0000_Z_0142.tif").read_bytes()[:300])
    with pytest.raises(LungsegError, match="broken.tif: unreadable or corrupt image"):
        lu.read_slice(broken)
    assert capfd.readouterr().err == ""  # no OpenCV/libtiff lines before it


def test_an_lzw_compressed_tiff_still_reads_in_hu(tmp_path, real_data):
    import cv2

    image = lu.read_slice(real_data / "2d_images" / "ID_0000_Z_0142.tif")
    cv2.imwrite(str(tmp_path / "lzw.tif"), image)  # OpenCV writes int16 TIFF with LZW, which tifffile cannot read
    assert np.array_equal(lu.read_slice(tmp_path / "lzw.tif"), image)
