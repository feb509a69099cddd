"""Training and evaluation loops: one model, two stages (head warm-up, fine-tune), early stopping.

Read top to bottom: :func:`predict` scores rows; :func:`fit_stage` trains one stage with early
stopping on validation AUPRC and restores the best weights; :func:`train_model` runs both stages.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.data import SliceSource
from trainer.ema import WeightEMA
from trainer.evaluation.metrics import ranking_scores
from trainer.model import build_model, make_optimizer, set_trainable, unwrap
from trainer.precision import autocast, resolve_precision
from trainer.transforms import BatchTransform, make_transform


def precision_of(cfg: TrainConfig, device: torch.device) -> str:
    """The precision a model of ``cfg`` trains and scores in on ``device``: the run's recorded ``precision``, else
    what ``amp`` resolves to there (:func:`trainer.precision.resolve_precision`)."""
    return cfg.precision or resolve_precision(cfg.amp, device)


def eval_logits(model: nn.Module, data: SliceSource, idx: np.ndarray, tf: BatchTransform,
                cfg: TrainConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation forward pass over rows ``idx``: ``(rows (b,) int64, logits (b,) float32)`` per batch of
    ``eval_batch_size``, both on the device, in the order :meth:`SliceSource.batches` visits the rows (by
    shard when streaming: :func:`in_idx_order` puts results back). Eval mode, no augmentation, the config's
    precision; run it under ``torch.inference_mode()``."""
    model.eval()
    precision = precision_of(cfg, data.device)
    for b, hu in data.batches(idx, int(cfg.eval_batch_size), shuffle=False):
        x = tf(hu, train=False)
        with autocast(data.device, precision):
            logits = model(x).float().squeeze(1)
        yield b, logits


def in_idx_order(idx: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (len(idx), ...) computed for ``rows`` (a permutation of ``idx``, the visiting order),
    rearranged to ``idx``'s order (returned as is when the orders already agree)."""
    if np.array_equal(rows, idx):
        return values
    out = np.empty_like(values)
    out[np.argsort(idx, kind="stable")] = values[np.argsort(rows, kind="stable")]
    return out


@torch.inference_mode()
def predict(model: nn.Module, data: SliceSource, idx: np.ndarray, tf: BatchTransform, cfg: TrainConfig) -> np.ndarray:
    """Probabilities (sigmoid of the logit) for rows ``idx``, float64 (len(idx),), eval mode, no augmentation.

    Batches of ``eval_batch_size`` (larger than training batches: no activations are kept under
    ``inference_mode``); the probabilities stay on the device until one copy at the end.
    """
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if len(idx) == 0:
        model.eval()
        return np.zeros(0)
    rows, probs = [], []
    for b, logits in eval_logits(model, data, idx, tf, cfg):
        probs.append(torch.sigmoid(logits.double()))  # float64: no saturation at 1.0 before |logit| ~ 37
        rows.append(b)
    p = torch.cat(probs).cpu().numpy()  # the one device -> host copy (a sync point)
    return in_idx_order(idx, torch.cat(rows).cpu().numpy(), p)


#: the parts of a training step :class:`_StepClock` times, in step order (``cv_histories.csv`` columns ``<phase>_s``)
STEP_PHASES: tuple[str, ...] = ("data", "fwd_bwd", "optimizer", "ema")


class _StepClock:
    """Where a training epoch's time goes: each step's batch (``data``), forward and backward
    (``fwd_bwd``), optimiser step (``optimizer``) and weight average (``ema``).

    CPU: wall clock. CUDA: events recorded on the training device's current stream between the
    phases, read after one sync at the end of the epoch; the device time between the first two marks
    of a step is the time it waited for data (the host blocked on a shard, or launching and running the
    batch's ops). Nothing here reads a device value during the epoch.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.steps: list[list[Any]] = []
        self.first: Any = None
        self.end: Any = None

    def _now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            return ev
        return time.perf_counter()

    def start_step(self) -> None:
        """Mark the start of a step (before its batch is requested)."""
        self.steps.append([self._now()])
        if self.first is None:
            self.first = self.steps[-1][0]

    def mark(self) -> None:
        """Mark the end of the current step's next phase (:data:`STEP_PHASES` order)."""
        self.steps[-1].append(self._now())

    def stop(self) -> None:
        self.end = self._now()

    def _elapsed(self, a: Any, b: Any) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def totals(self) -> dict[str, float]:
        """Seconds per phase (``<phase>_s``) summed over the epoch's complete steps, and ``step_s``: first mark to the end."""
        out = {f"{ph}_s": 0.0 for ph in STEP_PHASES}
        if self.first is None:
            return {**out, "step_s": 0.0}
        if self.cuda:
            self.end.synchronize()
        for marks in self.steps:
            for ph, a, b in zip(STEP_PHASES, marks, marks[1:]):
                out[f"{ph}_s"] += self._elapsed(a, b)
        return {**out, "step_s": self._elapsed(self.first, self.end)}


def _pos_weight(cfg: TrainConfig, y: np.ndarray, device: torch.device) -> torch.Tensor | None:
    pw = cfg.pos_weight
    if pw == "none":
        return None
    if pw == "auto":
        n_pos = max(1, int(y.sum()))
        pw = (len(y) - n_pos) / n_pos
    return torch.tensor(float(pw), device=device)


def lr_factor(epoch: int, epochs: int, *, warmup: int = 0, schedule: str = "constant") -> float:
    """Multiplier of a stage's base learning rate in epoch ``epoch`` (1-based) of ``epochs``.

    Warm-up: epochs 1..``warmup`` ramp linearly, ``e / (warmup + 1)``, so the base rate is first
    reached in epoch ``warmup + 1``. Then ``constant`` keeps 1; ``cosine`` decays as
    ``0.5 (1 + cos(pi t))``, ``t = (e - warmup - 1) / (epochs - warmup)``: 1 in the first epoch
    after warm-up, just above 0 in the last (no epoch is wasted at rate 0).
    """
    if warmup and epoch <= warmup:
        return epoch / (warmup + 1)
    if schedule == "cosine":
        t = (epoch - warmup - 1) / max(1, epochs - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


@dataclass
class StageResult:
    best_auprc: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _train_epoch(
    model: nn.Module, data: SliceSource, train_idx: np.ndarray, tf: BatchTransform, cfg: TrainConfig,
    opt: torch.optim.Optimizer, loss_fn: nn.Module, generator: torch.Generator, ema: WeightEMA | None = None,
) -> tuple[float, int, dict[str, float]]:
    """One pass over ``train_idx``: (mean train loss, images seen, seconds per step phase (:meth:`_StepClock.totals`)).

    Nothing in the step reads a device value (no ``.item()``, no boolean-mask indexing): the losses
    stay on the device until one read at the end of the epoch. ``ema``: updated after every
    optimiser step (weights and BatchNorm buffers)."""
    model.train()
    precision = precision_of(cfg, data.device)
    y_all = torch.as_tensor(data.labels, dtype=torch.float32, device=data.device)
    losses, seen = [], 0
    clock = _StepClock(data.device)
    batches = data.batches(train_idx, int(cfg.batch_size), generator=generator, sampler=cfg.sampler)
    while True:
        clock.start_step()
        nxt = next(batches, None)
        if nxt is None:
            clock.steps.pop()
            break
        b, hu = nxt
        if len(b) < 2:  # BatchNorm cannot train on a batch of one
            clock.steps.pop()
            continue
        x = tf(hu, train=True, generator=generator)
        clock.mark()
        with autocast(data.device, precision):
            loss = loss_fn(model(x).float().squeeze(1), y_all[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark()
        opt.step()
        clock.mark()
        if ema is not None:
            ema.update(model)
        clock.mark()
        losses.append(loss.detach())
        seen += len(b)
    clock.stop()
    train_loss = float(torch.stack(losses).mean()) if losses else float("nan")  # one sync per epoch
    return train_loss, seen, clock.totals()


def _ema(model: nn.Module, decay: float) -> tuple[WeightEMA | None, nn.Module]:
    """(an exponential moving average of ``model``'s weights and buffers with per-step ``decay``, the
    module to validate: the average's copy of the model); (None, ``model``) when ``decay`` is 0."""
    if decay <= 0:
        return None, model
    ema = WeightEMA(model, decay)
    return ema, ema.module


def _val_loss(p_val: np.ndarray, y_val: np.ndarray) -> float:
    """Binary cross-entropy of probabilities ``p_val`` (clipped to [1e-7, 1 - 1e-7]) against 0/1 ``y_val``."""
    p = torch.as_tensor(p_val).clamp(1e-7, 1 - 1e-7)
    return float(nn.functional.binary_cross_entropy(p, torch.as_tensor(y_val, dtype=torch.float64)))


def fit_stage(
    model: nn.Module,
    data: SliceSource,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    tf: BatchTransform,
    cfg: TrainConfig,
    *,
    stage: Literal["head", "ft"],
    generator: torch.Generator,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> StageResult:
    """Train one stage (``head`` or ``ft``, settings :meth:`TrainConfig.stage`) with early stopping on validation AUPRC.

    An epoch is better when its AUPRC beats the best so far by more than ``min_delta``; patience counts
    only the epochs after the stage's ``min_epochs`` (a model on its initial plateau is not stopped).
    With ``ema_decay`` > 0 the moving average of the weights and BatchNorm buffers (:class:`WeightEMA`)
    is what is validated, kept and restored: from scratch the raw weights' holdout AUPRC swings from
    epoch to epoch, the average's does not. Stage ``ft`` follows :func:`lr_factor`; ``head`` keeps its
    rate. The best epoch's weights are restored; the first trained epoch is the first candidate (never
    the untrained weights, which can score a holdout by chance). With ``restore_best: false`` every
    epoch runs and the last weights are kept: the holdout only reports and calibrates, and fold and
    final models get the same budget. Returns the per-epoch history (rows of :func:`_epoch_record`).
    """
    st = cfg.stage(stage)
    params = set_trainable(model, stage, st.trainable_attrs)
    opt = make_optimizer(params, name=cfg.optimizer, lr=st.lr, weight_decay=st.weight_decay,
                         momentum=cfg.momentum, nesterov=cfg.nesterov)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(cfg, data.labels[train_idx], data.device))
    y_val = data.labels[val_idx]
    ema, scored = _ema(model, cfg.ema_decay)  # scored: the weights validated, kept and restored
    scored = unwrap(scored)
    best_ap, best_state, best_epoch, bad, history = -1.0, copy.deepcopy(scored.state_dict()), 0, 0, []
    for epoch in range(1, st.epochs + 1):
        lr = float(st.lr) * lr_factor(epoch, st.epochs, warmup=st.warmup_epochs, schedule=st.lr_schedule)
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        train_loss, seen, phases = _train_epoch(model, data, train_idx, tf, cfg, opt, loss_fn, generator, ema)
        t1 = time.perf_counter()
        p_val = predict(scored, data, val_idx, tf, cfg)
        rec = _epoch_record(stage, epoch, lr, train_loss, y_val, p_val, seen, phases, t1 - t0, time.perf_counter() - t1)
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        if not cfg.restore_best:
            continue  # a fixed budget: no selection on the (small, noisy) holdout
        ap = rec["val_auprc"]
        if not np.isnan(ap) and (best_epoch == 0 or ap > best_ap + cfg.min_delta):
            best_ap, best_epoch, bad = ap, epoch, 0
            best_state = copy.deepcopy(scored.state_dict())
        elif epoch > st.min_epochs:
            bad += 1
            if bad > st.patience:
                break
    if not cfg.restore_best and history:
        best_ap, best_epoch, best_state = history[-1]["val_auprc"], len(history), copy.deepcopy(scored.state_dict())
    unwrap(model).load_state_dict(best_state)
    return StageResult(best_auprc=best_ap, best_epoch=best_epoch, history=history)


def _epoch_record(stage: str, epoch: int, lr: float, train_loss: float, y_val: np.ndarray, p_val: np.ndarray, seen: int,
                  phases: dict[str, float], train_secs: float, eval_secs: float) -> dict[str, Any]:
    """One ``cv_histories.csv`` row: losses, holdout AUPRC/ROC-AUC, and where the epoch's seconds went
    (``data_s``, ``fwd_bwd_s``, ``optimizer_s``, ``ema_s`` of the training steps, ``eval_s`` of the holdout)."""
    ap, auc = ranking_scores(y_val, p_val)
    secs = train_secs + eval_secs
    rate = lambda t: seen / t if t else float("nan")
    step_s = phases["step_s"]
    return {"stage": stage, "epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": _val_loss(p_val, y_val),
            "val_auprc": ap, "val_auc": auc, "seconds": secs, "images_per_s": rate(secs),
            "train_seconds": train_secs, "train_images_per_s": rate(train_secs),
            "data_wait_s": phases["data_s"], "data_wait_frac": phases["data_s"] / step_s if step_s else float("nan"),
            **{k: phases[k] for k in ("data_s", "fwd_bwd_s", "optimizer_s", "ema_s")}, "eval_s": eval_secs}


def train_model(
    data: SliceSource,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    *,
    seed: int,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]], float]:
    """Build a ResNet18 and run stage A (head) then stage B (fine-tune) on ``train_idx``.

    Returns:
        (model with the best weights, per-epoch history of both stages, best validation AUPRC).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tf = make_transform(cfg)
    model = build_model(weights=cfg.weights, dropout=cfg.dropout, in_channels=tf.channels, pool=cfg.pool).to(data.device)
    if data.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    if cfg.channels_last:  # NHWC: faster convolutions on GPUs and on CPUs (oneDNN), docs/benchmarks.md
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if cfg.compile else model
    a = fit_stage(run_model, data, train_idx, val_idx, tf, cfg, stage="head", generator=gen, on_epoch=on_epoch)
    b = fit_stage(run_model, data, train_idx, val_idx, tf, cfg, stage="ft", generator=gen, on_epoch=on_epoch)
    best = max(a.best_auprc, b.best_auprc)
    return model, a.history + b.history, best
