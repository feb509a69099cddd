"""Distribution-shift checks: know when not to trust a score.

``trainer final`` saves a reference of its training data with the model (:mod:`trainer.shift.final_ref`):
the ranges of the feature-table columns that describe acquisition and content
(:mod:`trainer.shift.columns`, :mod:`trainer.shift.ranges`) and class-conditional Gaussians of the
model's penultimate embedding, each class with its own Ledoit-Wolf covariance (:mod:`trainer.shift.mahalanobis`),
with thresholds set on the final model's inner holdout (:mod:`trainer.shift.reference`).
``trainer predict`` checks every scored slice in the forward pass that scores it
(:mod:`trainer.shift.tap`, :mod:`trainer.shift.monitor`) and adds ``shift_score``, ``shifted`` and
``shift_reason`` (:mod:`trainer.shift.verdict`); docs/shift.md says what the check can and cannot catch.
"""

from trainer.shift.reference import ShiftReference, fit_reference, load_reference
from trainer.shift.verdict import SHIFT_COLUMNS, judge, summarise

__all__ = ["SHIFT_COLUMNS", "ShiftReference", "fit_reference", "judge", "load_reference", "summarise"]
