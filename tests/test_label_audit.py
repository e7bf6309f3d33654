"""01's label audit (masks that are binary but wrong) and the benchmark's k-fold split."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lungseg.data import find_pairs
from lungseg_utils import LungsegError, audit_labels, audit_mask, kfold_split, read_mask, read_slice

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


def test_the_shared_masks_flagged_are_the_wrong_ones(real_data):
    """Of the 217 shared masks, three are flagged, and each is wrong (see 01's figure): two also
    cover the air around the body, one has only the left lung. No other mask is flagged."""
    audit = audit_labels(find_pairs(real_data))
    assert len(audit) == 217
    flagged = audit[audit.flagged].set_index("name").reasons.to_dict()
    flagged = {Path(name).stem: reason for name, reason in flagged.items()}
    assert sorted(flagged) == ["ID_0052_Z_0108", "ID_0079_Z_0072", "ID_0134_Z_0137"]
    assert "on air outside the body" in flagged["ID_0052_Z_0108"] and "on air outside the body" in flagged["ID_0134_Z_0137"]
    assert flagged["ID_0079_Z_0072"].startswith("one lung missing: 0 lung pixels on the image's left (the patient's right)")


def test_kfold_tests_every_slice_once_and_never_on_seen_slices(real_names):
    folds = [kfold_split(real_names, fold) for fold in range(5)]
    tested = pd.concat([f[f.split == "test"] for f in folds]).name
    assert sorted(tested) == sorted(real_names)  # each slice tested exactly once
    for fold in folds:
        counts = fold.split.value_counts().to_dict()
        assert counts["test"] in (43, 44) and counts["val"] == 33 and counts["train"] == 217 - 33 - counts["test"]
        assert sorted(fold.name) == sorted(real_names)  # one part each
    assert kfold_split(list(reversed(real_names)), 2).equals(folds[2])  # deterministic, order-free
    assert not kfold_split(real_names, 2, seed=1).equals(folds[2])


@pytest.mark.parametrize("fold, folds", [(5, 5), (-1, 5), (0, 1), (0, 1000), ("0", 5)])
def test_folds_that_do_not_exist(real_names, fold, folds):
    with pytest.raises(LungsegError, match="FOLD="):
        kfold_split(real_names, fold, folds)
