"""``generate_dataset``: the whole synthetic data folder (``CTs/*.dcm`` + ``labels1.csv`` + ``lesions.csv``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neurocache.errors import InputError
from neurocache.synth.dicom import make_ct_dataset, write_ct
from neurocache.synth.lesion import LESION_PROFILES
from neurocache.synth.phantom import _PatientRenderer
from neurocache.synth.plan import _PatientPlan, _plan
from neurocache.synth.seeds import _uid
from neurocache.synth.truth import lesion_frame


def generate_dataset(
    out_dir: str | Path,
    *,
    patients: int = 40,
    slices_per_patient: int = 12,
    size: int = 512,
    positive_frac: float = 0.35,
    seed: int = 0,
    progress: bool = False,
    lesions: str = "taper",
    pixel_spacing_mm: float | None = None,
    kvp: float = 120.0,
) -> pd.DataFrame:
    """Generate a synthetic head-CT DICOM dataset with slice labels.

    Writes ``out_dir/CTs/ID_<10 hex>.dcm`` (one axial slice per file, CT Image Storage,
    explicit VR little endian), ``out_dir/labels1.csv`` (columns ``ID,Label``, sorted by ID) and ``lesions.csv``
    (the drawn lesions: :mod:`neurocache.synth.truth`).  Existing unrelated files in ``out_dir`` are left alone.

    Args:
        out_dir: output directory (created if needed).
        patients: number of patients (>= 1); each gets its own study/series.
        slices_per_patient: consecutive slices per patient, 5 mm apart in z.
        size: nominal image side in pixels (>= 32); ~15 % of patients get a
            non-square ``size x round(0.875 * size)`` (or transposed) image.
        positive_frac: target fraction of label-1 slices in [0, 1] (hit exactly up to
            rounding); lesions are placed on contiguous slice runs of ~1.6x that fraction
            of patients.
        seed: all content, IDs, UIDs and dates derive from it (byte-identical reruns).
        progress: show a tqdm progress bar over slices.
        lesions: how a lesion changes along its run of slices (:mod:`neurocache.synth.lesion`):
            ``taper`` (default, as earlier releases) or ``3d`` (an ellipsoid spanning the run,
            smaller and fainter on its end slices).
        pixel_spacing_mm: every slice's PixelSpacing (mm, > 0); default: drawn per patient in
            0.40-0.50 mm. The draw happens either way, so IDs, labels and images are unchanged.
        kvp: the KVP tag of every slice (kV, > 0; default 120). Header only, like ``pixel_spacing_mm``.

    Returns:
        DataFrame with columns ``ID`` (str), ``Label`` (int 0/1), ``PatientID`` (str),
        ``z_index`` (int, 0-based slice index within the patient), sorted by ID.
    """
    _check_args(patients, slices_per_patient, size, positive_frac, lesions, pixel_spacing_mm, kvp)
    out = Path(out_dir)
    ct_dir = out / "CTs"
    ct_dir.mkdir(parents=True, exist_ok=True)
    records: list[tuple[str, int, str, int]] = []
    truth: list[dict[str, object]] = []
    with tqdm(total=patients * slices_per_patient, desc="synth CT", unit="slice", disable=not progress) as bar:
        for plan in _plan(patients, slices_per_patient, size, positive_frac, seed):
            if pixel_spacing_mm is not None:
                plan = dataclasses.replace(plan, spacing_mm=float(pixel_spacing_mm))
            records += _write_patient(plan, slices_per_patient, seed, ct_dir, bar.update, lesions, kvp, truth)
    df = pd.DataFrame(records, columns=["ID", "Label", "PatientID", "z_index"])
    df = df.sort_values("ID", kind="stable").reset_index(drop=True)
    df["Label"] = df["Label"].astype(np.int64)
    df["z_index"] = df["z_index"].astype(np.int64)
    df[["ID", "Label"]].to_csv(out / "labels1.csv", index=False, lineterminator="\n")
    lesion_frame(truth).to_csv(out / "lesions.csv", index=False, lineterminator="\n")
    return df


def _check_args(patients: int, slices_per_patient: int, size: int, positive_frac: float, lesions: str,
                pixel_spacing_mm: float | None, kvp: float) -> None:
    """Refuse arguments :func:`generate_dataset` cannot honour (:class:`InputError`, naming the value)."""
    if patients < 1 or slices_per_patient < 1:
        raise InputError("patients and slices_per_patient must be >= 1")
    if size < 32:
        raise InputError("size must be >= 32 pixels")
    if not 0.0 <= positive_frac <= 1.0:
        raise InputError("positive_frac must be in [0, 1]")
    if (pixel_spacing_mm is not None and not pixel_spacing_mm > 0) or not kvp > 0:
        raise InputError(f"pixel_spacing_mm={pixel_spacing_mm} and kvp={kvp} must be > 0")
    if lesions not in LESION_PROFILES:
        raise InputError(f"lesions={lesions!r}: choose one of {', '.join(LESION_PROFILES)}")


def _write_patient(plan: _PatientPlan, slices: int, seed: int, ct_dir: Path, progress: Callable[[int], object],
                   lesions: str = "taper", kvp: float = 120.0,
                   truth: list[dict[str, object]] | None = None) -> list[tuple[str, int, str, int]]:
    """Render and write one patient's ``slices`` files; returns (ID, label, PatientID, z index) per slice and
    appends each label-1 slice's ``lesions.csv`` row to ``truth``."""
    renderer = _PatientRenderer(plan, slices, seed, lesions)
    study_uid = _uid("study", seed, plan.patient_id)
    series_uid = _uid("series", seed, plan.patient_id, study_uid)
    records = []
    for kz in range(slices):
        ds = make_ct_dataset(
            renderer.render(kz),
            signed=plan.signed,
            patient_id=plan.patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            z_mm=renderer.z_mm(kz),
            pixel_spacing=(plan.spacing_mm, plan.spacing_mm),
            instance=kz + 1,
            seed=seed,
            kvp=kvp,
        )
        write_ct(ds, ct_dir / f"{plan.ids[kz]}.dcm")
        if truth is not None and plan.label(kz):
            drawn = renderer.truth
            truth.append(drawn.row(plan.ids[kz]) if drawn is not None else {"ID": plan.ids[kz], "n_pixels": 0, "mask_rle": ""})
        records.append((plan.ids[kz], plan.label(kz), plan.patient_id, kz))
        progress(1)
    return records
