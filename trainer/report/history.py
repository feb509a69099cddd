"""Training-history figure of a run: loss, validation AUPRC and ROC-AUC per epoch, per fold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trainer.evaluation.inputs import check_frame
from trainer.report.plots import PathLike, _save, plt

__all__ = ["plot_histories"]


_HIST_COLUMNS = ("fold", "stage", "epoch", "train_loss", "val_loss", "val_auprc")
_STAGES = ("head", "ft")


def _global_epochs(hist: pd.DataFrame) -> pd.Series:
    """x position per row: fine-tune epochs continue after the head epochs of the same fold."""
    x = hist["epoch"].astype(np.float64).copy()
    for _, sub in hist.groupby("fold", sort=False):
        head = sub[sub["stage"] == "head"]
        ft = sub[sub["stage"] == "ft"]
        if len(head) and len(ft):
            offset = head["epoch"].max() + 1 - ft["epoch"].min()
            x.loc[ft.index] = ft["epoch"].astype(np.float64) + offset
    return x


def _check_history(hist: pd.DataFrame) -> pd.DataFrame:
    """``hist`` checked (columns, non-empty, stages) with ``_x`` (:func:`_global_epochs`) added."""
    check_frame(hist, "hist", _HIST_COLUMNS)
    bad = sorted(set(hist["stage"]) - set(_STAGES))
    if bad:
        raise ValueError(f"The 'stage' column of 'hist' must contain only {list(_STAGES)}; got {bad}.")
    h = hist.reset_index(drop=True)
    return h.assign(_x=_global_epochs(h))


def _draw_fold(axes: Any, sub_f: pd.DataFrame, f: Any, color: str, metrics: list[str]) -> None:
    """One fold's curves (head: circles, fine-tune: triangles) and the stage switch line."""
    markers = {"head": "o", "ft": "^"}
    for stage in _STAGES:
        sub = sub_f[sub_f["stage"] == stage].sort_values("_x")
        if sub.empty:
            continue
        lab = f"fold {f} {stage}"
        kw = {"color": color, "marker": markers[stage], "ms": 3, "lw": 1.2}
        for ai, m in enumerate(metrics):
            ax = axes[0, ai]
            if m == "loss":
                ax.plot(sub["_x"], sub["train_loss"], ls="-", label=f"{lab} train", **kw)
                ax.plot(sub["_x"], sub["val_loss"], ls="--", label=f"{lab} val", **kw)
            else:
                ax.plot(sub["_x"], sub[m], ls="-", label=lab, **kw)
    head = sub_f[sub_f["stage"] == "head"]
    if len(head) and (sub_f["stage"] == "ft").any():
        switch = float(head["_x"].max()) + 0.5
        for ax in axes[0]:
            ax.axvline(switch, color=color, ls=":", lw=0.8, alpha=0.6)


def plot_histories(hist: pd.DataFrame, path: PathLike) -> dict[str, int]:
    """Training curves of all folds.

    ``hist`` has columns ``fold, stage ('head' | 'ft'), epoch, train_loss,
    val_loss, val_auprc`` (and optionally ``val_auc``). Subplots: loss
    (train solid, val dashed), ``val_auprc`` and, when present, ``val_auc``.
    One colour per fold; the head stage is drawn with circles, the fine-tune
    stage with triangles and its epochs continue after the last head epoch of
    the same fold (a dotted vertical line marks the switch).

    Returns:
        ``n_folds`` and ``n_rows`` plotted.
    """
    h = _check_history(hist)
    metrics = ["loss", "val_auprc"] + (["val_auc"] if "val_auc" in h.columns else [])
    folds = sorted(pd.unique(h["fold"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
    try:
        for ci, f in enumerate(folds):
            _draw_fold(axes, h[h["fold"] == f], f, f"C{ci % 10}", metrics)
        titles = {"loss": "Loss (train —, val --)", "val_auprc": "Validation AUPRC", "val_auc": "Validation ROC AUC"}
        for ai, m in enumerate(metrics):
            ax = axes[0, ai]
            ax.set(title=titles[m], xlabel="epoch (head, then fine-tune)", ylabel=m)
            ax.grid(alpha=0.3)
        # the loss panel's line styles are explained in its title; one legend
        # (fold x stage) on the AUPRC panel keeps the figure readable.
        axes[0, 1].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return {"n_folds": len(folds), "n_rows": len(h)}
