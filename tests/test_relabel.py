"""neurocache relabel: labels corrected in place, nothing else in the store changes, nothing is decoded."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest

from neurocache.cli import main
from neurocache.errors import InputError
from neurocache.relabel import RELABELS_KEY, apply_corrections, labels_hash, relabel_store
from neurocache.store import open_store, read_attrs


@pytest.fixture
def store(synth_store, tmp_path) -> Path:
    """A writable copy of the session's small store."""
    dst = tmp_path / "store.zarr"
    shutil.copytree(synth_store, dst)
    return dst


def _images_digest(store: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((store / "images").rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(store)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _csv(path: Path, rows: list[tuple[str, object]], header: str = "ID,Label") -> Path:
    path.write_text(header + "\n" + "".join(f"{i},{v}\n" for i, v in rows))
    return path


def test_relabel_changes_exactly_the_listed_labels(store, tmp_path):
    before = pd.read_parquet(store / "features.parquet")
    attrs0, images0, schema0 = read_attrs(store), _images_digest(store), pq.read_schema(store / "features.parquet")
    ids = before["ID"].tolist()
    flip = {ids[0]: 1 - int(before["label"].iloc[0]), ids[5]: 1 - int(before["label"].iloc[5])}
    same = {ids[9]: int(before["label"].iloc[9])}
    csv = _csv(tmp_path / "corrected.csv", list({**flip, **same}.items()))

    r = relabel_store(store, csv)

    after = pd.read_parquet(store / "features.parquet")
    changed = after.loc[after["label"] != before["label"], "ID"].tolist()
    assert sorted(changed) == sorted(flip) and r["n_changed"] == 2 and r["n_listed"] == 3
    assert all(after.set_index("ID").loc[i, "label"] == v for i, v in {**flip, **same}.items())
    pd.testing.assert_frame_equal(after.drop(columns="label"), before.drop(columns="label"))
    assert after["label"].dtype == before["label"].dtype
    assert pq.read_schema(store / "features.parquet").equals(schema0, check_metadata=True)
    assert _images_digest(store) == images0
    attrs = read_attrs(store)
    assert attrs["fingerprint"] == attrs0["fingerprint"] and attrs["source"] == attrs0["source"]
    assert attrs["labels_hash"] == labels_hash(after) == r["labels_hash"] != r["labels_hash_before"] == labels_hash(before)
    (entry,) = attrs[RELABELS_KEY]
    assert entry["file"] == "corrected.csv" and entry["sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert entry["n_changed"] == 2 and sorted(c[0] for c in entry["changes"]) == sorted(flip)
    assert {c[0]: c[2] for c in entry["changes"]} == flip
    balance = json.loads((store / "quality.json").read_text())["class_balance"]["ok"]
    assert balance["n_label1"] == int(after["label"].sum())


def test_relabel_decodes_no_dicom(store, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("relabel decoded a DICOM file")

    monkeypatch.setattr(pydicom, "dcmread", refuse)
    first = pd.read_parquet(store / "features.parquet").iloc[0]
    r = relabel_store(store, _csv(tmp_path / "c.csv", [(first["ID"], 1 - int(first["label"]))]))
    assert r["n_changed"] == 1
    assert open_store(store).features["label"].iloc[0] == 1 - int(first["label"])


def test_an_unknown_id_is_refused_and_nothing_is_written(store, tmp_path):
    features0 = (store / "features.parquet").read_bytes()
    csv = _csv(tmp_path / "c.csv", [("ID_not_there", 1), (pd.read_parquet(store / "features.parquet")["ID"].iloc[0], 1)])
    with pytest.raises(InputError, match=r"c\.csv: 1 ID\(s\) are not in store .*'ID_not_there'.*remove these rows"):
        relabel_store(store, csv)
    assert (store / "features.parquet").read_bytes() == features0
    assert RELABELS_KEY not in read_attrs(store)


@pytest.mark.parametrize("rows,header,message", [
    ([("ID_a", 2)], "ID,Label", r"c\.csv:2: Label 2 for ID 'ID_a' is not 0 or 1"),
    ([("ID_a", 1), ("ID_a", 0)], "ID,Label", r"duplicate IDs \['ID_a'\]"),
    ([("ID_a", 1)], "ID,Diagnosis", r"missing column\(s\) \['Label'\]"),
    ([], "ID,Label", "has no rows"),
])
def test_an_unusable_csv_is_refused_naming_the_file(store, tmp_path, rows, header, message):
    with pytest.raises(InputError, match=message):
        relabel_store(store, _csv(tmp_path / "c.csv", rows, header))


def test_a_relabel_that_changes_nothing_writes_nothing(store, tmp_path):
    first = pd.read_parquet(store / "features.parquet").iloc[0]
    mtime = (store / "features.parquet").stat().st_mtime_ns
    r = relabel_store(store, _csv(tmp_path / "c.csv", [(first["ID"], int(first["label"]))]))
    assert r["n_changed"] == 0 and r["labels_hash"] == r["labels_hash_before"]
    assert (store / "features.parquet").stat().st_mtime_ns == mtime and RELABELS_KEY not in read_attrs(store)


def test_cli_relabel_then_info(store, tmp_path, capsys):
    first = pd.read_parquet(store / "features.parquet").iloc[0]
    csv = _csv(tmp_path / "c.csv", [(first["ID"], 1 - int(first["label"]))])
    assert main(["relabel", "--store", str(store), "--labels", str(csv)]) == 0
    assert "1 of 1 listed label(s) changed" in capsys.readouterr().out
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] is True and info["n_ok"] == len(open_store(store).ok_rows())
    assert main(["relabel", "--store", str(store), "--labels", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err


def test_apply_corrections_updates_every_labelled_row_of_an_id_and_refuses_unlabelled_ids():
    ids = np.array(["a", "a", "b", "c"])
    labels = np.array([0, 0, 1, 0])
    has = np.array([True, True, True, False])  # c: a file quarantined as no_label
    new, changed = apply_corrections(ids, labels, has, pd.DataFrame({"ID": ["a"], "Label": [1]}), source="c.csv", store="s")
    assert new.tolist() == [1, 1, 1, 0] and changed.tolist() == [True, True, False, False]
    with pytest.raises(InputError, match=r"have no label in store s .*\['c'\].*neurocache build"):
        apply_corrections(ids, labels, has, pd.DataFrame({"ID": ["c"], "Label": [1]}), source="c.csv", store="s")


def test_labels_hash_is_that_of_the_labels_csv_and_ignores_order():
    csv = pd.DataFrame({"ID": ["b", "a", "c"], "Label": [1, 0, 1]})
    table = pd.DataFrame({"ID": ["a", "a", "b", "c", "d"], "label": pd.array([0, 0, 1, 1, None], dtype="Int8"),
                          "row": [0, -1, 1, 2, -1]})
    assert labels_hash(csv) == labels_hash(table) == labels_hash(table.iloc[::-1])
    assert labels_hash(csv) == hashlib.sha256(b"a,0\nb,1\nc,1\n").hexdigest()
    assert labels_hash(csv.assign(Label=[1, 1, 1])) != labels_hash(csv)
    with pytest.raises(ValueError, match="needs columns ID and label"):
        labels_hash(pd.DataFrame({"ID": ["a"]}))
