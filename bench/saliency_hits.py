"""Does the saliency peak land on the lesion? ``python -m bench.saliency_hits --run FINAL --data DATA`` (docs/results.md, Saliency).

For the final run's held-out test slices (``test_predictions.csv``) that are positive (label 1) and
detected (prob >= the run's threshold), the peak of each candidate map (``--method`` x ``--layer`` x
``--peak`` x ``--locate``) is found by :func:`trainer.predict.predict_files` (``saliency=...``, exactly what
``predict --saliency`` writes) from the phantom set's DICOM files, and its distance to the slice's lesion is measured against
the truth the generator drew (``DATA/lesions.csv``, :mod:`neurocache.synth.truth`): the Euclidean
distance in the DICOM's pixels from the peak to the nearest pixel centre of the lesion (0 inside it).
A hit is a distance <= ``--radius`` pixels (10 at 512 px). Prints one line per candidate and writes
the per-slice distances and the summary as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def distances(run: Path, data: Path, method: str, layer: str, png_dir: Path, peak: str = "tissue",
              locate: str = "centroid") -> pd.DataFrame:
    """Per detected positive test slice: ID, prob, peak_row, peak_col, dist (pixels) to its lesion."""
    from neurocache.synth.truth import decode_rle, distance_to_lesion
    from trainer.predict import load_final_run, predict_files

    thr = load_final_run(run).threshold
    test = pd.read_csv(run / "test_predictions.csv", dtype={"ID": str})
    det = test[(test["label"] == 1) & (test["prob"] >= thr)]
    truth = pd.read_csv(data / "lesions.csv", dtype={"ID": str}, keep_default_na=False).set_index("ID")
    files = [data / "CTs" / f"{i}.dcm" for i in det["ID"]]
    pred = predict_files(run, files, device="cpu", saliency=png_dir, saliency_method=method, saliency_layer=layer,
                         saliency_peak=peak, saliency_locate=locate)
    out = []
    for _, r in pred.iterrows():
        t = truth.loc[r["ID"]]
        mask = decode_rle(str(t["mask_rle"]), (int(t["rows"]), int(t["cols"])))
        out.append({"ID": r["ID"], "prob": float(r["prob"]), "kind": t["kind"], "peak_row": int(r["peak_row"]),
                    "peak_col": int(r["peak_col"]), "dist": distance_to_lesion(int(r["peak_row"]), int(r["peak_col"]), mask)})
    return pd.DataFrame(out)


def summary(d: pd.DataFrame, radius: float) -> dict[str, Any]:
    """n, hits, hit fraction (distance <= radius), median distance, and the same by lesion kind."""
    def one(x: pd.DataFrame) -> dict[str, Any]:
        hits = int((x["dist"] <= radius).sum())
        return {"n": len(x), "hits": hits, "frac": hits / len(x) if len(x) else float("nan"),
                "median_dist": float(np.median(x["dist"])) if len(x) else float("nan")}
    return {**one(d), "by_kind": {k: one(g) for k, g in d.groupby("kind")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.saliency_hits", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a final run folder")
    p.add_argument("--data", type=Path, required=True, help="the phantom set (CTs/, lesions.csv) the run's store was built from")
    p.add_argument("--method", nargs="+", default=["gradcam", "gradcampp"])
    p.add_argument("--layer", nargs="+", default=["layer4", "layer3", "layer2"])
    p.add_argument("--peak", nargs="+", default=["tissue", "anywhere"], help="saliency_peak values")
    p.add_argument("--locate", nargs="+", default=["centroid", "max"], help="saliency_locate values")
    p.add_argument("--radius", type=float, default=10.0, help="hit radius, DICOM pixels")
    p.add_argument("--out", type=Path, required=True, help="JSON to write (PNGs go into a folder beside it)")
    a = p.parse_args(argv)
    res: dict[str, Any] = {"run": str(a.run), "data": str(a.data), "radius": a.radius, "candidates": {}}
    for layer, method, peak, locate in itertools.product(a.layer, a.method, a.peak, a.locate):
        t0 = time.perf_counter()
        d = distances(a.run, a.data, method, layer, a.out.with_suffix("") / f"{method}_{layer}_{peak}_{locate}", peak, locate)
        s = summary(d, a.radius)
        res["candidates"][f"{method}/{layer}/{peak}/{locate}"] = {**s, "seconds": time.perf_counter() - t0, "slices": d.to_dict("records")}
        print(f"{method:9s} {layer} {peak:8s} {locate:8s}: {s['hits']}/{s['n']} = {s['frac']:.3f} within {a.radius:g} px; "
              f"median {s['median_dist']:.1f} px; " + ", ".join(f"{k} {v['hits']}/{v['n']}" for k, v in s["by_kind"].items()),
              flush=True)
        a.out.write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
