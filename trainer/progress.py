"""Progress on the terminal: a tqdm bar per model trained (a CV fold, the final model), one tick per epoch."""

from __future__ import annotations

import sys
from typing import Any


class EpochBar:
    """A tqdm bar per fold (or the final model), one tick per epoch, with the latest validation AUPRC.

    ``quiet``: no bar (``--quiet``); :meth:`update` and :meth:`close` then do nothing.
    """

    def __init__(self, desc: str, total: int, quiet: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = None if quiet else tqdm(total=total, desc=desc, unit="epoch", dynamic_ncols=True, file=sys.stderr)

    def update(self, rec: dict[str, Any]) -> None:
        """One epoch done: ``rec`` is its history row (:func:`trainer.loops.fit_stage`)."""
        if self.bar:
            self.bar.set_postfix(stage=rec["stage"], loss=f"{rec['train_loss']:.3f}", val_auprc=f"{rec['val_auprc']:.3f}",
                                 img_s=f"{rec['images_per_s']:.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
