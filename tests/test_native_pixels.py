"""The uncompressed fast path (:func:`neurocache.dicomio.native_pixels`) returns pydicom's ``pixel_array``."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from neurocache.dicomio import header_meta, native_pixels
from neurocache.synth import make_ct_dataset


def _roundtrip(ds: pydicom.Dataset, implicit: bool = False) -> pydicom.Dataset:
    buf = io.BytesIO()
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits_stored", [16, 12, 10])
@pytest.mark.parametrize("implicit", [False, True])
def test_same_array_as_pydicom(signed: bool, bits_stored: int, implicit: bool) -> None:
    rng = np.random.default_rng(bits_stored)
    hu = rng.normal(0, 600, (37, 29)).clip(-1024, 2000)
    ds = make_ct_dataset(hu, signed=signed)
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    # Garbage in the unused high bits, which pydicom clears (unsigned) or sign-extends (signed).
    raw = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    raw[::3] |= np.uint16(0xF000)
    raw[1::5] ^= np.uint16(0x8000)
    ds.PixelData = raw.tobytes()
    ds = _roundtrip(ds, implicit)
    got = native_pixels(ds, header_meta(ds, bytes(16)))
    want = ds.pixel_array
    assert got is not None and got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


def test_other_kinds_are_left_to_pydicom() -> None:
    ds = _roundtrip(make_ct_dataset(np.zeros((8, 8)), signed=True))
    meta = header_meta(ds, bytes(16))
    assert native_pixels(ds, {**meta, "transfer_syntax": str(pydicom.uid.RLELossless)}) is None
    assert native_pixels(ds, {**meta, "bits_allocated": 8}) is None
    assert native_pixels(ds, {**meta, "n_frames": 2}) is None
    assert native_pixels(ds, {**meta, "rows": 9}) is None  # Pixel Data shorter than the header says
