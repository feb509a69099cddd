"""Exponential moving average of a model's weights and BatchNorm statistics (config ``ema_decay``), with no host sync.

After the first update (a copy), every floating-point parameter and buffer follows
``ema = decay * ema + (1 - decay) * current`` as one fused ``torch._foreach_lerp_`` per update; integer
buffers (BatchNorm's ``num_batches_tracked``) are copied. The step count is a Python int, so an update
never reads a device value: on a GPU the host keeps queueing steps ahead of the device (torch's
``AveragedModel`` compares a device-resident ``n_averaged`` every step, a blocking copy to the host).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trainer.model import unwrap

__all__ = ["WeightEMA"]


class WeightEMA:
    """The moving average of ``model``'s weights and buffers, held in :attr:`module` (a copy of ``model``).

    Args:
        model: the model being trained (a ``torch.compile`` wrapper is unwrapped).
        decay: per-step decay in (0, 1); the average of the last ~1 / (1 - decay) steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) for an average, got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model))
        self.updates = 0  # a host-side count: reading it costs the device nothing
        self._mine_float, self._mine_int = _split(self.module)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights and buffers into the average (the first call copies them)."""
        theirs_float, theirs_int = _split(unwrap(model))
        if self.updates == 0:
            torch._foreach_copy_(self._mine_float, theirs_float)
        else:
            torch._foreach_lerp_(self._mine_float, theirs_float, 1.0 - self.decay)
        if self._mine_int:
            torch._foreach_copy_(self._mine_int, theirs_int)
        self.updates += 1


def _split(m: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(floating-point parameters and buffers, other buffers) of ``m``, detached, in a fixed order."""
    tensors = [t.detach() for t in (*m.parameters(), *m.buffers())]
    return [t for t in tensors if t.is_floating_point()], [t for t in tensors if not t.is_floating_point()]
