"""A 2-D HU image -> a valid CT Image Storage DICOM dataset (explicit VR little endian)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
)

from neurocache.synth.seeds import (
    SLICE_SPACING_MM,
    _ds,
    _fake_dates,
    _patient_name,
    _stable_int,
    _uid,
)


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
    kvp: float = 120.0,
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
        kvp: the KVP tag (kV); written as ``"120"`` by default. Only the header changes: the HU
            image is the same at any kVp (the distribution-shift experiments, docs/shift.md).

    Returns:
        FileDataset with file meta (explicit VR little endian); write it with
        :func:`write_ct`.
    """
    stored, intercept, bits_stored = _stored_values(hu, signed)
    if study_uid is None:
        study_uid = _uid("study", seed, patient_id)
    if series_uid is None:
        series_uid = _uid("series", seed, patient_id, study_uid)
    sop_uid = _uid("sop", seed, patient_id, study_uid, series_uid, int(instance), _ds(z_mm))
    row_mm, col_mm = (float(v) for v in pixel_spacing)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "NEUROCACHE_SYN1"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    _set_study(ds, patient_id, study_uid, series_uid, sop_uid, seed)
    ds.KVP = _ds(kvp)
    ds.InstanceNumber = int(instance)
    ds.FrameOfReferenceUID = _uid("frame", study_uid)
    _set_image(ds, stored, intercept, bits_stored, signed, z_mm, row_mm, col_mm)
    return ds


def _set_image(ds: FileDataset, stored: np.ndarray, intercept: int, bits_stored: int, signed: bool,
               z_mm: float, row_mm: float, col_mm: float) -> None:
    """The slice's geometry (centred on the isocentre, axial, mm) and its pixel data attributes."""
    rows, cols = (int(n) for n in stored.shape)
    ds.ImagePositionPatient = [
        _ds(-(cols - 1) / 2.0 * col_mm),
        _ds(-(rows - 1) / 2.0 * row_mm),
        _ds(z_mm),
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _ds(z_mm)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(row_mm), _ds(col_mm)]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.RescaleIntercept = str(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"


def _stored_values(hu: np.ndarray, signed: bool) -> tuple[np.ndarray, int, int]:
    """(stored values, RescaleIntercept, BitsStored) of a finite 2-D HU image, rounded to integers:
    signed int16 = HU (intercept 0, 16 bits), or unsigned = HU + 1024 clipped to 12 bits."""
    arr = np.asarray(hu)
    if arr.ndim != 2:
        raise ValueError(f"hu must be 2-D (rows, cols), got shape {arr.shape}")
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("hu must be a non-empty finite array")
    hu_int = np.rint(arr.astype(np.float64))
    if signed:
        return np.clip(hu_int, -32768, 32767).astype("<i2"), 0, 16
    return np.clip(hu_int + 1024.0, 0, 4095).astype("<u2"), -1024, 12


def _set_study(ds: FileDataset, patient_id: str, study_uid: str, series_uid: str, sop_uid: str, seed: int) -> None:
    """The patient, study and series attributes (fake names and dates derived from the seed)."""
    study_date, study_time, birth_date, sex = _fake_dates(patient_id, seed)
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
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1


def write_ct(ds: FileDataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part-10 file (preamble + file meta) to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
