"""``predict --saliency DIR``: a map per scored slice, its peak in the input DICOM's pixel indices
(CSV columns :data:`SALIENCY_COLUMNS`) and one overlay PNG per scored slice.

The overlay is the decoded slice at its own size and orientation (rows, columns as stored, HU =
stored x slope + intercept), in the config's first window (the brain window), the map resampled onto
it (:func:`~trainer.saliency.overlay.map_to_dicom`) and its peak ringed. ``DIR/<ID>.png``; a second
input with the same ID (file stem) gets ``DIR/<ID>_<row>.png``, ``row`` being its 0-based CSV row.
The PNGs (decode, resample, blend, encode: numpy, pydicom's decoders and zlib, which release the GIL)
are made by a few threads while the next batch is read and scored; :meth:`SaliencyWriter.close` waits for them.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.saliency.cam import SaliencyModel
from trainer.saliency.geometry import model_to_dicom, placement_of
from trainer.saliency.overlay import map_to_dicom, overlay_indices, overlay_png
from trainer.saliency.peak import peak_masks, peak_of

__all__ = ["SALIENCY_COLUMNS", "SaliencyWriter"]

#: The CSV columns ``predict --saliency`` adds: the map's peak (:func:`~trainer.saliency.peak.peak_of`), row and column in the input DICOM (pixels).
SALIENCY_COLUMNS: tuple[str, ...] = ("peak_row", "peak_col")
_BOX = ("box_r0", "box_r1", "box_c0", "box_c1")


class SaliencyWriter:
    """Maps, peaks and PNGs for the slices :func:`trainer.predict.predict_files` scores.

    Args:
        model: the scoring model (a hooked copy is made).
        tf: the evaluation transform (:func:`trainer.transforms.make_transform`).
        run: the :class:`~trainer.predict.FinalRun` (config, preprocessing, precision).
        device: the model's device.
        out_dir: the PNG folder (created).
        files: the input files, in row order.
        method, layer, peak, locate: ``saliency_method`` / ``saliency_layer`` / ``saliency_peak`` /
            ``saliency_locate`` (default: the run config's).

    Raises:
        ConfigError: an override the config would refuse (:meth:`TrainConfig.with_overrides`), or a layer the model lacks.
    """

    def __init__(self, model: torch.nn.Module, tf: Any, run: Any, device: torch.device, out_dir: str | Path,
                 files: Sequence[Path], method: str | None = None, layer: str | None = None,
                 peak: str | None = None, locate: str | None = None) -> None:
        given = {"saliency_method": method, "saliency_layer": layer, "saliency_peak": peak, "saliency_locate": locate}
        cfg = run.config.with_overrides({k: v for k, v in given.items() if v is not None})  # checked as config keys
        self.peak, self.locate = cfg.saliency_peak, cfg.saliency_locate
        self.cam = SaliencyModel(model, cfg.saliency_method, cfg.saliency_layer)
        self.tf, self.run, self.device, self.files = tf, run, device, list(files)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.boxes: dict[int, dict[str, int]] = {}
        self.names: set[str] = set()
        workers = min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="saliency-png")
        self.pending: deque[Future[None]] = deque()
        self.max_pending = 8 * workers  # bounds the maps waiting in memory

    def note(self, i: int, meta: dict[str, Any]) -> None:
        """Remember row ``i``'s skull box (its preprocessing row) until its map is made."""
        self.boxes[i] = {k: int(meta[k]) for k in _BOX}

    def write(self, rows: list[dict[str, Any]], idx: Sequence[int], hu: np.ndarray | torch.Tensor) -> None:
        """Maps of a batch (the HU images / stacks that were scored for rows ``idx``); sets each row's
        :data:`SALIENCY_COLUMNS` and writes its PNG."""
        from trainer.precision import autocast

        cfg = self.run.config
        hu = torch.as_tensor(hu)
        x = self.tf(hu.to(self.device), train=False)
        maps = self.cam(x, autocast=lambda: autocast(self.device, cfg.precision)).cpu().numpy()
        where = peak_masks(hu, cfg.out_size, self.peak)
        for i, sal, w in zip(idx, maps, where):
            p = placement_of(self.boxes.pop(int(i)), self.run.prep.size, cfg.out_size)
            peak = model_to_dicom(p, *peak_of(sal, w, self.locate))
            rows[int(i)].update(peak_row=peak[0], peak_col=peak[1])
            name = str(rows[int(i)]["ID"])
            stem = name if name not in self.names else f"{name}_{int(i)}"
            self.names.add(stem)
            while len(self.pending) >= self.max_pending:
                self.pending.popleft().result()
            self.pending.append(self.pool.submit(self._png, self.files[int(i)], self.out_dir / f"{stem}.png", sal, p, peak))

    def close(self) -> None:
        """Wait for every PNG (re-raising a failure) and stop the threads."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _png(self, path: Path, out: Path, sal: np.ndarray, p: Any, peak: tuple[int, int]) -> None:
        """The overlay PNG of the file at ``path`` (decoded again, at its own size), written to ``out``."""
        from neurocache.dicomio import read_slice
        from neurocache.hu import stored_to_hu
        from trainer.predict import NO_KEY

        data = read_slice(path, self.run.prep, NO_KEY)
        hu = stored_to_hu(data.stored, data.slope, data.intercept)
        center, width = self.run.config.windows[0]
        overlay_png(overlay_indices(hu, map_to_dicom(sal, p, hu.shape), peak, float(center), float(width)), out)
