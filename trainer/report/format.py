"""How the report shows a value: numbers rounded, None/NaN as an em dash, mappings as key/value frames."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

__all__ = ["ci", "fmt", "kv_frame"]


def fmt(x: Any, nd: int = 3) -> Any:
    """Numbers rounded to ``nd`` decimals, None/NaN as an em dash, booleans yes/no; text and Markup as given."""
    if x is None:
        return "—"
    if isinstance(x, Markup):
        return x
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(float(x)):
            return "—"
        return f"{float(x):.{nd}f}"
    return str(x)


def ci(pair: Any, nd: int = 3) -> str:
    """``lo – hi``, or an em dash when the interval is missing."""
    if not pair or pair[0] is None or pair[1] is None:
        return "—"
    return f"{fmt(pair[0], nd)} – {fmt(pair[1], nd)}"


def kv_frame(d: dict[str, Any], nd: int = 4) -> pd.DataFrame:
    """``key``/``value`` rows of ``d`` (values through :func:`fmt`; mappings and lists as JSON)."""
    rows = [{"key": str(k), "value": json.dumps(v) if isinstance(v, (dict, list)) else fmt(v, nd)} for k, v in d.items()]
    return pd.DataFrame(rows, columns=["key", "value"])
