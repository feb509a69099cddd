"""The feature-table columns the distribution-shift check compares with training, defined once.

Acquisition columns come from the DICOM header (:mod:`neurocache.dicomheader`), content columns from
the HU image (:mod:`neurocache.features`); both are in the store's ``features.parquet`` and in each
row ``trainer predict`` builds with :func:`neurocache.preprocess.preprocess_file`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "Column", "column_values"]


@dataclass(frozen=True)
class Column:
    """One checked column.

    Attributes:
        name: the feature-table column (``box_h`` / ``box_w``: the skull box's height / width, derived).
        label: how reasons and summaries name it ("pixel spacing (rows)").
        unit: its unit ("mm", "kV", "px", "HU", "" for fractions and the resize scale).
        tol: the smallest spread of training values a distance is measured in (same unit): a column
            that is constant in training (kVp 120 on every slice) still has a finite scale.
        kind: ``acquisition`` (header) or ``content`` (HU statistics, tissue fractions, skull box).
    """

    name: str
    label: str
    unit: str
    tol: float
    kind: str


COLUMNS: tuple[Column, ...] = (
    Column("spacing_row_mm", "pixel spacing (rows)", "mm", 0.01, "acquisition"),
    Column("spacing_col_mm", "pixel spacing (columns)", "mm", 0.01, "acquisition"),
    Column("thickness_mm", "slice thickness", "mm", 0.1, "acquisition"),
    Column("kvp", "kVp", "kV", 1.0, "acquisition"),
    Column("rows", "image rows", "px", 1.0, "acquisition"),
    Column("cols", "image columns", "px", 1.0, "acquisition"),
    Column("hu_p1", "HU 1st percentile", "HU", 5.0, "content"),
    Column("hu_p50", "HU median", "HU", 5.0, "content"),
    Column("hu_p99", "HU 99th percentile", "HU", 5.0, "content"),
    Column("frac_air", "air fraction", "", 0.005, "content"),
    Column("frac_brain", "brain-window fraction", "", 0.005, "content"),
    Column("frac_bone", "bone fraction", "", 0.005, "content"),
    Column("box_h", "skull box height", "px", 2.0, "content"),
    Column("box_w", "skull box width", "px", 2.0, "content"),
    Column("scale", "resize scale", "", 0.005, "content"),
)

_DERIVED = {"box_h": ("box_r1", "box_r0"), "box_w": ("box_c1", "box_c0")}


def _number(v: Any) -> float:
    """A feature value as float64 (NaN for None, empty or non-numeric values)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def column_values(rows: pd.DataFrame | Sequence[Mapping[str, Any]], columns: Sequence[Column] = COLUMNS) -> np.ndarray:
    """The checked columns of feature rows: float64 (n, len(columns)), NaN where a value is missing.

    ``rows``: a feature table (``features.parquet`` rows) or the row dicts of ``preprocess_file``.
    """
    recs: list[Mapping[Any, Any]] = [*rows.to_dict("records")] if isinstance(rows, pd.DataFrame) else list(rows)
    out = np.full((len(recs), len(columns)), np.nan)
    for i, r in enumerate(recs):
        for j, c in enumerate(columns):
            if c.name in _DERIVED:
                a, b = _DERIVED[c.name]
                out[i, j] = _number(r.get(a)) - _number(r.get(b))
            else:
                out[i, j] = _number(r.get(c.name))
    return out
