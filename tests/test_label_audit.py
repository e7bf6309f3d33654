"""01's label audit (masks that are binary but wrong) and the benchmark's k-fold split."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lungseg.data import find_pairs
from lungseg.data import kfold_split, read_split_manifest
from lungseg_utils import LungsegError, read_mask, read_slice
from notebook_code import definitions

_01 = definitions("01_download", "audit_mask", "audit_labels", "read_slice", "read_mask")  # 01's cells, as a learner reads them
audit_mask, audit_labels = _01["audit_mask"], _01["audit_labels"]

SOUND = "ID_0000_Z_0142.tif"  # a slice whose mask is sound, with two lungs


@pytest.fixture
def slice_and_mask(real_data):
    return read_slice(real_data / "2d_images" / SOUND), read_mask(real_data / "2d_masks" / SOUND)


def test_a_sound_mask_is_not_flagged(slice_and_mask):
    assert audit_mask(*slice_and_mask) == []


def test_lung_drawn_on_the_air_outside_the_body(slice_and_mask):
    image, mask = slice_and_mask
    air, _ = ndimage.label(image < -500)
    outside = (air == air[0, 0]) & (image > -1500)  # the air around the body, inside the field of view
    band = outside & (np.arange(512)[:, None] < 100) & (np.arange(512) > 0) & (np.arange(512) < 511)
    band[0] = False
    assert band.sum() > 0.1 * mask.sum()
    (reason,) = audit_mask(image, mask | band.astype(np.uint8))  # the air in front of the chest
    assert "lies on air outside the body" in reason


def test_lung_drawn_beyond_the_field_of_view(real_data, real_names):
    name = next(n for n in real_names if read_slice(real_data / "2d_images" / n).min() < -1500)  # has padding
    image, mask = read_slice(real_data / "2d_images" / name), read_mask(real_data / "2d_masks" / name)
    assert audit_mask(image, mask) == []
    corrupted = mask.copy()
    corrupted[(image < -1500) & (np.arange(512)[:, None] > 300)] = 1
    corrupted[:, 0] = corrupted[0] = corrupted[-1] = corrupted[:, -1] = 0
    reasons = audit_mask(image, corrupted)
    assert "22% of the lung lies outside the scanner's field of view" in reasons  # and its mean HU is air's


def test_a_mask_on_soft_tissue_has_no_lung_hu(slice_and_mask):
    image, mask = slice_and_mask
    body = ndimage.binary_fill_holes(image > -500)
    tissue = (body & ~ndimage.binary_dilation(mask, iterations=3) & (image > -200)).astype(np.uint8)
    reasons = audit_mask(image, tissue)
    assert any("HU inside the mask: no lung has that" in r for r in reasons)


def test_one_lung_missing(slice_and_mask):
    image, mask = slice_and_mask
    labels, count = ndimage.label(mask)
    largest = 1 + np.argmax(np.bincount(labels.ravel())[1:])
    (reason,) = audit_mask(image, (labels == largest).astype(np.uint8))  # keep one lung only
    assert reason.startswith("one lung missing")


def test_lung_touching_the_border_and_no_lung(slice_and_mask):
    image, mask = slice_and_mask
    touching = mask.copy()
    touching[250:260, 0:3] = 1
    assert "lung touches the image border" in audit_mask(image, touching)
    assert audit_mask(image, np.zeros_like(mask)) == ["no lung marked"]


def test_the_shared_masks_flagged_are_the_wrong_ones(real_data, real_names):
    """Of the 217 shared masks, three are flagged, and each is wrong (see 01's figure): two also
    cover the air around the body, one has only the left lung. No other mask is flagged. (The full
    Kaggle set holds these three too, and may hold more.)"""
    audit = audit_labels(find_pairs(real_data))
    assert len(audit) == len(real_names)
    flagged = audit[audit.flagged].set_index("name").reasons.to_dict()
    flagged = {Path(name).stem: reason for name, reason in flagged.items()}
    three = ["ID_0052_Z_0108", "ID_0079_Z_0072", "ID_0134_Z_0137"]
    assert sorted(flagged) == three if len(real_names) == 217 else set(three) <= set(flagged)
    assert "on air outside the body" in flagged["ID_0052_Z_0108"] and "on air outside the body" in flagged["ID_0134_Z_0137"]
    assert flagged["ID_0079_Z_0072"].startswith("one lung missing: 0 lung pixels on the image's left (the patient's right)")


def test_kfold_tests_every_slice_once_and_never_on_seen_slices(real_names):
    folds = [kfold_split(real_names, fold) for fold in range(5)]
    tested = pd.concat([f[f.split == "test"] for f in folds]).name
    assert sorted(tested) == sorted(real_names)  # each slice tested exactly once
    for fold in folds:
        counts = fold.split.value_counts().to_dict()
        n = len(real_names)
        assert counts["test"] in (n // 5, n // 5 + 1) and counts["val"] == round(0.15 * n)
        assert counts["train"] == n - counts["val"] - counts["test"]
        assert sorted(fold.name) == sorted(real_names)  # one part each
    assert kfold_split(list(reversed(real_names)), 2).equals(folds[2])  # deterministic, order-free
    assert not kfold_split(real_names, 2, seed=1).equals(folds[2])


@pytest.mark.parametrize("fold, folds", [(5, 5), (-1, 5), (0, 1), (0, 1000), ("0", 5)])
def test_folds_that_do_not_exist(real_names, fold, folds):
    with pytest.raises(LungsegError, match="folds"):
        kfold_split(real_names, fold, folds)


FLAGGED = {"ID_0052_Z_0108.tif", "ID_0079_Z_0072.tif", "ID_0134_Z_0137.tif"}  # 01's audit flags these three


def _outputs_of_01(real_data, real_names, output: Path) -> Path:
    """outputs/data as 01 leaves it, for 40 real pairs that include the three flagged masks."""
    names = sorted(FLAGGED | set(real_names[::6][:37]))
    pairs = find_pairs(real_data).set_index("name").loc[names].reset_index()
    (output / "data").mkdir(parents=True)
    pairs.to_csv(output / "data" / "pairs.csv", index=False)
    (output / "data" / "dataset.json").write_text('{"source": "folder", "synthetic": false, "root": "", '
                                                  '"hu_calibration": {"scale": 1.0, "offset": 0.0}}')
    audit_labels(pairs).to_csv(output / "data" / "label_audit.csv", index=False)
    return output


@pytest.mark.parametrize("fold", [None, 0])
def test_train_on_flagged_false_keeps_the_flagged_masks_out_of_training_only(real_data, real_names, tmp_path, fold,
                                                                             monkeypatch):
    from notebook_code import run_cells

    runs = {}
    for train_on_flagged in (True, False):
        output = _outputs_of_01(real_data, real_names, tmp_path / str(train_on_flagged))
        manifest = ""
        if fold is not None:  # a cross-validation fold, as benchmarks/crossval.py gives it
            manifest = tmp_path / f"fold_{fold}.csv"
            kfold_split(pd.read_csv(output / "data" / "pairs.csv").name, fold).to_csv(manifest, index=False)
        monkeypatch.setenv("LUNGSEG_SPLIT_MANIFEST", str(manifest))  # as the runner gives -p SPLIT_MANIFEST
        monkeypatch.setenv("LUNGSEG_TRAIN_ON_FLAGGED", str(train_on_flagged))
        run_cells("02_preprocess", {"OUTPUT_DIR": str(output), "IMG_SIZE": 32})
        with np.load(output / "data" / "arrays.npz") as arrays:
            names = {part: set(arrays[f"names_{part}"]) for part in ("train", "val", "test")}
        runs[train_on_flagged] = (pd.read_csv(output / "data" / "split_manifest.csv").set_index("name").split, names,
                                  json.loads((output / "data" / "preprocess.json").read_text()))
    (split, names, settings), (split_off, names_off, settings_off) = runs[True], runs[False]
    assert settings["train_on_flagged"] is True and settings_off["train_on_flagged"] is False
    assert FLAGGED & (names["train"] | names["val"])  # this split trains on at least one of them by default
    assert not FLAGGED & (names_off["train"] | names_off["val"])
    for name in FLAGGED:  # a flagged test slice stays a test slice; the others are marked, not dropped silently
        assert split_off[name] == ("test" if split[name] == "test" else "excluded")
    unflagged = split.index.difference(sorted(FLAGGED))
    assert split_off[unflagged].equals(split[unflagged])  # every other slice keeps its part
    assert names_off["test"] == names["test"]


def test_train_on_flagged_false_without_the_audit_says_to_run_01(real_data, real_names, tmp_path, monkeypatch):
    from notebook_code import run_cells

    output = _outputs_of_01(real_data, real_names, tmp_path / "out")
    (output / "data" / "label_audit.csv").unlink()  # outputs of a version of 01 before the audit
    monkeypatch.setenv("LUNGSEG_TRAIN_ON_FLAGGED", "False")
    with pytest.raises(LungsegError, match="TRAIN_ON_FLAGGED=False needs 01's label audit.*run 01_download again"):
        run_cells("02_preprocess", {"OUTPUT_DIR": str(output), "IMG_SIZE": 32})


def test_a_split_manifest_must_name_exactly_these_slices(real_names, tmp_path):
    manifest = kfold_split(real_names, 1)
    manifest.sample(frac=1, random_state=0).to_csv(tmp_path / "fold.csv", index=False)  # any row order
    assert read_split_manifest(tmp_path / "fold.csv", real_names).equals(manifest)
    with pytest.raises(LungsegError, match="SPLIT_MANIFEST='.*missing.csv' does not exist"):
        read_split_manifest(tmp_path / "missing.csv", real_names)
    manifest.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(LungsegError, match="not exactly these"):
        read_split_manifest(tmp_path / "short.csv", real_names)
    manifest.assign(split=manifest.split.replace("val", "validation")).to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(LungsegError, match="each split train, val or test"):
        read_split_manifest(tmp_path / "odd.csv", real_names)
