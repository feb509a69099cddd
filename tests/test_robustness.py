"""Real-world DICOM: every transfer syntax, known CT defects, the modality/content gate, a mixed
folder where every file is accounted for, no PHI in the store, no pickle, no path escapes."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from neurocache.build import build_store
from neurocache.config import PrepConfig
from neurocache.dicomio import read_slice
from neurocache.inputs import InputError
from neurocache.preprocess import preprocess_file
from neurocache.reasons import FIXES, REASONS
from neurocache.store import open_store
from neurocache.synth import make_ct_dataset

from conftest import HASH_KEY, SMALL_PREP
from faults import cli_command

REPO = Path(__file__).resolve().parents[1]
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


# ----------------------------------------------------------------------------------------------
# helpers: write a slice in another transfer syntax, hand-made objects, a JPEG lossless encoder
# ----------------------------------------------------------------------------------------------
def jpeg_lossless_encode(a: np.ndarray, precision: int) -> bytes:
    """Minimal JPEG lossless encoder (ITU T.81 process 14, predictor 1 = left, Pt 0), one grayscale frame.

    pydicom has no JPEG lossless encoder; this one lets the test check the decoder plugin bit-exactly.
    Huffman table: the 17 difference categories (SSSS 0..16) get the 5-bit codes 0..16.
    """
    h, w = a.shape
    x = a.astype(np.int64) & ((1 << precision) - 1)  # two's complement within P bits
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    d = (x - pred) & 0xFFFF
    d = np.where(d >= 0x8000, d - 0x10000, d)
    d = np.where(d == -32768, 32768, d)
    mag = np.abs(d)
    ssss = np.zeros_like(mag)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    out = bytearray()
    acc, nbits = 0, 0

    def put(val: int, n: int) -> None:
        nonlocal acc, nbits
        acc = (acc << n) | (val & ((1 << n) - 1))
        nbits += n
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0)  # byte stuffing
        acc &= (1 << nbits) - 1

    for s, dv in zip(ssss.ravel().tolist(), d.ravel().tolist()):
        put(s, 5)
        if 0 < s < 16:
            put(dv if dv > 0 else dv + (1 << s) - 1, s)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)

    def seg(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + seg(0xC3, sof) + seg(0xC4, dht) + seg(0xDA, sos) + bytes(out) + b"\xff\xd9"


LOSSLESS = {
    "rle": RLELossless,
    "jpeg2000_lossless": JPEG2000Lossless,
    "jpegls_lossless": JPEGLSLossless,
    "jpeg_lossless_sv1": JPEGLosslessSV1,
    "deflated": DeflatedExplicitVRLittleEndian,
    "big_endian": ExplicitVRBigEndian,
    "implicit_vr": ImplicitVRLittleEndian,
}


def convert(src: Path, dst: Path, ts: str) -> Path:
    """Write ``src`` in transfer syntax ``ts`` (lossless), pixel values unchanged."""
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array
    if ts in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        ds.compress(ts)
    elif ts == JPEGLosslessSV1:
        ds.PixelData = encapsulate([jpeg_lossless_encode(arr, int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
    elif ts == ExplicitVRBigEndian:
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = ts
    else:
        ds.file_meta.TransferSyntaxUID = ts
    dcmwrite(dst, ds, enforce_file_format=True)
    return dst


def hu_of(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def slice_from(src: Path, **kw) -> Dataset:
    """A fresh CT dataset with the HU image of a synth file (signed, intercept 0 unless told)."""
    kw.setdefault("signed", True)
    kw.setdefault("patient_id", "SYNHAND01")
    return make_ct_dataset(hu_of(src), **kw)


def save(ds: Dataset, path: Path) -> Path:
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def sources(synth_data: Path) -> tuple[Path, Path]:
    """One signed (int16, intercept 0) and one unsigned (12-bit, intercept -1024) synth file."""
    signed = unsigned = None
    for p in sorted((synth_data / "CTs").glob("*.dcm")):
        pr = int(pydicom.dcmread(p, stop_before_pixels=True).PixelRepresentation)
        if pr == 1 and signed is None:
            signed = p
        if pr == 0 and unsigned is None:
            unsigned = p
    assert signed is not None and unsigned is not None
    return signed, unsigned


# ----------------------------------------------------------------------------------------------
# 1. decoding
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_copy_gives_identical_hu_and_image(name, synth_data, tmp_path):
    ts = LOSSLESS[name]
    for src in sources(synth_data):
        dst = convert(src, tmp_path / f"{name}_{src.name}", ts)
        assert pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        a, b = read_slice(src, SMALL_PREP, HASH_KEY), read_slice(dst, SMALL_PREP, HASH_KEY)
        assert b.stored.dtype.isnative
        np.testing.assert_array_equal(a.stored * a.slope + a.intercept, b.stored * b.slope + b.intercept)
        img_a, row_a = preprocess_file(src, SMALL_PREP, HASH_KEY)
        img_b, row_b = preprocess_file(dst, SMALL_PREP, HASH_KEY)
        assert row_b["status"] == "ok" and row_b["transfer_syntax"] == ts
        np.testing.assert_array_equal(img_a, img_b)
        assert row_a["hu_p50"] == row_b["hu_p50"] and row_a["box_r0"] == row_b["box_r0"]


def test_lossy_jpeg_syntaxes_decode(synth_data, tmp_path):
    signed, _ = sources(synth_data)
    # JPEG baseline (8-bit): a CT slice stored as 8 bits (slope 8), encoded by Pillow.
    hu = hu_of(signed)
    img8 = np.clip((hu + 1024) / 8, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="JPEG", quality=95)
    ds = slice_from(signed)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.RescaleSlope, ds.RescaleIntercept = "8", "-1024"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    p = save(ds, tmp_path / "baseline.dcm")
    got = read_slice(p, SMALL_PREP, HASH_KEY)
    assert got.stored.shape == img8.shape
    assert np.abs(got.stored.astype(int) - img8).mean() < 2.0  # lossy, but the same picture
    assert preprocess_file(p, SMALL_PREP, HASH_KEY)[1]["status"] == "ok"

    # JPEG extended (12-bit): the pydicom sample's codestream inside a CT header.
    nm = pydicom.dcmread(PYDICOM_FILES / "JPGExtended.dcm")
    ds = slice_from(signed)
    ds.Rows, ds.Columns = nm.Rows, nm.Columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept = "-1024"
    ds.PixelData = nm.PixelData
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    p = save(ds, tmp_path / "extended.dcm")
    np.testing.assert_array_equal(read_slice(p, SMALL_PREP, HASH_KEY).stored, nm.pixel_array)

    # JPEG 2000 (lossy) and JPEG 2000 lossless real CT slices shipped with pydicom.
    for f in ("693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "CT_small.dcm"):
        img, row = preprocess_file(PYDICOM_FILES / f, SMALL_PREP, HASH_KEY)
        assert row["status"] == "ok", row["detail"]
        assert img.shape == (64, 64)


# ----------------------------------------------------------------------------------------------
# 2. known CT defects
# ----------------------------------------------------------------------------------------------
def test_rsna_12bit_wrap_fix(synth_data, tmp_path):
    signed, _ = sources(synth_data)
    hu = np.clip(hu_of(signed), -1000, 3095)
    good = make_ct_dataset(hu, signed=True, patient_id="SYNWRAP")
    save(good, tmp_path / "good.dcm")
    # What the affected scanners wrote: HU mod 4096 in 12-bit unsigned pixels, intercept 1.
    bad = make_ct_dataset(hu, signed=True, patient_id="SYNWRAP")
    bad.PixelData = (np.rint(hu).astype(np.int64) % 4096).astype("<u2").tobytes()
    bad.BitsStored, bad.HighBit, bad.PixelRepresentation, bad.RescaleIntercept = 12, 11, 0, "1"
    save(bad, tmp_path / "wrapped.dcm")

    img_good, _ = preprocess_file(tmp_path / "good.dcm", SMALL_PREP, HASH_KEY)
    img_fixed, row = preprocess_file(tmp_path / "wrapped.dcm", SMALL_PREP, HASH_KEY)
    assert row["status"] == "ok" and row["fixes"] == "rsna_12bit_wrap" and "mod 4096" in row["detail"]
    np.testing.assert_array_equal(img_fixed, img_good)
    d = read_slice(tmp_path / "wrapped.dcm", SMALL_PREP, HASH_KEY)
    np.testing.assert_array_equal(d.stored * d.slope + d.intercept, np.rint(hu))  # ((s + 1000) mod 4096) - 1000

    off = PrepConfig(size=64, shard_size=16, fix_12bit_wrap=False)
    img_raw, row_raw = preprocess_file(tmp_path / "wrapped.dcm", off, HASH_KEY)
    assert row_raw["fixes"] == "" and (img_raw is None or not np.array_equal(img_raw, img_good))
    # Untouched: a 12-bit unsigned slice with the usual -1024 intercept.
    _, unsigned = sources(synth_data)
    assert preprocess_file(unsigned, SMALL_PREP, HASH_KEY)[1]["fixes"] == ""


def test_missing_rescale_is_quarantined_unless_assumed(synth_data, tmp_path):
    signed, unsigned = sources(synth_data)
    ds = pydicom.dcmread(unsigned)
    del ds.RescaleSlope
    del ds.RescaleIntercept
    save(ds, tmp_path / "norescale.dcm")
    _, row = preprocess_file(tmp_path / "norescale.dcm", SMALL_PREP, HASH_KEY)
    assert row["status"] == "quarantined" and row["reason"] == "no_rescale"
    assert "RescaleIntercept, RescaleSlope" in row["detail"] and "assume_rescale" in row["detail"]
    assume = PrepConfig(size=64, shard_size=16, assume_rescale=(1.0, -1024.0))
    img, row = preprocess_file(tmp_path / "norescale.dcm", assume, HASH_KEY)
    assert row["status"] == "ok" and row["fixes"] == "assumed_rescale"
    np.testing.assert_array_equal(img, preprocess_file(unsigned, SMALL_PREP, HASH_KEY)[0])
    assert assume.fingerprint() != SMALL_PREP.fingerprint()


def test_multiframe_quarantined_single_frame_enhanced_accepted(synth_data, tmp_path):
    signed, _ = sources(synth_data)
    mf = slice_from(signed)
    mf.NumberOfFrames = 2
    mf.PixelData = mf.PixelData * 2
    save(mf, tmp_path / "multi.dcm")
    _, row = preprocess_file(tmp_path / "multi.dcm", SMALL_PREP, HASH_KEY)
    assert row["reason"] == "multiframe" and "NumberOfFrames=2" in row["detail"] and row["n_frames"] == 2

    enh = slice_from(signed, signed=False)  # intercept -1024, moved into the functional groups
    enh.SOPClassUID = enh.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    enh.NumberOfFrames = 1
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "1", "-1024", "HU"
    grp = Dataset()
    grp.PixelValueTransformationSequence = [pvt]
    enh.SharedFunctionalGroupsSequence = [grp]
    del enh.RescaleSlope
    del enh.RescaleIntercept
    save(enh, tmp_path / "enhanced.dcm")
    img, row = preprocess_file(tmp_path / "enhanced.dcm", SMALL_PREP, HASH_KEY)
    assert row["status"] == "ok" and row["fixes"] == "enhanced_rescale"
    np.testing.assert_array_equal(img, preprocess_file(signed, SMALL_PREP, HASH_KEY)[0])


def test_constant_and_near_empty_files_are_quarantined(synth_data, tmp_path):
    save(make_ct_dataset(np.full((96, 96), -1000.0), signed=True), tmp_path / "const.dcm")
    speck = np.full((96, 96), -1000.0)
    speck[40:44, 40:44] = 40  # a little soft tissue in air: std > 0 but no skull at all
    speck[41:43, 41:43] = 1500
    save(make_ct_dataset(speck, signed=True), tmp_path / "speck.dcm")
    _, r1 = preprocess_file(tmp_path / "const.dcm", SMALL_PREP, HASH_KEY)
    _, r2 = preprocess_file(tmp_path / "speck.dcm", SMALL_PREP, HASH_KEY)
    assert (r1["reason"], r2["reason"]) == ("empty_slice", "no_skull")
    assert "min_std_hu" in r1["detail"] and "near-empty" in r2["detail"]
    # (a tiny bone box under a high skull percentile: tests/test_hu_crop.py::test_tiny_bone_box_is_quarantined)


# ----------------------------------------------------------------------------------------------
# 3. the mixed folder: compressed CT samples, non-CT objects, corrupt files, all accounted for
# ----------------------------------------------------------------------------------------------
def make_mixed_folder(synth_data: Path, root: Path) -> dict[str, tuple[str, str]]:
    """Write ``root/CTs`` + ``root/labels1.csv``; return file name -> (status, reason)."""
    cts = root / "CTs"
    cts.mkdir(parents=True)
    signed, unsigned = sources(synth_data)
    expect: dict[str, tuple[str, str]] = {}
    ok = ("ok", "")

    # Real CT slices shipped with pydicom (explicit LE, JPEG 2000 lossy, JPEG 2000 lossless).
    for f, new in (("CT_small.dcm", "ct_small"), ("693_J2KI.dcm", "ct_j2k_lossy"), ("J2K_pixelrep_mismatch.dcm", "ct_j2k_pixrep")):
        shutil.copy(PYDICOM_FILES / f, cts / f"{new}.dcm")
        expect[f"{new}.dcm"] = ok
    # Synth slices in every syntax we can encode.
    for name, ts in LOSSLESS.items():
        for tag, src in (("s", signed), ("u", unsigned)):
            convert(src, cts / f"syn_{name}_{tag}.dcm", ts)
            expect[f"syn_{name}_{tag}.dcm"] = ok
    shutil.copy(signed, cts / "syn_plain.dcm")

    # Non-CT objects.
    for f, new, reason in (
        ("MR_small.dcm", "mr", "modality_not_allowed"),
        ("MR_small_RLE.dcm", "mr_rle", "modality_not_allowed"),
        ("MR_small_jpeg_ls_lossless.dcm", "mr_jls", "modality_not_allowed"),
        ("MR_small_bigendian.dcm", "mr_be", "modality_not_allowed"),
        ("ExplVR_BigEnd.dcm", "us_be", "modality_not_allowed"),
        ("examples_ybr_color.dcm", "us_multiframe", "modality_not_allowed"),
        ("liver_1frame.dcm", "seg", "segmentation"),
        ("test-SR.dcm", "sr", "structured_report"),
        ("rtplan.dcm", "rtplan", "rt_object"),
        ("rtdose.dcm", "rtdose", "rt_object"),
        ("image_dfl.dcm", "sc_deflated", "secondary_capture"),
        ("JPEG2000.dcm", "sc_j2k", "secondary_capture"),
        ("SC_rgb_jpeg_gdcm.dcm", "sc_jpeg_lossless_rgb", "secondary_capture"),
        ("waveform_ecg.dcm", "ecg", "sop_class_not_image"),
        ("ExplVR_LitEndNoMeta.dcm", "rtplan_nometa", "no_file_meta"),
        ("meta_missing_tsyntax.dcm", "meta_no_ts", "no_file_meta"),
    ):
        shutil.copy(PYDICOM_FILES / f, cts / f"{new}.dcm")
        expect[f"{new}.dcm"] = ("quarantined", reason)
    sc = slice_from(signed)  # a "CT" screenshot: modality CT but a secondary capture
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    save(sc, cts / "sc_modality_ct.dcm")
    expect["sc_modality_ct.dcm"] = ("quarantined", "secondary_capture")

    # Damaged or unusable CT files.
    q = lambda r: ("quarantined", r)  # noqa: E731
    raw = signed.read_bytes()
    (cts / "trunc_native.dcm").write_bytes(raw[:-3000])
    expect["trunc_native.dcm"] = q("truncated_pixel_data")
    j2k = convert(signed, root / "j2k.dcm", JPEG2000Lossless).read_bytes()
    (cts / "trunc_j2k.dcm").write_bytes(j2k[: len(j2k) - 2000])
    expect["trunc_j2k.dcm"] = q("truncated_pixel_data")
    (cts / "header_only.dcm").write_bytes(raw[:700])
    expect["header_only.dcm"] = q("no_pixel_data")
    ds = pydicom.dcmread(signed)
    del ds.PixelData
    save(ds, cts / "no_pixels.dcm")
    expect["no_pixels.dcm"] = q("no_pixel_data")
    ds = pydicom.dcmread(signed)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    dcmwrite(cts / "ct_nometa.dcm", ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    expect["ct_nometa.dcm"] = q("no_file_meta")
    ds = slice_from(signed)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 8])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    save(ds, cts / "bad_jpeg_stream.dcm")
    expect["bad_jpeg_stream.dcm"] = q("decode_error")
    ds = slice_from(signed)
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "RGB", 3
    save(ds, cts / "rgb_ct.dcm")
    expect["rgb_ct.dcm"] = q("not_grayscale")
    ds = slice_from(signed)
    ds.Rows = 9000
    save(ds, cts / "huge_rows.dcm")
    expect["huge_rows.dcm"] = q("bad_pixel_format")
    ds = slice_from(signed)
    ds.RescaleSlope = "0"
    save(ds, cts / "zero_slope.dcm")
    expect["zero_slope.dcm"] = q("bad_rescale")
    ds = slice_from(signed)
    del ds.RescaleSlope
    save(ds, cts / "no_slope.dcm")
    expect["no_slope.dcm"] = q("no_rescale")
    ds = slice_from(signed)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    save(ds, cts / "multiframe_ct.dcm")
    expect["multiframe_ct.dcm"] = q("multiframe")
    save(make_ct_dataset(np.full((64, 64), 30.0), signed=True), cts / "constant.dcm")
    expect["constant.dcm"] = q("empty_slice")
    hu = np.clip(hu_of(signed), -1000, 3095)
    ds = make_ct_dataset(hu, signed=True)
    ds.PixelData = (np.rint(hu).astype(np.int64) % 4096).astype("<u2").tobytes()
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, "0"
    save(ds, cts / "rsna_wrapped.dcm")
    expect["rsna_wrapped.dcm"] = ok
    bad_meta = bytearray(raw)
    i = bad_meta.index(b"\x02\x00\x10\x00UI")  # (0002,0010) TransferSyntaxUID: length -> garbage
    bad_meta[i + 6 : i + 8] = b"\xff\x7f"
    (cts / "bad_length.dcm").write_bytes(bytes(bad_meta))
    expect["bad_length.dcm"] = q("unreadable")
    (cts / "text.dcm").write_text("this is a text file, not DICOM\n")
    expect["text.dcm"] = q("not_dicom")
    (cts / "empty.dcm").write_bytes(b"")
    expect["empty.dcm"] = q("not_dicom")
    outside = root / "outside_secret.dcm"
    shutil.copy(signed, outside)
    os.symlink(outside, cts / "link.dcm")
    expect["link.dcm"] = q("not_regular_file")

    # The table-level reasons: duplicate ID, no label (label for a missing file added below).
    shutil.copy(signed, cts / "syn_plain")  # same ID "syn_plain" as syn_plain.dcm
    expect["syn_plain"] = ok
    expect["syn_plain.dcm"] = q("duplicate_file")  # "syn_plain" sorts first
    shutil.copy(unsigned, cts / "unlabelled.dcm")
    expect["unlabelled.dcm"] = q("no_label")

    ids = sorted({Path(n).stem for n in expect if n != "unlabelled.dcm"} | {"gone"})
    pd.DataFrame({"ID": ids, "Label": [i % 2 for i in range(len(ids))]}).to_csv(root / "labels1.csv", index=False)
    return expect


def test_mixed_folder_every_file_accounted_for(synth_data, tmp_path):
    root = tmp_path / "mixed"
    expect = make_mixed_folder(synth_data, root)
    store = tmp_path / "mixed.zarr"
    r = subprocess.run(
        [sys.executable, "-m", "neurocache", "build", "--data-root", str(root), "--store", str(store),
         "--workers", "1", "--no-progress", "--json", "--config", str(_small_config(tmp_path))],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout)
    s = open_store(store)
    f = s.features
    files = f[f["status"] != "missing"]
    # Invariants: each input file exactly once; n_files == n_ok + n_quarantined; ok <-> one store row.
    listed = sorted(os.listdir(root / "CTs"))
    assert sorted(files["file"]) == listed and files["file"].is_unique
    assert info["n_files"] == len(listed) == info["n_ok"] + info["n_quarantined"]
    ok = f[f["status"] == "ok"]
    assert sorted(ok["row"]) == list(range(s.images.shape[0])) and (f.loc[f["status"] != "ok", "row"] == -1).all()
    got = {r_.file: (r_.status, r_.reason) for r_ in files.itertuples()}
    wrong = {k: (got[k], v) for k, v in expect.items() if got[k] != v}
    assert not wrong, wrong
    assert set(f["reason"]) - {""} <= set(REASONS)
    assert (f.loc[f["status"] != "ok", "detail"].str.len() > 0).all()
    miss = f[f["status"] == "missing"]
    assert list(miss["ID"]) == ["gone"] and miss["reason"].tolist() == ["missing_file"]
    # Every transfer syntax of the ok rows made it through, and each stored image is its file's preprocessing.
    cfg = s.prep
    key = bytes.fromhex(s.attrs["hash_key"])
    for rec in ok.itertuples():
        img, _ = preprocess_file(root / "CTs" / rec.file, cfg, key)
        np.testing.assert_array_equal(s.images[int(rec.row)], img)
    assert {str(t) for t in ok["transfer_syntax"]} >= set(LOSSLESS.values()) | {"1.2.840.10008.1.2.4.91"}
    q = s.quality
    assert q["counts"]["by_reason"]["secondary_capture"] == 4 and q["fixes"] == {"rsna_12bit_wrap": 1}
    assert set(q["fixes"]) <= set(FIXES)
    assert got["rsna_wrapped.dcm"] == ("ok", "") and f.set_index("file").at["rsna_wrapped.dcm", "fixes"] == "rsna_12bit_wrap"
    # Corrupt headers (a length that swallows the next elements) never carry PHI into the table.
    phi = set()
    for src in sources(synth_data):
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        phi |= {str(ds.get(k)) for k in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SOPInstanceUID")}
    text = " ".join(f[c].astype(str).str.cat(sep=" ") for c in f.columns)
    assert not [v for v in phi if v in text]


def _small_config(tmp_path: Path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text("preprocess:\n  size: 64\n  shard_size: 16\n")
    return p


# ----------------------------------------------------------------------------------------------
# 5. safety: no PHI in the store, no pickle, no path escapes
# ----------------------------------------------------------------------------------------------
def test_no_phi_anywhere_in_the_store(synth_data, tmp_path):
    store = tmp_path / "phi.zarr"
    r = subprocess.run(
        [sys.executable, "-m", "neurocache", "build", "--data-root", str(synth_data), "--store", str(store),
         "--workers", "1", "--no-progress", "--config", str(_small_config(tmp_path))],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    phi: set[str] = set()
    for p in (synth_data / "CTs").glob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID",
                   "SOPInstanceUID", "AccessionNumber", "FrameOfReferenceUID"):
            phi.add(str(ds.get(kw)))
    assert len(phi) > 20
    needles = [v.encode() for v in phi]
    for p in store.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            leaked = [n for n in needles if n in data]
            assert not leaked, (p, leaked[:3])
    table = pd.read_parquet(store / "features.parquet")
    text = " ".join(table[c].astype(str).str.cat(sep=" ") for c in table.columns)
    assert not [v for v in phi if v in text]
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]["neurocache"]
    assert len(attrs["hash_key"]) == 32  # the key is kept, so patient grouping is stable across rebuilds
    s = open_store(store)
    assert s.features["patient_key"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert s.features["patient_key"].nunique() == 8


_PICKLE = re.compile(
    r"\bimport\s+(c?pickle|dill|cloudpickle|shelve|joblib)\b|\bfrom\s+(c?pickle|dill|cloudpickle|shelve|joblib)\b"
    r"|\bpickle\.(loads?|dumps?|Unpickler|Pickler)\b|read_pickle|to_pickle|allow_pickle\s*=\s*True"
)


def test_no_pickle_anywhere_and_weights_only_loads():
    sources_ = [p for d in ("neurocache", "trainer", "bench") for p in (REPO / d).rglob("*.py")]
    assert len(sources_) > 10
    bad = []
    for p in sources_:
        text = p.read_text()
        bad += [f"{p.relative_to(REPO)}: {m.group(0)}" for m in _PICKLE.finditer(text)]
        for m in re.finditer(r"torch\.load\(", text):
            depth, j = 1, m.end()
            while depth and j < len(text):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            call = text[m.start() : j]
            if "``" in text[max(0, m.start() - 2) : m.start()]:
                continue  # inside a docstring literal
            if "weights_only=True" not in call.replace(" ", ""):
                bad.append(f"{p.relative_to(REPO)}: {call}")
    assert not bad, bad


@pytest.mark.parametrize("bad_id", ["../x", "/abs", "a/b", "..", "a\\b", "C:evil"])
def test_unsafe_label_ids_are_rejected_with_the_row(bad_id, data_copy, tmp_path):
    labels = pd.read_csv(data_copy / "labels1.csv")
    labels.loc[3, "ID"] = bad_id
    labels.to_csv(data_copy / "labels1.csv", index=False)
    with pytest.raises(InputError) as e:
        build_store(data_copy, tmp_path / "s.zarr", cfg=SMALL_PREP, workers=1, progress=False)
    assert f"labels1.csv:5: ID {bad_id!r}" in str(e.value)  # line 5 = header + 4th row
    assert not (tmp_path / "s.zarr").exists()


def test_nothing_outside_the_data_root_is_read(data_copy, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(next((data_copy / "CTs").glob("*.dcm")), outside / "x.dcm")
    # A CT folder that is a symlink out of the data root is refused...
    alt = data_copy / "CTs_link"
    os.symlink(outside, alt)
    with pytest.raises(InputError, match="outside the data root"):
        build_store(data_copy, tmp_path / "a.zarr", cfg=SMALL_PREP, cts="CTs_link", workers=1, progress=False)
    with pytest.raises(InputError, match="inside the data root"):
        build_store(data_copy, tmp_path / "b.zarr", cfg=SMALL_PREP, cts="../elsewhere", workers=1, progress=False)
    # ...and a symlinked file is listed (accounted for) but never followed.
    os.symlink(outside / "x.dcm", data_copy / "CTs" / "ID_link.dcm")
    res = build_store(data_copy, tmp_path / "c.zarr", cfg=SMALL_PREP, workers=1, progress=False)
    row = res.features.set_index("ID").loc["ID_link"]
    assert row["reason"] == "not_regular_file" and row["content_hash"] == "" and row["file_bytes"] == 0
    # The build wrote nothing outside its store.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr", "data", "elsewhere"]


def test_bad_data_doc_lists_every_reason_and_fix():
    text = (REPO / "docs" / "bad-data.md").read_text().split("## What happens to bad data", 1)[1]
    missing = [c for c in [*REASONS, *FIXES] if f"`{c}`" not in text]
    assert not missing, missing


def test_bad_data_reason_table_is_reasons_py_in_order():
    """docs/bad-data.md's reason table lists exactly :data:`REASONS`, in the order the checks run."""
    text = (REPO / "docs" / "bad-data.md").read_text().split("## What happens to bad data", 1)[1]
    table = text.split("| reason | what it means |", 1)[1].split("\n\n", 1)[0]
    codes = re.findall(r"^\| `([a-z_0-9]+)` \|", table, flags=re.M)
    assert codes == list(REASONS)


def test_decoder_crash_is_isolated_and_quarantined(synth_data, tmp_path):
    """A codec that segfaults on one file (simulated by a test hook) costs one row, not the build."""
    victim = sorted(os.listdir(synth_data / "CTs"))[9]  # in the second batch of 8
    cfg = _small_config(tmp_path)

    def build(store: Path, workers: int) -> subprocess.CompletedProcess:
        cmd = cli_command("build", "--data-root", str(synth_data), "--store", str(store),
                          "--workers", str(workers), "--no-progress", "--json", "--config", str(cfg), crash_on=victim)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    # In-process (--workers 1): the crash kills the build; the same command again resumes and
    # decodes the file named by the in-flight journal in a child process.
    serial = tmp_path / "serial.zarr"
    r = build(serial, 1)
    assert r.returncode == -signal.SIGSEGV
    r = build(serial, 1)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert info["n_ok"] == 47 and info["by_reason"] == {"decoder_crash": 1}
    row = open_store(serial).features.set_index("file").loc[victim]
    assert row["reason"] == "decoder_crash" and "SIGSEGV" in row["detail"] and row["content_hash"] != ""
    # Dask workers: the dead worker's batch is redone by the client in the same run.
    r = build(tmp_path / "dask.zarr", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["by_reason"] == {"decoder_crash": 1}
    np.testing.assert_array_equal(open_store(serial).images[:], open_store(tmp_path / "dask.zarr").images[:])


def test_safe_message_drops_object_addresses_whatever_their_digits():
    """An address with six digits in a row once became "<number>" + its tail, so a decoder's message
    (``<_io.BytesIO object at 0x...>``) differed between builds of the same file."""
    from neurocache.dicomheader import safe_message

    msgs = {safe_message(ValueError(f"cannot identify image file <_io.BytesIO object at {a}>"))
            for a in ("0x7f3a1c2b5bd0", "0x7f1234567bd0", "0xabcdef")}
    assert msgs == {"ValueError: cannot identify image file <_io.BytesIO object>"}
