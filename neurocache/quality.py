"""``quality.json``: checks over the feature table (counts, balance, duplicates, mismatches, outliers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from neurocache.config import PrepConfig
from neurocache.geometry import series_counts
from neurocache.reasons import MISSING, OK, QUARANTINED

# Header columns checked for outliers, with a human name and unit.
_OUTLIER_COLUMNS = {
    "spacing_row_mm": "pixel spacing (row), mm",
    "thickness_mm": "slice thickness, mm",
    "kvp": "tube voltage, kV",
    "hu_p50": "median HU",
    "frac_bone": "bone fraction",
}


def robust_outliers(values: pd.Series, k: float = 5.0) -> pd.Series:
    """Mask of values farther than ``k`` scaled MADs from the median (NaN never an outlier)."""
    v = values.astype(float)
    med = np.nanmedian(v) if v.notna().any() else np.nan
    mad = np.nanmedian(np.abs(v - med)) * 1.4826 if v.notna().any() else np.nan
    if not np.isfinite(mad) or mad == 0:
        return pd.Series(False, index=values.index)
    return (np.abs(v - med) > k * mad).fillna(False)


def class_balance(labels: pd.Series) -> dict[str, Any]:
    """Counts of label 0/1, positive fraction and imbalance ratio (majority / minority)."""
    labels = labels.dropna().astype(int)
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    return {
        "n_label0": n0,
        "n_label1": n1,
        "positive_fraction": (n1 / (n0 + n1)) if n0 + n1 else None,
        "imbalance_ratio": (max(n0, n1) / min(n0, n1)) if min(n0, n1) else None,
    }


def quality_report(table: pd.DataFrame, cfg: PrepConfig) -> dict[str, Any]:
    """The store's quality summary (JSON-able).

    Keys: counts (by status, by reason), class_balance (ok rows and all labelled rows), duplicates
    (IDs, content hashes), mismatches (files without label, labels without file), fixes,
    transfer_syntaxes, image_sizes, outliers (per header column: IDs beyond 5 MADs), series (counts
    of series, series of one, unordered slices, gaps, duplicate positions, mixed orientations).
    """
    ok = table[table["status"] == OK]
    files = table[table["status"] != MISSING]
    dup_hash = files[files["content_hash"].astype(str).ne("") & files["content_hash"].duplicated(keep=False)]
    outliers = {}
    for col, name in _OUTLIER_COLUMNS.items():
        if col in ok:
            mask = robust_outliers(ok[col])
            outliers[col] = {"what": name, "n": int(mask.sum()), "ids": ok.loc[mask, "ID"].head(50).tolist()}
    fixes = (
        files["fixes"].astype(str).str.split(",").explode().loc[lambda s: s != ""].value_counts().to_dict()
        if "fixes" in files
        else {}
    )
    sizes = (files[files["rows"] > 0]["rows"].astype(str) + "x" + files[files["rows"] > 0]["cols"].astype(str)).value_counts()
    return {
        "counts": {
            "n_rows": len(table),
            "n_files": len(files),
            "n_ok": len(ok),
            "n_quarantined": int((table["status"] == QUARANTINED).sum()),
            "n_missing_file": int((table["status"] == MISSING).sum()),
            "by_status": table["status"].value_counts().to_dict(),
            "by_reason": table.loc[table["status"] != OK, "reason"].value_counts().to_dict(),
        },
        "class_balance": {"ok": class_balance(ok["label"]), "all_labels": class_balance(table["label"])},
        "duplicates": {
            "ids": table.loc[table["ID"].duplicated(keep=False), "ID"].unique().tolist(),
            "content_hash_groups": dup_hash.groupby("content_hash")["ID"].apply(list).tolist(),
        },
        "mismatches": {
            "files_without_label": table.loc[table["reason"] == "no_label", "ID"].tolist(),
            "labels_without_file": table.loc[table["status"] == MISSING, "ID"].tolist(),
        },
        "fixes": {str(k): int(v) for k, v in fixes.items()},
        "transfer_syntaxes": files["transfer_syntax"].replace("", "unknown").value_counts().to_dict(),
        "image_sizes": sizes.to_dict(),
        "patients": int(ok["patient_key"].replace("", np.nan).nunique()) if len(ok) else 0,
        "outliers": outliers,
        "series": series_counts(table),
        "preprocess": cfg.value_params(),
    }
