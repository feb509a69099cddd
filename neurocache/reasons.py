"""Reason codes for rows of the feature table whose ``status`` is not ``ok``.

Every input file and every label row ends up in ``features.parquet`` exactly once; a row that is
not used carries one of these codes in ``reason`` and a human-readable ``detail``.
"""

from __future__ import annotations

OK = "ok"
QUARANTINED = "quarantined"
MISSING = "missing"  # a label row with no file: not an input file, so neither ok nor quarantined

REASONS: dict[str, str] = {
    "missing_file": "the labels CSV names an ID with no file in the CT folder",
    "no_label": "a file in the CT folder whose stem is not an ID of the labels CSV",
    "not_dicom": "the file is not DICOM (no DICM preamble and no parseable dataset)",
    "unreadable": "the file could not be read or parsed (truncated or corrupt header)",
    "no_pixel_data": "the dataset has no (7FE0,0010) Pixel Data",
    "modality_not_allowed": "(0008,0060) Modality is not in preprocess.allowed_modalities",
    "multiframe": "(0028,0008) NumberOfFrames > 1: one slice per file is expected (see README)",
    "not_grayscale": "(0028,0004) PhotometricInterpretation is not MONOCHROME1/2 or SamplesPerPixel != 1",
    "decode_error": "the pixel data could not be decoded (unsupported or damaged transfer syntax / truncated data)",
    "no_rescale": "(0028,1052) RescaleIntercept or (0028,1053) RescaleSlope is missing",
    "bad_rescale": "RescaleSlope <= 0 or not a number",
    "empty_slice": "the slice is constant or near-empty (HU std below preprocess.min_std_hu)",
    "no_skull": "no skull box found: the bone mask is too small (preprocess.min_box_pixels)",
}


class Quarantine(Exception):
    """Raised while reading or preprocessing a file that cannot be cached.

    Attributes:
        reason: one of :data:`REASONS`.
        detail: what exactly was found (tag, value, exception text).
        meta: header columns when the header was readable, else None.
    """

    def __init__(self, reason: str, detail: str, meta: dict | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.meta = meta

REASONS["duplicate_file"] = "another file in the CT folder has the same ID (file stem); the first by name is used"
