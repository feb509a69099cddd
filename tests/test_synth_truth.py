"""``neurocache synth`` writes the lesions it drew (``lesions.csv``): one row per positive slice, the mask on
the lesion's bright pixels, and not one DICOM or labels1.csv byte changed by recording it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from neurocache.synth import generate_dataset
from neurocache.synth import truth as T
from neurocache.synth.truth import LESION_COLUMNS, decode_rle, distance_to_lesion, encode_rle


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "CTs").glob("*.dcm"))} | {"labels1.csv": (root / "labels1.csv").read_bytes()}


@pytest.fixture(scope="module", params=["taper", "3d"])
def data(request, tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp(f"truth_{request.param}")
    generate_dataset(root, patients=6, slices_per_patient=4, size=96, positive_frac=0.5, seed=5, lesions=request.param)
    return root, request.param


def test_one_row_per_positive_slice(data):
    root, _ = data
    labels = pd.read_csv(root / "labels1.csv", dtype={"ID": str})
    les = pd.read_csv(root / "lesions.csv", dtype={"ID": str}, keep_default_na=False)
    assert list(les.columns) == list(LESION_COLUMNS)
    assert list(les["ID"]) == sorted(labels.loc[labels["Label"] == 1, "ID"])
    assert set(les["kind"]) <= {"blob", "subdural"} and (les["n_pixels"] > 0).all()


def test_the_mask_is_the_lesions_bright_pixels(data):
    root, _ = data
    les = pd.read_csv(root / "lesions.csv", dtype={"ID": str}, keep_default_na=False)
    for _, r in les.iterrows():
        ds = pydicom.dcmread(root / "CTs" / f"{r['ID']}.dcm")
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        mask = decode_rle(r["mask_rle"], (int(r["rows"]), int(r["cols"])))
        assert hu.shape == mask.shape and int(mask.sum()) == r["n_pixels"]
        rr, cc = np.nonzero(mask)
        assert (rr.min(), rr.max() + 1, cc.min(), cc.max() + 1) == (r["bbox_r0"], r["bbox_r1"], r["bbox_c0"], r["bbox_c1"])
        # brighter than the brain around it (a 3-pixel ring outside the mask, within 0..100 HU)
        grown = mask.copy()
        for _ in range(3):
            grown |= np.roll(grown, 1, 0) | np.roll(grown, -1, 0) | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
        ring = grown & ~mask & (hu > 0) & (hu < 100)
        assert hu[mask].mean() > hu[ring].mean(), r["ID"]
        if r["kind"] == "blob":
            assert distance_to_lesion(r["center_row"], r["center_col"], mask) <= r["radius_px"]


def test_recording_the_truth_changes_no_byte(data, tmp_path, monkeypatch):
    root, profile = data
    monkeypatch.setattr(T.LesionTruth, "of", classmethod(lambda cls, *a, **k: None))  # record nothing
    generate_dataset(tmp_path, patients=6, slices_per_patient=4, size=96, positive_frac=0.5, seed=5, lesions=profile)
    assert _files(tmp_path) == _files(root)


def test_rle_round_trip_and_distance():
    mask = np.zeros((5, 7), bool)
    mask[1, 2:5] = True
    mask[3, 6] = True
    mask[4, 0] = True  # row-major: right after (3, 6), one run
    rle = encode_rle(mask)
    assert rle == "9:3 27:2" and np.array_equal(decode_rle(rle, mask.shape), mask)
    assert encode_rle(np.zeros((2, 2), bool)) == "" and not decode_rle("", (2, 2)).any()
    assert distance_to_lesion(1, 3, mask) == 0.0 and distance_to_lesion(1, 0, mask) == 2.0
    assert distance_to_lesion(0, 0, np.zeros((2, 2), bool)) == float("inf")
