"""Batched image transforms that run on the training device.

Every function takes and returns whole batches of tensors (no per-sample Python loop, no PIL),
so the same code runs on CPU and GPU. The pipeline used by training is :class:`BatchTransform`:

    int16 HU (B, S, S) or (B, K, S, S) --window--> float32 [0, 1] (B, C, S, S)
                       --resize--> (B, C, out, out)
                       --random_affine (train only)-->
                       --normalize--> float32 (B, C, out, out), ImageNet statistics

Windowing happens first, on the full-resolution HU values, so interpolation works on the
windowed intensities; resize comes before the affine so the (more expensive) grid sample runs
at the output size. With neighbour context (``context`` k > 0) the input is a stack of K = 2k + 1
slices per sample and each slice contributes one channel per distinct window (slice-major); one
warp is shared by every channel of a sample, so the augmentation is identical across the stack.
Random parameters are drawn on the CPU from a caller-supplied
``torch.Generator`` and then moved to the data's device, so a given seed gives the same
augmentation on CPU and GPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from neurocache.config import ConfigError
from trainer.affine import _affine_grid, _affine_thetas, random_affine
from trainer.config import AugConfig

if TYPE_CHECKING:
    from trainer.config import TrainConfig

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: HU of air; the store pads images with this value.
AIR_HU: float = -1024.0

__all__ = [
    "AIR_HU",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugConfig",
    "BatchTransform",
    "expand_windows",
    "make_transform",
    "normalize",
    "random_affine",
    "resize",
    "window",
]


# --------------------------------------------------------------------------------------------
# window
# --------------------------------------------------------------------------------------------
def expand_windows(windows: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The (center, width) list actually used by :func:`window`, one entry per output channel.

    One window is repeated to 3 channels; two windows are padded to 3 by repeating the last;
    three or more are used as given (C = len(windows)).

    Raises:
        ConfigError: empty list, an entry that is not a (center, width) pair, or width <= 0 (config key
            ``windows``; a ValueError).
    """
    wins: list[tuple[float, float]] = []
    for i, w in enumerate(windows):
        if len(w) != 2:
            raise ConfigError(f"windows[{i}]={list(w)!r} must be a [center, width] pair in HU")
        c, wd = float(w[0]), float(w[1])
        if not (math.isfinite(c) and math.isfinite(wd)) or wd <= 0:
            raise ConfigError(f"windows[{i}]=[{c}, {wd}] is invalid; the width must be a finite number > 0 HU")
        wins.append((c, wd))
    if not wins:
        raise ConfigError("windows must hold at least one [center, width] pair, e.g. [[40, 80]]")
    while len(wins) < 3:
        wins.append(wins[-1])
    return wins


def window(hu: Tensor, windows: Sequence[Sequence[float]]) -> Tensor:
    """Map HU values to [0, 1] through one or more (center, width) display windows.

    Args:
        hu: (B, H, W) Hounsfield units, int16 or floating point, any device.
        windows: (center, width) pairs in HU. Channel k is
            ``clamp((hu - (c_k - w_k / 2)) / w_k, 0, 1)``. Channel expansion follows
            :func:`expand_windows`: 1 window -> 3 identical channels, 2 -> 3 channels (the last
            repeated), 3 -> 3, more than 3 -> C = len(windows); a model fed C != 3 channels
            needs its first convolution adapted (``trainer.model.build_model(in_channels=C)``).

    Returns:
        float32 (B, C, H, W) on ``hu``'s device, values in [0, 1] (unitless).
    """
    if hu.ndim != 3:
        raise ValueError(f"window expects a (B, H, W) HU batch, got shape {tuple(hu.shape)}")
    return _window_channels(hu, expand_windows(windows))


def _window_channels(hu: Tensor, wins: Sequence[tuple[float, float]]) -> Tensor:
    """float32 (B, len(wins), H, W): one channel per window, no channel expansion."""
    params = torch.tensor(wins, dtype=torch.float32, device=hu.device)  # (C, 2)
    width = params[:, 1].view(1, -1, 1, 1)
    low = (params[:, 0] - params[:, 1] / 2).view(1, -1, 1, 1)
    x = hu.to(torch.float32).unsqueeze(1)  # (B, 1, H, W); a fresh tensor unless hu is float32
    if len(wins) == 1 and x.data_ptr() != hu.data_ptr():
        return x.sub_(low).div_(width).clamp_(0.0, 1.0)
    return (x - low).div_(width).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# resize
# --------------------------------------------------------------------------------------------
def resize(x: Tensor, out_size: int) -> Tensor:
    """Resize a batch of square images to ``out_size`` x ``out_size``.

    Bilinear, ``align_corners=False``, with anti-aliasing when downsampling. Store images are
    already letterboxed squares, so the aspect ratio is kept.

    Args:
        x: floating (B, C, H, W).
        out_size: output side, pixels (> 0).

    Returns:
        (B, C, out_size, out_size), same dtype and device; ``x`` itself when already that size.
    """
    if x.ndim != 4:
        raise ValueError(f"resize expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if int(out_size) <= 0:
        raise ValueError(f"out_size must be a positive integer, got {out_size!r}")
    out_size = int(out_size)
    h, w = x.shape[-2:]
    if h == out_size and w == out_size:
        return x
    downsampling = out_size < h or out_size < w
    return F.interpolate(
        x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=downsampling
    )


# --------------------------------------------------------------------------------------------
# normalize
# --------------------------------------------------------------------------------------------
def normalize(
    x: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Per-channel ``(x - mean[c]) / std[c]``.

    Args:
        x: floating (B, C, H, W), intensities in [0, 1].
        mean, std: per-channel statistics. When their length differs from C (e.g. the
            3-value ImageNet defaults with C != 3 channels), the average of the given means and
            the average of the given stds are used for every channel.

    Returns:
        Tensor of ``x``'s shape, dtype and device.
    """
    if x.ndim != 4:
        raise ValueError(f"normalize expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    c = x.shape[1]
    m = [float(v) for v in mean]
    s = [float(v) for v in std]
    if not m or not s:
        raise ValueError("mean and std must not be empty")
    if len(m) != c:
        m = [sum(m) / len(m)] * c
    if len(s) != c:
        s = [sum(s) / len(s)] * c
    if any(v <= 0 for v in s):
        raise ValueError(f"std values must be > 0, got {s}")
    mt = torch.tensor(m, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    st = torch.tensor(s, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    return (x - mt) / st


# --------------------------------------------------------------------------------------------
# the training pipeline
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchTransform:
    """window -> resize -> (random affine when training) -> ImageNet normalize, on whole batches.

    The trainer builds it with :func:`make_transform` from its
    :class:`~trainer.config.TrainConfig`; :meth:`from_config` builds one from a plain mapping, e.g.::

        BatchTransform.from_config({"windows": [[40, 80]], "out_size": 224,
                                    "aug": {"degrees": 10, "translate": 0.05,
                                            "scale": [0.9, 1.1], "hflip_p": 0.5}})

    Attributes:
        windows: (center, width) HU windows as given (expanded per :func:`expand_windows`).
        out_size: side of the network input, pixels.
        aug: augmentation ranges used when ``train=True``.
        context: neighbour slices on each side (0: one slice per sample, the original pipeline's input). With
            k > 0 the input is (B, 2k + 1, S, S) and the channels are, slice by slice (previous
            ones first), one per distinct window: C = (2k + 1) x U. One window and k = 1 give the
            three channels an ImageNet first convolution expects (neighbours as "RGB").
        channels_last: return (and resize/warp in) the NHWC memory format, which the model's
            convolutions run fastest in on GPUs and on oneDNN CPUs (config ``channels_last``).
    """

    windows: tuple[tuple[float, float], ...] = ((40.0, 80.0),)
    out_size: int = 224
    aug: AugConfig = field(default_factory=AugConfig)
    context: int = 0
    channels_last: bool = False

    def __post_init__(self) -> None:
        expand_windows(self.windows)  # validate early
        if int(self.out_size) <= 0:
            raise ValueError(f"out_size must be a positive integer, got {self.out_size!r}")
        if int(self.context) < 0:
            raise ValueError(f"context must be >= 0 neighbour slices per side, got {self.context!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> BatchTransform:
        """Build from a dict-like with keys ``windows`` (default [[40, 80]]), ``out_size``
        (default 224) and ``aug`` (defaults of :class:`AugConfig`). Unknown keys raise ValueError."""
        d = dict(cfg or {})
        valid = ("windows", "out_size", "aug")
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown transform key(s) {', '.join(unknown)}; valid keys are: {', '.join(valid)}")
        windows = d.get("windows", [[40, 80]])
        if isinstance(windows, Sequence) and len(windows) == 2 and all(isinstance(v, (int, float)) for v in windows):
            windows = [windows]  # a single [center, width] pair
        try:
            wins = tuple(tuple(float(v) for v in w) for w in windows)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"windows must be a list of [center, width] pairs in HU, got {windows!r}") from exc
        out_size = d.get("out_size", 224)
        if isinstance(out_size, bool) or not isinstance(out_size, int):
            raise ValueError(f"out_size must be an integer number of pixels, got {out_size!r}")
        return cls(windows=wins, out_size=out_size, aug=AugConfig.from_dict(d.get("aug")))  # type: ignore[arg-type]

    @property
    def channels(self) -> int:
        """Number of output channels C (the model's ``in_channels``)."""
        return len(self._channel_windows())

    @property
    def stack(self) -> int:
        """Slices per sample K = 2 ``context`` + 1."""
        return 2 * int(self.context) + 1

    def _channel_windows(self) -> list[tuple[float, float]]:
        """The window of every output channel, in channel order."""
        if not self.context:
            return expand_windows(self.windows)
        return list(dict.fromkeys(expand_windows(self.windows))) * self.stack

    def __call__(self, hu_batch: Tensor, train: bool, generator: torch.Generator | None = None) -> Tensor:
        """Transform a batch.

        Args:
            hu_batch: (B, S, S) HU, int16 (or float), ideally already on the training device;
                (B, 2k + 1, S, S) with ``context`` k > 0 (the stack of :func:`trainer.context.context_rows`).
            train: apply the random affine when True.
            generator: CPU ``torch.Generator`` for the augmentation draws; required when
                ``train`` is True, ignored otherwise.

        Returns:
            float32 (B, C, out_size, out_size) on ``hu_batch``'s device, ImageNet-normalised; in
            the channels_last memory format when :attr:`channels_last`, else contiguous. Equal (up to float rounding) to
            ``normalize(random_affine(resize(window(hu, windows), out_size), ...))``; repeated
            windows are computed once and duplicated just before normalisation (every step is
            per-channel with one shared warp), which makes the default 1-window case ~3x cheaper.
        """
        k = self.stack
        if self.context and (hu_batch.ndim != 4 or hu_batch.shape[1] != k):
            raise ValueError(f"BatchTransform(context={self.context}) expects a (B, {k}, S, S) HU stack, "
                             f"got shape {tuple(hu_batch.shape)}")
        if not self.context and hu_batch.ndim != 3:
            raise ValueError(f"BatchTransform expects a (B, S, S) HU batch, got shape {tuple(hu_batch.shape)}")
        if train and generator is None:
            raise ValueError("BatchTransform(train=True) needs a CPU torch.Generator for the augmentation")
        wins = self._channel_windows()
        unique = tuple(dict.fromkeys(wins))
        coef = _fused_coefficients(unique, tuple(wins), str(hu_batch.device))
        if self.context:
            hu_batch = hu_batch.reshape(-1, *hu_batch.shape[2:])  # (B*K, S, S): each slice windowed alike
        # Work in "HU above windowed air": v = clamp(hu, low, high) - clamp(air, low, high). Air is
        # then exactly 0, so the warp's zero padding *is* the air fill (no validity-mask warp), and
        # window scaling, channel expansion and normalisation fold into one multiply-add at the end
        # (resize and warp are linear with weights summing to 1, so the shift commutes with them).
        x = hu_batch.to(torch.float32).unsqueeze(1)  # (B, 1, S, S); fresh unless hu is float32
        if len(unique) == 1:
            low, high = unique[0][0] - unique[0][1] / 2, unique[0][0] + unique[0][1] / 2
            fresh = x.data_ptr() != hu_batch.data_ptr()
            x = (x.clamp_(low, high) if fresh else x.clamp(low, high)).sub_(coef["air"][0])
        else:
            x = torch.clamp(x, min=coef["low"], max=coef["high"]).sub_(coef["air_t"])  # (B, U, S, S)
        if self.context:
            x = x.reshape(-1, k * x.shape[1], *x.shape[2:])  # (B, K*U, S, S), slice-major
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = resize(x, self.out_size)
        if train:
            a = self.aug
            n, _, h, w = x.shape
            theta = _affine_thetas(
                n, h, w, degrees=a.degrees, translate=a.translate, scale=a.scale, hflip_p=a.hflip_p,
                generator=generator,  # type: ignore[arg-type]
            ).to(device=x.device, dtype=x.dtype, non_blocking=True)
            x = F.grid_sample(x, _affine_grid(theta, n, h, w), mode="bilinear", padding_mode="zeros", align_corners=False)
        if coef["select"] is not None and not self.context:  # with context the channels are already in order
            x = x.index_select(1, coef["select"])
        # (B, U or C, H, W) -> (B, C, H, W): windowed-and-normalised = v * scale[c] + shift[c].
        x = torch.addcmul(coef["shift"], x, coef["scale"])
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def make_transform(cfg: TrainConfig) -> BatchTransform:
    """The config's window/resize/augmentation pipeline (``windows``, ``out_size``, ``aug``,
    ``context_slices``, ``channels_last``): what every model of a run is trained and scored through."""
    return BatchTransform(windows=cfg.windows, out_size=cfg.out_size, aug=cfg.aug, context=cfg.context_slices,
                          channels_last=cfg.channels_last)


@functools.lru_cache(maxsize=64)
def _fused_coefficients(
    unique: tuple[tuple[float, float], ...], wins: tuple[tuple[float, float], ...], device: str
) -> dict[str, Any]:
    """Per-channel constants of :meth:`BatchTransform.__call__`'s fused path, made once per device.

    For output channel k using window (c, w): ``low = c - w/2``, ``air = clamp(-1024, low, low + w)``;
    ``out_k = v * scale_k + shift_k`` with ``scale_k = 1 / (w * std_k)`` and
    ``shift_k = ((air - low) / w - mean_k) / std_k`` (ImageNet statistics, or their averages when C != 3).
    """
    dev = torch.device(device)
    c = len(wins)
    mean = list(IMAGENET_MEAN) if c == 3 else [sum(IMAGENET_MEAN) / 3] * c
    std = list(IMAGENET_STD) if c == 3 else [sum(IMAGENET_STD) / 3] * c
    lows = [u[0] - u[1] / 2 for u in unique]
    airs = [min(max(AIR_HU, lo), lo + u[1]) for lo, u in zip(lows, unique)]
    src = [unique.index(w) for w in wins]
    scale = [1.0 / (unique[u][1] * std[k]) for k, u in enumerate(src)]
    shift = [((airs[u] - lows[u]) / unique[u][1] - mean[k]) / std[k] for k, u in enumerate(src)]
    vec = lambda v: torch.tensor(v, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    return {
        "air": airs,
        "low": vec(lows),
        "high": vec([lo + u[1] for lo, u in zip(lows, unique)]),
        "air_t": vec(airs),
        # U == 1 broadcasts to C channels inside addcmul; U == C in order needs no select.
        "select": None if len(unique) == 1 or src == list(range(c)) else torch.tensor(src, device=dev),
        "scale": vec(scale),
        "shift": vec(shift),
    }
