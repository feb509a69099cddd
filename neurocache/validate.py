"""``neurocache validate``: the dataset-structure report (no writes).

Checks the folder and the labels CSV the way the original pipeline's ``validate_dataset_structure`` did: the CT
folder exists and holds DICOM files, the CSV exists with a ``Label`` column, duplicate IDs and
files, class counts and imbalance, IDs without a file and files without an ID, and an optional
expected file count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neurocache.inputs import (
    ID_COL,
    LABEL_COL,
    InputError,
    Inputs,
    entry_problem,
    label_id,
    name_stem,
    open_regular,
    scan_inputs,
)
from neurocache.names import shown_name
from neurocache.quality import class_balance

_DICM_OFFSET = 128


def looks_like_dicom(path: Path) -> bool:
    """True when the entry is a regular file with the ``DICM`` magic at byte 128 (Part 10), checked
    without parsing. A symlink, folder or special file is never followed, opened or waited on.

    Not ``pydicom.misc.is_dicom``, which makes the same check on a plain ``open``: that follows a
    symlink out of the data root and blocks on a FIFO, and raises for a folder or an unreadable file
    (tests/test_entries.py has such entries). Only the opening differs: the bytes compared are the same."""
    try:
        with open_regular(path) as fh:
            fh.seek(_DICM_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def entry_classes(files: list[Path]) -> dict[str, list[Path]]:
    """The CT-folder entries by what the build does with them before reading any
    (:func:`neurocache.inputs.entry_problem`): ``not_regular_file``, ``bad_file_name``, and
    ``files`` (the rest: read and decoded)."""
    out: dict[str, list[Path]] = {"not_regular_file": [], "bad_file_name": [], "files": []}
    for p in files:
        try:
            problem = entry_problem(p)
        except OSError:
            problem = None  # vanished: the build reports it as unreadable
        out[problem[0] if problem else "files"].append(p)
    return out


def structure(inputs: Inputs, is_dicom: list[bool], classes: dict[str, list[Path]] | None = None) -> dict[str, Any]:
    """The counts and lists of the report from the scanned inputs.

    ``classes`` is :func:`entry_classes` of ``inputs.files`` (computed when None); ``is_dicom`` has
    one flag per entry of ``classes["files"]`` (the regular, well-named files).

    Linear in files + labels (one pass over each, sets and dicts only; ``tests/test_scale.py`` counts
    the operations): at 750k files a quadratic step here would take hours.
    """
    entries = inputs.files
    classes = entry_classes(entries) if classes is None else classes
    files = classes["files"]
    not_dicom = [p.name for p, d in zip(files, is_dicom) if not d]
    seen: dict[str, list[str]] = {}
    for p in files:  # folders, symlinks and bad names are no file of their ID: never duplicates
        name = p.name
        seen.setdefault(name_stem(name), []).append(name)  # valid UTF-8 names: file_id is the stem
    dup_files = {i: names for i, names in seen.items() if len(names) > 1}
    df = inputs.labels
    has_cols = ID_COL in df.columns and LABEL_COL in df.columns
    label_ids = set(df[ID_COL].astype(str)) if ID_COL in df.columns else set()
    names = [p.name for p in entries]
    answers = [label_id(n) for n in names]  # the label IDs the entries answer to (build's rule)
    answered = set(answers)
    return {
        "cts_dir": shown_name(str(inputs.cts_dir)),
        "labels_csv": shown_name(str(inputs.labels_path)),
        "n_files": len(entries),
        "n_dicom_files": len(files) - len(not_dicom),
        "non_dicom_files": not_dicom,
        "not_regular_entries": [shown_name(p.name) for p in classes["not_regular_file"]],
        "bad_name_entries": [shown_name(p.name) for p in classes["bad_file_name"]],
        "n_labels": len(df),
        "duplicate_ids": df[ID_COL][df[ID_COL].duplicated()].unique().tolist() if ID_COL in df.columns else [],
        "duplicate_files": dup_files,
        "ids_without_file": sorted(label_ids - answered),
        "files_without_id": sorted({shown_name(name_stem(n)) for n, a in zip(names, answers) if a not in label_ids}),
        "class_balance": class_balance(df[LABEL_COL]) if has_cols and not inputs.problems else None,
    }


def validate_dataset(
    data_root: str | Path, *, labels: str = "labels1.csv", cts: str = "CTs", expected_count: int | None = None
) -> dict[str, Any]:
    """Structure report of a data folder.

    Returns:
        A JSON-able dict with ``ok`` (no fatal problem), ``fatal`` and ``warnings`` (messages), and the
        counts and lists described in the module docstring.
    """
    report: dict[str, Any] = {"data_root": shown_name(str(data_root)), "fatal": [], "warnings": []}
    try:
        inputs = scan_inputs(data_root, labels=labels, cts=cts)
    except InputError as e:
        report["fatal"].append(shown_name(str(e)))
        report["ok"] = False
        return report
    classes = entry_classes(inputs.files)
    report.update(structure(inputs, [looks_like_dicom(p) for p in classes["files"]], classes))
    report["expected_count"] = expected_count
    fatal, warn = report["fatal"], report["warnings"]
    not_dicom, dup_files = report["non_dicom_files"], report["duplicate_files"]
    n_dicom = report["n_dicom_files"]
    fatal.extend(inputs.problems)
    if not n_dicom:
        fatal.append(f"{inputs.cts_dir} holds no DICOM files (none has the DICM preamble)")
    if not_dicom:
        warn.append(f"{len(not_dicom)} file(s) without the DICM preamble (they will be quarantined): {_some(not_dicom)}")
    if report["not_regular_entries"]:
        warn.append(f"{len(report['not_regular_entries'])} entries that are not regular files (folders, symlinks, FIFOs ...; "
                    f"quarantined as not_regular_file, never read): {_some(report['not_regular_entries'])}")
    if report["bad_name_entries"]:
        warn.append(f"{len(report['bad_name_entries'])} file name(s) that are not valid UTF-8 (quarantined as bad_file_name, "
                    f"never read; rename them to UTF-8, e.g. `convmv -f latin1 -t utf8 --notest`): {_some(report['bad_name_entries'])}")
    if dup_files:
        warn.append(f"{len(dup_files)} ID(s) with more than one file: {list(dup_files.items())[:5]}")
    if report["ids_without_file"]:
        warn.append(f"{len(report['ids_without_file'])} label ID(s) without a file: {_some(report['ids_without_file'])}")
    if report["files_without_id"]:
        warn.append(f"{len(report['files_without_id'])} file(s) without a label ID: {_some(report['files_without_id'])}")
    cb = report["class_balance"]
    if cb and (cb["n_label0"] == 0 or cb["n_label1"] == 0):
        fatal.append(f"only one class in {inputs.labels_path.name}: {cb['n_label0']} label-0 and {cb['n_label1']} label-1 rows")
    if expected_count is not None and n_dicom != expected_count:
        fatal.append(f"--expected-count={expected_count} but {inputs.cts_dir} holds {n_dicom} DICOM files")
    report["fatal"], report["warnings"] = [shown_name(m) for m in fatal], [shown_name(m) for m in warn]
    report["ok"] = not fatal
    return report


def _some(names: list[str], n: int = 5) -> str:
    """The first ``n`` names, comma-separated as they are (no quotes, so an escaped ``\\xNN`` reads as one)."""
    return ", ".join(names[:n]) + (" …" if len(names) > n else "")


def format_report(r: dict[str, Any]) -> str:
    """Human-readable text of :func:`validate_dataset`'s report."""
    lines = [f"Dataset: {r['data_root']}"]
    if "n_files" in r:
        cb = r.get("class_balance") or {}
        lines += [
            (f"  CT folder      {r['cts_dir']}: {r['n_files']} entries, {r['n_dicom_files']} DICOM, "
             f"{len(r['not_regular_entries'])} not regular files, {len(r['bad_name_entries'])} names not UTF-8"),
            f"  labels         {r['labels_csv']}: {r['n_labels']} rows",
        ]
        if cb:
            ratio = f"{cb['imbalance_ratio']:.2f}" if cb["imbalance_ratio"] else "n/a"
            lines.append(f"  classes        0: {cb['n_label0']}  1: {cb['n_label1']}  imbalance ratio {ratio}")
        lines.append(f"  duplicate IDs  {len(r['duplicate_ids'])}   duplicate files {len(r['duplicate_files'])}")
        lines.append(f"  IDs w/o file   {len(r['ids_without_file'])}   files w/o ID {len(r['files_without_id'])}")
        for title, items in (("IDs without a file", r["ids_without_file"]), ("files without an ID", r["files_without_id"])):
            if items:
                lines.append(f"  {title}: " + ", ".join(items[:20]) + (" …" if len(items) > 20 else ""))
    for w in r["warnings"]:
        lines.append(f"WARNING: {w}")
    for f in r["fatal"]:
        lines.append(f"ERROR: {f}")
    lines.append("RESULT: " + ("OK" if r["ok"] else "FAILED"))
    return "\n".join(lines)
