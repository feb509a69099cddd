"""ResNet18 construction, weight loading, staged freezing, optimizers, persistence."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

import trainer.model as tm
from trainer.model import (
    WeightsUnavailableError,
    build_model,
    head_parameters,
    load_weights,
    make_optimizer,
    save_weights,
    set_trainable,
)


ROOT = Path(__file__).resolve().parents[1]


def _x(b: int = 2, c: int = 3, s: int = 64) -> torch.Tensor:
    return torch.randn((b, c, s, s), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(weights="none", dropout=0.25)


def test_build_none_forward_shape_and_head(model):
    assert isinstance(model.fc, nn.Sequential)
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[0].p == 0.25
    assert isinstance(model.fc[1], nn.Linear) and model.fc[1].out_features == 1 and model.fc[1].in_features == 512
    model.eval()
    with torch.no_grad():
        out = model(_x(b=3))
    assert out.shape == (3, 1)
    assert head_parameters(model) == list(model.fc.parameters())


def test_set_trainable_head_and_ft(model):
    fc_ids = {id(p) for p in model.fc.parameters()}
    params = set_trainable(model, "head")
    assert {id(p) for p in params} == fc_ids
    assert all(p.requires_grad == (id(p) in fc_ids) for p in model.parameters())

    params = set_trainable(model, "ft", ["layer4", "fc"])
    want = fc_ids | {id(p) for p in model.layer4.parameters()}
    assert {id(p) for p in params} == want
    assert all(p.requires_grad == (id(p) in want) for p in model.parameters())

    params = set_trainable(model, "ft", None)
    assert len(params) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    assert len(set_trainable(model, "ft", [])) == len(params)


def test_set_trainable_errors(model):
    with pytest.raises(ValueError, match="layer5") as ei:
        set_trainable(model, "ft", ["layer4", "layer5"])
    assert "layer1" in str(ei.value) and "conv1" in str(ei.value)
    with pytest.raises(ValueError, match="stage"):
        set_trainable(model, "warmup")


def test_save_load_round_trip(tmp_path, model):
    path = save_weights(model, tmp_path / "sub" / "w.pt")
    assert path.is_file()
    torch.manual_seed(123)
    other = build_model(weights="none", dropout=0.25)
    model.eval()
    other.eval()
    x = _x()
    with torch.no_grad():
        assert not torch.allclose(model(x), other(x))
        load_weights(other, path)
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    # A whole-model state_dict also works as build_model(weights=path).
    again = build_model(weights=str(path), dropout=0.25).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_build_from_torchvision_state_dict(tmp_path):
    torch.manual_seed(5)
    ref = torchvision.models.resnet18(weights=None)
    full = tmp_path / "resnet18_full.pt"
    torch.save(ref.state_dict(), full)
    m = build_model(weights=str(full))
    torch.testing.assert_close(m.conv1.weight, ref.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(m.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var, rtol=0, atol=0)
    assert m.fc[1].out_features == 1

    # Without fc.* and without num_batches_tracked (like the old ImageNet file).
    slim = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.") and "num_batches" not in k}
    p2 = tmp_path / "backbone.pt"
    torch.save(slim, p2)
    m2 = build_model(weights=str(p2))
    torch.testing.assert_close(m2.layer1[0].conv1.weight, ref.layer1[0].conv1.weight, rtol=0, atol=0)

    # in_channels != 3 from RGB weights: averaged, repeated, scaled by 3 / C.
    m3 = build_model(weights=str(full), in_channels=2)
    expected = ref.conv1.weight.mean(dim=1, keepdim=True).repeat(1, 2, 1, 1) * 1.5
    torch.testing.assert_close(m3.conv1.weight, expected)


def test_build_from_bad_state_dict_reports_keys(tmp_path):
    sd = torchvision.models.resnet18(weights=None).state_dict()
    del sd["layer2.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    p = tmp_path / "bad.pt"
    torch.save(sd, p)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight") as ei:
        build_model(weights=str(p))
    assert "extra.weight" in str(ei.value)


def test_missing_weights_path(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt") as ei:
        build_model(weights=str(missing))
    assert "weights" in str(ei.value)
    with pytest.raises(FileNotFoundError):
        load_weights(build_model(), missing)


def test_imagenet_unavailable_raises(monkeypatch):
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError) as ei:
        build_model(weights="imagenet")
    msg = str(ei.value)
    assert calls and calls[0].endswith("resnet18-f37072fd.pth")
    assert "resnet18-f37072fd.pth" in msg and torch.hub.get_dir() in msg
    assert "weights: none" in msg and "state_dict" in msg
    assert isinstance(ei.value, RuntimeError)


def test_imagenet_loads_backbone_when_available(monkeypatch):
    torch.manual_seed(9)
    ref = torchvision.models.resnet18(weights=None)
    monkeypatch.setattr(tm, "_fetch_imagenet_state_dict", lambda: ref.state_dict())
    m = build_model(weights="imagenet")
    torch.testing.assert_close(m.conv1.weight, ref.conv1.weight, rtol=0, atol=0)


def test_in_channels_two_forward():
    m = build_model(weights="none", in_channels=2).eval()
    assert m.conv1.in_channels == 2 and m.conv1.bias is None
    with torch.no_grad():
        assert m(_x(c=2)).shape == (2, 1)


def test_make_optimizer(model):
    params = list(model.parameters())
    opt = make_optimizer(params, name="adamw", lr=1e-3, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 1e-4
    sgd = make_optimizer(params, name="SGD", lr=0.01, weight_decay=0.0, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert g["momentum"] == 0.8 and g["nesterov"] is True
    with pytest.raises(ValueError, match="adamw") as ei:
        make_optimizer(params, name="adam", lr=1e-3, weight_decay=0.0)
    assert "sgd" in str(ei.value) and "'adam'" in str(ei.value)


def test_max_pool_head_is_the_peak_of_the_last_feature_map():
    torch.manual_seed(0)
    m = build_model(weights="none", dropout=0.0, pool="max").eval()
    avg = build_model(weights="none", dropout=0.0).eval()
    avg.load_state_dict(m.state_dict())  # pooling has no weights: the same state_dict fits both
    x = _x(b=2, s=96)
    with torch.no_grad():
        f = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))  # (2, 512, 3, 3)
        want_max = m.fc(f.amax(dim=(2, 3)))
        want_avg = m.fc(f.mean(dim=(2, 3)))
        torch.testing.assert_close(m(x), want_max)
        torch.testing.assert_close(avg(x), want_avg)
    assert not torch.allclose(want_max, want_avg)
    with pytest.raises(ValueError, match="pool must be"):
        build_model(pool="mean")


def test_pool_config_key_is_checked():
    from trainer.config import ConfigError, load_config

    assert load_config(sets=["pool=max"]).pool == "max"
    with pytest.raises(ConfigError, match="pool='gem' is invalid; allowed values: avg, max"):
        load_config(sets=["pool=gem"])


def test_adamw_is_fused_on_cpu():
    """Fused AdamW keeps its step counts on the parameters' device: no per-parameter host read per step."""
    from trainer.model import build_model, make_optimizer

    opt = make_optimizer(list(build_model().parameters()), name="adamw", lr=1e-3, weight_decay=0.0)
    assert opt.defaults["fused"] is True


def test_default_config_is_imagenet_and_demo_is_offline():
    assert yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["weights"] == "imagenet"
    assert yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["weights"] == "none"
