"""Reason codes for rows of the feature table whose ``status`` is not ``ok``, and the ``fixes`` codes.

Every input file and every label row ends up in ``features.parquet`` exactly once; a row that is
not used carries one of these codes in ``reason`` and a human-readable ``detail`` (tag, value,
exception text). A row that *is* used but needed a documented correction lists it in ``fixes``
(comma-separated :data:`FIXES` codes). docs/bad-data.md ("What happens to bad data") is the user-facing version of this file.
"""

from __future__ import annotations

OK = "ok"
QUARANTINED = "quarantined"
MISSING = "missing"  # a label row with no file: not an input file, so neither ok nor quarantined

# Ordered as the checks run (first failing check wins), then the table-level ones.
REASONS: dict[str, str] = {
    # -- the file itself
    "not_regular_file": "a directory, symlink (to a file or a folder, or dangling), FIFO, socket or device in the CT folder: "
    "listed, never entered, followed or read (nothing outside the data root is read); put the slice's DICOM file there instead",
    "bad_file_name": "the entry's name is not valid UTF-8 (a Latin-1 byte from a Windows share or an old PACS export): "
    "listed under its name with those bytes escaped (ID_caf\\xe9), never read; rename it to UTF-8 (convmv -f latin1 -t utf8)",
    "not_dicom": "the file is not DICOM (no DICM prefix and no parseable dataset)",
    "unreadable": "the file could not be read or parsed (corrupt header, bad tag values or lengths)",
    "no_file_meta": "no Part-10 file meta information (preamble + DICM + group 0002) or no (0002,0010) TransferSyntaxUID in it",
    # -- what kind of object it is (SOP class, then modality)
    "secondary_capture": "(0008,0016) SOPClassUID is a Secondary Capture (screenshots, burned-in reformats): not an acquired slice",
    "segmentation": "(0008,0016) SOPClassUID is Segmentation (SEG): a label map, not an image",
    "structured_report": "(0008,0016) SOPClassUID is a Structured Report / Key Object Selection (SR): no pixels",
    "rt_object": "(0008,0016) SOPClassUID is a radiotherapy object (RT plan/structure set/dose/image...)",
    "sop_class_not_image": "(0008,0016) SOPClassUID is a non-image object (presentation state, waveform, encapsulated document, raw data...)",
    "modality_not_allowed": "(0008,0060) Modality is not in preprocess.allowed_modalities (MR, US, CR, NM, ... or missing)",
    # -- pixel data
    "no_pixel_data": "the dataset has no (7FE0,0010) Pixel Data",
    "truncated_pixel_data": "(7FE0,0010) Pixel Data is shorter than Rows x Columns x BitsAllocated needs, or the file ends inside it",
    "multiframe": "(0028,0008) NumberOfFrames > 1 (multi-frame / enhanced CT): one slice per file and one label per ID is the contract",
    "not_grayscale": "(0028,0004) PhotometricInterpretation is not MONOCHROME1/2 or SamplesPerPixel != 1",
    "bad_pixel_format": "Rows/Columns zero, unparsable or above 8192, or BitsAllocated/BitsStored not a usable integer layout",
    "no_rescale": "(0028,1052) RescaleIntercept or (0028,1053) RescaleSlope is missing (set preprocess.assume_rescale to accept)",
    "bad_rescale": "RescaleSlope <= 0 or RescaleSlope/RescaleIntercept not a number",
    "decode_error": "the pixel data could not be decoded (damaged compressed stream, unsupported transfer syntax)",
    "decoder_crash": "decoding the file killed the decoding process (segfault/abort in a codec, or a hang); found by re-decoding it alone",
    # -- the pixels
    "empty_slice": "the slice is constant or near-empty (HU std below preprocess.min_std_hu)",
    "no_skull": "no skull box found: the bone mask is too small (preprocess.min_box_pixels)",
    # -- the table (files vs labels)
    "duplicate_file": "another file in the CT folder has the same ID (file stem); the first by name is used",
    "no_label": "a file in the CT folder whose stem is not an ID of the labels CSV",
    "missing_file": "the labels CSV names an ID with no file in the CT folder (status 'missing', not an input file)",
}

#: Reasons set when the labels are joined, not when the file is decoded: a rebuild must decode such
#: a file again (its decode result is not recorded in the table).
TABLE_REASONS = frozenset({"duplicate_file", "no_label", "missing_file"})

#: Reasons about the CT-folder entry itself (its type or its name), found without reading it: such an
#: entry is not a file of its ID, so it never makes another file with that ID a ``duplicate_file``.
ENTRY_REASONS = frozenset({"not_regular_file", "bad_file_name"})

FIXES: dict[str, str] = {
    "rsna_12bit_wrap": "BitsStored 12, PixelRepresentation 0, RescaleIntercept > -100: stored values wrapped around "
    "(RSNA ICH data); HU = ((stored + 1000) mod 4096) - 1000 applied before the rescale (preprocess.fix_12bit_wrap)",
    "assumed_rescale": "RescaleSlope/RescaleIntercept missing; preprocess.assume_rescale used for the missing value(s)",
    "enhanced_rescale": "single-frame enhanced CT: RescaleSlope/Intercept taken from the functional groups sequence",
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
