"""The store: every slice equals the preprocessing of its file, Dask == serial, bad input accounted for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import blake3
import numpy as np
import pandas as pd
import pytest
import zarr

from neurocache.build import build_store
from neurocache.config import PrepConfig
from neurocache.info import store_info
from neurocache.preprocess import preprocess_file
from neurocache.store import StoreError, open_store
from neurocache.validate import validate_dataset

from conftest import HASH_KEY, SMALL_PREP


def test_every_image_equals_direct_preprocessing(synth_data, synth_store):
    s = open_store(synth_store, expect=SMALL_PREP)
    labels = pd.read_csv(synth_data / "labels1.csv")
    ok = s.ok_rows()
    assert len(ok) == len(labels) == s.images.shape[0]
    assert list(ok["ID"]) == sorted(labels["ID"])  # rows ordered by ID
    images = s.images[:]
    for _, rec in ok.iterrows():
        img, row = preprocess_file(synth_data / "CTs" / rec["file"], SMALL_PREP, HASH_KEY)
        np.testing.assert_array_equal(images[int(rec["row"])], img)
        assert row["content_hash"] == rec["content_hash"] == blake3.blake3((synth_data / "CTs" / rec["file"]).read_bytes()).hexdigest()
    merged = ok.merge(labels, on="ID")
    assert (merged["label"].astype(int) == merged["Label"]).all()


def test_store_layout_and_attrs(synth_store):
    g = zarr.open_group(str(synth_store), mode="r")
    a = g.attrs["neurocache"]
    assert a["complete"] is True and a["fingerprint"] == SMALL_PREP.fingerprint()
    assert a["content_hash"] == "blake3" and a["schema_version"] == 4
    assert a["preprocess"]["size"] == 64
    imgs = g["images"]
    assert imgs.dtype == np.int16 and imgs.chunks == (1, 64, 64) and imgs.shards[0] == 16
    assert (synth_store / "features.parquet").is_file() and (synth_store / "quality.json").is_file()
    assert not (synth_store / "_staging").exists() and not (synth_store / "_progress").exists()
    feats = pd.read_parquet(synth_store / "features.parquet")
    for col in ["ID", "label", "row", "status", "reason", "modality", "rows", "cols", "spacing_row_mm", "thickness_mm",
                "kvp", "slope", "intercept", "window_center", "window_width", "photometric", "bits_stored",
                "transfer_syntax", "z_mm", "patient_key", "study_key", "series_key", "hu_min", "hu_max", "hu_mean",
                "hu_std", "hu_p1", "hu_p50", "hu_p99", "frac_air", "frac_brain", "frac_bone", "box_r0", "box_r1",
                "box_c0", "box_c1", "scale", "file_bytes", "content_hash"]:
        assert col in feats.columns, col
    # No PHI in clear: patient IDs/names of the synth files never appear in the table.
    assert not feats.astype(str).apply(lambda c: c.str.contains("PHANTOM|SYN", regex=True)).any().any()
    q = json.loads((synth_store / "quality.json").read_text())
    assert q["counts"]["n_ok"] == len(feats) and q["class_balance"]["ok"]["n_label1"] == int(feats["label"].sum())


def test_dask_build_equals_serial_build(synth_data, synth_store, tmp_path):
    out = tmp_path / "dask.zarr"
    build_store(synth_data, out, cfg=SMALL_PREP, workers=2, progress=False, hash_key=HASH_KEY)
    a, b = open_store(synth_store), open_store(out)
    np.testing.assert_array_equal(a.images[:], b.images[:])
    pd.testing.assert_frame_equal(a.features, b.features)
    assert b.attrs["build"]["scheduler"] == "local" and b.attrs["build"]["workers"] == 2


def test_bad_inputs_are_all_accounted_for(data_copy, tmp_path):
    cts = data_copy / "CTs"
    files = sorted(cts.glob("*.dcm"))
    # 1. a corrupt (truncated) DICOM, 2. a non-DICOM file with a label, 3. a label with no file,
    # 4. a file with no label.
    corrupt, header_only = files[0], files[2]
    corrupt.write_bytes(corrupt.read_bytes()[:-5000])  # truncated inside the pixel data
    header_only.write_bytes(header_only.read_bytes()[:700])  # cut before the pixel data
    (cts / "ID_notdicom.dcm").write_text("this is a text file, not DICOM\n")
    shutil.copy(files[1], cts / "ID_nolabel.dcm")
    labels = pd.read_csv(data_copy / "labels1.csv")
    labels = pd.concat([labels, pd.DataFrame({"ID": ["ID_notdicom", "ID_nofile"], "Label": [0, 1]})])
    labels.to_csv(data_copy / "labels1.csv", index=False)

    res = build_store(data_copy, tmp_path / "bad.zarr", cfg=SMALL_PREP, workers=1, progress=False)
    f = res.features.set_index("ID")
    n_files = len(list(cts.iterdir()))
    assert len(f) == n_files + 1  # every file once, plus the label without a file
    assert f.loc[corrupt.stem, "status"] == "quarantined" and f.loc[corrupt.stem, "reason"] == "truncated_pixel_data"
    assert f.loc[header_only.stem, "reason"] == "no_pixel_data"
    assert f.loc["ID_notdicom", "reason"] == "not_dicom"
    assert f.loc["ID_nofile", "status"] == "missing" and f.loc["ID_nofile", "reason"] == "missing_file"
    assert f.loc["ID_nolabel", "reason"] == "no_label"
    assert (f.loc[f["status"] != "ok", "detail"].str.len() > 0).all()
    ok = f[f["status"] == "ok"]
    assert sorted(ok["row"]) == list(range(len(ok))) and (f.loc[f["status"] != "ok", "row"] == -1).all()
    info = store_info(tmp_path / "bad.zarr")
    assert info["n_files"] == n_files == info["n_ok"] + info["n_quarantined"]
    assert info["shape"][0] == len(ok)


def test_strict_fails_on_quarantine(data_copy, tmp_path):
    (data_copy / "CTs" / "junk.dcm").write_bytes(b"\x00" * 10)
    from neurocache.build import BuildError

    with pytest.raises(BuildError, match="--strict: 1 file"):
        build_store(data_copy, tmp_path / "s.zarr", cfg=SMALL_PREP, workers=1, progress=False, strict=True)
    with pytest.raises(StoreError, match="not complete"):
        open_store(tmp_path / "s.zarr")


def test_other_fingerprint_refused_and_incomplete_refused(synth_data, synth_store, tmp_path):
    with pytest.raises(StoreError, match="size: 64 -> 96"):
        open_store(synth_store, expect=PrepConfig(size=96))
    out = tmp_path / "copy.zarr"
    shutil.copytree(synth_store, out)
    with pytest.raises(StoreError, match=r"size: 64 -> 96.*--force"):
        build_store(synth_data, out, cfg=PrepConfig(size=96), workers=1, progress=False)
    g = zarr.open_group(str(out), mode="r+")
    a = dict(g.attrs["neurocache"])
    a["complete"] = False
    g.attrs["neurocache"] = a
    with pytest.raises(StoreError, match="not complete"):
        open_store(out)


def test_rebuild_is_noop_and_force_replaces(synth_data, tmp_path):
    out = tmp_path / "s.zarr"
    r1 = build_store(synth_data, out, cfg=SMALL_PREP, workers=1, progress=False)
    r2 = build_store(synth_data, out, cfg=SMALL_PREP, workers=1, progress=False)
    assert not r1.skipped and r2.skipped
    r3 = build_store(synth_data, out, cfg=PrepConfig(size=32, shard_size=16), workers=1, progress=False, force=True)
    assert not r3.skipped and open_store(out).images.shape[1:] == (32, 32)


def test_labels_csv_problems_are_errors(data_copy, tmp_path):
    from neurocache.inputs import InputError

    (data_copy / "labels1.csv").write_text("ID,Label\n../etc/passwd,1\nID_x,2\n")
    with pytest.raises(InputError, match=r"labels1.csv:2: ID '../etc/passwd' contains a path separator"):
        build_store(data_copy, tmp_path / "s.zarr", cfg=SMALL_PREP, workers=1, progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_validate_report(data_copy):
    labels = pd.read_csv(data_copy / "labels1.csv")
    n = len(labels)
    (data_copy / "CTs" / labels["ID"][0]).with_suffix(".dcm").unlink()
    (data_copy / "CTs" / "ID_extra.dcm").write_bytes(b"not dicom")
    r = validate_dataset(data_copy, expected_count=n)
    assert r["ids_without_file"] == [labels["ID"][0]]
    assert r["files_without_id"] == ["ID_extra"]
    assert r["non_dicom_files"] == ["ID_extra.dcm"]
    assert r["class_balance"]["n_label1"] == int(labels["Label"].sum())
    assert not r["ok"] and any("--expected-count" in m for m in r["fatal"])
    assert validate_dataset(data_copy, expected_count=n - 1)["ok"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocache", *args], capture_output=True, text=True, timeout=300)


def test_cli_validate_info_plot(synth_data, synth_store, tmp_path):
    v = _cli("validate", "--data-root", str(synth_data), "--json")
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["ok"] is True
    bad = _cli("validate", "--data-root", str(tmp_path / "nope"))
    assert bad.returncode == 1 and "does not exist" in bad.stdout
    i = _cli("info", str(synth_store), "--json")
    info = json.loads(i.stdout)
    for k in ("n_files", "n_ok", "n_quarantined", "shape", "dtype", "fingerprint", "complete", "bytes_on_disk", "source_bytes"):
        assert k in info
    assert info["complete"] is True and info["dtype"] == "int16" and info["shape"][1:] == [64, 64]
    png = tmp_path / "p.png"
    p = _cli("plot", str(synth_store), "--label", "1", "--n", "2", "--out", str(png))
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    missing = _cli("info", str(tmp_path / "none.zarr"))
    assert missing.returncode == 2 and "no neurocache store" in missing.stderr
