"""Property tests: hypothesis-generated corruptions of valid synth DICOM files (truncation, byte flips,
bad tag values, wrong lengths) never crash preprocessing or a build, are always accounted for, and
never put a patient identifier into the feature table."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from neurocache.build import build_store
from neurocache.preprocess import ROW_COLUMNS, preprocess_file
from neurocache.reasons import OK, QUARANTINED, REASONS, TABLE_REASONS

from conftest import HASH_KEY, SMALL_PREP
from test_robustness import convert, sources

# Elements worth corrupting: (keyword, tag bytes, VR) of explicit-VR-little-endian files.
ELEMENTS = {
    "TransferSyntaxUID": (b"\x02\x00\x10\x00", b"UI"),
    "SOPClassUID": (b"\x08\x00\x16\x00", b"UI"),
    "Modality": (b"\x08\x00\x60\x00", b"CS"),
    "PatientName": (b"\x10\x00\x10\x00", b"PN"),
    "PatientID": (b"\x10\x00\x20\x00", b"LO"),
    "ImagePositionPatient": (b"\x20\x00\x32\x00", b"DS"),
    "SamplesPerPixel": (b"\x28\x00\x02\x00", b"US"),
    "PhotometricInterpretation": (b"\x28\x00\x04\x00", b"CS"),
    "Rows": (b"\x28\x00\x10\x00", b"US"),
    "Columns": (b"\x28\x00\x11\x00", b"US"),
    "PixelSpacing": (b"\x28\x00\x30\x00", b"DS"),
    "BitsAllocated": (b"\x28\x00\x00\x01", b"US"),
    "BitsStored": (b"\x28\x00\x01\x01", b"US"),
    "HighBit": (b"\x28\x00\x02\x01", b"US"),
    "PixelRepresentation": (b"\x28\x00\x03\x01", b"US"),
    "RescaleIntercept": (b"\x28\x00\x52\x10", b"DS"),
    "RescaleSlope": (b"\x28\x00\x53\x10", b"DS"),
    "PixelData": (b"\xe0\x7f\x10\x00", None),
}
LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV")


def locate(raw: bytes, tag: bytes) -> tuple[int, int, int] | None:
    """(offset of the length field, its size, value length) of an explicit-VR-LE element, or None."""
    i = raw.find(tag, 132)
    if i < 0:
        return None
    vr = raw[i + 4 : i + 6]
    if vr in LONG_VRS:
        return i + 8, 4, int.from_bytes(raw[i + 8 : i + 12], "little")
    return i + 6, 2, int.from_bytes(raw[i + 6 : i + 8], "little")


@pytest.fixture(scope="module")
def bases(synth_data, tmp_path_factory) -> dict[str, tuple[bytes, list[str]]]:
    """name -> (file bytes, the identifying strings of that file)."""
    d = tmp_path_factory.mktemp("bases")
    signed, unsigned = sources(synth_data)
    out = {}
    files = {"native_signed": signed, "native_unsigned": unsigned}
    for name, ts in (("rle", RLELossless), ("j2k", JPEG2000Lossless), ("jls", JPEGLSLossless)):
        files[name] = convert(signed, d / f"{name}.dcm", ts)
    for name, p in files.items():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        phi = [str(ds.get(k)) for k in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID",
                                         "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber")]
        out[name] = (Path(p).read_bytes(), phi)
    return out


# One corruption: ("truncate", fraction) | ("flip", fraction, xor, in_tail) | ("value", element, bytes)
# | ("length", element, new length).
corruption = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0, exclude_max=True)),
    st.tuples(st.just("flip"), st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255), st.booleans()),
    st.tuples(st.just("value"), st.sampled_from(sorted(ELEMENTS)), st.one_of(
        st.binary(min_size=0, max_size=16),
        st.sampled_from([b"0", b"-0", b"nan", b"inf", b"-1", b"1e9", b"abc", b"\x00\x00", b"\xff\xff", b"MR", b"OT",
                         b"RGB", b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.5.1.4.1.1.7", b"1.2.3"]),
    )),
    st.tuples(st.just("length"), st.sampled_from(sorted(ELEMENTS)), st.one_of(
        st.integers(0, 64), st.integers(0, 2**32 - 1), st.sampled_from([0xFFFF, 0xFFFFFFFF, 1, 3, 7]))),
)


def corrupt(raw: bytes, ops: list) -> bytes:
    data = bytearray(raw)
    for op in ops:
        if not data:
            break
        kind = op[0]
        if kind == "truncate":
            data = data[: int(op[1] * len(data))]
        elif kind == "flip":
            lo = max(0, len(data) - 512) if op[3] else 0
            pos = lo + int(op[1] * (len(data) - lo))
            data[pos] ^= op[2]
        else:
            where = locate(bytes(data), ELEMENTS[op[1]][0])
            if where is None:
                continue
            off, size, length = where
            if kind == "value" and length != 0xFFFFFFFF and size == 2:
                value = op[2] if len(op[2]) % 2 == 0 else op[2] + b" "
                start = off + size
                data[start : start + length] = value
                data[off : off + 2] = len(value).to_bytes(2, "little")
            elif kind == "length":
                data[off : off + size] = (op[2] % (1 << (8 * size))).to_bytes(size, "little")
    return bytes(data)


def check_row(image, row: dict, phi: list[str]) -> None:
    assert row["status"] in (OK, QUARANTINED)
    if row["status"] == OK:
        assert row["reason"] == "" and image is not None
        assert image.shape == (SMALL_PREP.size, SMALL_PREP.size) and image.dtype == np.int16
    else:
        assert row["reason"] in REASONS and row["reason"] not in TABLE_REASONS and image is None
        assert isinstance(row["detail"], str) and row["detail"]
    assert set(ROW_COLUMNS) <= set(row)
    text = " ".join(str(v) for v in row.values())
    leaked = [v for v in phi if len(v) >= 6 and v in text]
    assert not leaked, (leaked, row["reason"], row["detail"][:300])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(["native_signed", "native_unsigned", "rle", "j2k", "jls"]),
       ops=st.lists(corruption, min_size=1, max_size=4))
def test_corrupted_file_never_crashes_and_is_accounted_for(bases, base, ops):
    raw, phi = bases[base]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.dcm"
        p.write_bytes(corrupt(raw, ops))
        image, row = preprocess_file(p, SMALL_PREP, HASH_KEY)
    check_row(image, row, phi)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruptions=st.lists(st.tuples(st.sampled_from(["native_signed", "rle", "j2k"]),
                                      st.lists(corruption, min_size=1, max_size=3)), min_size=1, max_size=5))
def test_build_over_corrupted_files_accounts_for_every_file(synth_data, bases, corruptions):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "data"
        (root / "CTs").mkdir(parents=True)
        good = sorted((synth_data / "CTs").glob("*.dcm"))[:3]
        for p in good:
            shutil.copy(p, root / "CTs" / p.name)
        names = [p.stem for p in good]
        for i, (base, ops) in enumerate(corruptions):
            (root / "CTs" / f"ID_bad{i:02d}.dcm").write_bytes(corrupt(bases[base][0], ops))
            names.append(f"ID_bad{i:02d}")
        pd.DataFrame({"ID": names, "Label": [i % 2 for i in range(len(names))]}).to_csv(root / "labels1.csv", index=False)
        res = build_store(root, Path(d) / "s.zarr", cfg=SMALL_PREP, workers=1, progress=False, hash_key=HASH_KEY)
        f = res.features
        assert sorted(f["file"]) == sorted(p.name for p in (root / "CTs").iterdir())  # each file exactly once
        c = res.attrs["counts"]
        assert c["n_files"] == len(names) == c["n_ok"] + c["n_quarantined"]
        ok = f[f["status"] == OK]
        assert sorted(ok["row"]) == list(range(res.attrs["shape"][0]))
        assert set(f["ID"][: 0]) == set() and {p.stem for p in good} <= set(ok["ID"])
