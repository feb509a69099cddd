"""Property tests: hypothesis-generated corruptions of valid synth DICOM files (truncation, byte flips,
bad tag values, wrong lengths) never crash preprocessing or a build, are always accounted for, and
never put a patient identifier into the feature table; CT-folder entries of any name (any bytes,
UTF-8 or not) and type (file, folder, FIFO, symlink) get exactly one row each."""

from __future__ import annotations

import contextlib
import io
import os
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
from neurocache.cli import main as neurocache_main
from neurocache.inputs import Inputs, read_labels, unsafe_id
from neurocache.preprocess import ROW_COLUMNS, preprocess_file
from neurocache.reasons import MISSING, OK, QUARANTINED, REASONS, TABLE_REASONS

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


# ----------------------------------------------------------------------------------------------
# Any entry names and types: one row per entry, one per label without an entry (issue #15)
# ----------------------------------------------------------------------------------------------
ENTRY_TYPES = ("dicom", "empty", "directory", "fifo", "symlink_to_dir", "dangling_symlink")
NOT_REGULAR = {"directory", "fifo", "symlink_to_dir", "dangling_symlink"}


def _allowed(name: bytes) -> bool:
    """A name the file system takes: no ``/`` or NUL, not ``.``/``..``, at most 255 bytes."""
    return 0 < len(name) <= 255 and b"/" not in name and b"\0" not in name and name not in (b".", b"..")


entry_name = st.one_of(
    st.binary(min_size=1, max_size=24),  # anything, mostly not UTF-8
    st.text(min_size=1, max_size=16).map(lambda t: t.encode("utf-8")),  # any UTF-8 (spaces, accents, newlines)
    st.tuples(st.sampled_from([b"ID_", b"", b"x."]), st.binary(max_size=6), st.sampled_from([b".dcm", b".DCM", b""]))
    .map(lambda t: t[0] + t[1] + b"\xe9" + t[2]),  # a Latin-1 byte inside an ID-like name
    st.sampled_from([b"ID_a", b"ID_a.dcm", b"ID_a.DCM", b"ID a.dcm", b".hidden", b"ID_caf\\xe9.dcm", b"x" * 255]),
).filter(_allowed)


def _answers(name: bytes) -> str:
    """The label ID an entry answers to, computed from the bytes (docs/bad-data.md, "Entry types and names")."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        text = name.decode("latin-1")
    return text.rsplit(".", 1)[0] if "." in text[1:] and not text.endswith(".") else text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[bytes, Path]:
    """(one synth slice at 64 px that the build caches as ``ok``, a config file with SMALL_PREP)."""
    from neurocache.synth import generate_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root, patients=1, slices_per_patient=1, size=64, positive_frac=0.0, seed=3)
    path = next((root / "CTs").iterdir())
    _, row = preprocess_file(path, SMALL_PREP, HASH_KEY)
    assert row["status"] == OK, row["detail"]
    config = root / "small.yaml"
    config.write_text(f"preprocess:\n  size: {SMALL_PREP.size}\n  shard_size: {SMALL_PREP.shard_size}\n")
    return path.read_bytes(), config


def _make_entry(cts: bytes, name: bytes, kind: str, data: bytes) -> None:
    path = os.path.join(cts, name)
    if kind == "dicom":
        with open(path, "wb") as fh:
            fh.write(data)
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink_to_dir":
        os.symlink(os.path.dirname(cts), path)
    else:
        os.symlink(b"/nonexistent/neurocache/target.dcm", path)


def _expected_rows(entries: dict[bytes, str], labels: dict[str, int]) -> list[tuple[str, str, str]]:
    """(file as shown, status, reason) of every non-hidden entry, by the rules of docs/bad-data.md."""
    visible = {n: k for n, k in entries.items() if not n.startswith(b".")}
    out, seen_ids = [], set()
    for name in sorted(visible, key=lambda n: (Inputs.file_id(Path(os.fsdecode(n))), os.fsdecode(n))):
        kind, shown = visible[name], name.decode("utf-8", "backslashreplace")
        if kind in NOT_REGULAR:
            out.append((shown, QUARANTINED, "not_regular_file"))
            continue
        if shown.encode("utf-8") != name:  # not valid UTF-8: some bytes were escaped
            out.append((shown, QUARANTINED, "bad_file_name"))
            continue
        fid = Inputs.file_id(Path(shown))
        if fid in seen_ids:  # a regular file with an ID taken by an earlier regular file (by name)
            out.append((shown, QUARANTINED, "duplicate_file"))
        elif kind == "empty":
            out.append((shown, QUARANTINED, "not_dicom"))
        else:
            out.append((shown, OK, "") if fid in labels else (shown, QUARANTINED, "no_label"))
        seen_ids.add(fid)
    return sorted(out)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.dictionaries(entry_name, st.sampled_from(ENTRY_TYPES), min_size=1, max_size=7),
       label_some=st.lists(st.booleans(), min_size=7, max_size=7),
       extra_labels=st.lists(st.from_regex(r"ID_[a-z0-9]{1,4}", fullmatch=True), max_size=3, unique=True),
       data=st.data())
def test_any_entry_names_and_types_get_one_row_each(tiny, entries, label_some, extra_labels, data):
    """``neurocache build`` (in-process CLI, no --strict) over entries of any name and type exits 0;
    every non-hidden entry gets exactly its one row with the reason the rules of docs/bad-data.md give, and every
    label no entry answers to one ``missing_file`` row."""
    dicom, config = tiny
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "data"
        cts = os.fsencode(root / "CTs")
        os.makedirs(cts)
        for name, kind in entries.items():
            _make_entry(cts, name, kind, dicom)
        # Labels for some entries (those whose answer is a usable CSV ID) and a few IDs with no entry.
        labels: dict[str, int] = {}
        for (name, _), pick in zip(entries.items(), label_some):
            a = _answers(name)
            if pick and a.isprintable() and unsafe_id(a) is None:
                labels[a] = data.draw(st.integers(0, 1))
        for i in extra_labels:
            labels.setdefault(i, 1)
        pd.DataFrame({"ID": list(labels), "Label": list(labels.values())}).to_csv(root / "labels1.csv", index=False)
        assert read_labels(root / "labels1.csv")[0]["ID"].tolist() == list(labels)  # the CSV round-trips

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = neurocache_main(["build", "--data-root", str(root), "--store", str(Path(d) / "s.zarr"),
                                  "--workers", "1", "--no-progress", "--json", "--config", str(config)])
        assert rc == 0
        out.getvalue().encode("utf-8")  # printable as UTF-8 (strict)
        f = pd.read_parquet(Path(d) / "s.zarr" / "features.parquet")
    want = _expected_rows(entries, labels)
    files = f[f["status"] != MISSING]
    assert sorted(zip(files["file"], files["status"], files["reason"])) == want
    answered = {_answers(n) for n in entries if not n.startswith(b".")}
    missing = sorted(i for i in labels if i not in answered)
    assert sorted(f.loc[f["status"] == MISSING, "ID"]) == missing
    assert len(f) == len(want) + len(missing)
    assert (f.loc[f["status"] == MISSING, "reason"] == "missing_file").all()
    assert int((f["status"] == OK).sum()) == sum(1 for _, s, _ in want if s == OK)
