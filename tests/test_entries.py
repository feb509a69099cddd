"""Every entry of the CT folder accounted for, whatever its name or type (issue #15).

A CT folder with a file whose name is not valid UTF-8 (a Latin-1 0xE9 byte), a folder named like a
slice, a FIFO, symlinks to a folder and to nothing, and a folder next to a file of the same ID:
``validate``, ``build``, ``info``, ``trainer predict`` and the report give each entry its reason, keep
every output valid UTF-8 and never stop or hang. The commands run as subprocesses with a strict UTF-8
stdout (``PYTHONIOENCODING=utf-8:strict``, as under ``LANG=en_US.UTF-8``), so printing an unescaped
name would fail them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from html import escape as html_escape
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from _tiny_runs import tiny_runs

from neurocache.build import build_store
from neurocache.build.tasks import Journal as _Journal, suspects as _suspects
from neurocache.inputs import entry_problem, label_id
from neurocache.names import bad_name, shown_name
from neurocache.preprocess import preprocess_file
from neurocache.reasons import REASONS
from neurocache.remote import StoreLocation
from neurocache.store import open_store
from trainer.report.html import write_report
from trainer.predict import predict_files

from conftest import HASH_KEY, SMALL_PREP

LATIN1 = os.fsdecode(b"ID_caf\xe9.dcm")  # the name as os.listdir gives it (a lone surrogate)
LATIN1_DIR = os.fsdecode(b"ID_dir\xff")  # a folder whose name is not UTF-8 either
STRICT = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}

#: name -> (status, reason) of the entries :func:`entry_folder` adds to three good slices.
EXPECT = {
    "ID_caf\\xe9.dcm": ("quarantined", "bad_file_name"),
    "ID_x.dcm": ("quarantined", "not_regular_file"),
    "ID_fifo.dcm": ("quarantined", "not_regular_file"),
    "ID_dirlink.dcm": ("quarantined", "not_regular_file"),
    "ID_dangling.dcm": ("quarantined", "not_regular_file"),
    "ID_dir\\xff": ("quarantined", "not_regular_file"),
    "ID_shadow": ("quarantined", "not_regular_file"),  # a folder: sorts before the file ID_shadow.dcm
    "ID_shadow.dcm": ("ok", ""),  # ... which is still used, not a duplicate_file
}


def entry_folder(synth_data: Path, root: Path) -> list[str]:
    """``root/CTs`` + ``root/labels1.csv``; returns the IDs of the three good slices."""
    cts = root / "CTs"
    cts.mkdir(parents=True)
    good = sorted((synth_data / "CTs").glob("*.dcm"))[:4]
    for p in good[:3]:
        shutil.copy(p, cts / p.name)
    shutil.copy(good[3], cts / LATIN1)  # a valid slice under a Latin-1 name
    shutil.copy(good[3], cts / "ID_shadow.dcm")
    (cts / "ID_x.dcm").mkdir()
    (cts / "ID_x.dcm" / "inner.dcm").write_bytes(good[0].read_bytes())  # never entered
    (cts / "ID_shadow").mkdir()
    (cts / LATIN1_DIR).mkdir()
    os.mkfifo(cts / "ID_fifo.dcm")
    os.symlink(root, cts / "ID_dirlink.dcm")
    os.symlink(root / "nothing_here.dcm", cts / "ID_dangling.dcm")
    (cts / ".DS_Store").write_bytes(b"hidden: skipped")
    ids = [p.stem for p in good[:3]]
    # Labels for the good slices, the Latin-1 file (by its Latin-1 reading), the folder, the FIFO,
    # the symlink to a folder and ID_shadow; ID_gone has no entry at all.
    extra = ["ID_café", "ID_x", "ID_fifo", "ID_dirlink", "ID_shadow", "ID_gone"]
    labels = pd.DataFrame({"ID": ids + extra, "Label": [0, 1, 0, 1, 0, 1, 0, 1, 0], "site": list("abcdefghi")})
    labels.to_csv(root / "labels1.csv", index=False, encoding="utf-8")
    return ids


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocache", *args], capture_output=True, timeout=timeout, env=STRICT)


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text("preprocess:\n  size: 64\n  shard_size: 16\n")
    return p


@pytest.fixture(scope="module")
def entries(synth_data, tmp_path_factory) -> dict[str, Path]:
    """The folder and its store, built once by the CLI (``--workers 1``)."""
    tmp = tmp_path_factory.mktemp("entries")
    root = tmp / "data"
    ids = entry_folder(synth_data, root)
    store = tmp / "entries.zarr"
    r = _cli("build", "--data-root", str(root), "--store", str(store), "--workers", "1", "--no-progress", "--json",
             "--config", str(_config(tmp)))
    assert r.returncode == 0, r.stderr.decode("utf-8", "backslashreplace")[-3000:]
    return {"root": root, "store": store, "ids": ids, "stdout": r.stdout, "tmp": tmp}


def test_names_are_escaped_and_answer_to_their_latin1_reading():
    assert bad_name(LATIN1) and not bad_name("ID_café.dcm") and not bad_name("ID a.DCM")
    assert shown_name(LATIN1) == "ID_caf\\xe9.dcm" and shown_name("ID_café.dcm") == "ID_café.dcm"
    assert label_id(LATIN1) == "ID_café" and label_id("ID_x.dcm") == "ID_x" and label_id("ID_y") == "ID_y"
    assert label_id(os.fsdecode(b"\xff\xfe")) == "ÿþ"  # every byte has its Latin-1 character


def test_socket_and_vanished_entries(tmp_path):
    sock_path = tmp_path / "ID_sock.dcm"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        image, row = preprocess_file(sock_path, SMALL_PREP, HASH_KEY)
    assert image is None and row["reason"] == "not_regular_file" and row["detail"].startswith("ID_sock.dcm: a socket")
    assert entry_problem(sock_path)[0] == "not_regular_file"
    _, gone = preprocess_file(tmp_path / LATIN1, SMALL_PREP, HASH_KEY)  # listed, then removed before the build read it
    assert gone["reason"] == "unreadable" and gone["detail"].startswith("ID_caf\\xe9.dcm: ")
    gone["detail"].encode("utf-8")  # escaped, also inside the OS error message


def test_build_gives_every_entry_its_reason_and_counts_them(entries):
    info = json.loads(entries["stdout"].decode("utf-8"))
    f = open_store(entries["store"]).features
    listed = [shown_name(n) for n in os.listdir(entries["root"] / "CTs") if not n.startswith(".")]
    assert len(listed) == 11
    files = f[f["status"] != "missing"]
    assert sorted(files["file"]) == sorted(listed)
    assert len(f) == 11 + 1  # one row per entry, plus ID_gone
    assert info["n_files"] == 11 and info["n_ok"] == 4 and info["n_quarantined"] == 7
    got = {r.file: (r.status, r.reason) for r in files.itertuples()}
    assert {k: got[k] for k in EXPECT} == EXPECT
    assert all(got[f"{i}.dcm"] == ("ok", "") for i in entries["ids"])
    # The labels answered by a folder, a FIFO, a symlink or the Latin-1 name are not also missing.
    miss = f[f["status"] == "missing"]
    assert miss["ID"].tolist() == ["ID_gone"] and miss["reason"].tolist() == ["missing_file"]
    assert info["by_reason"] == {"not_regular_file": 6, "bad_file_name": 1, "missing_file": 1}
    by = f.set_index("file")
    latin = by.loc["ID_caf\\xe9.dcm"]
    assert latin["ID"] == "ID_caf\\xe9" and latin["row"] == -1 and latin["content_hash"] == "" and latin["file_bytes"] == 0
    assert int(latin["label"]) == 1 and latin["site"] == "d"  # ID_café's label row and its extra column
    assert latin["detail"].startswith("ID_caf\\xe9.dcm: the name is not valid UTF-8") and "'ID_café'" in latin["detail"]
    assert "convmv" in latin["detail"]
    folder = by.loc["ID_x.dcm"]
    assert folder["ID"] == "ID_x" and int(folder["label"]) == 0 and folder["detail"].startswith("ID_x.dcm: a directory")
    assert by.loc["ID_fifo.dcm", "detail"].startswith("ID_fifo.dcm: a FIFO")
    assert by.loc["ID_dangling.dcm", "detail"].startswith("ID_dangling.dcm: a symbolic link")
    assert by.loc["ID_dir\\xff", "ID"] == "ID_dir\\xff" and pd.isna(by.loc["ID_dir\\xff", "label"])
    assert by.loc["ID_shadow.dcm", "row"] >= 0 and by.loc["ID_shadow", "row"] == -1
    assert set(f["reason"]) - {""} <= set(REASONS)


def test_store_outputs_are_valid_utf8(entries):
    store = entries["store"]
    for p in store.rglob("*.json"):
        text = p.read_bytes().decode("utf-8")  # strict
        json.loads(text)
        assert "\\udc" not in text, p  # no escaped lone surrogate either
    table = pq.read_table(store / "features.parquet")  # Arrow validates UTF-8 string columns
    table.validate(full=True)
    q = json.loads((store / "quality.json").read_text(encoding="utf-8"))
    assert q["counts"]["by_reason"] == {"not_regular_file": 6, "bad_file_name": 1, "missing_file": 1}
    assert q["mismatches"]["labels_without_file"] == ["ID_gone"]


def test_rebuild_is_a_noop_and_dask_build_equals_serial(entries):
    r = _cli("build", "--data-root", str(entries["root"]), "--store", str(entries["store"]), "--workers", "1",
             "--no-progress", "--config", str(_config(entries["tmp"])))
    assert r.returncode == 0 and b"is up to date" in r.stdout
    a = open_store(entries["store"]).features
    res = build_store(entries["root"], entries["tmp"] / "dask.zarr", cfg=SMALL_PREP, workers=2, progress=False,
                      hash_key=bytes.fromhex(open_store(entries["store"]).attrs["hash_key"]))
    pd.testing.assert_frame_equal(a, res.features)


def test_validate_lists_the_entries_and_does_not_hang_on_a_fifo(entries):
    r = _cli("validate", "--data-root", str(entries["root"]), "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.decode("utf-8"))
    assert rep["n_files"] == 11 and rep["n_dicom_files"] == 4 and rep["non_dicom_files"] == []
    assert rep["bad_name_entries"] == ["ID_caf\\xe9.dcm"]
    assert sorted(rep["not_regular_entries"]) == sorted(k for k, v in EXPECT.items() if v[1] == "not_regular_file")
    assert rep["ids_without_file"] == ["ID_gone"]
    assert rep["files_without_id"] == ["ID_dangling", "ID_dir\\xff"]
    assert rep["duplicate_files"] == {}  # the folder ID_shadow does not shadow the file ID_shadow.dcm
    t = _cli("validate", "--data-root", str(entries["root"]), timeout=60)
    assert t.returncode == 0, t.stderr
    text = t.stdout.decode("utf-8")
    assert "ID_caf\\xe9.dcm" in text and "not_regular_file" in text and "RESULT: OK" in text


def test_info_prints_valid_utf8(entries):
    r = _cli("info", str(entries["store"]))
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode("utf-8")
    assert "bad_file_name          1" in text and "not_regular_file       6" in text
    j = _cli("info", str(entries["store"]), "--json")
    assert json.loads(j.stdout.decode("utf-8"))["by_reason"]["bad_file_name"] == 1


def test_store_path_that_is_not_utf8_is_refused(entries):
    bad = entries["tmp"] / os.fsdecode(b"st\xe9.zarr")
    with pytest.raises(ValueError, match=r"store path .*st\\xe9\.zarr is not valid UTF-8"):
        StoreLocation(bad)
    r = _cli("build", "--data-root", str(entries["root"]), "--store", str(bad), "--workers", "1", "--no-progress")
    assert r.returncode == 2 and b"st\\xe9.zarr is not valid UTF-8" in r.stderr and not bad.exists()


def test_journal_keeps_any_name(tmp_path):
    loc = StoreLocation(tmp_path)
    (tmp_path / "_progress").mkdir()
    j = _Journal(loc, "_progress/inflight_000001.txt")
    for name in (LATIN1, "two\nlines.dcm", "ID_plain.dcm"):
        j.note(name)
        assert _suspects(loc, 1) == [name]
    j.remove()
    assert _suspects(loc, 1) == []


# ----------------------------------------------------------------------------------------------
# trainer: predict and the report
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


def test_predict_escapes_names_and_reports_non_regular_entries(runs, synth_data, tmp_path):
    good = sorted((synth_data / "CTs").glob("*.dcm"))[0]
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good, folder / "ok.dcm")
    shutil.copy(good, folder / LATIN1)
    os.mkfifo(folder / "pipe.dcm")
    os.symlink(tmp_path, folder / "loop")  # a symlink to a folder: listed, not entered
    frame = predict_files(runs["final"], [folder], device="cpu")
    by = frame.set_index("ID")
    assert sorted(by.index) == ["ID_caf\\xe9", "loop", "ok", "pipe"]
    assert by.loc["ok", "status"] == "ok" and 0 <= by.loc["ok", "prob"] <= 1
    assert by.loc["ID_caf\\xe9", "reason"] == "bad_file_name" and by.loc["ID_caf\\xe9", "path"] == str(folder / "ID_caf\\xe9.dcm")
    assert by.loc["pipe", "reason"] == "not_regular_file" and by.loc["loop", "reason"] == "not_regular_file"
    out = tmp_path / "pred.csv"
    r = subprocess.run([sys.executable, "-m", "trainer", "predict", "--run", str(runs["final"]), str(folder),
                        os.fsdecode(os.fsencode(folder / LATIN1)), "--out", str(out), "--quiet", "--device", "cpu"],
                       capture_output=True, timeout=300, env=STRICT)
    assert r.returncode == 0, r.stderr.decode("utf-8", "backslashreplace")[-2000:]
    assert b"bad_file_name" in r.stdout
    got = pd.read_csv(out, encoding="utf-8", keep_default_na=False)  # strict UTF-8
    assert len(got) == 5 and got["reason"].tolist().count("bad_file_name") == 2


def test_report_of_a_store_with_bad_entries(runs, entries, tmp_path):
    out = tmp_path / "report.html"
    path, missing = write_report(runs["final"], store_path=entries["store"], out=out)
    assert "data-manifest" not in missing
    html = path.read_bytes().decode("utf-8")  # strict
    manifest = html.split('id="data-manifest"', 1)[1].split("</section>", 1)[0]

    def cell(key: str) -> str:
        m = re.search(rf'<td class="l">{re.escape(key)}</td><td[^>]*>([^<]*)</td>', manifest)
        assert m, key
        return m.group(1)

    assert (cell("bad_file_name"), cell("not_regular_file"), cell("missing_file")) == ("1", "6", "1")
    assert (cell("input files"), cell("ok"), cell("quarantined"), cell("labels without a file")) == ("11", "4", "7", "1")
    assert html_escape(REASONS["bad_file_name"]) in manifest  # the reason's meaning, from reasons.py
