"""The report's ``shift`` section: the final run's test rows against its distribution-shift reference
(``shift_reference.json``, ``shift_scores.csv``, ``test_shift.png``; :mod:`trainer.shift`).

Returns the section template's ``d`` or raises :class:`~trainer.report.sections.Missing`, as the
functions of :mod:`trainer.report.sections`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pandas as pd

from trainer.report.format import fmt
from trainer.report.sections import Context, Missing, figure
from trainer.runs import files as F

#: the flagged test slices listed (most shifted first)
LISTED = 10


def reason_counts(reasons: pd.Series) -> list[dict[str, Any]]:
    """Slices per reason: each ``shift_reason`` split at '; ', the embedding's distance detail dropped."""
    parts = [re.sub(r" \(distance .*\)$", "", p) for r in reasons.fillna("") for p in str(r).split("; ") if p]
    counts = pd.Series(parts, dtype=str).value_counts()
    return [{"reason": k, "slices": int(v)} for k, v in counts.items()]


def shift(ctx: Context) -> dict[str, Any] | None:
    if ctx.kind != "final":
        return None
    ref_path, scores_path = ctx.run / F.SHIFT_REFERENCE, ctx.run / F.SHIFT_SCORES
    if not ref_path.is_file() or not scores_path.is_file():
        raise Missing(f"this final run has no {F.SHIFT_REFERENCE} / {F.SHIFT_SCORES}: it was made before the "
                      f"distribution-shift check (run `python -m trainer final` again to get them)")
    ref = json.loads(ref_path.read_text())
    scores = pd.read_csv(scores_path, dtype={"ID": str}, keep_default_na=False, na_values={"embedding_distance": [""]})
    scores["shifted"] = scores["shifted"].astype(str).str.lower() == "true"
    rates = {p: (int(d["shifted"].sum()), len(d)) for p, d in scores.groupby("part")}
    t = scores[scores["part"] == "test"]
    margin = float(ref["feature_threshold"])
    columns = [{"column": c["label"], "unit": c["unit"], "training range": f"{fmt(c['lo'], 4)} – {fmt(c['hi'], 4)}",
                "spread (std, at least tol)": fmt(c["scale"], 4),
                "flagged below / above": f"{fmt(c['lo'] - margin * c['scale'], 4)} / {fmt(c['hi'] + margin * c['scale'], 4)}"}
               for c in ref["columns"] if c["lo"] is not None]
    flagged = t[t["shifted"]].sort_values("shift_score", ascending=False).head(LISTED)
    head = {"training rows (fit)": ref.get("n_fit"), "holdout rows (thresholds)": ref.get("n_holdout"),
            "target share of holdout flagged": ref.get("alpha"), "holdout flagged": ref.get("holdout_flag_rate"),
            "feature threshold (spreads beyond the range)": margin,
            "embedding threshold (Mahalanobis)": ref.get("embedding_threshold"),
            "Ledoit-Wolf shrinkage (per class)": ", ".join(f"{v:.3f}" for v in np.atleast_1d(ref.get("shrinkage") or [])),
            "embedding dimension": ref.get("embedding_dim")}
    return {"head": head, "listed": LISTED, "rates": [{"rows": p, "flagged": k, "slices": n, "share": k / n if n else None}
                                    for p, (k, n) in rates.items()],
            "test": rates.get("test", (0, 0)), "reasons": reason_counts(t["shift_reason"]), "columns": columns,
            "flagged": flagged[["ID", "label", "shift_score", "shift_reason"]].to_dict("records"),
            "figure": figure(ctx.run / F.SHIFT_PLOT, "test rows against the training reference")}
