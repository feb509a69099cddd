"""Pure preprocessing math: HU conversion, histogram percentiles, skull box, letterbox."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neurocache.config import PrepConfig
from neurocache.crop import bounding_box, crop, letterbox, letterbox_int16, to_int16
from neurocache.dicomio import SliceData
from neurocache.hu import histogram_percentiles, stored_histogram, stored_to_hu, wrap_12bit
from neurocache.preprocess import preprocess_slice
from neurocache.reasons import Quarantine


def test_hu_unsigned_representation_hand_computed():
    # 12-bit unsigned with intercept -1024: stored 0 -> -1024 HU, 1024 -> 0, 1064 -> 40, 3024 -> 2000.
    stored = np.array([[0, 1024], [1064, 3024]], dtype=np.uint16)
    hu = stored_to_hu(stored, 1.0, -1024.0)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, [[-1024, 0], [40, 2000]])


def test_hu_signed_representation_hand_computed():
    stored = np.array([[-1000, 0], [40, 1500]], dtype=np.int16)
    np.testing.assert_array_equal(stored_to_hu(stored, 1.0, 0.0), [[-1000, 0], [40, 1500]])


def test_hu_slope_applied():
    stored = np.array([[10, 20]], dtype=np.int16)
    np.testing.assert_allclose(stored_to_hu(stored, 0.5, -10.0), [[-5.0, 0.0]])


def test_wrap_12bit_matches_rsna_formula():
    stored = np.array([0, 3095, 3096, 4095], dtype=np.uint16)
    np.testing.assert_array_equal(wrap_12bit(stored), [0, 3095, -1000, -1])


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int16, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.integers(-2000, 3000)),
    st.lists(st.floats(0, 100), min_size=1, max_size=5),
)
def test_histogram_percentiles_equal_numpy(a, qs):
    off, cum = stored_histogram(a)
    np.testing.assert_allclose(histogram_percentiles(off, cum, qs), np.percentile(a, qs), rtol=0, atol=1e-9)


def test_bounding_box_on_synthetic_mask():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:25] = True
    mask[12, 3] = True
    assert bounding_box(mask) == (5, 13, 3, 25)
    assert crop(np.arange(600).reshape(20, 30), (5, 13, 3, 25)).shape == (8, 22)
    assert bounding_box(np.zeros((4, 4), bool)) is None


@pytest.mark.parametrize("h,w", [(100, 50), (50, 100), (64, 64), (300, 200)])
def test_letterbox_shape_aspect_and_pad(h, w):
    img = np.full((h, w), 100.0, np.float32)
    out, scale = letterbox(img, 64, -1024)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert scale == pytest.approx(64 / max(h, w))
    inside = out > -1000
    r0, r1, c0, c1 = bounding_box(inside)
    # The content keeps the aspect ratio (to a pixel) and is centred.
    assert (r1 - r0, c1 - c0) == (round(h * scale), round(w * scale))
    assert abs(r0 - (64 - r1)) <= 1 and abs(c0 - (64 - c1)) <= 1
    np.testing.assert_allclose(out[inside], 100.0, atol=1e-3)
    assert np.all(out[~inside] == -1024)


@pytest.mark.parametrize("pad", [-1024.0, -1000.5, 0.0, 1e9])
def test_letterbox_int16_is_to_int16_of_letterbox(pad):
    rng = np.random.default_rng(5)
    for h, w in [(1, 1), (64, 64), (30, 64), (64, 17), (200, 131), (7, 300)]:
        img = rng.normal(0, 2000, (h, w)).astype(np.float32)
        img[rng.random((h, w)) < 0.2] = 40000.0  # beyond int16: clipped
        img[0, 0] = 2.5  # a half: rounds to even
        canvas, scale = letterbox(img, 64, pad)
        got, got_scale = letterbox_int16(img, 64, pad)
        assert got.dtype == np.int16 and got_scale == scale
        np.testing.assert_array_equal(got, to_int16(canvas))


def test_to_int16_rounds_and_clips():
    np.testing.assert_array_equal(to_int16(np.array([1.4, 1.6, -2.5, 1e6, -1e6])), [1, 2, -2, 32767, -32768])


def _phantom(signed: bool) -> SliceData:
    hu = np.full((80, 100), -1000, np.int32)
    yy, xx = np.mgrid[:80, :100]
    r = ((yy - 40) / 30.0) ** 2 + ((xx - 50) / 40.0) ** 2
    hu[r < 1.0] = 1200
    hu[r < 0.8] = 30
    if signed:
        return SliceData(hu.astype(np.int16), 1.0, 0.0)
    return SliceData((hu + 1024).astype(np.uint16), 1.0, -1024.0)


def test_preprocess_slice_same_for_both_representations():
    cfg = PrepConfig(size=64)
    a = preprocess_slice(_phantom(True), cfg)
    b = preprocess_slice(_phantom(False), cfg)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.dtype == np.int16 and a.image.shape == (64, 64)
    # Skull box = the 1200 HU ellipse's extent (rows 11..69, cols 11..89).
    assert a.box == (11, 70, 11, 90)
    assert a.features["hu_min"] == -1000 and a.features["hu_max"] == 1200
    # brain 30 HU at the centre, skull ring present, padding is -1024
    assert a.image[32, 32] == 30 and a.image.max() == 1200 and a.image[0, 0] == -1024


def test_floor_sets_low_percentile_to_pad():
    stored = np.full((50, 50), 1000, np.int16)
    stored[:, :5] = -3000  # out-of-field padding below the 1st percentile
    stored[20:30, 20:30] = 1500
    stored[25, 25] = 1600
    out = preprocess_slice(SliceData(stored, 1.0, 0.0), PrepConfig(size=50, floor_percentile=1.0, min_box_pixels=2))
    assert out.floor_hu == -3000.0
    assert not np.any(out.image == -3000)


def test_constant_slice_is_quarantined_not_crash():
    with pytest.raises(Quarantine) as e:
        preprocess_slice(SliceData(np.zeros((64, 64), np.int16), 1.0, -1024.0), PrepConfig())
    assert e.value.reason == "empty_slice"


def test_tiny_bone_box_is_quarantined():
    # Noise (std > 1) with a 2x2 bright spot: the bone box is 2 px, below min_box_pixels.
    stored = np.random.default_rng(0).normal(0, 5, (64, 64)).astype(np.int16)
    stored[30:32, 30:32] = 2000
    with pytest.raises(Quarantine) as e:
        preprocess_slice(SliceData(stored, 1.0, 0.0), PrepConfig(skull_percentile=99.9))
    assert e.value.reason == "no_skull"
