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

from neurocache.synth.dataset import generate_dataset
from neurocache.synth.dicom import make_ct_dataset, write_ct
from neurocache.synth.seeds import (
    CT_IMAGE_STORAGE_UID,
    HU_MAX,
    HU_MIN,
    SLICE_SPACING_MM,
)

__all__ = [
    "CT_IMAGE_STORAGE_UID",
    "HU_MAX",
    "HU_MIN",
    "SLICE_SPACING_MM",
    "generate_dataset",
    "make_ct_dataset",
    "write_ct",
]
