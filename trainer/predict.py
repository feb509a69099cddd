"""``python -m trainer predict --run FINAL_RUN INPUT... --out FILE.csv``: score new DICOM files.

Each input file goes through the store's own preprocessing (:func:`neurocache.preprocess.preprocess_file`)
with the parameters recorded in the final run's ``model_card.json`` -- refused unless their
fingerprint equals the one of the store the model was trained on -- then through the training
pipeline's evaluation transform (window, resize, ImageNet normalisation; no augmentation), the
model in eval mode, the final model's calibration map (``model_card.json["calibration"]``) and
the frozen threshold chosen in cross-validation.

Output CSV, one row per input file, in input order: ``ID`` (file stem), ``path``, ``prob``
(calibrated, what the threshold applies to), ``prob_raw`` (the model's sigmoid output),
``pred`` (0/1 at the threshold), ``status`` (``ok`` | ``quarantined``), ``reason`` and ``detail``
(the store's reason codes, :data:`neurocache.reasons.REASONS`; empty when ok). Quarantined rows
have empty ``prob`` and ``pred``: a non-CT or broken file gets a reason, never a made-up score.
``shift_score``, ``shifted``, ``shift_reason``: the distribution-shift check against the final run's
training reference (:mod:`trainer.shift`; the embedding comes from the scoring forward pass); a
shifted slice is still scored. Empty for quarantined files and for runs made before the check.
The call's summary is ``frame.attrs["shift"]``; ``predict_command`` writes it beside the CSV.

With ``context_slices`` k > 0 in the run's config, each slice's neighbours come from the input files
themselves, linked by the store's rule (:mod:`neurocache.geometry`: same series, ordered along the
slice normal, no link across a gap, a duplicate position or a quarantined file), so give predict
whole series (a folder per series or study). A missing neighbour is replaced as in training (by the
nearest slice towards the centre; a lone file is its own context), and the extra column
``neighbours_missing`` (0..2k; empty when quarantined) says how many were. Those inputs' ok images
are held in memory (int16, S x S each) until every file has been read.
With ``saliency`` (``--saliency DIR``) each scored slice also gets a Grad-CAM map, one overlay PNG in DIR
and the columns ``peak_row``, ``peak_col`` (:mod:`trainer.saliency.writer`); without it no map is made.
A name that is not valid UTF-8 is shown (``ID``, ``path``) with those bytes escaped (``\\xNN``) and gets
``bad_file_name``, as in the store; a folder's symlinks and special files get ``not_regular_file``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neurocache.config import PrepConfig
from neurocache.errors import InputError
from neurocache.inputs import Inputs
from neurocache.names import shown_name
from neurocache.reasons import OK
from trainer.config import TrainConfig
from trainer.evaluation.calibrators import Calibrator
from trainer.runs import files as F
from trainer.runs.folder import RunError, read_json
from trainer.shift.monitor import ShiftMonitor, write_summary
from trainer.shift.verdict import SHIFT_COLUMNS

__all__ = ["PREDICT_COLUMNS", "FinalRun", "collect_inputs", "load_final_run", "predict_command", "predict_files"]

PREDICT_COLUMNS: tuple[str, ...] = ("ID", "path", "prob", "prob_raw", "pred", "status", "reason", "detail", *SHIFT_COLUMNS)
#: Hash key for the header's patient/study/series hashes; predictions do not use them.
NO_KEY = b"\0" * 16


@dataclass(frozen=True)
class FinalRun:
    """What scoring needs from a final run folder (:func:`load_final_run`).

    Attributes:
        path: the run folder.
        card: its ``model_card.json``.
        config: the card's config.
        threshold: the frozen decision threshold (on calibrated probabilities).
        prep: the store's preprocessing, checked against the card's store fingerprint.
        weights: the ``state_dict`` file.
        calibrator: the post-hoc map fitted on the final model's holdout.
    """

    path: Path
    card: dict[str, Any]
    config: TrainConfig
    threshold: float
    prep: PrepConfig
    weights: Path
    calibrator: Calibrator


def load_final_run(run: str | Path) -> FinalRun:
    """The model card, config, threshold and preprocessing of a final run, checked.

    The preprocessing is the card's ``preprocess`` (the store's parameters) or, for a card
    written before that key existed, the config's ``preprocess`` section (which the trainer had
    checked against the store). Its fingerprint must equal the card's store fingerprint.
    ``config`` is the card's config as a :class:`~trainer.config.TrainConfig`.

    Raises:
        RunError: not a final run, or preprocessing that does not reproduce the fingerprint.
    """
    run = Path(run)
    need = [F.MODEL_CARD, F.FINAL_MODEL]
    missing = [f for f in need if not (run / f).is_file()]
    if missing:
        raise RunError(f"{run} is not a final run (missing {', '.join(missing)}); run `python -m trainer final` first")
    card = read_json(run / F.MODEL_CARD)
    cfg = TrainConfig.from_dict(card["config"])
    params, source = card.get("preprocess"), "model_card.json preprocess"
    if params is None:  # a card written before the key existed (tests/test_predict.py keeps such cards working)
        params, source = cfg.preprocess, "model_card.json config.preprocess"
    prep = PrepConfig.from_dict(params, source=source)
    want = (card.get("store") or {}).get("fingerprint")
    if not want:
        raise RunError(f"{run}/model_card.json records no store fingerprint; cannot check the preprocessing")
    if prep.fingerprint() != want:
        raise RunError(
            f"the preprocessing recorded in {run}/model_card.json ({source}) has fingerprint {prep.fingerprint()[:12]}… "
            f"but the model was trained on a store with fingerprint {want[:12]}…: refusing to predict with other "
            f"preprocessing than training used"
        )
    return FinalRun(path=run, card=card, config=cfg, threshold=float(card["threshold"]), prep=prep,
                    weights=run / card.get("weights_file", F.FINAL_MODEL),
                    calibrator=Calibrator.from_dict(card.get("calibration")))


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files to score: each file as given; each folder's non-hidden entries, recursively, sorted.

    A path that does not exist is kept (it is reported as ``unreadable``). Inside a folder, symlinks
    and special files are listed but never followed (a symlink to a folder included: it is reported
    as ``not_regular_file``, not entered).
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = []
            for root, dirs, files in os.walk(p):
                links = [d for d in dirs if os.path.islink(os.path.join(root, d))]  # os.walk does not enter them
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
                found += [Path(root) / f for f in [*files, *links] if not f.startswith(".")]
            out += sorted(found)
        else:
            out.append(p)
    return out


def build_predictor(run: FinalRun, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The final model (eval mode, on ``device``) and the evaluation transform."""
    from trainer.transforms import make_transform
    from trainer.model import build_model, load_weights

    cfg = run.config
    tf = make_transform(cfg)
    model = build_model(weights="none", dropout=cfg.dropout, in_channels=tf.channels, pool=cfg.pool)
    load_weights(model, run.weights)
    model.to(device).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, tf


@torch.inference_mode()
def _score(model: torch.nn.Module, tf: Any, hu: np.ndarray | torch.Tensor, cfg: TrainConfig, device: torch.device) -> np.ndarray:
    """Probabilities for a batch of int16 HU images (B, S, S), or context stacks (B, 2k + 1, S, S):
    the training pipeline's evaluation path."""
    x = tf(torch.as_tensor(hu).to(device), train=False)
    from trainer.precision import autocast

    with autocast(device, cfg.precision):
        logits = model(x).float().squeeze(1)
    return torch.sigmoid(logits.double()).cpu().numpy()  # float64, as trainer.loops.predict


def predict_files(
    run_dir: str | Path,
    inputs: Iterable[str | Path],
    *,
    device: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    saliency: str | Path | None = None,
    saliency_method: str | None = None, saliency_layer: str | None = None, saliency_peak: str | None = None, saliency_locate: str | None = None,
) -> pd.DataFrame:
    """Score DICOM files with a final run; one row per file (see the module docstring).

    Args:
        run_dir: a final run folder.
        inputs: files and/or folders.
        device: ``auto`` | ``cpu`` | ``cuda[:N]`` (default: the run config's ``device``).
        batch_size: images per forward pass (default: the config's ``eval_batch_size``).
        progress: show a tqdm bar over files.
        saliency: a folder for one overlay PNG per scored slice, and the ``peak_row`` / ``peak_col`` columns
            (None: neither, and no map is computed).
        saliency_method, saliency_layer, saliency_peak, saliency_locate: override the run config's keys of these names.

    Raises:
        RunError: see :func:`load_final_run`.
        InputError: ``batch_size`` < 1 (a ValueError).
    """
    from trainer.data import pick_device
    from trainer.precision import recorded_precision, scoring_precision

    run = load_final_run(run_dir)
    bs = int(batch_size or run.config.eval_batch_size)
    if bs < 1:  # the arguments and the device before the model is loaded
        raise InputError(f"batch size must be >= 1, got {bs}")
    dev = pick_device(device or run.config.device)
    # the precision the model was trained and calibrated in (scoring_precision warns where this device cannot)
    prec = scoring_precision(recorded_precision(run.config.precision, run.config.amp, dev), dev)
    run = dataclasses.replace(run, config=run.config.with_overrides({"precision": prec}))
    cfg = run.config
    model, tf = build_predictor(run, dev)
    files = collect_inputs(inputs)
    sal = _saliency_writer(saliency, (saliency_method, saliency_layer, saliency_peak, saliency_locate), model, tf, run, dev, files)
    shift = ShiftMonitor(run.path, model)  # a hook on model.fc, after the saliency copy; warns once for a run without reference
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="predict", unit="file", dynamic_ncols=True)
    try:
        rows = _score_files(files, run, model, tf, dev, bs, bar, shift, sal)
    finally:
        for opened in (shift, bar, sal):  # the hook; the progress bar; the PNG threads (waited for)
            if opened is not None:
                opened.close()
    extra = (["neighbours_missing"] if cfg.context_slices else []) + (["peak_row", "peak_col"] if sal else [])
    out = pd.DataFrame(rows, columns=[c for c in (*PREDICT_COLUMNS, *extra) if c not in SHIFT_COLUMNS])
    for col in ["pred", *extra]:
        out[col] = out[col].astype("Int64")
    out = pd.concat([out, shift.columns(len(out))], axis=1)[[*PREDICT_COLUMNS, *extra]]
    out.attrs["shift"] = shift.summary
    return out


def _saliency_writer(folder: str | Path | None, options: tuple[str | None, ...], model: torch.nn.Module,
                     tf: Any, run: FinalRun, dev: torch.device, files: list[Path]) -> Any:
    """A :class:`~trainer.saliency.writer.SaliencyWriter` into ``folder`` with (method, layer, peak, locate) ``options``, or
    None without a folder: then no saliency code is imported or run."""
    if folder is None:
        return None
    from trainer.saliency.writer import SaliencyWriter

    return SaliencyWriter(model, tf, run, dev, folder, files, *options)


def _score_files(
    files: list[Path], run: FinalRun, model: torch.nn.Module, tf: Any, dev: torch.device, bs: int, bar: Any,
    shift: ShiftMonitor, sal: Any = None,
) -> list[dict[str, Any]]:
    """One :data:`PREDICT_COLUMNS` row per file; ok files scored in batches of ``bs`` (calibrated, thresholded);
    ``sal`` (a :class:`~trainer.saliency.writer.SaliencyWriter`) adds each scored slice's map."""
    from neurocache.preprocess import preprocess_file

    if run.config.context_slices:
        return _score_files_with_context(files, run, model, tf, dev, bs, bar, shift, sal)
    rows: list[dict[str, Any]] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        batch = np.stack([im for _, im in pending])
        raw = _score(model, tf, batch, run.config, dev)
        shift.batch([i for i, _ in pending])
        if sal:
            sal.write(rows, [i for i, _ in pending], batch)
        for (i, _), pr, pc in zip(pending, raw, run.calibrator(raw)):
            rows[i]["prob"] = float(pc)
            rows[i]["prob_raw"] = float(pr)
            rows[i]["pred"] = int(pc >= run.threshold)
        pending.clear()

    for path in files:
        image, meta = preprocess_file(path, run.prep, NO_KEY)
        rows.append(_row(path, meta))
        if meta["status"] == OK and image is not None:
            pending.append((len(rows) - 1, image))
            shift.record(len(rows) - 1, meta)
            if sal:
                sal.note(len(rows) - 1, meta)
            if len(pending) >= bs:
                flush()
        if bar:
            bar.update(1)
    flush()
    return rows


def _row(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A :data:`PREDICT_COLUMNS` row for ``path`` before scoring (empty prob/pred)."""
    return {"ID": Inputs.file_id(path), "path": shown_name(str(path)), "prob": np.nan, "prob_raw": np.nan,
            "pred": pd.NA, "status": meta["status"], "reason": meta.get("reason", ""), "detail": meta.get("detail", "")}


def _score_files_with_context(
    files: list[Path], run: FinalRun, model: torch.nn.Module, tf: Any, dev: torch.device, bs: int, bar: Any,
    shift: ShiftMonitor, sal: Any = None,
) -> list[dict[str, Any]]:
    """As :func:`_score_files` with neighbour context: read every file, link the ok slices by series
    geometry, then score each slice's stack (``neighbours_missing`` per row)."""
    from neurocache.geometry import add_series_geometry
    from neurocache.preprocess import preprocess_file
    from trainer.context import context_rows, replaced_neighbours

    rows: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    images: list[np.ndarray] = []
    for path in files:
        image, meta = preprocess_file(path, run.prep, NO_KEY)
        rows.append({**_row(path, meta), "neighbours_missing": pd.NA})
        ok = meta["status"] == OK and image is not None
        metas.append({**meta, "row": len(images) if ok else -1})
        if ok:
            images.append(image)
            shift.record(len(rows) - 1, meta)
            if sal:
                sal.note(len(rows) - 1, meta)
        if bar:
            bar.update(1)
    if not images:
        return rows
    geo = add_series_geometry(pd.DataFrame(metas))
    ok_at = np.flatnonzero(geo["row"].to_numpy() >= 0)  # the file position of images 0, 1, ... (rows follow file order)
    links = torch.as_tensor(geo[["prev_row", "next_row"]].to_numpy(np.int64)[ok_at].T.copy())
    stack_all = torch.from_numpy(np.stack(images))
    for lo in range(0, len(images), bs):
        centre = torch.arange(lo, min(lo + bs, len(images)))
        stack = context_rows(centre, links[0], links[1], int(run.config.context_slices))
        raw = _score(model, tf, stack_all[stack], run.config, dev)
        shift.batch(ok_at[lo : lo + bs].tolist())
        if sal:
            sal.write(rows, ok_at[lo : lo + bs].tolist(), stack_all[stack])
        for i, pr, pc, miss in zip(ok_at[lo : lo + bs], raw, run.calibrator(raw), replaced_neighbours(stack).tolist()):
            rows[i].update(prob=float(pc), prob_raw=float(pr), pred=int(pc >= run.threshold), neighbours_missing=miss)
    return rows


def predict_command(
    run_dir: Path, inputs: list[Path], *, out: Path, device: str | None = None, batch_size: int | None = None,
    threads: int | None = None, quiet: bool = False, saliency: Path | None = None, saliency_method: str | None = None,
    saliency_layer: str | None = None, saliency_peak: str | None = None, saliency_locate: str | None = None,
) -> int:
    """``python -m trainer predict``: score ``inputs`` with a final run, write ``out`` and say what happened.

    ``threads``: torch CPU threads (default: the run config's ``threads``); the other arguments as
    :func:`predict_files`. The run is checked before any input is read.
    """
    t0 = time.perf_counter()
    run = load_final_run(run_dir)  # fail fast, before reading any input
    threads = threads if threads is not None else run.config.threads
    if threads:
        torch.set_num_threads(int(threads))
    frame = predict_files(run_dir, inputs, device=device, batch_size=batch_size, progress=not quiet, saliency=saliency,
                          saliency_method=saliency_method, saliency_layer=saliency_layer, saliency_peak=saliency_peak,
                          saliency_locate=saliency_locate)
    write_predictions(frame, out)
    summary = write_summary(frame.attrs["shift"], out)
    ok = frame["status"] == "ok"
    reasons = frame.loc[~ok, "reason"].value_counts().to_dict()
    print(f"predict: {len(frame)} files, {int(ok.sum())} scored ({int(frame['pred'].fillna(0).sum())} positive at threshold "
          f"{run.threshold:.2f}), {int((~ok).sum())} not scored{' ' + str(reasons) if reasons else ''}; "
          f"{time.perf_counter() - t0:.1f} s -> {shown_name(str(out))}")
    print(f"shift: {frame.attrs['shift']['message']} -> {shown_name(str(summary))}")
    return 0


def write_predictions(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the predict CSV (parents created)."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(p, index=False)
    return p
