"""The label join: staged per-file rows + the labels CSV -> the feature table, ordered by ID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neurocache.geometry import add_series_geometry
from neurocache.inputs import ID_COL, LABEL_COL, Inputs, label_id
from neurocache.reasons import ENTRY_REASONS, MISSING, OK, QUARANTINED


def assemble(inputs: Inputs, staged: pd.DataFrame) -> pd.DataFrame:
    """The feature table from the staged per-file rows and the labels CSV.

    Sets ``ID``, ``label``, ``status``/``reason`` for files without a label, duplicate IDs and
    labels without a file, and ``row`` (the index into ``images``; -1 when not ok), ordered by ID;
    then each slice's place in its series (:func:`neurocache.geometry.add_series_geometry`).

    A label row belongs to every entry that answers to its ID (:func:`neurocache.inputs.label_id`:
    the entry's ID, or for a name that is not valid UTF-8 the ID of its Latin-1 reading), whatever
    the entry's type, so it is ``missing_file`` only when no entry answers to it. Entries quarantined
    for their type or name (:data:`ENTRY_REASONS`) are not files of their ID: they never make
    another file a ``duplicate_file`` and keep their own reason.

    Vectorised joins and sorts only (O(n log n) in files + labels, no Python step per duplicate;
    one :func:`label_id` call per entry): ``tests/test_scale.py`` compares 2k against 20k rows.
    """
    labels = inputs.labels.set_index(ID_COL)
    staged = staged.sort_values("input_index").reset_index(drop=True)
    staged.insert(0, ID_COL, [Inputs.file_id(Path(f)) for f in staged["file"]])
    answers = pd.Series([label_id(inputs.files[int(k)].name) for k in staged["input_index"]], dtype=object)
    staged.insert(1, "label", answers.map(labels[LABEL_COL]).astype("Int8").to_numpy())
    _mark_duplicates(staged)
    _mark_unlabelled(staged, inputs.labels_path.name)

    missing_ids = inputs.labels.loc[~inputs.labels[ID_COL].isin(answers), ID_COL].tolist()
    if missing_ids:
        staged = pd.concat([staged, _missing_rows(labels, missing_ids, inputs.cts_dir.name)], ignore_index=True)
        answers = pd.concat([answers, pd.Series(missing_ids, dtype=object)], ignore_index=True)
    _add_extra_columns(staged, labels, answers)

    staged = staged.sort_values([ID_COL, "file"], kind="stable").reset_index(drop=True)
    ok = (staged["status"] == OK).to_numpy()
    row = np.full(len(staged), -1, dtype=np.int64)
    row[ok] = np.arange(int(ok.sum()))
    staged.insert(2, "row", row)
    return add_series_geometry(staged)


def _mark_duplicates(staged: pd.DataFrame) -> None:
    """Quarantine (``duplicate_file``) every file whose ID an earlier file already has, in place."""
    files = ~staged["reason"].isin(list(ENTRY_REASONS))
    dup = (staged[ID_COL].where(files).duplicated(keep="first") & files).to_numpy()
    if dup.any():
        first = staged.loc[files].groupby(ID_COL, sort=False)["file"].first()
        staged.loc[dup, "detail"] = (staged.loc[dup, "file"] + ": same ID as " + staged.loc[dup, ID_COL].map(first)).to_numpy()
        staged.loc[dup, "status"] = QUARANTINED
        staged.loc[dup, "reason"] = "duplicate_file"


def _mark_unlabelled(staged: pd.DataFrame, labels_name: str) -> None:
    """Quarantine (``no_label``) the ok files whose ID is not in the labels CSV, in place."""
    nolab = (staged["label"].isna() & (staged["status"] == OK)).to_numpy()
    staged.loc[nolab, "reason"] = "no_label"
    staged.loc[nolab, "detail"] = [f"{f}: ID not in {labels_name}" for f in staged.loc[nolab, "file"]]
    staged.loc[nolab, "status"] = QUARANTINED


def _missing_rows(labels: pd.DataFrame, missing_ids: list, cts_name: str) -> pd.DataFrame:
    """``missing`` rows for label IDs that no entry of the CT folder answers to."""
    miss = pd.DataFrame({ID_COL: missing_ids})
    miss["label"] = pd.array(labels.loc[missing_ids, LABEL_COL].astype(int).to_numpy(), dtype="Int8")
    miss["status"] = MISSING
    miss["reason"] = "missing_file"
    miss["detail"] = [f"{i}: no file {i}.dcm (or {i}) in {cts_name}/" for i in missing_ids]
    miss["file"] = ""
    miss["input_index"] = -1
    return miss


def _add_extra_columns(staged: pd.DataFrame, labels: pd.DataFrame, answers: pd.Series) -> None:
    """Copy the CSV's extra columns (prefixed ``csv_`` when a name is taken), in place; None where
    the entry answers to no label row."""
    has_label = answers.isin(labels.index).to_numpy()
    for c in [c for c in labels.columns if c != LABEL_COL]:
        name = c if c not in staged.columns else f"csv_{c}"
        values = labels[c].reindex(answers).to_numpy(dtype=object, copy=True)
        values[~has_label] = None
        staged[name] = values.tolist()
