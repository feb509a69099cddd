"""Class activation maps of the one-logit ResNet18, computed by MONAI (:mod:`monai.visualize`).

:class:`SaliencyModel` wraps a copy of a trained model in MONAI's ``GradCAM`` or ``GradCAMpp`` and
returns one map per image of a batch, on the model's device:

- the target layer is a ResNet stage (``layer1`` .. ``layer4``; Grad-CAM's usual choice is the last,
  ``layer4``, whose map is 1/32 of the input side);
- the class is the model's one logit (``class_idx=0``): the map shows what raises the probability
  of the positive class. MONAI's default (``argmax`` of the logits) would pick the same index;
- MONAI runs the model in eval mode and restores its train/eval state afterwards;
- the map is upsampled by MONAI's default upsampler (bilinear, ``align_corners=False``) to the input
  size, in float32, then scaled per image to [0, 1] with the maximum at 1. MONAI's default
  post-processing maps (min, max) to (1, 0), i.e. it flips the map; we scale it the usual way round
  (``ours == 1 - monai_default``, tests/test_saliency.py checks it), on the device, in one batched op.

Only the target stage's weights require gradients in the copy, so the backward pass stops at that
stage: the cost is one forward pass plus the backward pass of the stages above the target.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from neurocache.config import ConfigError

__all__ = ["LAYERS", "METHODS", "SaliencyModel", "unit_range"]

#: ``saliency_method`` values: MONAI's Grad-CAM and Grad-CAM++.
METHODS: tuple[str, ...] = ("gradcam", "gradcampp")
#: ``saliency_layer`` values: the ResNet18 stages (feature maps 1/4, 1/8, 1/16, 1/32 of the input side).
LAYERS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")


def unit_range(maps: Tensor) -> Tensor:
    """Scale each map of a batch to [0, 1]: ``(m - min) / (max - min)``; a constant map becomes 0.

    Args:
        maps: float (B, 1, H, W).

    Returns:
        float32 (B, 1, H, W) on ``maps``' device.
    """
    m = maps.float()
    flat = m.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    span = flat.max(1).values.view(-1, 1, 1, 1) - lo
    return torch.where(span > 0, (m - lo) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(m))


def _float_upsampler(size: Any) -> Callable[[Tensor], Tensor]:
    """MONAI's default upsampler (bilinear, ``align_corners=False``) run in float32 (the map may be bf16 under autocast)."""
    from monai.visualize.visualizer import default_upsampler

    up = default_upsampler(size)
    return lambda m: up(m.float())


def _hooked_model(model: nn.Module, layer: str) -> Any:
    """MONAI's ``ModelWithHooks`` around ``model``, whose class score keeps one value per image.

    MONAI's ``class_score`` squeezes the score to shape (B,); Grad-CAM++ multiplies ``exp(score)`` with
    the (B, C, h, w) gradients, which broadcasts (B,) against w when B > 1. Returning (B, 1, 1, 1)
    makes that product per image; ``score.sum()`` (the backward) is unchanged. The hooks keep the
    activations and gradients in float32: under bf16 autocast Grad-CAM++'s ``grad ** 3`` would underflow.
    """
    from monai.visualize.class_activation_maps import ModelWithHooks

    class _PerImageScore(ModelWithHooks):  # type: ignore[misc]
        def class_score(self, logits: Tensor, class_idx: int) -> Tensor:
            return logits[:, class_idx].float().reshape(-1, 1, 1, 1)

        def backward_hook(self, name: str) -> Callable[..., None]:
            def _hook(_module: nn.Module, _grad_input: Any, grad_output: Any) -> None:
                self.gradients[name] = grad_output[0].float()

            return _hook

        def forward_hook(self, name: str) -> Callable[..., None]:
            def _hook(_module: nn.Module, _input: Any, output: Tensor) -> None:
                self.activations[name] = output.float()

            return _hook

    return _PerImageScore(model, layer, register_forward=True, register_backward=True)


class SaliencyModel:
    """Grad-CAM / Grad-CAM++ maps of a one-logit model, batched, on the model's device.

    Args:
        model: the trained model (not modified: a copy is hooked).
        method: one of :data:`METHODS`.
        layer: one of :data:`LAYERS` (a module name of the model).

    Raises:
        ConfigError: another method or layer (a :class:`~neurocache.errors.UserError`).
    """

    def __init__(self, model: nn.Module, method: str = "gradcam", layer: str = "layer4") -> None:
        from monai.visualize import GradCAM, GradCAMpp

        if method not in METHODS:
            raise ConfigError(f"saliency_method={method!r} is invalid; allowed values: {', '.join(METHODS)}")
        if layer not in LAYERS or layer not in dict(model.named_modules()):
            raise ConfigError(f"saliency_layer={layer!r} is invalid; allowed values: {', '.join(LAYERS)}")
        self.method, self.layer = method, layer
        self.model = copy.deepcopy(model).eval()
        target = dict(self.model.named_modules())[layer]
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in target.parameters():  # the backward pass needs a path into the target stage, and no further
            p.requires_grad_(True)
        cls = GradCAM if method == "gradcam" else GradCAMpp
        self.cam = cls(nn_module=_hooked_model(self.model, layer), target_layers=layer,
                       upsampler=_float_upsampler, postprocessing=unit_range)

    def __call__(self, x: Tensor, autocast: Any = None) -> Tensor:
        """Maps of a batch of model inputs.

        Args:
            x: float (B, C, H, W), the model's input (after the evaluation transform).
            autocast: a context manager factory for the forward pass (the scoring precision), or None.

        Returns:
            float32 (B, H, W) in [0, 1] on ``x``'s device (1 = the map's maximum).
        """
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            # no input of the target stage needs a gradient (that is the point), so PyTorch says its hook
            # fires on the output gradients, which are exactly what Grad-CAM reads
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            x = x.clone()  # an inference-mode tensor cannot enter autograd
            if autocast is None:
                maps = self.cam(x, class_idx=0)
            else:
                with autocast():
                    maps = self.cam(x, class_idx=0)
        self.model.zero_grad(set_to_none=True)
        return maps.detach()[:, 0]
