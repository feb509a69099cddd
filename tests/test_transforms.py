"""Batched device transforms: windowing, resize, random affine, normalize, BatchTransform."""

from __future__ import annotations

import pytest
import torch

from trainer.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugConfig,
    BatchTransform,
    expand_windows,
    normalize,
    random_affine,
    resize,
    window,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 4, c: int = 3, s: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, c, s, s), generator=_gen(seed))


# ------------------------------------------------------------------ window
def test_window_hand_values_and_repeat_to_three_channels():
    hu = torch.tensor([[[0, 40, 80], [-1024, 2000, 20]]], dtype=torch.int16)  # (1, 2, 3)
    out = window(hu, [(40, 80)])
    assert out.dtype == torch.float32
    assert out.shape == (1, 3, 2, 3)
    expected = torch.tensor([[0.0, 0.5, 1.0], [0.0, 1.0, 0.25]])
    for ch in range(3):
        torch.testing.assert_close(out[0, ch], expected)


def test_window_multiple_windows_are_separate_channels():
    hu = torch.tensor([[[0.0, 40.0, 100.0]]])  # float input works too
    out = window(hu, [(40, 80), (0, 200)])  # 2 windows -> padded to 3 with the last
    assert out.shape == (1, 3, 1, 3)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([0.5, 0.7, 1.0]))
    torch.testing.assert_close(out[0, 2], out[0, 1])

    three = window(hu, [(40, 80), (0, 200), (100, 20)])
    torch.testing.assert_close(three[0, 2, 0], torch.tensor([0.0, 0.0, 0.5]))
    four = window(hu, [(40, 80), (0, 200), (100, 20), (0, 2)])
    assert four.shape == (1, 4, 1, 3)
    torch.testing.assert_close(four[0, 3, 0], torch.tensor([0.5, 1.0, 1.0]))  # low = -1 HU


def test_window_rejects_bad_input():
    with pytest.raises(ValueError, match="width"):
        window(torch.zeros((1, 2, 2)), [(40, 0)])
    with pytest.raises(ValueError, match="at least one"):
        window(torch.zeros((1, 2, 2)), [])
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        window(torch.zeros((2, 2)), [(40, 80)])
    assert expand_windows([(1, 2)]) == [(1.0, 2.0)] * 3


# ------------------------------------------------------------------ resize
def test_resize_shape_and_constant_stays_constant():
    x = torch.full((2, 3, 64, 64), 0.37)
    for out_size in (32, 100):
        y = resize(x, out_size)
        assert y.shape == (2, 3, out_size, out_size)
        torch.testing.assert_close(y, torch.full_like(y, 0.37))
    assert resize(x, 64) is x


def test_resize_downsample_is_antialiased():
    # One-pixel checkerboard, 66 -> 22: plain bilinear samples exact pixel centres (values 0/1,
    # aliasing); the anti-aliased resize averages them to ~0.5.
    idx = torch.arange(66)
    board = ((idx[:, None] + idx[None, :]) % 2).float().expand(1, 1, 66, 66)
    y = resize(board, 22)
    torch.testing.assert_close(y, torch.full_like(y, 0.5), atol=0.02, rtol=0)
    aliased = torch.nn.functional.interpolate(board, size=(22, 22), mode="bilinear", align_corners=False)
    assert aliased.std() > 0.4


# ------------------------------------------------------------------ random_affine
def test_random_affine_identity():
    x = _images()
    y = random_affine(x, degrees=0, translate=0, scale=(1, 1), hflip_p=0, generator=_gen(1))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_random_affine_hflip_only_equals_flip():
    x = _images()
    y = random_affine(x, degrees=0, translate=0, scale=(1, 1), hflip_p=1.0, generator=_gen(1))
    torch.testing.assert_close(y, torch.flip(x, dims=[-1]), atol=1e-5, rtol=0)


def test_random_affine_seeded_reproducible_and_seed_dependent():
    x = _images()
    kw = dict(degrees=10, translate=0.05, scale=(0.9, 1.1), hflip_p=0.5)
    a = random_affine(x, generator=_gen(7), **kw)
    b = random_affine(x, generator=_gen(7), **kw)
    c = random_affine(x, generator=_gen(8), **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    assert a.shape == x.shape and a.dtype == x.dtype


def test_random_affine_translation_moves_content_and_fill():
    # Pure translation of a constant image: the uncovered border takes the fill value.
    x = torch.ones((4, 1, 32, 32))
    y0 = random_affine(x, degrees=0, translate=0.25, scale=(1, 1), hflip_p=0, generator=_gen(3))
    assert (y0 < 1 - 1e-6).any()  # some border was uncovered and filled with 0
    assert y0.min() >= 0 and y0.max() <= 1 + 1e-6
    yf = random_affine(x, degrees=0, translate=0.25, scale=(1, 1), hflip_p=0, generator=_gen(3), fill=1.0)
    torch.testing.assert_close(yf, x, atol=1e-5, rtol=0)  # fill == content -> unchanged


def test_random_affine_rotation_keeps_centre_pixel():
    # 90-degree rotation range [-90, 90]: a centred symmetric blob stays at the centre.
    x = torch.zeros((4, 1, 33, 33))
    x[:, :, 16, 16] = 1.0
    y = random_affine(x, degrees=90, translate=0, scale=(1, 1), hflip_p=0.5, generator=_gen(5))
    assert torch.all(y[:, 0, 16, 16] > 0.2)


def test_random_affine_rejects_bad_params():
    x = _images()
    with pytest.raises(ValueError, match="scale"):
        random_affine(x, degrees=0, translate=0, scale=(1.2, 1.0), hflip_p=0, generator=_gen(0))
    with pytest.raises(ValueError, match="hflip_p"):
        random_affine(x, degrees=0, translate=0, scale=(1, 1), hflip_p=2, generator=_gen(0))


# ------------------------------------------------------------------ normalize
def test_normalize_hand_computed():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2).contiguous()
    y = normalize(x)
    expected = [(0.0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1.0 - 0.406) / 0.225]
    for ch, v in enumerate(expected):
        torch.testing.assert_close(y[:, ch], torch.full((2, 2, 2), v))


def test_normalize_other_channel_counts_use_mean_statistics():
    x = torch.full((1, 2, 1, 1), 0.5)
    y = normalize(x)
    m = sum(IMAGENET_MEAN) / 3
    s = sum(IMAGENET_STD) / 3
    torch.testing.assert_close(y, torch.full_like(x, (0.5 - m) / s))


# ------------------------------------------------------------------ BatchTransform
def _hu_batch(b: int = 4, s: int = 64) -> torch.Tensor:
    g = _gen(11)
    return torch.randint(-1024, 1500, (b, s, s), generator=g, dtype=torch.int16)


def test_batch_transform_eval_is_deterministic_with_shape():
    bt = BatchTransform.from_config({"windows": [[40, 80]], "out_size": 32})
    hu = _hu_batch()
    a = bt(hu, train=False)
    b = bt(hu, train=False)
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    # eval == the composed functions
    ref = normalize(resize(window(hu, [(40, 80)]), 32))
    torch.testing.assert_close(a, ref)


def test_batch_transform_train_differs_from_eval_and_is_seeded():
    bt = BatchTransform.from_config({"out_size": 32})
    hu = _hu_batch()
    ev = bt(hu, train=False)
    t1 = bt(hu, train=True, generator=_gen(1))
    t2 = bt(hu, train=True, generator=_gen(1))
    assert t1.shape == ev.shape
    assert torch.equal(t1, t2)
    assert not torch.allclose(t1, ev, atol=1e-3)
    with pytest.raises(ValueError, match="Generator"):
        bt(hu, train=True)


def test_batch_transform_config_defaults_and_errors():
    bt = BatchTransform.from_config({"out_size": 128})
    assert bt.windows == ((40.0, 80.0),)
    assert bt.aug == AugConfig(degrees=10, translate=0.05, scale=(0.9, 1.1), hflip_p=0.5)
    assert bt.channels == 3
    assert BatchTransform.from_config({"windows": [[40, 80], [0, 200], [100, 20], [0, 2]]}).channels == 4
    bt2 = BatchTransform.from_config({"windows": [[40, 80]], "aug": {"degrees": 5, "scale": [1.0, 1.2]}})
    assert bt2.aug.degrees == 5 and bt2.aug.scale == (1.0, 1.2) and bt2.aug.hflip_p == 0.5
    with pytest.raises(ValueError, match="unknown"):
        BatchTransform.from_config({"window": [[40, 80]]})
    with pytest.raises(ValueError, match="aug.degree"):
        BatchTransform.from_config({"aug": {"degree": 3}})
    with pytest.raises(ValueError, match="aug.scale"):
        BatchTransform.from_config({"aug": {"scale": [1.2, 0.8]}})
    with pytest.raises(ValueError, match="windows"):
        BatchTransform.from_config({"windows": [40, 80, 3]})
    with pytest.raises(ValueError, match="width"):
        BatchTransform.from_config({"windows": [[40, -80]]})
    assert BatchTransform.from_config({"windows": [40, 80]}).windows == ((40.0, 80.0),)


def test_batch_transform_fill_is_windowed_air():
    # A window whose low end is below air: padding must equal the windowed air value, not 0.
    bt = BatchTransform.from_config(
        {"windows": [[0, 4000]], "out_size": 16,
         "aug": {"degrees": 0, "translate": 0.4, "scale": [1, 1], "hflip_p": 0}}
    )
    air = torch.full((4, 16, 16), -1024, dtype=torch.int16)
    torch.testing.assert_close(bt(air, train=True, generator=_gen(2)), bt(air, train=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("windows", [[[40, 80]], [[40, 80], [0, 200]], [[40, 80], [0, 200], [40, 80], [100, 20]]])
def test_batch_transform_matches_composed_functions(windows):
    # Repeated windows are computed once internally; the result must equal the plain composition.
    bt = BatchTransform.from_config({"windows": windows, "out_size": 32})
    hu = _hu_batch()
    a = bt.aug
    got = bt(hu, train=True, generator=_gen(4))
    ref = normalize(
        random_affine(
            resize(window(hu, windows), 32), degrees=a.degrees, translate=a.translate, scale=a.scale,
            hflip_p=a.hflip_p, generator=_gen(4),
        )
    )
    assert got.shape == (4, max(3, len(windows)), 32, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # float32 HU input gives the same result and does not modify the input
    huf = hu.float()
    before = huf.clone()
    torch.testing.assert_close(bt(huf, train=True, generator=_gen(4)), got)
    assert torch.equal(huf, before)
