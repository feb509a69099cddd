"""trainer.saliency: the MONAI wrapper (shapes, equality with MONAI itself), the inverse of the store's
crop + letterbox and the model resize on a slice with a known bright spot, and the overlay."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from neurocache.config import ConfigError, PrepConfig
from neurocache.dicomio import SliceData
from neurocache.preprocess import preprocess_slice
from trainer.config import TrainConfig
from trainer.model import build_model
from trainer.saliency.cam import SaliencyModel, unit_range
from trainer.saliency.geometry import Placement, dicom_to_model, model_to_dicom, placement_of
from trainer.saliency.overlay import MAP_LEVELS, MARK_INDEX, map_to_dicom, overlay_indices, overlay_png, render_overlay
from trainer.saliency.peak import peak_of
from trainer.transforms import BatchTransform


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(weights="none", dropout=0.3, in_channels=3, pool="avg").eval()


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    other = build_model(weights="none", dropout=0.3, in_channels=3, pool="avg")
    other.load_state_dict(model.state_dict())
    return other.eval()


@pytest.mark.parametrize("layer", ["layer4", "layer2"])
def test_gradcam_is_monais_map_scaled_the_usual_way_round(layer):
    from monai.visualize import GradCAM

    model = _tiny_model()
    x = torch.randn(3, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    ours = SaliencyModel(model, "gradcam", layer)(x)
    assert ours.shape == (3, 64, 48) and ours.dtype == torch.float32
    assert torch.allclose(ours.flatten(1).max(1).values, torch.ones(3)) and float(ours.min()) == 0.0
    # MONAI's default post-processing maps (min, max) to (1, 0)
    ref = GradCAM(nn_module=_copy(model), target_layers=layer)(x, class_idx=0)[:, 0]
    torch.testing.assert_close(ours, 1.0 - ref, atol=1e-5, rtol=0)


def test_gradcampp_batched_equals_monai_one_image_at_a_time():
    """MONAI squeezes the class score to (B,), which broadcasts wrongly against the gradients for B > 1;
    our per-image score makes a batch equal to single images."""
    from monai.visualize import GradCAMpp

    model = _tiny_model(3)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours = SaliencyModel(model, "gradcampp", "layer4")(x)
    cam = GradCAMpp(nn_module=_copy(model), target_layers="layer4")
    ref = torch.cat([cam(x[i : i + 1], class_idx=0)[:, 0] for i in range(4)])
    torch.testing.assert_close(ours, 1.0 - ref, atol=1e-4, rtol=0)


def test_the_scored_model_is_left_alone():
    model = _tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    SaliencyModel(model, "gradcam", "layer3")(torch.randn(2, 3, 64, 64))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_unit_range_and_peak():
    m = torch.tensor([[[[1.0, 3.0], [2.0, 1.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])
    out = unit_range(m)
    assert out[0, 0].tolist() == [[0.0, 1.0], [0.5, 0.0]] and out[1].abs().sum() == 0
    assert peak_of(out[0, 0].numpy(), locate="max") == (0.0, 1.0)


def test_bad_method_or_layer_is_a_config_error():
    with pytest.raises(ConfigError, match="saliency_method='cam'.*gradcam, gradcampp"):
        TrainConfig(saliency_method="cam")
    with pytest.raises(ConfigError, match="saliency_layer='fc'"):
        TrainConfig(saliency_layer="fc")
    with pytest.raises(ConfigError, match="saliency_layer='layer5'"):
        SaliencyModel(_tiny_model(), "gradcam", "layer5")


def _head_with_spot(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float],
                    spot: tuple[int, int]) -> np.ndarray:
    """HU (rows, cols): air, an elliptical head (600 HU skull, 35 HU brain) off centre, a bright
    Gaussian spot (peak 1500 HU, sigma 2 px) centred exactly on pixel ``spot``."""
    rr, cc = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    q = ((rr - centre[0]) / axes[0]) ** 2 + ((cc - centre[1]) / axes[1]) ** 2
    hu = np.full(shape, -1000.0)
    hu[q <= 1.0] = 600.0
    hu[q <= 0.85] = 35.0
    hu += 1465.0 * np.exp(-((rr - spot[0]) ** 2 + (cc - spot[1]) ** 2) / (2 * 2.0**2))
    return hu


@pytest.mark.parametrize(("shape", "centre", "axes", "spot", "store", "out"), [
    ((300, 420), (170.0, 180.0), (110.0, 150.0), (140, 250), 256, 256),  # wide head, left of centre, low
    ((300, 420), (170.0, 180.0), (110.0, 150.0), (210, 110), 256, 200),  # + a model resize that downsamples
    ((512, 448), (230.0, 240.0), (200.0, 150.0), (120, 200), 256, 224),  # tall head
])
def test_peak_in_model_space_maps_back_to_the_spot(shape, centre, axes, spot, store, out):
    hu = _head_with_spot(shape, centre, axes, spot)
    data = SliceData(stored=np.rint(hu + 1024).astype(np.uint16), slope=1.0, intercept=-1024.0)
    prep = preprocess_slice(data, PrepConfig(size=store))
    r0, r1, c0, c1 = prep.box
    assert (r0, c0) != (0, 0) and r1 - r0 != c1 - c0  # cropped, off-centre, not square
    x = BatchTransform(windows=((500.0, 3000.0),), out_size=out)(torch.from_numpy(prep.image)[None], train=False)
    peak = peak_of(x[0, 0].numpy())
    got = model_to_dicom(placement_of(prep.features, store, out), *peak)
    assert np.hypot(got[0] - spot[0], got[1] - spot[1]) <= 1.5, (got, spot)


def test_forward_and_inverse_maps_agree():
    p = Placement(box=(40, 340, 12, 432), store_size=128, out_size=96)
    u, v = dicom_to_model(p, np.array([40, 190, 339]), np.array([12, 222, 431]))
    back = [model_to_dicom(p, a, b) for a, b in zip(u, v)]
    assert back == [(40, 12), (190, 222), (339, 431)]
    assert model_to_dicom(p, -50, 500) == (40, 431)  # clipped into the box


def test_overlay_puts_the_map_on_the_slice_grid():
    p = Placement(box=(40, 340, 12, 432), store_size=128, out_size=96)
    sal = np.zeros((96, 96), np.float32)
    sal[30, 70] = 1.0
    on_slice = map_to_dicom(sal, p, (400, 450))
    assert on_slice.shape == (400, 450) and on_slice[:40].max() == 0 and on_slice[:, 432:].max() == 0
    r, c = np.unravel_index(int(np.argmax(on_slice)), on_slice.shape)
    assert abs(r - model_to_dicom(p, 30, 70)[0]) <= 2 and abs(c - model_to_dicom(p, 30, 70)[1]) <= 2
    hu = np.full((400, 450), 40.0)  # mid-window grey
    idx = overlay_indices(hu, on_slice, (int(r), int(c)), 40.0, 80.0)
    assert idx.dtype == np.uint8 and idx[r, c] == MARK_INDEX and idx[0, 0] == 15 * MAP_LEVELS  # grey 15 of 31, map 0
    rgb = render_overlay(hu, on_slice, (int(r), int(c)), 40.0, 80.0)
    assert rgb.shape == (400, 450, 3) and tuple(rgb[0, 0]) == (128, 128, 128) and tuple(rgb[r, c]) == (0, 255, 0)
    with Image.open(io.BytesIO(overlay_png(idx))) as im:  # a palette PNG that reads back as the RGB overlay
        assert im.mode == "P" and im.size == (450, 400)
        assert np.array_equal(np.asarray(im.convert("RGB")), rgb)
