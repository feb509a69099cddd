"""``neurocache relabel``: correct labels in a built store without decoding a file.

Labels are not preprocessing: the store's fingerprint (:meth:`neurocache.config.PrepConfig.fingerprint`:
the preprocessing parameters and version) does not cover them, and ``images`` does not depend on
them. They live in the ``label`` column of ``features.parquet`` (joined from the labels CSV at build
time, :func:`neurocache.build.labels.assemble`) and in ``quality.json``'s ``class_balance``. A
relabel rewrites those two and records itself in the store's attrs:

* ``features.parquet``: the ``label`` column replaced, every other column and the schema kept
  (Arrow in, Arrow out), written to a temp file and renamed over the old one;
* ``quality.json``: ``class_balance`` recomputed (:func:`neurocache.quality.class_balance`);
* attrs ``neurocache``: ``labels_hash`` (:func:`labels_hash` of the new table) and a ``relabels``
  list, one entry per relabel: time (UTC), file name and path, its sha256, IDs listed, labels
  changed (``changes``: ``[ID, old, new]`` for up to :data:`MAX_LOGGED` IDs), the labels hash
  before and after.

The fingerprint, ``images`` and the source manifest stay as they are. The data root's labels CSV is
not touched: a later ``neurocache build`` of the same folder is a no-op and keeps the corrected
labels, but a build after that CSV changes joins the labels afresh from it. Put the corrections in
the CSV too to make them permanent.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neurocache.errors import InputError
from neurocache.inputs import ID_COL, LABEL_COL, read_labels
from neurocache.names import shown_name
from neurocache.quality import class_balance
from neurocache.reasons import OK
from neurocache.remote import StoreLocation
from neurocache.store import FEATURES_FILE, QUALITY_FILE, open_store, read_attrs, write_attrs, write_store_json

__all__ = ["MAX_LOGGED", "RELABELS_KEY", "apply_corrections", "labels_hash", "read_corrections", "relabel_store"]

#: The attrs key of the relabel log.
RELABELS_KEY = "relabels"
#: At most this many changed IDs are listed in one relabel's log entry (``n_changed`` counts all).
MAX_LOGGED = 1000


def labels_hash(table: pd.DataFrame) -> str:
    """sha256 (hex) of a table's labels: the distinct ``ID,label`` pairs with a label, sorted by ID.

    ``table`` has columns ``ID`` and ``label`` (a store's feature table, or the rows a run used,
    e.g. ``store.ok_rows()``) or ``ID`` and ``Label`` (a labels CSV). One line ``<ID>,<0|1>\\n`` per
    pair, UTF-8. Rows without a label are left out and a repeated pair counts once, so a freshly
    built store's table and its labels CSV hash alike; row order and the other columns do not matter.
    """
    col = "label" if "label" in table.columns else LABEL_COL
    if ID_COL not in table.columns or col not in table.columns:
        raise ValueError(f"labels_hash needs columns ID and label (or Label); got {list(table.columns)}")
    pairs = pd.DataFrame({"ID": table[ID_COL].astype(str).to_numpy(), "label": table[col].to_numpy()}).dropna()
    pairs = pairs.astype({"label": np.int64}).drop_duplicates().sort_values(["ID", "label"], kind="stable")
    if not pairs["label"].isin([0, 1]).all():
        raise ValueError(f"labels_hash: labels must be 0/1; got {sorted(set(pairs['label'].tolist()) - {0, 1})[:5]}")
    lines: pd.Series = pairs["ID"].astype(str) + np.where(pairs["label"].to_numpy() == 1, ",1\n", ",0\n")
    return hashlib.sha256("".join(lines.tolist()).encode()).hexdigest()


def read_corrections(path: str | Path) -> pd.DataFrame:
    """The corrected labels CSV (columns ID, Label as the build's labels CSV; other columns ignored).

    Raises:
        InputError: the file is missing or unreadable, lacks a column, has an unsafe ID, a label
            other than 0/1, a repeated ID or no rows; the message names the file, the IDs and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"labels CSV {shown_name(str(p))} does not exist (--labels): it needs columns ID,Label, one row per "
                         f"label to set")
    df, problems = read_labels(p)
    if problems:
        raise InputError(f"labels CSV {shown_name(str(p))} cannot be used (fix these rows and run the relabel again):\n  "
                         + "\n  ".join(shown_name(s) for s in problems))
    if df.empty:
        raise InputError(f"labels CSV {shown_name(str(p))} has no rows: list the IDs to relabel, columns ID,Label")
    return df[[ID_COL, LABEL_COL]]


def apply_corrections(
    ids: np.ndarray, labels: np.ndarray, has_label: np.ndarray, corrections: pd.DataFrame, *, source: str, store: str
) -> tuple[np.ndarray, np.ndarray]:
    """The new label column, and which rows change.

    Args:
        ids: (n,) the table's IDs (str). labels: (n,) int64 labels (any value where ``has_label`` is
            False). has_label: (n,) bool. corrections: :func:`read_corrections`'s frame.
        source, store: the CSV's and the store's names, for the messages.

    Every row of a listed ID that has a label gets the corrected label (duplicate files of one ID
    share it, as at build time).

    Raises:
        InputError: an ID is not in the table, or none of its rows has a label (a file quarantined
            as ``no_label``: it has no image, so only a build can give it one).
    """
    corr = corrections.set_index(ID_COL)[LABEL_COL]
    known = set(ids.tolist())  # set look-ups: pandas' isin on Arrow strings walks the values in Python
    unknown = [i for i in corr.index.tolist() if i not in known]
    if unknown:
        raise InputError(f"{source}: {len(unknown)} ID(s) are not in store {store}: {unknown[:10]}"
                         f"{' …' if len(unknown) > 10 else ''}. A relabel changes labels of IDs already in the store: "
                         f"remove these rows from {source}, or add their files to the data folder and run `neurocache build`")
    labelled = set(ids[has_label].tolist())
    unlabelled = [i for i in corr.index.tolist() if i not in labelled]
    if unlabelled:
        raise InputError(f"{source}: {len(unlabelled)} ID(s) have no label in store {store} (quarantined, e.g. no_label: no image "
                         f"was cached): {unlabelled[:10]}. Add them to the data root's labels CSV and run `neurocache build`, "
                         f"or remove them from {source}")
    new = pd.Series(ids).map(corr).to_numpy(dtype=object)
    listed = has_label & pd.notna(new)
    out = labels.astype(np.int64, copy=True)
    out[listed] = new[listed].astype(np.int64)
    return out, listed & (out != labels)


def _nullable(values: np.ndarray, null: np.ndarray) -> pd.Series:
    """(n,) Int64 labels, NA where ``null``."""
    return pd.Series(pd.arrays.IntegerArray(values.astype(np.int64), null.astype(bool, copy=True)))


def _read_features(loc: StoreLocation) -> pa.Table:
    return pq.read_table(pa.BufferReader(loc.read_bytes(FEATURES_FILE)))


def _with_labels(table: pa.Table, labels: np.ndarray, null: np.ndarray) -> pa.Table:
    """``table`` with its ``label`` column replaced by ``labels`` (nulls kept), same type and schema."""
    i = table.schema.get_field_index("label")
    field = table.schema.field(i)
    column = pa.array(labels, mask=null).cast(field.type)
    return table.set_column(i, field, column)


def _write_features(loc: StoreLocation, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    loc.write_bytes(FEATURES_FILE, buf.getvalue())  # temp file + rename (one PUT on an object store)


def _update_quality(loc: StoreLocation, status: np.ndarray, labels: pd.Series) -> bool:
    """Recompute ``quality.json``'s ``class_balance`` (when it has one); whether it was rewritten."""
    if not loc.isfile(QUALITY_FILE):
        return False
    quality = json.loads(loc.read_text(QUALITY_FILE))
    if "class_balance" not in quality:
        return False
    quality["class_balance"] = {"ok": class_balance(labels[status == OK]), "all_labels": class_balance(labels)}
    write_store_json(loc, QUALITY_FILE, quality)
    return True


def relabel_store(store: str | Path | StoreLocation, labels_csv: str | Path) -> dict[str, Any]:
    """Set the labels listed in ``labels_csv`` (columns ID, Label) in a complete store; no file is decoded.

    IDs not listed keep their label. Nothing is written when no label changes. Writes, in this
    order: ``features.parquet`` (the truth; temp file + rename), ``quality.json``, the attrs (see
    the module docstring).

    Returns:
        ``{"store", "file", "sha256", "n_listed", "n_changed" (IDs whose label changed), "to_1",
        "to_0", "n_rows_changed", "labels_hash_before", "labels_hash", "time"}``.

    Raises:
        StoreError: no complete store of this schema at ``store``.
        InputError: the CSV cannot be used, or lists an ID the store has no label for (the message
            names the file, the IDs and the fix).
    """
    loc = StoreLocation(store)
    open_store(loc, columns=[ID_COL])  # refuses a missing, incomplete or other-schema store
    attrs = read_attrs(loc) or {}
    path = Path(labels_csv)
    corrections = read_corrections(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    table = _read_features(loc)
    ids = np.asarray(table.column(ID_COL).to_pylist(), dtype=object).astype(str)
    null = pc.is_null(table.column("label")).to_numpy(zero_copy_only=False)
    old = pc.fill_null(table.column("label"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    new, changed = apply_corrections(ids, old, ~null, corrections, source=shown_name(str(path)), store=str(loc.display))
    before = labels_hash(pd.DataFrame({"ID": ids, "label": _nullable(old, null)}))
    after_labels = _nullable(new, null)
    changed_ids = pd.unique(ids[changed])
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    summary: dict[str, Any] = {
        "store": str(loc.display), "file": shown_name(path.name), "sha256": digest, "n_listed": len(corrections),
        "n_changed": len(changed_ids), "to_1": len(pd.unique(ids[changed & (new == 1)])),
        "to_0": len(pd.unique(ids[changed & (new == 0)])), "n_rows_changed": int(changed.sum()),
        "labels_hash_before": before, "labels_hash": before, "time": now,
    }
    if not changed.any():
        return summary
    _write_features(loc, _with_labels(table, new, null))
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    _update_quality(loc, status, after_labels)
    summary["labels_hash"] = labels_hash(pd.DataFrame({"ID": ids, "label": after_labels}))
    log = {k: summary[k] for k in ("time", "file", "sha256", "n_listed", "n_changed", "to_1", "to_0", "n_rows_changed",
                                   "labels_hash_before", "labels_hash")}
    log["path"] = shown_name(str(path.resolve()))
    first = pd.DataFrame({"ID": ids[changed], "old": old[changed], "new": new[changed]}).drop_duplicates("ID")
    log["changes"] = [[i, int(a), int(b)] for i, a, b in first.head(MAX_LOGGED).itertuples(index=False)]
    log["changes_truncated"] = len(changed_ids) > MAX_LOGGED
    attrs[RELABELS_KEY] = [*attrs.get(RELABELS_KEY, []), log]
    attrs["labels_hash"] = summary["labels_hash"]
    write_attrs(loc, attrs)
    return summary
