"""ResNet18 binary classifier: construction, weight loading, staged freezing and optimizers.

The network is torchvision's ResNet18 with its 1000-way head replaced by
``Sequential(Dropout(p), Linear(512, 1))`` (one logit; use ``BCEWithLogitsLoss``) and, optionally,
global max pooling in place of its average pooling.
Weights are only ever stored and read as plain ``state_dict`` files
(``torch.save(model.state_dict())`` / ``torch.load(..., weights_only=True)``); nothing else is
pickled.
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neurocache.config import ConfigError
from neurocache.errors import UserError

#: File name torchvision uses for the ImageNet ResNet18 weights in the hub cache.
IMAGENET_FILE = "resnet18-f37072fd.pth"

#: The values of config key ``pool``: global pooling of the last feature map (:func:`build_model`).
POOLS: tuple[str, ...] = ("avg", "max")
#: The values of config key ``optimizer`` (:func:`make_optimizer`).
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")

#: Top-level ResNet18 children that ``set_trainable(..., "ft", [...])`` accepts.
TRAINABLE_ATTRS: tuple[str, ...] = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")

__all__ = [
    "IMAGENET_FILE",
    "OPTIMIZERS",
    "POOLS",
    "TRAINABLE_ATTRS",
    "WeightsFileError",
    "WeightsNotFoundError",
    "WeightsUnavailableError",
    "build_model",
    "head_parameters",
    "load_weights",
    "make_optimizer",
    "save_weights",
    "set_trainable",
    "unwrap",
]


class WeightsUnavailableError(UserError, RuntimeError):
    """The ImageNet weights could not be downloaded and are not in the torch hub cache."""


class WeightsFileError(UserError, ValueError):
    """A weights file (config key ``weights``) cannot be loaded or does not fit the model."""


class WeightsNotFoundError(WeightsFileError, FileNotFoundError):
    """A weights file (config key ``weights``, or a run's ``final_model.pt``) does not exist."""


# --------------------------------------------------------------------------------------------
# state-dict helpers
# --------------------------------------------------------------------------------------------
def _strip_prefixes(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def _adapt_conv1(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Pretrained (64, 3, 7, 7) conv1 -> (64, in_channels, 7, 7).

    The RGB filters are averaged and repeated over the new channels, scaled by
    ``3 / in_channels`` so that an input with equal channels gives the same activations as the
    RGB network on a grey image (as timm does).
    """
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


def _fetch_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet18 weights (download or hub cache), or WeightsUnavailableError."""
    import torchvision  # here, not at import: trainer.config reads POOLS and OPTIMIZERS without loading torchvision

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        where = os.path.join(torch.hub.get_dir(), "checkpoints", IMAGENET_FILE)
        raise WeightsUnavailableError(
            f"could not get the ImageNet ResNet18 weights ({type(exc).__name__}: {exc}). "
            f"torch looks for them at {where} (torch.hub.get_dir()/checkpoints/{IMAGENET_FILE}) and "
            f"otherwise downloads {weights.url}. Copy that file there on a machine without network, "
            f"or set `weights: none` (random init) or `weights: /path/to/state_dict.pt` in the config."
        ) from exc


def check_weights(weights: str) -> None:
    """Fail fast, before any split or training, when the config's ``weights`` cannot be had.

    ``imagenet``: fetched once here (from the torch hub cache, else downloaded), so an offline
    machine without the file gets :class:`WeightsUnavailableError` naming the hub-cache path and
    the ``none`` / state_dict alternatives at start-up; a path must be a file.

    Raises:
        WeightsUnavailableError, WeightsNotFoundError (a FileNotFoundError).
    """
    spec = str(weights).strip()
    if spec.lower() == "none":
        return
    if spec.lower() == "imagenet":
        _fetch_imagenet_state_dict()
        return
    if not Path(spec).expanduser().is_file():
        raise WeightsNotFoundError(
            f"weights file {spec!r} (config key `weights`) does not exist; "
            f"use `weights: none`, `weights: imagenet` or the path of a state_dict file"
        )


def _load_backbone(model: nn.Module, sd: Mapping[str, torch.Tensor], *, in_channels: int, source: str) -> None:
    """Load a torchvision-style ResNet18 state_dict into everything but ``fc``, strictly."""
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    if in_channels != 3 and "conv1.weight" in sd and sd["conv1.weight"].shape[1] == 3:
        sd["conv1.weight"] = _adapt_conv1(sd["conv1.weight"], in_channels)
    expected = {k for k in model.state_dict() if not k.startswith("fc.")}
    # Old checkpoints (the torchvision ImageNet file included) lack BN num_batches_tracked.
    missing = sorted(k for k in expected - set(sd) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise WeightsFileError(
            f"{source} is not a ResNet18 state_dict: missing keys {missing or 'none'}; "
            f"unexpected keys {unexpected or 'none'}"
        )
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        raise WeightsFileError(f"{source} does not fit ResNet18 with in_channels={in_channels}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------
def build_model(*, weights: str = "none", dropout: float = 0.3, in_channels: int = 3, pool: str = "avg") -> nn.Module:
    """A ResNet18 with a one-logit head.

    Args:
        weights: ``"none"`` (random init), ``"imagenet"`` (torchvision's
            ``ResNet18_Weights.IMAGENET1K_V1``, from the torch hub cache or downloaded), or the
            path of a ``state_dict`` file: either a torchvision ResNet18 state_dict (``fc.*``
            keys optional and ignored; every other key must match) or a whole-model
            state_dict written by :func:`save_weights` (keys ``fc.1.*``), loaded strictly.
        dropout: dropout probability before the final linear layer, in [0, 1).
        in_channels: input channels C. For C != 3 ``conv1`` becomes
            ``Conv2d(C, 64, 7, 2, 3, bias=False)``; with pretrained weights its filters are the
            RGB filters averaged, repeated over the C channels and scaled by 3 / C.
        pool: global pooling of the last (512, H/32, W/32) feature map: ``"avg"`` (torchvision's)
            or ``"max"`` (the strongest response anywhere: a lesion a few pixels wide is not
            averaged away over the whole slice). It has no weights, so any state_dict fits either.

    Returns:
        The model (train mode, on CPU). Input float (B, C, H, W); output (B, 1) logits.

    Raises:
        WeightsUnavailableError: ``"imagenet"`` when the weights cannot be fetched.
        WeightsNotFoundError: a weights path that does not exist (a FileNotFoundError).
        WeightsFileError: a state_dict whose keys or shapes do not fit (a ValueError).
        ValueError: bad arguments.
    """
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if pool not in POOLS:
        raise ValueError(f"pool must be {' or '.join(repr(v) for v in POOLS)}, got {pool!r}")
    in_channels = int(in_channels)
    spec = str(weights).strip()

    import torchvision

    model = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        conv = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        model.conv1 = conv
    if pool == "max":
        model.avgpool = nn.AdaptiveMaxPool2d(1)  # the attribute name is torchvision's; forward() calls it
    in_features = model.fc.in_features
    model.fc = nn.Sequential(nn.Dropout(p=float(dropout)), nn.Linear(in_features, 1))

    if spec.lower() == "none":
        return model
    if spec.lower() == "imagenet":
        _load_backbone(model, _fetch_imagenet_state_dict(), in_channels=in_channels, source="ImageNet weights")
        return model

    _load_weights_file(model, Path(spec).expanduser(), in_channels)
    return model


def _load_weights_file(model: nn.Module, path: Path, in_channels: int) -> None:
    """Load a state_dict file into ``model``: a whole model (:func:`save_weights`, strict) or a ResNet18 backbone."""
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights file {str(path)!r} (config key `weights`) does not exist; "
            f"use `weights: none`, `weights: imagenet` or the path of a state_dict file"
        )
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise WeightsFileError(f"weights file {str(path)!r} (config key `weights`) is not a loadable state_dict: {exc}") from exc
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsFileError(f"weights file {str(path)!r} (config key `weights`) does not hold a state_dict of tensors")
    sd = _strip_prefixes(sd)
    if "fc.1.weight" in sd:  # whole model written by save_weights
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise WeightsFileError(
                f"weights file {str(path)!r} is a whole-model state_dict that does not fit this model "
                f"(in_channels={in_channels}): {exc}"
            ) from exc
    else:
        _load_backbone(model, sd, in_channels=in_channels, source=f"weights file {str(path)!r}")


# --------------------------------------------------------------------------------------------
# freezing
# --------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The module behind ``torch.compile`` / DataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the classification head ``model.fc``."""
    return list(unwrap(model).fc.parameters())


def set_trainable(model: nn.Module, stage: str, ft_trainable_attrs: Sequence[str] | None = None) -> list[nn.Parameter]:
    """Set ``requires_grad`` for a training stage and return the trainable parameters.

    Args:
        model: a model from :func:`build_model`.
        stage: ``"head"``: only ``fc`` trains, the backbone is frozen. Only parameters are frozen:
            BatchNorm layers stay in whatever mode ``model.train()``/``eval()`` sets, so their
            running statistics still adapt to CT during the head stage (as the original pipeline did).
            ``"ft"``: every parameter trains when ``ft_trainable_attrs`` is None or empty,
            otherwise only the named top-level modules (from :data:`TRAINABLE_ATTRS`).
        ft_trainable_attrs: module names for the ``"ft"`` stage, e.g. ``["layer3", "layer4", "fc"]``;
            ignored for ``"head"``.

    Returns:
        The parameters with ``requires_grad=True``, in ``model.parameters()`` order.

    Raises:
        ConfigError: unknown module name in ``ft_trainable_attrs`` (the message lists the valid ones).
        ValueError: unknown stage.
    """
    m = unwrap(model)
    if stage == "head":
        names: tuple[str, ...] = ("fc",)
    elif stage == "ft":
        if not ft_trainable_attrs:
            names = TRAINABLE_ATTRS
        else:
            unknown = [a for a in ft_trainable_attrs if a not in TRAINABLE_ATTRS]
            if unknown:
                raise ConfigError(
                    f"unknown module name(s) {unknown} in ft_trainable_attrs; valid names are: {', '.join(TRAINABLE_ATTRS)}"
                )
            names = tuple(ft_trainable_attrs)
    else:
        raise ValueError(f"unknown stage {stage!r}; valid stages are: head, ft")

    for p in m.parameters():
        p.requires_grad_(False)
    for name in names:
        for p in getattr(m, name).parameters():
            p.requires_grad_(True)
    return [p for p in m.parameters() if p.requires_grad]


# --------------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------------
def _fusable(params: list[Any]) -> bool:
    """True when every parameter is a floating-point CPU or CUDA tensor (what fused AdamW supports)."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)


def make_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """``torch.optim.AdamW(params, lr, weight_decay)`` or
    ``torch.optim.SGD(params, lr, momentum, weight_decay, nesterov)``.

    Args:
        params: parameters or parameter groups.
        name: ``"adamw"`` or ``"sgd"`` (case-insensitive).
        lr: learning rate (> 0).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay (>= 0).
        momentum, nesterov: SGD only; Nesterov needs momentum > 0.

    Raises:
        ConfigError: unknown name (the message lists the allowed ones) or invalid numbers (a ValueError).
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; allowed values are: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    if key == "adamw":
        # fused: one kernel over every parameter, its step counts on the parameters' device (no per-parameter
        # .item() on the host), 2.5x faster than the default on CPU and the fastest on CUDA
        params = list(params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params))
    if nesterov and momentum <= 0:
        raise ConfigError(f"SGD with nesterov=True needs momentum > 0, got momentum={momentum}")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


# --------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------
def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model.state_dict()`` (unwrapped from compile/DataParallel) to ``path`` with torch.save.

    Parent directories are created. Returns the path.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(unwrap(model).state_dict(), p)
    return p


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a state_dict written by :func:`save_weights` into ``model`` (strict) and return the model.

    Read with ``torch.load(path, map_location="cpu", weights_only=True)``; tensors are copied onto
    the model's existing device.

    Raises:
        WeightsNotFoundError: ``path`` does not exist (a FileNotFoundError).
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"weights file {str(p)!r} does not exist")
    sd = torch.load(p, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(_strip_prefixes(sd), strict=True)
    return model
