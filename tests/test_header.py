"""header_meta's raw-element reads give exactly what pydicom's ``ds.get`` gives (neurocache.dicomheader)."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import pydicom
import pytest

from neurocache.dicomheader import _RAW_READ, _get, _value, header_meta
from neurocache.dicomio import quiet_pydicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
KEY = bytes(range(16))


def _datasets(paths: list[Path]) -> list[tuple[str, bytes]]:
    """(name, bytes) of the files pydicom reads (force=True, as the build's fallback does)."""
    out = []
    for p in paths:
        raw = p.read_bytes()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.dcmread(io.BytesIO(raw), force=True)
        except Exception:  # noqa: BLE001 - files pydicom cannot read at all are not header_meta's input
            continue
        out.append((p.name, raw))
    return out


def _fresh(raw: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(raw), force=True)


def _same(a: object, b: object) -> bool:
    """Equal values, NaN equal to NaN, and of the same type (DSfloat vs float, MultiValue vs str)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return type(a) is type(b)
    return type(a) is type(b) and (a == b or repr(a) == repr(b))


@pytest.fixture(scope="module")
def files(synth_data) -> list[tuple[str, bytes]]:
    paths = sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file()) + sorted((synth_data / "CTs").glob("*.dcm"))[:20]
    found = _datasets(paths)
    assert len(found) > 80
    return found


def test_raw_reads_equal_ds_get_on_every_pydicom_test_file(files):
    checked = 0
    with quiet_pydicom(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, raw in files:
            for kw in _RAW_READ:
                fast, slow = _value(_fresh(raw), kw), _get(_fresh(raw), kw)
                assert _same(fast, slow), (name, kw, fast, slow)
                checked += slow is not None
    assert checked > 1000  # most files have most of these elements


def test_header_meta_equals_the_pydicom_only_path(files):
    """The first call reads raw elements; once every element is converted (iterating the dataset),
    header_meta takes ds.get's path for all of them: the rows must be equal."""
    with quiet_pydicom(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, raw in files:
            ds = _fresh(raw)
            fast = header_meta(ds, KEY)
            for elem in ds:  # converts every raw element in place
                del elem
            slow = header_meta(ds, KEY)
            assert fast.keys() == slow.keys()
            bad = {k: (fast[k], slow[k]) for k in fast if not _same(fast[k], slow[k])}
            assert not bad, (name, bad)


def test_raw_reads_fall_back_when_the_file_vr_differs(synth_data):
    """An explicit VR other than the dictionary's (here Rows written as UN) goes through ds.get."""
    src = sorted((synth_data / "CTs").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds["Rows"].VR = "UN"
    ds["Rows"].value = ds.Rows.to_bytes(2, "little")
    buf = io.BytesIO()
    ds.save_as(buf)
    with quiet_pydicom():
        assert _value(_fresh(buf.getvalue()), "Rows") == _get(_fresh(buf.getvalue()), "Rows")
        assert _value(_fresh(buf.getvalue()), "NotAKeyword") is None
