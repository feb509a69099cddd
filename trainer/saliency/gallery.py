"""The report's saliency gallery (``report.html`` section ``saliency``, final runs): Grad-CAM overlays of test
slices, computed at report time from the final model's weights on the store's images.

Three groups of up to ``gallery_n`` test slices each: true positives (label 1, prob >= threshold, highest
prob first), false negatives (label 1, prob < threshold, lowest first) and the highest-scored negatives
(label 0, highest prob first; those at or above the threshold are the false positives). Each overlay is the
store's image (the skull box letterboxed to S x S) in the config's first window, with the map of
``saliency_method`` at ``saliency_layer`` over it and its peak (``saliency_peak``) ringed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from trainer.report.sections import Context, Missing
from trainer.runs import files as F
from trainer.saliency.geometry import Placement, model_to_dicom
from trainer.saliency.overlay import map_to_dicom, overlay_indices, overlay_png
from trainer.saliency.peak import peak_masks, peak_of

__all__ = ["saliency_cases", "saliency_gallery"]


def saliency_cases(pred: pd.DataFrame, threshold: float, n: int) -> dict[str, pd.DataFrame]:
    """The three groups' rows of a predictions table (``ID``, ``label``, ``prob``): ``tp``, ``fn``, ``neg``."""
    pos, neg = pred[pred["label"] == 1], pred[pred["label"] == 0]
    tp = pos[pos["prob"] >= threshold].sort_values(["prob", "ID"], ascending=[False, True])
    fn = pos[pos["prob"] < threshold].sort_values(["prob", "ID"], ascending=[True, True])
    top_neg = neg.sort_values(["prob", "ID"], ascending=[False, True])
    return {"tp": tp.head(n), "fn": fn.head(n), "neg": top_neg.head(n)}


def _maps(ctx: Context, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | list[None]]:
    """(store images (B, S, S) int16, maps (B, O, O), peak masks) of store ``rows``, from the final model on the CPU."""
    from trainer.context import context_rows
    from trainer.predict import build_predictor, load_final_run
    from trainer.precision import autocast, recorded_precision, scoring_precision
    from trainer.saliency.cam import SaliencyModel

    dev = torch.device("cpu")
    run = load_final_run(ctx.run)
    cfg = run.config
    prec = scoring_precision(recorded_precision(cfg.precision, cfg.amp, dev), dev)
    model, tf = build_predictor(run, dev)
    centre = torch.as_tensor(rows, dtype=torch.int64)
    stack = centre
    if cfg.context_slices:
        feats = ctx.store.features
        n = int(ctx.store.images.shape[0])
        links = torch.full((2, n), -1, dtype=torch.int64)
        ok = feats[feats["row"] >= 0]
        for k, col in enumerate(("prev_row", "next_row")):
            links[k, torch.from_numpy(ok["row"].to_numpy(np.int64, copy=True))] = torch.from_numpy(ok[col].to_numpy(np.int64, copy=True))
        stack = context_rows(centre, links[0], links[1], int(cfg.context_slices))
    hu = torch.from_numpy(np.stack([np.asarray(ctx.store.images[int(r)]) for r in stack.flatten().tolist()]))
    hu = hu.reshape(*stack.shape, *hu.shape[-2:])
    maps = SaliencyModel(model, cfg.saliency_method, cfg.saliency_layer)(
        tf(hu, train=False), autocast=lambda: autocast(dev, prec)).numpy()
    masks = peak_masks(hu, cfg.out_size, cfg.saliency_peak)
    centre_hu = hu[:, hu.shape[1] // 2] if hu.ndim == 4 else hu
    return centre_hu.numpy(), maps, masks


def saliency_gallery(ctx: Context) -> dict[str, Any]:
    """The section template's ``d``: note values and ``groups`` (title, id, cases with png, ID, prob, label)."""
    if ctx.kind != "final":
        raise Missing("saliency overlays are made for final runs (from final_model.pt and the test predictions)")
    src = ctx.run / F.TEST_PREDICTIONS
    if ctx.threshold is None or not src.is_file() or not (ctx.run / F.FINAL_MODEL).is_file():
        raise Missing(f"{F.TEST_PREDICTIONS}, {F.FINAL_MODEL} or the threshold is missing")
    if ctx.store is None:
        raise Missing(f"the store could not be opened ({ctx.store_error}), so no images can be shown")
    thr, n, cfg = float(ctx.threshold), int(ctx.cfg.gallery_n), ctx.cfg
    groups = saliency_cases(pd.read_csv(src, dtype={"ID": str}), thr, n)
    feats = ctx.store.features
    where = dict(zip(feats["ID"].astype(str), feats["row"].astype(int)))
    wanted = [str(i) for g in groups.values() for i in g["ID"] if where.get(str(i), -1) >= 0]
    pngs: dict[str, bytes] = {}
    if wanted:
        images, maps, masks = _maps(ctx, [where[i] for i in wanted])
        size = int(images.shape[-1])
        place = Placement(box=(0, size, 0, size), store_size=size, out_size=int(cfg.out_size))
        center, width = cfg.windows[0]
        for i, img, sal, m in zip(wanted, images, maps, masks):
            peak = model_to_dicom(place, *peak_of(sal, m, cfg.saliency_locate))
            pngs[i] = overlay_png(overlay_indices(img, map_to_dicom(sal, place, img.shape), peak, float(center), float(width)))

    def cases(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return [{"id": str(r["ID"]), "png": pngs.get(str(r["ID"])), "prob": float(r["prob"]), "label": int(r["label"]),
                 "above": bool(r["prob"] >= thr)} for _, r in frame.iterrows()]

    titles = {"tp": "True positives (label 1, p ≥ threshold, highest first)",
              "fn": "False negatives (label 1, p < threshold, lowest first)",
              "neg": "Highest-scored negatives (label 0, highest first; false positives where p ≥ threshold)"}
    return {"threshold": thr, "n": n, "method": cfg.saliency_method, "layer": cfg.saliency_layer,
            "peak": cfg.saliency_peak, "locate": cfg.saliency_locate, "center": cfg.windows[0][0], "width": cfg.windows[0][1],
            "groups": [{"id": f"saliency-{k}", "title": titles[k], "cases": cases(g)} for k, g in groups.items()]}
