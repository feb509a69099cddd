"""Cheap large inputs for ``make bench-scale``: N hard links to a few thousand distinct DICOM files.

* **base**: one synthetic data set (``neurocache.synth``, 40 patients x 12 slices at 512 px).
* **sources**: ``sources`` distinct files, each a base slice with a new patient (``patients`` of them,
  ``PatientID`` + study/series UIDs rewritten) and a new SOP instance UID, so the build's patient
  hashes give ``patients`` groups, as the trainer's grouped split sees them. The patient is read
  from the header, and a hard link shares its source's header: every slice of a patient is a link
  to one of that patient's ``sources / patients`` files (duplicate content, which ``quality.json``
  reports as such). Pixels stay the base's, so the work per file is a real 512 px decode.
* **inputs**: ``DATA_N/CTs/ID_<10 hex>.dcm`` for N files, links to the sources in a shuffled order,
  IDs in a pseudo-random order like the RSNA set's, and ``labels1.csv`` (each link takes its base
  slice's label). Creating 1M links takes about a minute and a few hundred MB of directory entries.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

#: Odd multiplier: k -> k * _MIX mod 2**40 is a bijection, so IDs are unique and look shuffled.
_MIX = 0x9E3779B97F4A7C15 % (1 << 40) | 1


def scale_id(k: int) -> str:
    """The ID of link ``k`` (``ID_`` + 10 hex digits, pseudo-random order)."""
    return f"ID_{(k * _MIX) % (1 << 40):010x}"


def make_base(root: Path) -> Path:
    """The synthetic base set (reused when present)."""
    from neurocache.synth import generate_dataset

    if not (root / "labels1.csv").is_file():
        shutil.rmtree(root, ignore_errors=True)
        generate_dataset(root, patients=40, slices_per_patient=12, size=512, seed=0)
    return root


def make_sources(base: Path, out: Path, sources: int, patients: int) -> pd.DataFrame:
    """``sources`` distinct files under ``out`` (reused when present); returns file, Label, patient."""
    import pydicom
    from pydicom.uid import generate_uid

    index = out / "sources.csv"
    if index.is_file():
        df = pd.read_csv(index)
        if len(df) == sources and df["patient"].nunique() == min(patients, sources):
            return df
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    labels = pd.read_csv(base / "labels1.csv", dtype={"ID": str})
    base_files = [base / "CTs" / f"{i}.dcm" for i in labels["ID"]]
    rows = []
    for j in range(sources):
        b = j % len(base_files)
        p = j % patients
        ds = pydicom.dcmread(base_files[b])
        ds.PatientID = f"SCALE{p:06d}"
        ds.PatientName = f"Scale^{p:06d}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(p)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(p)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["sop", str(j)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        name = f"src_{j:06d}.dcm"
        ds.save_as(out / name, enforce_file_format=True)
        rows.append((name, int(labels["Label"].iat[b]), p))
    df = pd.DataFrame(rows, columns=["file", "Label", "patient"])
    df.to_csv(index, index=False)
    return df


def make_input(sources_dir: Path, sources: pd.DataFrame, out: Path, n: int, *, first: int = 0, seed: int = 0) -> Path:
    """``out/CTs`` with links ``first .. n-1`` (reused when complete) and ``out/labels1.csv`` for them.

    ``first`` > 0 adds links to an existing folder (the incremental-build step); the CSV is rewritten
    for links ``0 .. n-1``.
    """
    cts = out / "CTs"
    cts.mkdir(parents=True, exist_ok=True)
    pick = np.random.default_rng(seed).integers(0, len(sources), size=n)  # link k -> source pick[k]
    names = sources["file"].to_numpy()
    for k in range(first, n):
        dst = cts / f"{scale_id(k)}.dcm"
        if not dst.exists():
            os.link(sources_dir / names[pick[k]], dst)
    labels = pd.DataFrame({"ID": [scale_id(k) for k in range(n)], "Label": sources["Label"].to_numpy()[pick]})
    labels.sort_values("ID").to_csv(out / "labels1.csv", index=False)
    return out


def drop_links(out: Path, first: int, n: int, seed: int = 0) -> None:
    """Undo :func:`make_input`'s links ``first .. n-1`` (and write the CSV for ``0 .. first-1``)."""
    for k in range(first, n):
        (out / "CTs" / f"{scale_id(k)}.dcm").unlink(missing_ok=True)
    lab = pd.read_csv(out / "labels1.csv", dtype={"ID": str})
    keep = set(scale_id(k) for k in range(first))
    lab[lab["ID"].isin(keep)].to_csv(out / "labels1.csv", index=False)
