"""Tests for the synthetic head-CT DICOM generator (neurocache.synth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian

from neurocache.synth import generate_dataset, make_ct_dataset, write_ct

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _hu(path: Path) -> np.ndarray:
    """Read a DICOM slice and return float64 HU (rows, cols)."""
    ds = pydicom.dcmread(path)
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def _inside_skull(hu: np.ndarray) -> np.ndarray:
    """Rough intracranial mask: inside the row- and column-span of bone (> 700 HU), < 300 HU."""
    bone = hu > 700
    rows, cols = hu.shape
    ri = np.arange(cols)[None, :]
    ci = np.arange(rows)[:, None]
    has_r, has_c = bone.any(axis=1), bone.any(axis=0)
    r_first = np.where(has_r, bone.argmax(axis=1), cols)[:, None]
    r_last = np.where(has_r, cols - 1 - bone[:, ::-1].argmax(axis=1), -1)[:, None]
    c_first = np.where(has_c, bone.argmax(axis=0), rows)[None, :]
    c_last = np.where(has_c, rows - 1 - bone[::-1, :].argmax(axis=0), -1)[None, :]
    inside = (ri > r_first) & (ri < r_last) & (ci > c_first) & (ci < c_last)
    return inside & (hu < 300)


def _box3(img: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edge-padded) to suppress scanner noise."""
    p = np.pad(img, 1, mode="edge")
    h, w = img.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


@pytest.fixture(scope="module")
def ds20(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """20 patients x 8 slices at 128 px (shared by several tests)."""
    out = tmp_path_factory.mktemp("synth20")
    df = generate_dataset(out, patients=20, slices_per_patient=8, size=128, positive_frac=0.35, seed=7)
    return out, df


# ------------------------------------------------------------------ determinism
def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    kw = dict(patients=3, slices_per_patient=4, size=96, positive_frac=0.5)
    df_a = generate_dataset(tmp_path / "a", seed=11, **kw)
    df_b = generate_dataset(tmp_path / "b", seed=11, **kw)
    df_c = generate_dataset(tmp_path / "c", seed=12, **kw)

    pd.testing.assert_frame_equal(df_a, df_b)
    assert (tmp_path / "a" / "labels1.csv").read_bytes() == (tmp_path / "b" / "labels1.csv").read_bytes()
    files_a = sorted(p.name for p in (tmp_path / "a" / "CTs").iterdir())
    files_b = sorted(p.name for p in (tmp_path / "b" / "CTs").iterdir())
    assert files_a == files_b and len(files_a) == 12
    for name in files_a:
        assert (tmp_path / "a" / "CTs" / name).read_bytes() == (tmp_path / "b" / "CTs" / name).read_bytes()

    assert set(df_a["ID"]).isdisjoint(set(df_c["ID"]))
    a0 = _hu(tmp_path / "a" / "CTs" / f"{df_a.ID[0]}.dcm")
    c0 = _hu(tmp_path / "c" / "CTs" / f"{df_c.ID[0]}.dcm")
    assert a0.shape != c0.shape or not np.array_equal(a0, c0)
    uid_a = pydicom.dcmread(tmp_path / "a" / "CTs" / f"{df_a.ID[0]}.dcm").StudyInstanceUID
    uids_c = {pydicom.dcmread(p).StudyInstanceUID for p in (tmp_path / "c" / "CTs").iterdir()}
    assert uid_a not in uids_c


def test_ids_format_and_return_frame(ds20: tuple[Path, pd.DataFrame]) -> None:
    _, df = ds20
    assert list(df.columns) == ["ID", "Label", "PatientID", "z_index"]
    assert df["ID"].is_unique and df["ID"].is_monotonic_increasing
    assert df["ID"].str.fullmatch(r"ID_[0-9a-f]{10}").all()
    assert df["PatientID"].nunique() == 20
    assert (df.groupby("PatientID")["z_index"].apply(sorted).map(list) == [list(range(8))] * 20).all()


# ------------------------------------------------------------------ DICOM validity
def test_files_are_valid_ct_with_consistent_series(ds20: tuple[Path, pd.DataFrame]) -> None:
    out, df = ds20
    per_patient: dict[str, list[pydicom.Dataset]] = {}
    for row in df.itertuples():
        ds = pydicom.dcmread(out / "CTs" / f"{row.ID}.dcm")
        assert ds.Modality == "CT"
        assert ds.SOPClassUID == CT_IMAGE_STORAGE
        assert ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.PatientID == row.PatientID
        assert str(ds.PatientName).startswith("PHANTOM^")
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert float(ds.RescaleSlope) == 1.0
        assert float(ds.SliceThickness) == 5.0
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert 0.4 <= float(ds.PixelSpacing[0]) <= 0.5
        assert int(ds.InstanceNumber) == row.z_index + 1
        per_patient.setdefault(row.PatientID, []).append(ds)

    sop_uids = [d.SOPInstanceUID for dss in per_patient.values() for d in dss]
    assert len(set(sop_uids)) == len(df)
    keys = {}
    for pid, dss in per_patient.items():
        dss.sort(key=lambda d: int(d.InstanceNumber))
        assert len({d.StudyInstanceUID for d in dss}) == 1
        assert len({d.SeriesInstanceUID for d in dss}) == 1
        assert len({str(d.PatientName) for d in dss}) == 1
        z = np.array([float(d.ImagePositionPatient[2]) for d in dss])
        np.testing.assert_allclose(np.diff(z), 5.0)
        keys[pid] = (dss[0].StudyInstanceUID, dss[0].SeriesInstanceUID)
    assert len({k[0] for k in keys.values()}) == len(keys)
    assert len({k[1] for k in keys.values()}) == len(keys)


@pytest.mark.parametrize("signed", [False, True])
def test_make_ct_dataset_roundtrip(tmp_path: Path, signed: bool) -> None:
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1024.4, 3071.4, size=(40, 56))
    hu[0, :4] = [-1024, 3071, 0.5, -0.5]
    ds = make_ct_dataset(hu, signed=signed, patient_id="SYN0042", z_mm=-12.5, pixel_spacing=(0.45, 0.47), instance=3)
    path = write_ct(ds, tmp_path / "x.dcm")
    back = pydicom.dcmread(path)
    assert back.pixel_array.shape == (40, 56)
    np.testing.assert_array_equal(apply_modality_lut(back.pixel_array, back), np.rint(hu))
    assert back.PixelRepresentation == int(signed)
    assert float(back.RescaleIntercept) == (0.0 if signed else -1024.0)
    assert float(back.RescaleSlope) == 1.0
    assert back.BitsAllocated == 16
    assert (back.BitsStored, back.HighBit) == ((16, 15) if signed else (12, 11))
    assert back.pixel_array.dtype == (np.int16 if signed else np.uint16)
    assert back.PatientID == "SYN0042" and str(back.PatientName) == "PHANTOM^P0042"
    assert back.PatientBirthDate and back.StudyDate and back.RescaleType == "HU"
    assert float(back.WindowCenter) == 40 and float(back.WindowWidth) == 80
    assert [float(v) for v in back.PixelSpacing] == [0.45, 0.47]
    assert float(back.ImagePositionPatient[2]) == -12.5 and back.InstanceNumber == 3
    assert back.KVP == 120 and back.Modality == "CT"
    # deterministic: same inputs -> same UIDs
    again = make_ct_dataset(hu, signed=signed, patient_id="SYN0042", z_mm=-12.5, pixel_spacing=(0.45, 0.47), instance=3)
    assert again.SOPInstanceUID == ds.SOPInstanceUID and again.StudyInstanceUID == ds.StudyInstanceUID


def test_make_ct_dataset_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        make_ct_dataset(np.zeros((2, 2, 2)), signed=True)
    with pytest.raises(ValueError):
        make_ct_dataset(np.array([[0.0, np.nan]]), signed=False)


# ------------------------------------------------------------------ labels / dataset mix
def test_labels_csv_and_positive_fraction(ds20: tuple[Path, pd.DataFrame]) -> None:
    out, df = ds20
    csv = pd.read_csv(out / "labels1.csv")
    assert list(csv.columns) == ["ID", "Label"]
    assert csv["ID"].tolist() == sorted(csv["ID"]) == df["ID"].tolist()
    assert csv["Label"].tolist() == df["Label"].tolist()
    assert set(csv["Label"].unique()) == {0, 1}
    files = sorted(p.stem for p in (out / "CTs").glob("*.dcm"))
    assert files == csv["ID"].tolist() and len(files) == 160
    assert abs(csv["Label"].mean() - 0.35) <= 0.15
    # positives form one contiguous run per positive patient; some patients are mixed
    mixed = 0
    for _, g in df.sort_values("z_index").groupby("PatientID"):
        z = g.loc[g.Label == 1, "z_index"].to_numpy()
        if len(z):
            assert np.all(np.diff(z) == 1)
            mixed += int(len(z) < len(g))
    assert mixed >= 1


def test_representations_and_shapes_vary(ds20: tuple[Path, pd.DataFrame]) -> None:
    out, df = ds20
    first = df.sort_values("z_index").groupby("PatientID").first()
    reps, shapes, intercepts = set(), set(), set()
    for ident in first["ID"]:
        ds = pydicom.dcmread(out / "CTs" / f"{ident}.dcm", stop_before_pixels=True)
        reps.add(int(ds.PixelRepresentation))
        intercepts.add(float(ds.RescaleIntercept))
        shapes.add((int(ds.Rows), int(ds.Columns)))
    assert reps == {0, 1} and intercepts == {0.0, -1024.0}
    assert any(r != c for r, c in shapes)
    assert (128, 128) in shapes


def test_edge_fractions(tmp_path: Path) -> None:
    df0 = generate_dataset(tmp_path / "n", patients=2, slices_per_patient=3, size=64, positive_frac=0.0)
    assert (df0["Label"] == 0).all()
    df1 = generate_dataset(tmp_path / "p", patients=2, slices_per_patient=3, size=64, positive_frac=1.0)
    assert (df1["Label"] == 1).all()
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "bad", patients=1, positive_frac=1.5)


# ------------------------------------------------------------------ anatomy
def test_anatomy_hu_statistics(ds20: tuple[Path, pd.DataFrame]) -> None:
    out, df = ds20
    for ident in df["ID"].iloc[::9]:
        hu = _hu(out / "CTs" / f"{ident}.dcm")
        assert (hu < -900).mean() > 0.30, "expected plenty of air"
        assert (hu > 700).sum() > 0, "expected skull"
        p98 = np.percentile(hu, 98)
        assert p98 > 300, "98th percentile must land in bone"
        # the bright-threshold box is the skull, not the table near the bottom
        rows = np.where((hu >= p98).any(axis=1))[0]
        assert rows.max() < 0.92 * hu.shape[0]
        inside = _inside_skull(hu)
        assert inside.sum() > 0.15 * hu.size
        assert 15.0 <= np.median(hu[inside]) <= 50.0
        assert hu.min() >= -1024 and hu.max() <= 3071


def test_lesion_slices_have_more_hyperdense_brain(ds20: tuple[Path, pd.DataFrame]) -> None:
    out, df = ds20

    def blood_pixels(ident: str) -> int:
        hu = _hu(out / "CTs" / f"{ident}.dcm")
        sm = _box3(hu)
        return int((_inside_skull(hu) & (sm >= 50) & (sm <= 95)).sum())

    diffs = []
    for _, g in df.groupby("PatientID"):
        if g.Label.nunique() < 2:
            continue
        pos = np.mean([blood_pixels(i) for i in g.loc[g.Label == 1, "ID"]])
        neg = np.mean([blood_pixels(i) for i in g.loc[g.Label == 0, "ID"]])
        diffs.append(pos - neg)
    assert len(diffs) >= 2
    assert np.mean(diffs) > 5
    assert np.mean(np.array(diffs) > 0) >= 0.75


def test_progress_bar_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = generate_dataset(tmp_path, patients=1, slices_per_patient=2, size=48, progress=True, seed=5)
    assert len(df) == 2
    assert "synth CT" in capsys.readouterr().err


def test_lesion_scale_profiles() -> None:
    from neurocache.synth.lesion import lesion_scale

    assert lesion_scale(0, 1, "3d") == (1.0, 1.0) and lesion_scale(0, 1, "taper") == (1.0, 1.0)
    np.testing.assert_allclose(lesion_scale(0, 2, "taper"), (0.6 + 0.4 * np.sin(np.pi / 4), 1.0))
    np.testing.assert_allclose(lesion_scale(0, 3, "3d"), (np.sqrt(5) / 3, 5 / 9))  # t = -2/3
    assert lesion_scale(1, 3, "3d") == (1.0, 1.0)
    end, mid = lesion_scale(0, 6, "3d"), lesion_scale(2, 6, "3d")  # t = -5/6 and -1/6
    np.testing.assert_allclose(end, (np.sqrt(11) / 6, max(0.3, 11 / 36)))
    assert end[1] < mid[1] and lesion_scale(5, 6, "3d") == end  # symmetric, faint at both ends


def _pixels(root: Path) -> dict[str, np.ndarray]:
    return {p.stem: apply_modality_lut(ds.pixel_array, ds) for p in sorted((root / "CTs").glob("*.dcm"))
            for ds in [pydicom.dcmread(p)]}


def test_3d_lesions_same_patients_fainter_ends(tmp_path: Path) -> None:
    from neurocache.synth.lesion import lesion_scale

    kw = {"patients": 6, "slices_per_patient": 6, "size": 64, "positive_frac": 0.4, "seed": 5}
    taper = generate_dataset(tmp_path / "taper", **kw)
    solid = generate_dataset(tmp_path / "3d", lesions="3d", **kw)
    pd.testing.assert_frame_equal(taper, solid)  # same IDs, labels, patients, z order
    a, b = _pixels(tmp_path / "taper"), _pixels(tmp_path / "3d")
    neg = taper.loc[taper["Label"] == 0, "ID"]
    assert all(np.array_equal(a[i], b[i]) for i in neg)  # the lesion is the only difference
    pos = taper[taper["Label"] == 1]
    runs = pos.groupby("PatientID")["z_index"].agg(["min", "max"])
    ends = [i for i, p, z in zip(pos["ID"], pos["PatientID"], pos["z_index"])
            if runs.loc[p, "max"] - runs.loc[p, "min"] >= 2 and z in (runs.loc[p, "min"], runs.loc[p, "max"])]
    assert ends  # runs of >= 3 slices exist in this set
    # fainter: on a run's end slices the 3d lesion adds less blood (HU above 45) than the taper one
    blood = lambda img: float(np.clip(img - 45.0, 0, 60).sum())  # noqa: E731
    assert all(blood(b[i]) < blood(a[i]) for i in ends)
    with pytest.raises(ValueError, match="lesions="):
        generate_dataset(tmp_path / "bad", lesions="flat", **kw)
    with pytest.raises(ValueError, match="lesions="):  # the mechanism itself refuses an unknown profile too
        lesion_scale(0, 3, "flat")


def test_cli_lesion_choices_are_the_profiles() -> None:
    from neurocache.cli import _parser
    from neurocache.synth.lesion import LESION_PROFILES

    args = _parser().parse_args(["synth", "out", "--lesions", "3d"])
    assert args.lesions == "3d"
    synth = next(a for a in _parser()._subparsers._group_actions[0].choices["synth"]._actions if a.dest == "lesions")
    assert tuple(synth.choices) == LESION_PROFILES
