"""Deterministic randomness and identifiers of the phantom: everything derives from the seed by hashing."""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid

import numpy as np
from pydicom.uid import CTImageStorage

#: SOP Class UID of CT Image Storage.
CT_IMAGE_STORAGE_UID: str = str(CTImageStorage)  # "1.2.840.10008.5.1.4.1.1.2"
#: Distance between consecutive slices of one patient, in mm (also SliceThickness).
SLICE_SPACING_MM: float = 5.0
#: HU range representable by both stored representations (12-bit unsigned, offset 1024).
HU_MIN: int = -1024
HU_MAX: int = 3071

_F32 = np.float32
_ENTROPY_TAG = "neurocache.synth.v1"


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
