"""The compiled slice kernels give the numpy reference's values exactly (neurocache.kernels)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from neurocache.crop import threshold_box
from neurocache.hu import floor_low_values, stored_histogram, stored_to_hu
from neurocache.kernels import box_from_maxima, floor_crop_hu, kernel_input, scan_slice

DTYPES = ["int16", "uint16", "int32", "int64", "uint8", "int8", "uint32", ">i2", ">u2"]


def _random_slice(rng: np.random.Generator, dtype: str, shape: tuple[int, int]) -> np.ndarray:
    """Random values over a CT-like range plus the dtype's own extremes at random places."""
    dt = np.dtype(dtype)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -2048), min(info.max, 4095)
    a = rng.integers(lo, hi, size=shape, endpoint=True)
    if dt.itemsize <= 2:  # the full range of a 16-bit type fits a histogram
        flat = a.reshape(-1)
        k = min(flat.size, 3)
        flat[rng.choice(flat.size, size=k, replace=False)] = [info.min, info.max, 0][:k]
    return a.astype(dt)


def _reference_scan(a: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    offset, cum = stored_histogram(a)
    return offset, cum, a.max(axis=1), a.max(axis=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (37, 53), (128, 96)])
def test_scan_slice_equals_numpy(dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"{dtype}{shape}".encode()))
    for _ in range(3):
        a = _random_slice(rng, dtype, shape)
        offset, cum, row_max, col_max = scan_slice(a)
        r_off, r_cum, r_rows, r_cols = _reference_scan(a)
        assert offset == r_off and isinstance(offset, int)
        assert cum.dtype == np.intp and np.array_equal(cum, r_cum)
        assert cum[-1] == a.size and len(cum) == int(a.max()) - int(a.min()) + 1
        assert np.array_equal(row_max, r_rows) and np.array_equal(col_max, r_cols)


def test_scan_slice_read_only_strided_and_constant():
    rng = np.random.default_rng(1)
    base = _random_slice(rng, "int16", (64, 80))
    ro = base.copy()
    ro.flags.writeable = False  # what native_pixels hands over (np.frombuffer of the Pixel Data)
    strided = base[::2, 1::3]  # not C-contiguous
    for a in (ro, strided, np.full((5, 6), -1024, np.int16), np.full((3, 3), 65535, np.uint16)):
        got, want = scan_slice(a), _reference_scan(a)
        assert got[0] == want[0] and all(np.array_equal(g, w) for g, w in zip(got[1:], want[1:]))
    assert scan_slice(np.full((5, 6), -1024, np.int16))[1].tolist() == [30]


def test_kernel_input_keeps_values_and_rejects_non_integers():
    a = np.arange(-5, 7, dtype=">i2").reshape(3, 4)
    k = kernel_input(a)
    assert k.dtype == np.int32 and k.flags.c_contiguous and np.array_equal(k, a)
    native = np.zeros((2, 2), np.uint16)
    assert kernel_input(native) is native
    assert kernel_input(np.array([[2**32 - 1]], np.uint32)).dtype == np.int64
    with pytest.raises(TypeError):
        kernel_input(np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError):
        kernel_input(np.zeros(4, np.int16))
    with pytest.raises(TypeError):
        kernel_input(np.array([[2**63]], np.uint64))
    with pytest.raises(TypeError):
        kernel_input(np.array([[-(2**53) - 1]], np.int64))
    with pytest.raises(ValueError):
        scan_slice(np.zeros((0, 4), np.int16))


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "uint8"])
def test_box_from_maxima_equals_threshold_box(dtype):
    rng = np.random.default_rng(2)
    for _ in range(20):
        a = _random_slice(rng, dtype, (int(rng.integers(1, 60)), int(rng.integers(1, 60))))
        _, _, row_max, col_max = scan_slice(a)
        vals = np.unique(a)
        # thresholds at values, between values, below the minimum and above the maximum
        for t in (float(rng.choice(vals)), float(rng.choice(vals)) + 0.5, float(vals[0]) - 1, float(vals[-1]), float(vals[-1]) + 0.25):
            assert box_from_maxima(row_max, col_max, t) == threshold_box(a, t)
    assert box_from_maxima(np.array([1, 5, 2]), np.array([5, 0]), 6.0) is None


def _reference_floor(a, box, slope, intercept, thr, pad):
    r0, r1, c0, c1 = box
    c = a[r0:r1, c0:c1]
    return floor_low_values(stored_to_hu(c, slope, intercept), c, thr, pad)


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "int64", "uint8", ">i2"])
@pytest.mark.parametrize(("slope", "intercept"), [(1.0, 0.0), (1.0, -1024.0), (0.5, -1024.5), (2.5, 7.25),
                                                   (1.0000001, -1000.0), (3.1e-3, 1e-7), (1e38, 0.0)])
def test_floor_crop_hu_equals_numpy(dtype, slope, intercept):
    rng = np.random.default_rng(3)
    for _ in range(4):
        a = _random_slice(rng, dtype, (int(rng.integers(1, 70)), int(rng.integers(1, 70))))
        r0, c0 = int(rng.integers(0, a.shape[0])), int(rng.integers(0, a.shape[1]))
        box = (r0, int(rng.integers(r0 + 1, a.shape[0] + 1)), c0, int(rng.integers(c0 + 1, a.shape[1] + 1)))
        for thr in (float(rng.choice(a.ravel())), float(a.min()) - 1.0, float(a.min()) + 0.5, float(a.max())):
            for pad in (-1024.0, 0.0, -3.3):
                got = floor_crop_hu(a, box, slope, intercept, thr, pad)
                with np.errstate(over="ignore"):  # 1e38 x 4095 is inf in float32, in both
                    want = _reference_floor(a, box, slope, intercept, thr, pad)
                assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous
                # bit for bit (-0.0 and 0.0, infinities included)
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_floor_crop_hu_non_finite_threshold():
    a = np.array([[-5, 0], [7, 3]], np.int16)
    for thr in (np.nan, np.inf, -np.inf, 1e300, -1e300):
        want = _reference_floor(a, (0, 2, 0, 2), 1.0, 0.0, thr, -9.0)
        assert np.array_equal(floor_crop_hu(a, (0, 2, 0, 2), 1.0, 0.0, thr, -9.0), want)


def test_floor_crop_hu_checks_the_box():
    a = np.zeros((4, 5), np.int16)
    assert floor_crop_hu(a, (0, 0, 1, 3), 1.0, 0.0, -1.0, 0.0).shape == (0, 2)
    with pytest.raises(ValueError):
        floor_crop_hu(a, (0, 5, 0, 2), 1.0, 0.0, -1.0, 0.0)
    with pytest.raises(ValueError):
        floor_crop_hu(a, (2, 1, 0, 2), 1.0, 0.0, -1.0, 0.0)
