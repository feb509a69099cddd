"""Series geometry: each slice's place in its series and its neighbours (pure, vectorised).

A radiologist reads a slice with the ones above and below it. To give the trainer that context the
store records, for every ok slice, where it lies along its series' slice normal and which ``images``
rows are its previous and next slice. Everything here is a pure function of header values, linear
in the number of slices (one sort, one pass), and independent of file names and listing order.

Position along the normal (mm), by the first source a series has for all its slices:

1. ``ipp``: ``ImagePositionPatient · n``, ``n = row × col`` of the series' ``ImageOrientationPatient``
   (the standard way: right for axial, sagittal, coronal and oblique stacks alike);
2. ``slice_location``: ``SliceLocation`` (mm, but its sign and origin are the scanner's);
3. ``instance_number``: ``InstanceNumber`` (an order without a distance: spacing is in index units);
4. ``none``: the series is not ordered; its slices get rank -1 and no neighbours.

Neighbour rule: consecutive slices of one series (in position order) are linked when their distance
is > 0 and at most ``gap_factor`` (1.5) times the series' typical spacing (median of the positive
steps). No link is made across a larger gap, to or from a slice whose position another ok slice of the
series shares (a duplicate position: which one is "the" neighbour is unknown), or to a slice that is
not ok (quarantined slices keep their place so nothing links across them; a quarantined copy at an ok
slice's position is no image and leaves that slice's links alone). -1 marks "no neighbour".
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from neurocache.dicomheader import ORIENTATION_COLUMNS

PositionSource = Literal["ipp", "slice_location", "instance_number", "none"]

#: Output columns of :func:`series_geometry`, in order.
GEOMETRY_COLUMNS = ("position_mm", "position_source", "series_rank", "prev_row", "next_row", "spacing_mm")

#: Two consecutive slices farther apart than this many typical spacings are not neighbours (a gap).
DEFAULT_GAP_FACTOR = 1.5


def slice_normals(iop: np.ndarray) -> np.ndarray:
    """Unit slice normals ``row × col`` of ImageOrientationPatient values.

    Args:
        iop: (N, 6) direction cosines (row x, y, z, column x, y, z); NaN where unknown.

    Returns:
        (N, 3) float64 unit normals; NaN rows where the orientation is unknown or degenerate.
    """
    iop = np.asarray(iop, dtype=np.float64).reshape(-1, 6)
    n = np.cross(iop[:, :3], iop[:, 3:])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = n / norm
    out[~(norm[:, 0] > 1e-6)] = np.nan
    return out


def series_codes(series: pd.Series | np.ndarray) -> np.ndarray:
    """Integer codes (N,) int64 of series keys, in order of first appearance (factorise once, pass codes on).

    Every function here accepts either the keys or these codes; with 750k string keys factorising
    costs about a second, so callers with several steps pass codes.
    """
    codes, _ = pd.factorize(np.asarray(series, dtype=object).astype(str))
    return codes.astype(np.int64)


def _codes(series: pd.Series | np.ndarray) -> tuple[np.ndarray, int]:
    """Integer series codes (N,) and their number (keys are factorised; integer codes pass through)."""
    arr = np.asarray(series)
    codes = arr.astype(np.int64) if np.issubdtype(arr.dtype, np.integer) else series_codes(arr)
    return codes, int(codes.max()) + 1 if len(codes) else 0


def _series_normals(series: pd.Series | np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Each slice's series normal: the first known normal of its series (N, 3), NaN when none."""
    codes, k = _codes(series)
    known = np.flatnonzero(np.isfinite(normals).all(axis=1))
    ref = np.full((k, 3), np.nan)
    first_codes, first = np.unique(codes[known], return_index=True)
    ref[first_codes] = normals[known[first]]
    return ref[codes]


def mixed_orientation(series: pd.Series | np.ndarray, normals: np.ndarray, tol_deg: float = 1.0) -> np.ndarray:
    """Per slice: True when its own normal is more than ``tol_deg`` degrees off its series' normal.

    Args:
        series: (N,) series keys or :func:`series_codes`.
        normals: (N, 3) unit normals from :func:`slice_normals`.
    """
    normals = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    ref = _series_normals(series, normals)
    cos = np.abs(np.einsum("ij,ij->i", normals, ref))
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(cos, nan=1.0) < np.cos(np.deg2rad(tol_deg))


def slice_positions(
    series: pd.Series | np.ndarray, ipp: np.ndarray, iop: np.ndarray, slice_location: np.ndarray, instance_number: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Position of each slice along its series' normal and the source used (one per series).

    Args:
        series: (N,) series keys or :func:`series_codes` (one series = one stack).
        ipp: (N, 3) ImagePositionPatient, mm; NaN where unknown.
        iop: (N, 6) ImageOrientationPatient; NaN where unknown.
        slice_location: (N,) SliceLocation, mm; NaN where unknown.
        instance_number: (N,) InstanceNumber; NaN where unknown.

    Returns:
        (positions (N,) float64 — mm, or index units for ``instance_number``; NaN for ``none`` —,
        sources (N,) object array of :data:`PositionSource`).
    """
    codes, k = _codes(series)
    ipp = np.asarray(ipp, dtype=np.float64).reshape(-1, 3)
    normal = _series_normals(codes, slice_normals(iop))
    candidates = {
        "ipp": np.einsum("ij,ij->i", ipp, normal),
        "slice_location": np.asarray(slice_location, dtype=np.float64),
        "instance_number": np.asarray(instance_number, dtype=np.float64),
    }
    pos = np.full(len(codes), np.nan)
    src = np.full(len(codes), "none", dtype=object)
    undecided = np.ones(k, dtype=bool)
    for name, values in candidates.items():
        missing = np.bincount(codes, weights=~np.isfinite(values), minlength=k)
        take_series = undecided & (missing == 0)
        take = take_series[codes]
        pos[take], src[take] = values[take], name
        undecided &= ~take_series
    return pos, src


def _ordered_steps(codes: np.ndarray, positions: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The slices with a position in (series, position, row) order, and their steps.

    Returns:
        (indices (M,) into the inputs in that order; per ordered slice the step to the next slice of
        its series, mm (NaN at a series end); its series' typical spacing, the median positive step).
    """
    i = np.flatnonzero(np.isfinite(positions))
    i = i[np.lexsort((rows[i], positions[i], codes[i]))]
    s, p = codes[i], positions[i]
    same_next = np.r_[s[1:] == s[:-1], False] if len(s) else np.zeros(0, dtype=bool)
    step = np.where(same_next, np.r_[np.diff(p), np.nan] if len(p) else np.zeros(0), np.nan)
    spacing = pd.Series(np.where(step > 0, step, np.nan)).groupby(s).transform("median").to_numpy()
    return i, step, spacing


def _links(s: np.ndarray, p: np.ndarray, r: np.ndarray, spacing: np.ndarray, gap_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(prev_row, next_row) of the slices in :func:`_ordered_steps` order (-1: no neighbour).

    Args:
        s, p, r: the ordered slices' series codes, positions (mm or index units) and ``images`` rows
            (-1: quarantined).
        spacing: their series' typical spacing (same units as ``p``).

    Slices at one position of one series form a place; consecutive places of a series are linked
    when each holds exactly one ok slice and they lie at most ``gap_factor`` spacings apart. Only ok
    slices make a place ambiguous: a quarantined copy at an ok slice's position is no image. A place
    holding only quarantined slices sits between its neighbours, so nothing links across it.
    """
    m = len(s)
    prev, nxt = np.full(m, -1, dtype=np.int64), np.full(m, -1, dtype=np.int64)
    if m == 0:
        return prev, nxt
    place = np.cumsum(np.r_[True, (s[1:] != s[:-1]) | (p[1:] != p[:-1])]) - 1
    ok = r >= 0
    ok_per_place = np.bincount(place[ok], minlength=int(place[-1]) + 1)
    k = np.flatnonzero(ok & (ok_per_place[place] == 1))  # the one ok slice of each unambiguous place
    a, b = k[:-1], k[1:]
    linked = (s[a] == s[b]) & (place[b] == place[a] + 1) & (p[b] - p[a] <= gap_factor * spacing[a])
    nxt[a[linked]], prev[b[linked]] = r[b[linked]], r[a[linked]]
    return prev, nxt


def series_geometry(
    table: pd.DataFrame, *, positions: np.ndarray, sources: np.ndarray, gap_factor: float = DEFAULT_GAP_FACTOR,
    series: np.ndarray | None = None,
) -> pd.DataFrame:
    """Rank, neighbours and spacing of every slice in its series.

    Args:
        table: one row per input file with ``series_key`` (str) and ``row`` (int: the slice's
            ``images`` row, -1 when quarantined). Row order does not matter.
        positions, sources: from :func:`slice_positions`, aligned with ``table``.
        gap_factor: consecutive slices farther apart than this many typical spacings are not linked.
        series: :func:`series_codes` of ``table["series_key"]`` when the caller has them.

    Returns:
        A frame with ``table``'s index and :data:`GEOMETRY_COLUMNS`: ``position_mm`` (float),
        ``position_source``, ``series_rank`` (0-based among the series' ok slices in position order;
        -1 for quarantined or unordered slices), ``prev_row`` / ``next_row`` (``images`` rows or -1)
        and ``spacing_mm`` (the series' typical spacing; NaN for a series of one).
    """
    n = len(table)
    rows = table["row"].to_numpy(dtype=np.int64)
    codes, _ = _codes(table["series_key"] if series is None else series)
    positions = np.asarray(positions, dtype=np.float64)
    i, _, spacing = _ordered_steps(codes, positions, rows)
    s, r = codes[i], rows[i]
    ok = r >= 0
    prev, nxt = _links(s, positions[i], r, spacing, gap_factor)
    rank = pd.Series(ok.astype(np.int64)).groupby(s).cumsum().to_numpy() - 1
    out = pd.DataFrame({
        "position_mm": positions.astype(np.float64),
        "position_source": np.asarray(sources, dtype=object),
        "series_rank": np.full(n, -1, dtype=np.int64),
        "prev_row": np.full(n, -1, dtype=np.int64),
        "next_row": np.full(n, -1, dtype=np.int64),
        "spacing_mm": np.full(n, np.nan),
    }, index=table.index)
    out.iloc[i, 2] = np.where(ok, rank, -1)
    out.iloc[i, 3] = prev
    out.iloc[i, 4] = nxt
    out.iloc[i, 5] = spacing
    return out


def geometry_counts(
    table: pd.DataFrame, positions: np.ndarray, mixed: np.ndarray, *, gap_factor: float = DEFAULT_GAP_FACTOR,
    series: np.ndarray | None = None,
) -> dict[str, int]:
    """Series-level counts for ``quality.json``: series, gaps, duplicate positions, mixed orientations.

    Args:
        table: the feature table (``series_key``, ``row``).
        positions: (N,) from :func:`slice_positions`, aligned with ``table``.
        mixed: (N,) bool from :func:`mixed_orientation`.
        series: :func:`series_codes` of ``table["series_key"]`` when the caller has them.

    Returns:
        ``series`` (with an ok slice), ``series_of_one``, ``unordered_slices`` (ok slices without a
        position), ``gaps`` (steps between consecutive slices of a series longer than ``gap_factor``
        typical spacings), ``duplicate_positions`` (steps of 0) and ``mixed_orientation_slices``.
    """
    rows = table["row"].to_numpy(dtype=np.int64)
    ok = rows >= 0
    codes, k = _codes(table["series_key"] if series is None else series)
    positions = np.asarray(positions, dtype=np.float64)
    _, step, spacing = _ordered_steps(codes, positions, rows)
    ok_per_series = np.bincount(codes[ok], minlength=k)
    return {
        "series": int((ok_per_series > 0).sum()),
        "series_of_one": int((ok_per_series == 1).sum()),
        "unordered_slices": int((ok & ~np.isfinite(positions)).sum()),
        "gaps": int((step > gap_factor * spacing).sum()),
        "duplicate_positions": int((step == 0).sum()),
        "mixed_orientation_slices": int(np.asarray(mixed, dtype=bool)[ok].sum()),
    }


def _header_arrays(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(series codes, IPP (N, 3) mm, IOP (N, 6), SliceLocation mm, InstanceNumber) from the feature table.

    A slice without a series key is a series of its own (never linked): slices whose series is
    unknown cannot be assumed to be one stack.
    """
    keys = table["series_key"].fillna("").astype(str).to_numpy(dtype=object)
    lone = keys == ""
    keys[lone] = np.char.add("\0lone:", np.arange(int(lone.sum())).astype(str)).astype(object)
    num = lambda cols: table[list(cols)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)  # noqa: E731
    return (series_codes(keys), num(("x_mm", "y_mm", "z_mm")), num(ORIENTATION_COLUMNS),
            num(("slice_location_mm",))[:, 0], num(("instance_number",))[:, 0])


def series_counts(table: pd.DataFrame, *, gap_factor: float = DEFAULT_GAP_FACTOR) -> dict[str, int]:
    """:func:`geometry_counts` of a feature table that has ``position_mm`` (from :func:`add_series_geometry`)."""
    codes, _, iop, _, _ = _header_arrays(table)
    return geometry_counts(table, table["position_mm"].to_numpy(dtype=np.float64),
                           mixed_orientation(codes, slice_normals(iop)), gap_factor=gap_factor, series=codes)


def add_series_geometry(table: pd.DataFrame, *, gap_factor: float = DEFAULT_GAP_FACTOR) -> pd.DataFrame:
    """The feature table with :data:`GEOMETRY_COLUMNS` appended (see the module docstring).

    Args:
        table: the feature table (``row`` assigned; header columns ``x_mm``/``y_mm``/``z_mm``,
            the ``iop_*`` cosines, ``slice_location_mm``, ``instance_number``, ``series_key``).
    """
    codes, ipp, iop, loc, inst = _header_arrays(table)
    pos, src = slice_positions(codes, ipp, iop, loc, inst)
    geometry = series_geometry(table, positions=pos, sources=src, gap_factor=gap_factor, series=codes)
    return pd.concat([table, geometry], axis=1)
