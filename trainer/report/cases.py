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


def _neighbours(ctx: Context) -> dict[str, tuple[int, int, int]]:
    """ID -> (previous row, row, next row) in ``images`` of the store's ok slices (-1: none)."""
    ok = ctx.store.ok_rows()
    rows = ok["row"].to_numpy(dtype=np.int64)
    prev = ok["prev_row"].to_numpy(dtype=np.int64) if "prev_row" in ok.columns else np.full(len(ok), -1)
    nxt = ok["next_row"].to_numpy(dtype=np.int64) if "next_row" in ok.columns else np.full(len(ok), -1)
    return {i: (int(p), int(r), int(n)) for i, p, r, n in zip(ok["ID"].astype(str), prev, rows, nxt)}


def label_review(ctx: Context) -> dict[str, Any]:
    """The cv run's most suspect labels (``label_review.csv``, top ``gallery_n``), each slice between its series
    neighbours (the store's ``prev_row`` / ``next_row``), with its ID, given label, OOF prob and suggested label."""
    from trainer.evaluation.label_review import summary_line

    path = ctx.cv_dir / F.LABEL_REVIEW if ctx.cv_dir is not None else None
    if path is None or not path.is_file():
        raise Missing(f"{F.LABEL_REVIEW} of the cv run was not found (a cv run made before it existed, or OOF "
                      f"predictions of one class only)")
    review = pd.read_csv(path, dtype={"ID": str, "group": str}).sort_values("rank")
    n = int(ctx.cfg.gallery_n)
    center, width = ctx.cfg.windows[0]
    links = _neighbours(ctx) if ctx.store is not None else {}
    ids = dict(zip((r for _, r, _ in links.values()), links))  # images row -> ID

    def image(row: int, role: str) -> dict[str, Any]:
        if row < 0:
            return {"role": role, "id": "", "png": None}
        return {"role": role, "id": ids.get(row, ""), "png": _slice_png(np.asarray(ctx.store.images[row]), center, width)}

    cases = []
    for _, r in review.head(n).iterrows():
        prev, row, nxt = links.get(str(r["ID"]), (-1, -1, -1))
        g = str(r["group"])
        cases.append({"id": str(r["ID"]), "group": g if len(g) <= 14 else g[:12] + "…", "label": int(r["label"]), "prob": float(r["prob"]),
                      "quality": float(r["quality"]), "rank": int(r["rank"]), "suggested": int(r["suggested_label"]),
                      "images": [image(prev, "previous"), image(row, "slice"), image(nxt, "next")] if row >= 0 else []})
    return {"summary": summary_line(review, file=F.LABEL_REVIEW), "cases": cases, "n": n, "center": center,
            "width": width, "store_error": None if ctx.store is not None else ctx.store_error,
            "what": "this run's" if ctx.kind == "cv" else "its cv run's"}
