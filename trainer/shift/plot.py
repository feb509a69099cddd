"""``test_shift.png``: the test rows against the training reference (embedding distance and a few key columns)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainer.shift.reference import ShiftReference

__all__ = ["KEY_COLUMNS", "plot_shift"]

#: The feature columns drawn beside the embedding distance.
KEY_COLUMNS: tuple[str, ...] = ("spacing_row_mm", "hu_p99", "frac_brain")
_COLOURS = {"fit": "tab:blue", "holdout": "tab:orange", "test": "tab:green"}


def plot_shift(frame: pd.DataFrame, ref: ShiftReference, values: np.ndarray, path: Path) -> None:
    """One PNG: histograms of the embedding distance per part (``frame["part"]``: fit / holdout /
    test) with the threshold, then each :data:`KEY_COLUMNS` column's values per part over the
    training range (shaded) and the flag limit (dashed). ``values``: (n, c) in ``frame``'s row order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.report.plots import save_figure

    names = [c.name for c in ref.columns]
    keys = [k for k in KEY_COLUMNS if k in names]
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(3.6 * (1 + len(keys)), 3.2), squeeze=False)
    try:
        ax = axes[0, 0]
        dist = frame["embedding_distance"].to_numpy(dtype=float)
        if np.isfinite(dist).any():
            bins = np.linspace(np.nanmin(dist), np.nanmax(dist), 30)
            for part, colour in _COLOURS.items():
                d = dist[(frame["part"] == part).to_numpy()]
                ax.hist(d, bins=bins, density=True, histtype="step", color=colour, label=f"{part} (n={len(d)})")
            ax.axvline(ref.embedding_threshold, color="k", ls="--", lw=1, label="threshold")
        ax.set(title="embedding distance (Mahalanobis)", xlabel="distance to nearest class mean")
        ax.legend(fontsize=7)
        for ax, key in zip(axes[0, 1:], keys):
            _draw_column(ax, frame, ref, values, names.index(key))
        fig.tight_layout()
        save_figure(fig, path, bbox_inches="tight")
    finally:
        plt.close(fig)


def _draw_column(ax: object, frame: pd.DataFrame, ref: ShiftReference, values: np.ndarray, j: int) -> None:
    """One column's values per part (jittered strips) over its training range and flag limits."""
    c, lo, hi = ref.columns[j], float(ref.ranges.lo[j]), float(ref.ranges.hi[j])
    margin = ref.feature_threshold * float(ref.ranges.scale[j])
    rng = np.random.default_rng(0)
    ax.axhspan(lo, hi, color="0.85", label="training range")  # type: ignore[attr-defined]
    for y in (lo - margin, hi + margin):
        ax.axhline(y, color="k", ls="--", lw=1)  # type: ignore[attr-defined]
    for k, (part, colour) in enumerate(_COLOURS.items()):
        v = values[(frame["part"] == part).to_numpy(), j]
        ax.scatter(k + rng.uniform(-0.2, 0.2, len(v)), v, s=5, color=colour, alpha=0.6)  # type: ignore[attr-defined]
    ax.set(title=f"{c.label}" + (f" ({c.unit})" if c.unit else ""), xticks=range(len(_COLOURS)),  # type: ignore[attr-defined]
           xticklabels=list(_COLOURS))
