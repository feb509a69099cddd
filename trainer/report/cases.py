"""The report's sections that show slices from the store: the most confident errors (``gallery``) and,
for a cv run, the labels to look at again (``label-review``).

Each function takes the run's :class:`~trainer.report.sections.Context` and returns the section
template's ``d``, or raises :class:`~trainer.report.sections.Missing` (as in :mod:`trainer.report.sections`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from trainer.report.sections import Context, Missing
from trainer.runs import files as F


def _slice_png(hu: np.ndarray, center: float, width: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    from neurocache.plot import brain_window

    buf = io.BytesIO()
    mpimg.imsave(buf, brain_window(hu, center, width), cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()


def gallery_cases(pred: pd.DataFrame, threshold: float, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` most confident false positives (label 0, highest prob >= threshold) and false
    negatives (label 1, lowest prob < threshold)."""
    fp = pred[(pred["label"] == 0) & (pred["prob"] >= threshold)].sort_values(["prob", "ID"], ascending=[False, True])
    fn = pred[(pred["label"] == 1) & (pred["prob"] < threshold)].sort_values(["prob", "ID"], ascending=[True, True])
    return fp.head(n), fn.head(n)


def gallery(ctx: Context) -> dict[str, Any]:
    thr = ctx.threshold
    src = ctx.run / (F.TEST_PREDICTIONS if ctx.kind == "final" else F.CV_OOF_PREDICTIONS)
    if thr is None or not src.is_file():
        raise Missing(f"{src.name} or the threshold is missing")
    if ctx.store is None:
        raise Missing(f"the store could not be opened ({ctx.store_error}), so no images can be shown")
    n = int(ctx.cfg.gallery_n)
    fp, fn = gallery_cases(pd.read_csv(src, dtype={"ID": str}), float(thr), n)
    center, width = ctx.cfg.windows[0]
    feats = ctx.store.features
    rows = dict(zip(feats["ID"].astype(str), feats["row"].astype(int)))

    def cases(frame: pd.DataFrame) -> list[dict[str, Any]]:
        out = []
        for _, r in frame.iterrows():
            row = rows.get(str(r["ID"]), -1)
            png = _slice_png(np.asarray(ctx.store.images[row]), center, width) if row >= 0 else None
            out.append({"id": str(r["ID"]), "png": png, "prob": float(r["prob"]), "label": int(r["label"])})
        return out

    return {"what": "test" if ctx.kind == "final" else "out-of-fold", "center": center, "width": width,
            "threshold": float(thr), "n": n,
            "groups": [{"title": "False positives (label 0, most confident first)", "cases": cases(fp), "id": "gallery-fp"},
                       {"title": "False negatives (label 1, most confident first)", "cases": cases(fn), "id": "gallery-fn"}]}
