"""Deterministic synthetic head-CT phantom generator that writes real CT DICOM files.

The generator produces axial brain-CT-like slices in Hounsfield units (HU) and stores
them as CT Image Storage DICOM files (explicit VR little endian), one slice per file,
together with a ``labels1.csv`` table (``ID,Label``) in the layout the rest of
``neurocache`` ingests::

    out_dir/
        CTs/ID_<10 hex>.dcm
        labels1.csv

Anatomy (all values HU, before scanner noise):

* air around the head, about -1000;
* a foam head-rest cradle (-160..-60) hugging the back of the head and a thin, dense
  curved table strip (200..350) with a low-density core near the bottom of the image;
* scalp (soft tissue, about 10..45) outside an elliptical skull ring (700..1900) whose
  thickness varies around the ring, with denser inner/outer tables than the diploe;
* brain (20..45) made of grey (35..40) / white (22..28) matter driven by smooth noise
  fields, CSF (3..12) in a patchy rim under the skull, gyral sulci and two
  butterfly-shaped lateral ventricles whose size varies with z;
* distractors present in both classes: pineal calcification (120..300) and a faintly
  hyperdense falx (40..52) in some patients;
* positive ("label 1") slices carry an acute-blood lesion (45..90): an irregular blob
  (union of ellipses + noisy boundary) anywhere in the brain, or, in about 25 % of
  positive patients, a subdural-like crescent along the inner table.  The lesion lives on a
  contiguous run of slices of the patient and grows then shrinks along that run.

Everything random is derived from the ``seed`` through hashing (UIDs, dates, IDs,
anatomy), so the same seed produces byte-identical files.  No wall-clock time is used.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
)

__all__ = [
    "CT_IMAGE_STORAGE_UID",
    "SLICE_SPACING_MM",
    "generate_dataset",
    "make_ct_dataset",
    "write_ct",
]

#: SOP Class UID of CT Image Storage.
CT_IMAGE_STORAGE_UID: str = str(CTImageStorage)  # "1.2.840.10008.5.1.4.1.1.2"
#: Distance between consecutive slices of one patient, in mm (also SliceThickness).
SLICE_SPACING_MM: float = 5.0
#: HU range representable by both stored representations (12-bit unsigned, offset 1024).
HU_MIN: int = -1024
HU_MAX: int = 3071

_F32 = np.float32
_ENTROPY_TAG = "neurocache.synth.v1"


# --------------------------------------------------------------------------------------
# Deterministic randomness / identifiers
# --------------------------------------------------------------------------------------
def _stable_int(*parts: object) -> int:
    """128-bit integer hash of ``parts`` (stable across runs/platforms; no PYTHONHASHSEED)."""
    text = "\x1f".join([_ENTROPY_TAG, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "little")


def _rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded deterministically from ``parts``."""
    return np.random.default_rng(_stable_int(*parts))


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:neurocache:synth")


def _uid(*parts: object) -> str:
    """A deterministic ``2.25.<uuid int>`` DICOM UID (ISO/IEC 9834-8) derived from ``parts``.

    Note: ``pydicom.uid.generate_uid(prefix=None, ...)`` ignores ``entropy_srcs`` and
    returns a random UUID, so a name-based (version 5) UUID is built here instead.
    """
    name = "\x1f".join([_ENTROPY_TAG, *map(str, parts)])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _ds(value: float) -> str:
    """Format a number as a DICOM DS string (<= 16 characters, no exponent)."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:  # pragma: no cover - only for absurdly large coordinates
        text = f"{float(value):.10g}"
    return text


def _patient_name(patient_id: str) -> str:
    """Fake, deliberately PHI-looking patient name, e.g. ``SYN0001`` -> ``PHANTOM^P0001``."""
    digits = "".join(ch for ch in patient_id if ch.isdigit())
    return f"PHANTOM^P{digits[-4:].zfill(4)}" if digits else f"PHANTOM^{patient_id[:32]}"


def _fake_dates(patient_id: str, seed: int) -> tuple[str, str, str, str]:
    """Deterministic (StudyDate, StudyTime, PatientBirthDate, PatientSex) for a patient."""
    rng = _rng("dates", seed, patient_id)
    study = _dt.date(2012, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 3650)))
    age_days = int(rng.integers(25 * 365, 90 * 365))
    birth = study - _dt.timedelta(days=age_days)
    secs = int(rng.integers(7 * 3600, 22 * 3600))
    study_time = f"{secs // 3600:02d}{(secs // 60) % 60:02d}{secs % 60:02d}"
    sex = "F" if rng.random() < 0.5 else "M"
    return study.strftime("%Y%m%d"), study_time, birth.strftime("%Y%m%d"), sex


# --------------------------------------------------------------------------------------
# DICOM construction
# --------------------------------------------------------------------------------------
def make_ct_dataset(
    hu: np.ndarray,
    *,
    signed: bool,
    patient_id: str = "SYN0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    z_mm: float = 0.0,
    pixel_spacing: Sequence[float] = (0.45, 0.45),
    instance: int = 1,
    seed: int = 0,
) -> FileDataset:
    """Wrap a 2-D HU image into a valid CT Image Storage ``FileDataset``.

    Args:
        hu: image of shape (rows, cols) in HU (any real dtype); rounded to the nearest
            integer (``np.rint``) before storing.  Must be finite.
        signed: ``True`` -> PixelRepresentation 1, int16 stored value = HU,
            RescaleIntercept 0, BitsStored 16, HighBit 15.  ``False`` ->
            PixelRepresentation 0, uint16 stored = HU + 1024 clipped to [0, 4095],
            RescaleIntercept -1024, BitsStored 12, HighBit 11.  RescaleSlope is 1.
        patient_id: PatientID; the (fake) PatientName/BirthDate/StudyDate derive from it.
        study_uid, series_uid: StudyInstanceUID / SeriesInstanceUID; when ``None`` they
            are derived deterministically from ``(seed, patient_id)``.
        z_mm: slice position (mm), third component of ImagePositionPatient.
        pixel_spacing: (row spacing, column spacing) in mm.
        instance: InstanceNumber (1-based).
        seed: entropy for the derived UIDs / dates.

    Returns:
        FileDataset with file meta (explicit VR little endian); write it with
        :func:`write_ct`.
    """
    arr = np.asarray(hu)
    if arr.ndim != 2:
        raise ValueError(f"hu must be 2-D (rows, cols), got shape {arr.shape}")
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("hu must be a non-empty finite array")
    rows, cols = (int(n) for n in arr.shape)
    hu_int = np.rint(arr.astype(np.float64))
    if signed:
        stored = np.clip(hu_int, -32768, 32767).astype("<i2")
        intercept, bits_stored, pixel_rep = 0, 16, 1
    else:
        stored = np.clip(hu_int + 1024.0, 0, 4095).astype("<u2")
        intercept, bits_stored, pixel_rep = -1024, 12, 0

    if study_uid is None:
        study_uid = _uid("study", seed, patient_id)
    if series_uid is None:
        series_uid = _uid("series", seed, patient_id, study_uid)
    sop_uid = _uid("sop", seed, patient_id, study_uid, series_uid, int(instance), _ds(z_mm))
    study_date, study_time, birth_date, sex = _fake_dates(patient_id, seed)
    row_mm, col_mm = (float(v) for v in pixel_spacing)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "NEUROCACHE_SYN1"

    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.ContentTime = study_time
    ds.AccessionNumber = f"A{_stable_int('acc', seed, patient_id) % 10**8:08d}"
    ds.Modality = "CT"
    ds.Manufacturer = "neurocache-synth"
    ds.StudyDescription = "CT HEAD WO CONTRAST (SYNTHETIC)"
    ds.SeriesDescription = "AXIAL 5MM BRAIN (SYNTHETIC)"
    ds.PatientName = _patient_name(patient_id)
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.SliceThickness = _ds(SLICE_SPACING_MM)
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = int(instance)
    ds.ImagePositionPatient = [
        _ds(-(cols - 1) / 2.0 * col_mm),
        _ds(-(rows - 1) / 2.0 * row_mm),
        _ds(z_mm),
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = _uid("frame", study_uid)
    ds.SliceLocation = _ds(z_mm)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(row_mm), _ds(col_mm)]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_rep
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.RescaleIntercept = str(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_ct(ds: FileDataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part-10 file (preamble + file meta) to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------
# Noise fields
# --------------------------------------------------------------------------------------
def _smooth_fields(
    rng: np.random.Generator, shape: tuple[int, int], bands: Sequence[tuple[float, float]]
) -> np.ndarray:
    """Gaussian / band-pass filtered white-noise fields via FFT.

    Args:
        shape: (rows, cols) in pixels.
        bands: one ``(sigma_lo, sigma_hi)`` pair per field, in pixels: the field is white
            noise filtered by ``G(sigma_lo) - G(sigma_hi)`` (``sigma_hi <= 0`` means a
            plain Gaussian low-pass with ``sigma_lo``).

    Returns:
        float32 array (len(bands), rows, cols), each field zero-mean with unit std.
    """
    rows, cols = shape
    white = rng.standard_normal((len(bands), rows, cols), dtype=_F32)
    spec = np.fft.rfft2(white, axes=(-2, -1))
    fy = np.fft.fftfreq(rows).astype(_F32)[:, None]
    fx = np.fft.rfftfreq(cols).astype(_F32)[None, :]
    f2 = fy * fy + fx * fx
    for i, (s_lo, s_hi) in enumerate(bands):
        h = np.exp(-2.0 * np.pi**2 * s_lo**2 * f2)
        if s_hi > 0:
            h = h - np.exp(-2.0 * np.pi**2 * s_hi**2 * f2)
        spec[i] *= h
    out = np.fft.irfft2(spec, s=(rows, cols), axes=(-2, -1)).astype(_F32, copy=False)
    out -= out.mean(axis=(-2, -1), keepdims=True)
    out /= out.std(axis=(-2, -1), keepdims=True) + _F32(1e-12)
    return out


def _soft(x: np.ndarray | float) -> np.ndarray:
    """Anti-aliased step: ``clip(x + 0.5, 0, 1)`` where ``x`` is a signed distance in px."""
    return np.clip(np.asarray(x, dtype=_F32) + _F32(0.5), _F32(0.0), _F32(1.0))


def _lerp_(dst: np.ndarray, value: np.ndarray | float, weight: np.ndarray) -> None:
    """In place ``dst = dst + weight * (value - dst)``."""
    dst += weight * (value - dst)


# --------------------------------------------------------------------------------------
# Dataset plan
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PatientPlan:
    """Per-patient choices made by the dataset-level RNG."""

    index: int
    patient_id: str
    rows: int  # pixels
    cols: int  # pixels
    signed: bool
    spacing_mm: float
    run_start: int  # first lesion slice (z index)
    run_len: int  # number of lesion slices; 0 => negative patient
    ids: tuple[str, ...]  # one "ID_<hex>" per slice, z order

    def label(self, k: int) -> int:
        """Label (0/1) of slice ``k``."""
        return int(self.run_start <= k < self.run_start + self.run_len)


def _pick(rng: np.random.Generator, n: int, k: int) -> set[int]:
    """``k`` distinct indices out of ``range(n)``."""
    return {int(i) for i in rng.permutation(n)[: max(0, min(k, n))]}


def _run_lengths(rng: np.random.Generator, n_pos: int, total: int, cap: int) -> list[int]:
    """Split ``total`` positive slices over ``n_pos`` patients, each in [1, cap]."""
    share = rng.dirichlet(np.full(n_pos, 4.0)) * (total - n_pos)
    lens = [1 + int(np.floor(s)) for s in share]
    lens = [min(cap, x) for x in lens]
    while sum(lens) < total:
        i = int(rng.choice([j for j, x in enumerate(lens) if x < cap]))
        lens[i] += 1
    while sum(lens) > total:
        i = int(rng.choice([j for j, x in enumerate(lens) if x > 1]))
        lens[i] -= 1
    return lens


def _plan(
    patients: int, slices: int, size: int, positive_frac: float, seed: int
) -> list[_PatientPlan]:
    """Decide per patient: image shape, representation, spacing, lesion run and IDs."""
    rng = _rng("plan", seed)
    n_signed = patients // 2 + (int(rng.integers(0, 2)) if patients % 2 else 0)
    signed = _pick(rng, patients, n_signed)
    n_nonsq = int(round(0.15 * patients))
    if patients >= 4:
        n_nonsq = max(1, n_nonsq)
    nonsquare = _pick(rng, patients, n_nonsq)

    total_pos = int(round(positive_frac * patients * slices))
    if positive_frac > 0:
        total_pos = max(1, total_pos)
    if total_pos > 0:
        n_pos = int(round(positive_frac * 1.6 * patients))
        n_pos = min(patients, max(1, n_pos, -(-total_pos // slices)))
        n_pos = min(n_pos, total_pos)
        pos_patients = sorted(_pick(rng, patients, n_pos))
        lens = dict(zip(pos_patients, _run_lengths(rng, n_pos, total_pos, slices)))
    else:
        lens = {}

    short = max(16, int(round(size * 0.875)))
    seen: set[str] = set()
    plans = []
    for p in range(patients):
        if p in nonsquare:
            rows, cols = (size, short) if rng.random() < 0.5 else (short, size)
        else:
            rows, cols = size, size
        spacing = round(float(rng.uniform(0.40, 0.50)), 4)
        run_len = lens.get(p, 0)
        run_start = int(rng.integers(0, slices - run_len + 1)) if run_len else 0
        ids = []
        for _ in range(slices):
            while True:
                ident = f"ID_{int(rng.integers(0, 16**10)):010x}"
                if ident not in seen:
                    seen.add(ident)
                    ids.append(ident)
                    break
        plans.append(
            _PatientPlan(
                index=p,
                patient_id=f"SYN{p + 1:04d}",
                rows=rows,
                cols=cols,
                signed=p in signed,
                spacing_mm=spacing,
                run_start=run_start,
                run_len=run_len,
                ids=tuple(ids),
            )
        )
    return plans


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------
def _bbox(
    cy: float, cx: float, half: float, shape: tuple[int, int]
) -> tuple[slice, slice] | None:
    """Image-space box (rows, cols slices) of half-size ``half`` px around (cy, cx) px."""
    r0, r1 = max(0, int(cy - half)), min(shape[0], int(np.ceil(cy + half)) + 1)
    c0, c1 = max(0, int(cx - half)), min(shape[1], int(np.ceil(cx + half)) + 1)
    if r1 <= r0 or c1 <= c0:
        return None
    return slice(r0, r1), slice(c0, c1)


class _PatientRenderer:
    """Precomputes one patient's geometry/noise fields and renders its slices (HU).

    Coordinates: image pixels (row ``y``, col ``x``); ``xr``/``yr`` are pixel offsets from
    the head centre in the head frame (rotated by the head tilt; ``yr`` grows toward the
    back of the head, i.e. down the image).  Normalised head coordinates ``u = xr/a``,
    ``v = yr/b`` where ``a``/``b`` are the outer skull semi-axes (px) of the current slice.
    """

    def __init__(self, plan: _PatientPlan, slices: int, seed: int) -> None:
        rng = _rng("patient", seed, plan.index)
        self.plan = plan
        self.rng = rng
        R, C = plan.rows, plan.cols
        self.shape = (R, C)
        side = float(min(R, C))
        k = side / 512.0  # thickness scale relative to a 512-px image
        self.k = k

        # ---- scanner / materials ----
        self.noise_sigma = float(rng.uniform(4.0, 8.0))  # HU
        air = float(rng.uniform(-1005.0, -990.0))
        self.grey = float(rng.uniform(35.0, 40.0))
        self.white = float(rng.uniform(22.0, 28.0))
        self.csf = float(rng.uniform(3.0, 12.0))
        self.diploe = float(rng.uniform(700.0, 1000.0))
        self.cortical = float(rng.uniform(1500.0, 1900.0))
        self.scalp = float(rng.uniform(10.0, 45.0))

        # ---- head geometry (max-scale slice) ----
        aspect = float(rng.uniform(0.80, 0.95))
        b = float(rng.uniform(0.32, 0.42)) * side  # AP outer skull semi-axis, px
        a = b * aspect  # LR semi-axis, px
        tilt = float(np.deg2rad(rng.uniform(-15.0, 15.0)))
        scalp_w = max(1.0, float(rng.uniform(3.0, 7.0)) * k)  # px
        margin_top = 0.02 * R
        table_th = max(1.5, float(rng.uniform(3.0, 6.0)) * k)  # dense strip, px
        core_th = max(2.0, float(rng.uniform(8.0, 16.0)) * k)  # low-density core, px
        table_top = R - max(2.0, float(rng.uniform(0.02, 0.05)) * R) - table_th - core_th
        pad_th = float(rng.uniform(0.03, 0.06)) * side  # head-rest below head, px
        cos_t, sin_t = np.cos(tilt), np.sin(tilt)

        def extents(a_: float, b_: float) -> tuple[float, float]:
            ex = np.hypot(a_ * cos_t, b_ * sin_t) + scalp_w
            ey = np.hypot(a_ * sin_t, b_ * cos_t) + scalp_w
            return float(ex), float(ey)

        ex, ey = extents(a, b)
        fit = min(
            1.0,
            (table_top - pad_th - margin_top) / (2.0 * ey),
            (C - 4.0) / (2.0 * ex),
        )
        if fit < 1.0:
            a, b = a * fit * 0.98, b * fit * 0.98
            ex, ey = extents(a, b)
        cy = R / 2.0 + float(rng.uniform(-0.08, 0.08)) * side
        cy = float(np.clip(cy, margin_top + ey, max(margin_top + ey, table_top - pad_th - ey)))
        cx = C / 2.0 + float(rng.uniform(-0.08, 0.08)) * side
        cx = float(np.clip(cx, ex + 2.0, max(ex + 2.0, C - ex - 2.0)))
        self.a, self.b, self.cy, self.cx = a, b, cy, cx
        self.cos_t, self.sin_t = float(cos_t), float(sin_t)

        ys = np.arange(R, dtype=_F32)[:, None] - _F32(cy)
        xs = np.arange(C, dtype=_F32)[None, :] - _F32(cx)
        self.xr = (_F32(cos_t) * xs + _F32(sin_t) * ys).astype(_F32)
        self.yr = (-_F32(sin_t) * xs + _F32(cos_t) * ys).astype(_F32)
        rho0 = np.hypot(self.xr / _F32(a), self.yr / _F32(b))
        radial = np.hypot(self.xr, self.yr)
        # radius of the max-scale outer boundary along each pixel's ray (px)
        self.R0 = np.where(rho0 > 1e-6, radial / np.maximum(rho0, _F32(1e-6)), _F32(a)).astype(_F32)
        self.rho0 = rho0.astype(_F32)
        theta = np.arctan2(self.yr / _F32(b), self.xr / _F32(a)).astype(_F32)
        self.cos_th, self.sin_th = np.cos(theta), np.sin(theta)

        # outer-boundary modulation eps(theta) and skull thickness t(theta) (px)
        eps = np.zeros_like(theta)
        thick = np.ones_like(theta)
        for n in (1, 2, 3, 4):
            ph = float(rng.uniform(0, 2 * np.pi))
            eps += _F32(rng.uniform(0.0, 0.025 / n)) * np.cos(n * theta - _F32(ph))
            ph = float(rng.uniform(0, 2 * np.pi))
            amp = float(rng.uniform(0.08, 0.30)) if n <= 2 else float(rng.uniform(0.0, 0.12))
            thick += _F32(amp) * np.cos(n * theta - _F32(ph))
        t_mean = float(rng.uniform(7.0, 10.0)) * k
        self.eps1 = (1.0 + eps).astype(_F32)
        self.thick = np.clip(thick * _F32(t_mean), max(1.5, 4.0 * k), max(2.0, 13.0 * k)).astype(_F32)
        self.scalp_w = scalp_w

        # ---- noise fields: 2 tissue (low freq), 2 sulcal (band-pass), 1 mottle ----
        s_tex = max(1.5, 10.0 * k)
        s_sul = max(0.7, 2.2 * k)
        fields = _smooth_fields(
            rng,
            (R, C),
            [(s_tex, 0.0), (s_tex, 0.0), (s_sul, 4.0 * s_sul), (s_sul, 4.0 * s_sul), (max(1.0, 4.0 * k), 0.0)],
        )
        self.tex_a, self.tex_b, self.sul_a, self.sul_b, self.mottle = fields
        self.phase0 = float(rng.uniform(0, 2 * np.pi))
        self.phase_step = float(rng.uniform(0.25, 0.45))  # radians per slice

        # ---- z geometry (mm) ----
        self.z0 = float(np.round(rng.uniform(-60.0, 10.0) / 0.5) * 0.5)
        z_mid = self.z0 + SLICE_SPACING_MM * (slices - 1) / 2.0
        self.z_center = z_mid + float(rng.uniform(-25.0, 25.0))
        self.z_half = float(rng.uniform(80.0, 100.0))
        self.obliquity = float(rng.uniform(0.3, 0.8))
        self.vent_z = self.z_center + float(rng.uniform(-10.0, 10.0))
        self.vent_half = float(rng.uniform(25.0, 40.0))
        self.vent_scale = float(rng.uniform(0.7, 1.3))  # atrophy / hydrocephalus-ish
        self.vent_cu = float(rng.uniform(0.09, 0.14))
        self.vent_cv = float(rng.uniform(-0.08, 0.02))
        self.vent_ax = (float(rng.uniform(0.06, 0.09)), float(rng.uniform(0.20, 0.28)))
        self.vent_tilt = float(np.deg2rad(rng.uniform(10.0, 28.0)))
        self.rim0 = max(0.7, float(rng.uniform(1.5, 3.5)) * k)
        self.sulcus_thr = float(rng.uniform(0.10, 0.22))

        # ---- distractors ----
        self.pineal = None
        if rng.random() < 0.4:
            self.pineal = (
                float(rng.uniform(0.10, 0.20)),  # v
                max(0.8, float(rng.uniform(1.0, 2.5)) * k),  # radius px
                float(rng.uniform(120.0, 300.0)),  # HU
                self.vent_z + float(rng.uniform(-5.0, 5.0)),  # z centre mm
                float(rng.uniform(8.0, 15.0)),  # z half extent mm
            )
        self.falx = None
        if rng.random() < 0.5:
            fw = max(0.8, float(rng.uniform(1.0, 2.0)) * k)
            self.falx = (_soft(fw / 2.0 - np.abs(self.xr)) * _F32(0.8), float(rng.uniform(40.0, 52.0)))

        # ---- lesion ----
        self.lesion = self._make_lesion(rng) if plan.run_len else None

        # ---- static background: air, head-rest cradle, table ----
        self.background = self._make_background(rng, air, ex, ey, table_top, table_th, core_th)

    # ---------------------------------------------------------------- setup helpers
    def _make_background(
        self,
        rng: np.random.Generator,
        air: float,
        ex: float,
        ey: float,
        table_top: float,
        table_th: float,
        core_th: float,
    ) -> np.ndarray:
        """Air + foam cradle + curved table, float32 (rows, cols) in HU (no noise)."""
        R, C = self.shape
        side = min(R, C)
        bg = np.full(self.shape, air, dtype=_F32)
        y = np.arange(R, dtype=_F32)[:, None]
        x = np.arange(C, dtype=_F32)[None, :]
        # table: shallow arc, higher at the sides
        curv = float(rng.uniform(0.0, 0.05)) * side
        y_tab = _F32(table_top) - _F32(curv) * ((x - _F32(C / 2.0)) / _F32(C / 2.0)) ** 2
        dy = y - y_tab  # px below table top surface
        w_shell = _soft(dy) * _soft(table_th - dy)
        w_core = _soft(dy - table_th) * _soft(table_th + core_th - dy)
        w_base = _soft(dy - table_th - core_th) * _soft(table_th + core_th + max(1.0, table_th * 0.6) - dy)
        _lerp_(bg, float(rng.uniform(-400.0, -200.0)), w_core)
        dense = float(rng.uniform(200.0, 350.0))
        _lerp_(bg, dense, w_shell)
        _lerp_(bg, dense * 0.8, w_base)
        # foam cradle: box under the head, minus the max-size head (incl. scalp)
        pw = float(rng.uniform(0.55, 0.85)) * ex
        top = self.cy + float(rng.uniform(0.35, 0.6)) * ey
        foam = float(rng.uniform(-160.0, -60.0))
        w_box = (
            _soft(pw - np.abs(x - _F32(self.cx)))
            * _soft(y - _F32(top))
            * _soft(y_tab - y)
        )
        d_head = (self.eps1 - self.rho0) * self.R0 + _F32(self.scalp_w)
        w_pad = w_box * _soft(-d_head)
        _lerp_(bg, foam, w_pad)
        return bg

    def _make_lesion(self, rng: np.random.Generator) -> dict:
        """Random lesion description (shape in px / normalised head coords, HU)."""
        subdural = rng.random() < 0.25
        subtle = (not subdural) and rng.random() < 0.25
        if subtle:  # small, low-contrast parenchymal blob
            intensity, r_frac = float(rng.uniform(46.0, 56.0)), float(rng.uniform(0.02, 0.035))
        elif subdural:  # crescent thickness as a fraction of head width
            intensity, r_frac = float(rng.uniform(55.0, 85.0)), float(rng.uniform(0.03, 0.08))
        else:
            intensity, r_frac = float(rng.uniform(55.0, 90.0)), float(rng.uniform(0.04, 0.09))
        r_px = max(1.2, r_frac * 2.0 * self.a)
        les: dict = {"intensity": intensity, "r_px": r_px, "subtle": subtle}
        if subdural:
            les["kind"] = "subdural"
            th0 = float(rng.uniform(0, 2 * np.pi))
            half = float(rng.uniform(0.35, 0.8))  # rad
            c = self.cos_th * _F32(np.cos(th0)) + self.sin_th * _F32(np.sin(th0))
            s = self.sin_th * _F32(np.cos(th0)) - self.cos_th * _F32(np.sin(th0))
            delta = np.abs(np.arctan2(s, c))
            les["taper"] = np.clip(np.cos(_F32(np.pi / 2.0 / half) * np.minimum(delta, _F32(half))), 0, 1) ** _F32(0.7)
        else:
            les["kind"] = "blob"
            rho_max = max(0.0, 0.8 - r_px / self.a)
            rho_c = rho_max * float(np.sqrt(rng.uniform(0.0, 1.0)))
            ang = float(rng.uniform(0, 2 * np.pi))
            les["uv"] = (rho_c * np.cos(ang), rho_c * np.sin(ang))
            parts = [(0.0, 0.0, r_px * rng.uniform(0.7, 1.0), r_px * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi))]
            for _ in range(int(rng.integers(1, 4))):
                off_r = r_px * rng.uniform(0.2, 0.6)
                off_a = rng.uniform(0, 2 * np.pi)
                parts.append(
                    (
                        off_r * np.cos(off_a),
                        off_r * np.sin(off_a),
                        r_px * rng.uniform(0.4, 0.8),
                        r_px * rng.uniform(0.4, 0.8),
                        rng.uniform(0, np.pi),
                    )
                )
            les["parts"] = [tuple(float(v) for v in p_) for p_ in parts]
            les["drift"] = [float(v) for v in rng.normal(0.0, 0.08 * r_px, size=2)]
        return les

    # ---------------------------------------------------------------- per slice
    def z_mm(self, k: int) -> float:
        """ImagePositionPatient z of slice ``k`` (mm)."""
        return self.z0 + SLICE_SPACING_MM * k

    def render(self, k: int) -> np.ndarray:
        """HU image (float32, (rows, cols)) of slice ``k``, clipped to [-1024, 3071]."""
        plan = self.plan
        z = self.z_mm(k)
        uz = (z - self.z_center) / self.z_half
        sc = float(np.sqrt(np.clip(1.0 - uz * uz, 0.36, 1.0)))  # head scale, 0.6..1
        a, b = self.a * sc, self.b * sc
        img = self.background.copy()

        # signed distance inside the outer skull surface along the ray (px)
        d = (_F32(sc) * self.eps1 - self.rho0) * self.R0
        t = self.thick * _F32(1.0 + self.obliquity * (1.0 - sc))
        d_in = d - t  # distance inside the inner table (px)

        # scalp
        _lerp_(img, self.scalp, _soft(d + _F32(self.scalp_w)))
        # skull: diploe with dense inner/outer tables
        s = np.clip(d / t, 0.0, 1.0)
        q = (_F32(2.0) * s - _F32(1.0)) ** 2
        skull = _F32(self.diploe) + _F32(self.cortical - self.diploe) * (q * q) + _F32(60.0) * self.sul_b
        _lerp_(img, skull, _soft(d))

        # brain tissue: grey/white mixture, white matter more central
        ph = self.phase0 + self.phase_step * k
        tex = _F32(np.cos(ph)) * self.tex_a + _F32(np.sin(ph)) * self.tex_b
        sul = _F32(np.cos(ph)) * self.sul_a + _F32(np.sin(ph)) * self.sul_b
        rho = self.rho0 / _F32(sc)
        wm = np.clip(_F32(0.5) + _F32(0.9) * (tex + _F32(2.6) * (_F32(0.62) - rho)), 0.0, 1.0)
        brain = _F32(self.grey) + _F32(self.white - self.grey) * wm + _F32(1.5) * sul
        # CSF: patchy rim under the skull + sulci in the cortical band
        rim_w = _F32(self.rim0) * np.clip(_F32(1.0) + _F32(0.8) * tex, 0.2, 2.0)
        w_rim = _soft(rim_w - d_in)
        cortex_w = _F32(0.14 * min(a, b))
        w_sul = np.clip(_F32(1.0) - np.abs(sul) / _F32(self.sulcus_thr), 0.0, 1.0)
        w_sul *= np.clip((cortex_w - d_in) / cortex_w * _F32(2.0), 0.0, 1.0) * _F32(0.85)
        _lerp_(brain, self.csf, np.maximum(w_rim, w_sul))
        if self.falx is not None:
            w_falx, falx_hu = self.falx
            _lerp_(brain, falx_hu, w_falx * (np.abs(self.yr) > _F32(0.3 * b)))
        self._ventricles(brain, z, a, b)
        if self.pineal is not None:
            self._pineal(brain, z, b)
        if plan.label(k):
            self._lesion(brain, k, sc, a, d_in)
        _lerp_(img, brain, _soft(d_in))

        # scanner noise: mildly correlated gaussian
        n = self.rng.standard_normal(self.shape, dtype=_F32)
        n += _F32(0.5) * (np.roll(n, 1, axis=0) + np.roll(n, 1, axis=1))
        img += n * _F32(self.noise_sigma / np.sqrt(1.5))
        np.clip(img, HU_MIN, HU_MAX, out=img)
        return img

    def _to_image(self, xr: float, yr: float) -> tuple[float, float]:
        """Head-frame offset (px) -> image (row, col) coordinates."""
        col = self.cx + self.cos_t * xr - self.sin_t * yr
        row = self.cy + self.sin_t * xr + self.cos_t * yr
        return row, col

    def _ventricles(self, brain: np.ndarray, z: float, a: float, b: float) -> None:
        """Blend two butterfly-shaped lateral ventricles (CSF) into ``brain`` in place."""
        uz = (z - self.vent_z) / self.vent_half
        vs = self.vent_scale * float(np.sqrt(max(0.0, 1.0 - uz * uz)))
        if vs < 0.08:
            return
        box = _bbox(self.cy, self.cx, 0.5 * max(a, b) + 2, self.shape)
        if box is None:
            return
        u = self.xr[box] / _F32(a)
        v = self.yr[box] / _F32(b)
        ax_u, ax_v = self.vent_ax[0] * vs, self.vent_ax[1] * min(vs, 1.2)
        w = np.zeros_like(u)
        for side in (-1.0, 1.0):
            # body + frontal horn; anterior (v < 0) ends splay outwards
            for cu, cv, su, sv, tilt in (
                (self.vent_cu, self.vent_cv, ax_u, ax_v, self.vent_tilt),
                (self.vent_cu * 1.25, self.vent_cv - 0.8 * ax_v, ax_u * 1.3, ax_v * 0.45, self.vent_tilt * 1.6),
            ):
                ca, sa = np.cos(side * tilt), np.sin(side * tilt)
                du, dv = u - _F32(side * cu), v - _F32(cv)
                eu = (_F32(ca) * du + _F32(sa) * dv) / _F32(su)
                ev = (-_F32(sa) * du + _F32(ca) * dv) / _F32(sv)
                qd = (_F32(1.0) - np.hypot(eu, ev)) * _F32(su * a)
                np.maximum(w, _soft(qd), out=w)
        _lerp_(brain[box], self.csf, w)

    def _pineal(self, brain: np.ndarray, z: float, b: float) -> None:
        """Blend a small calcified pineal dot (HU > 100) into ``brain`` in place."""
        v, r, hu, zc, zh = self.pineal
        if abs(z - zc) > zh:
            return
        row, col = self._to_image(0.0, v * b)
        box = _bbox(row, col, r + 2, self.shape)
        if box is None:
            return
        yy = np.arange(box[0].start, box[0].stop, dtype=_F32)[:, None] - _F32(row)
        xx = np.arange(box[1].start, box[1].stop, dtype=_F32)[None, :] - _F32(col)
        _lerp_(brain[box], hu, _soft(_F32(r) - np.hypot(yy, xx)))

    def _lesion(self, brain: np.ndarray, k: int, sc: float, a: float, d_in: np.ndarray) -> None:
        """Blend the hyperdense lesion of slice ``k`` into ``brain`` in place."""
        les = self.lesion
        plan = self.plan
        j, L = k - plan.run_start, plan.run_len
        g = 0.6 + 0.4 * float(np.sin(np.pi * (j + 0.5) / L)) if L > 1 else 1.0
        base = _F32(les["intensity"])
        if les["kind"] == "subdural":
            inside = _soft(d_in - _F32(1.0))  # keep clear of the inner table
            h = _F32(les["r_px"] * g) * les["taper"] + _F32(0.8) * self.sul_a
            w = _soft(h - d_in) * np.clip(h - _F32(0.3), 0.0, 1.0) * inside
            _lerp_(brain, base + _F32(3.0) * self.mottle, w)
            return
        r = les["r_px"] * g
        u0, v0 = les["uv"]
        xr_c = u0 * a + les["drift"][0] * (j - L / 2.0)
        yr_c = v0 * self.b * sc + les["drift"][1] * (j - L / 2.0)
        row, col = self._to_image(xr_c, yr_c)
        box = _bbox(row, col, 2.0 * r + 3.0, self.shape)
        if box is None:
            return
        xr = self.xr[box] - _F32(xr_c)
        yr = self.yr[box] - _F32(yr_c)
        qmax = np.full(xr.shape, -10.0, dtype=_F32)
        for ox, oy, sx, sy, ang in les["parts"]:
            ca, sa = np.cos(ang), np.sin(ang)
            dx, dy = xr - _F32(ox * g), yr - _F32(oy * g)
            ex_ = (_F32(ca) * dx + _F32(sa) * dy) / _F32(max(sx * g, 0.6))
            ey_ = (-_F32(sa) * dx + _F32(ca) * dy) / _F32(max(sy * g, 0.6))
            np.maximum(qmax, _F32(1.0) - np.hypot(ex_, ey_), out=qmax)
        qmax += _F32(0.15) * self.sul_a[box]
        w = _soft(qmax * _F32(0.7 * r)) * _soft(d_in[box] - _F32(1.0))
        _lerp_(brain[box], base + _F32(3.0) * self.mottle[box], w)


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------
def generate_dataset(
    out_dir: str | Path,
    *,
    patients: int = 40,
    slices_per_patient: int = 12,
    size: int = 512,
    positive_frac: float = 0.35,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Generate a synthetic head-CT DICOM dataset with slice labels.

    Writes ``out_dir/CTs/ID_<10 hex>.dcm`` (one axial slice per file, CT Image Storage,
    explicit VR little endian) and ``out_dir/labels1.csv`` (columns ``ID,Label``, sorted by
    ID).  Existing unrelated files in ``out_dir`` are left alone.

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

    Returns:
        DataFrame with columns ``ID`` (str), ``Label`` (int 0/1), ``PatientID`` (str),
        ``z_index`` (int, 0-based slice index within the patient), sorted by ID.
    """
    if patients < 1 or slices_per_patient < 1:
        raise ValueError("patients and slices_per_patient must be >= 1")
    if size < 32:
        raise ValueError("size must be >= 32 pixels")
    if not 0.0 <= positive_frac <= 1.0:
        raise ValueError("positive_frac must be in [0, 1]")
    out = Path(out_dir)
    ct_dir = out / "CTs"
    ct_dir.mkdir(parents=True, exist_ok=True)

    plans = _plan(patients, slices_per_patient, size, positive_frac, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=patients * slices_per_patient, desc="synth CT", unit="slice")
    records: list[tuple[str, int, str, int]] = []
    try:
        for plan in plans:
            renderer = _PatientRenderer(plan, slices_per_patient, seed)
            study_uid = _uid("study", seed, plan.patient_id)
            series_uid = _uid("series", seed, plan.patient_id, study_uid)
            for kz in range(slices_per_patient):
                hu = renderer.render(kz)
                ds = make_ct_dataset(
                    hu,
                    signed=plan.signed,
                    patient_id=plan.patient_id,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    z_mm=renderer.z_mm(kz),
                    pixel_spacing=(plan.spacing_mm, plan.spacing_mm),
                    instance=kz + 1,
                    seed=seed,
                )
                write_ct(ds, ct_dir / f"{plan.ids[kz]}.dcm")
                records.append((plan.ids[kz], plan.label(kz), plan.patient_id, kz))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    df = pd.DataFrame(records, columns=["ID", "Label", "PatientID", "z_index"])
    df = df.sort_values("ID", kind="stable").reset_index(drop=True)
    df["Label"] = df["Label"].astype(np.int64)
    df["z_index"] = df["z_index"].astype(np.int64)
    df[["ID", "Label"]].to_csv(out / "labels1.csv", index=False, lineterminator="\n")
    return df

