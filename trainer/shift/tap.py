"""The penultimate embedding, captured by a forward hook in the forward pass that scores.

The model's head ``model.fc`` is ``Sequential(Dropout, Linear(512, 1))`` (:mod:`trainer.model`):
its input is the pooled 512-d feature vector. A forward hook on ``fc`` keeps the last batch's input
(float32, CPU), so scoring and the shift check share one forward pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["EmbeddingTap", "embed_rows"]


class EmbeddingTap:
    """A forward hook on ``model.fc`` (unwrapped from compile / DataParallel); :meth:`take` returns
    the last forward pass's embeddings, float32 (B, 512). Use as a context manager, or :meth:`close`."""

    def __init__(self, model: torch.nn.Module) -> None:
        from trainer.model import unwrap

        self._last: torch.Tensor | None = None
        head = unwrap(model).fc
        if not isinstance(head, torch.nn.Module):
            raise TypeError(f"model.fc is a {type(head).__name__}, not a module: cannot capture its input")
        self._handle = head.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self._last = inputs[0].detach().float().flatten(1).cpu()

    def take(self) -> np.ndarray:
        """The embeddings of the last forward pass, float32 (B, d); raises if there was none since the last take."""
        if self._last is None:
            raise RuntimeError("no forward pass since the last take()")
        out, self._last = self._last.numpy(), None
        return out

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> EmbeddingTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@torch.inference_mode()
def embed_rows(model: torch.nn.Module, data: Any, idx: np.ndarray, tf: Any, cfg: Any) -> np.ndarray:
    """Embeddings float32 (len(idx), d) of dataset rows ``idx`` (a :class:`trainer.data.SliceSource`),
    eval mode, no augmentation, in the config's precision: the pass :func:`trainer.loops.predict` makes
    (:func:`trainer.loops.eval_logits`)."""
    from trainer.loops import eval_logits, in_idx_order

    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if not len(idx):
        model.eval()
        return np.zeros((0, 0), dtype=np.float32)
    rows, embs = [], []
    with EmbeddingTap(model) as tap:
        for b, _ in eval_logits(model, data, idx, tf, cfg):
            embs.append(tap.take())
            rows.append(b.cpu().numpy())
    return in_idx_order(idx, np.concatenate(rows), np.concatenate(embs))
