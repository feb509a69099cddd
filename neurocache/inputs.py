"""The input convention: ``DATA/CTs/<ID>.dcm`` files and ``DATA/labels1.csv`` with columns ID, Label.

Reading and checking the inputs is shared by ``validate`` (report) and ``build`` (which refuses
fatal problems before writing anything).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from neurocache.errors import InputError
from neurocache.names import bad_name, shown_name

ID_COL = "ID"
LABEL_COL = "Label"


@dataclass
class Inputs:
    """What is in a data folder.

    Attributes:
        data_root, cts_dir, labels_path: the resolved paths.
        labels: the labels CSV (ID as str, Label as int) — may hold extra columns.
        files: every non-hidden entry of ``cts_dir`` (regular files, folders, symlinks, special
            files; names as the OS gives them), sorted by (ID, name), as paths.
        problems: fatal problems found in the labels CSV (empty when usable).
    """

    data_root: Path
    cts_dir: Path
    labels_path: Path
    labels: pd.DataFrame
    files: list[Path]
    problems: list[str] = field(default_factory=list)

    @staticmethod
    def file_id(path: Path) -> str:
        """The ID of a file: its name without the last suffix (``ID_0a1b.dcm`` -> ``ID_0a1b``), with
        the bytes of a name that is not valid UTF-8 escaped (:func:`shown_name`)."""
        return shown_name(name_stem(path.name))


def name_stem(name: str) -> str:
    """``PurePath(name).stem`` by string operations (one call per entry at 750k entries matters):
    the name without its last ``.suffix``; a leading dot or a trailing dot is no suffix."""
    i = name.rfind(".")
    return name[:i] if 0 < i < len(name) - 1 else name


def label_id(name: str) -> str:
    """The labels-CSV ID an entry named ``name`` answers to.

    For a valid UTF-8 name, its ID (:meth:`Inputs.file_id`). For a name that is not valid UTF-8, the
    ID of the name's bytes read as Latin-1 (``ID_caf\\xe9.dcm`` -> ``ID_café``): every byte is a
    Latin-1 character, so each name has exactly one such reading, and it is what the Windows shares
    and old PACS exports that write such names meant by them.
    """
    if not bad_name(name):
        return name_stem(name)
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:
        return shown_name(name_stem(name))
    return name_stem(raw.decode("latin-1"))


#: ``stat`` file types that are not regular files, as named in ``not_regular_file`` details.
_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO (named pipe)"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISBLK, "block device"), (stat.S_ISCHR, "character device"))


def entry_kind(path: Path) -> str | None:
    """None for a regular file, else what the entry is (``directory``, ``symbolic link``, ...),
    from ``lstat``: a symlink is never followed, whatever (or whether) it points to.

    Raises:
        OSError: the entry cannot be ``lstat``-ed (it vanished, no permission).
    """
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "special file")


def entry_problem(path: Path) -> tuple[str, str] | None:
    """``(reason, detail)`` when the entry cannot be read as a slice whatever its content, else None.

    Checked from ``lstat`` and the name alone, nothing is opened: ``not_regular_file`` (a directory,
    symlink, FIFO, socket or device; not entered, followed or read), then ``bad_file_name`` (a
    name that is not valid UTF-8, shown with its bytes escaped, :func:`neurocache.names.shown_name`).

    Raises:
        OSError: the entry cannot be ``lstat``-ed.
    """
    kind = entry_kind(path)
    if kind is not None:
        return "not_regular_file", (f"{shown_name(path.name)}: a {kind}, not a regular file; never entered, followed or read. "
                                    "Replace it with the slice's DICOM file (a regular file) or move it out of the CT folder")
    if bad_name(path.name):
        return "bad_file_name", (f"{shown_name(path.name)}: the name is not valid UTF-8 (the bytes shown as \\xNN); not read. Its ID read "
                                 f"as Latin-1 is {label_id(path.name)!r}. Rename it to UTF-8, e.g. "
                                 "`convmv -f latin1 -t utf8 --notest FILE`")
    return None


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading. A symlink, FIFO or device (even one swapped in after the
    caller's ``lstat``) is not followed or waited on (``O_NOFOLLOW``, ``O_NONBLOCK``, then ``fstat``).

    Raises:
        OSError: ``path`` is not a regular file or cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    fh = open(fd, "rb", closefd=True)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise OSError(f"{shown_name(str(path))}: not a regular file")
    return fh


def unsafe_id(value: str) -> str | None:
    """Why an ID is not a plain file stem (path separators, ``..``, absolute, empty), else None."""
    if value == "" or value.strip() != value:
        return "empty or has surrounding spaces"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    # Without a separator a name is one path part, never absolute (no root): plain string tests, the
    # same answers as PurePosixPath/PureWindowsPath at a fraction of the cost (one call per label row).
    if value in (".", ".."):
        return "is a relative path component"
    if ":" in value:
        return "looks like an absolute path or drive"
    if "\x00" in value:
        return "contains a NUL byte"
    return None


def list_files(cts_dir: Path) -> list[Path]:
    """Every non-hidden entry of the CT folder (not recursive), sorted by (ID, file name).

    Folders, symlinks and special files are listed too (never entered, followed or read): the
    build gives them a ``not_regular_file`` row, so every entry of the folder is accounted for and
    nothing outside the data root is read. Names that are not valid UTF-8 are listed as the OS
    gives them (the build gives them a ``bad_file_name`` row). Hidden names (``.DS_Store``) are skipped.
    """
    files = [cts_dir / e.name for e in os.scandir(cts_dir) if not e.name.startswith(".")]
    return sorted(files, key=lambda p: (Inputs.file_id(p), p.name))


def read_labels(labels_path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read the labels CSV; return it and the list of fatal problems (missing columns, bad IDs/labels)."""
    problems: list[str] = []
    try:
        df = pd.read_csv(labels_path, dtype={ID_COL: str}, keep_default_na=False)
    except Exception as e:
        return pd.DataFrame({ID_COL: [], LABEL_COL: []}), [f"{labels_path}: cannot be read as CSV: {e}"]
    missing = [c for c in (ID_COL, LABEL_COL) if c not in df.columns]
    if missing:
        return df, [f"{labels_path}: missing column(s) {missing}; found {list(df.columns)}. The CSV needs columns ID,Label"]
    bad_ids = [(i + 2, v, why) for i, v in enumerate(df[ID_COL]) if (why := unsafe_id(str(v)))]
    for line, v, why in bad_ids[:10]:
        problems.append(f"{labels_path}:{line}: ID {v!r} {why}; IDs must be plain file stems such as ID_0a1b2c")
    if len(bad_ids) > 10:
        problems.append(f"{labels_path}: {len(bad_ids) - 10} more unsafe IDs")
    labels = pd.to_numeric(df[LABEL_COL], errors="coerce")
    bad = df[~labels.isin([0, 1])]
    for i, r in bad.head(10).iterrows():
        problems.append(f"{labels_path}:{i + 2}: Label {r[LABEL_COL]!r} for ID {r[ID_COL]!r} is not 0 or 1")
    if not problems:
        df[LABEL_COL] = labels.astype(int)
    dups = df[ID_COL][df[ID_COL].duplicated()].unique().tolist()
    if dups:
        problems.append(f"{labels_path}: duplicate IDs {dups[:10]}{' …' if len(dups) > 10 else ''}; each ID must appear once")
    return df, problems


def scan_inputs(data_root: str | Path, labels: str = "labels1.csv", cts: str = "CTs") -> Inputs:
    """Find the CT folder and labels CSV under ``data_root`` and read them.

    Raises:
        InputError: the data root, the CT folder or the labels CSV does not exist.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"data root {root} does not exist or is not a folder (--data-root)")
    for name, flag in ((labels, "--labels"), (cts, "--cts")):
        if unsafe_id(Path(name).name) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"{flag} {name!r} must be a name inside the data root, not a path outside it")
    cts_dir = root / cts
    labels_path = root / labels
    real_root = root.resolve()
    for p, flag in ((cts_dir, "--cts"), (labels_path, "--labels")):
        if p.exists() and not p.resolve().is_relative_to(real_root):
            raise InputError(f"{flag} {p} resolves to {p.resolve()}, outside the data root {real_root}; nothing outside it is read")
    if not cts_dir.is_dir():
        raise InputError(f"CT folder {cts_dir} does not exist; put one DICOM file per slice there (or pass --cts NAME)")
    if not labels_path.is_file():
        raise InputError(f"labels CSV {labels_path} does not exist; it needs columns ID,Label (or pass --labels NAME)")
    df, problems = read_labels(labels_path)
    return Inputs(data_root=root, cts_dir=cts_dir, labels_path=labels_path, labels=df, files=list_files(cts_dir), problems=problems)
