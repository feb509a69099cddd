"""What the distribution-shift check costs ``trainer predict``: ``python -m bench.shift --run FINAL_RUN INPUT...``
(``make bench-shift``).

The same final run is copied twice into a scratch folder, once as is and once without its shift
reference (``shift_reference.json``, ``shift_embedding.npz``: a run made before the check, whose
predict skips the forward hook and the check); :func:`trainer.predict.predict_files` then scores the
same inputs with each copy, alternating, ``--repeats`` times after one untimed warm-up call each.
Reported: the median wall time of each, their ratio (the issue's limit: 1.20), the reference's size
on disk and its arrays' shapes (no image data). Writes ``bench/shift_results.json`` and the
``bench-shift`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("shift_results.json")
BEGIN, END = "<!-- bench-shift:begin -->", "<!-- bench-shift:end -->"


def _copies(run: Path, work: Path) -> tuple[Path, Path]:
    """(the run with its reference, the run without it), copied under ``work``."""
    from trainer.runs import files as F

    keep = [F.MODEL_CARD, F.FINAL_MODEL, F.EFFECTIVE_CONFIG, F.SHIFT_REFERENCE, F.SHIFT_EMBEDDING]
    with_ref, without = work / "with_reference", work / "without_reference"
    for d in (with_ref, without):
        d.mkdir(parents=True)
        for f in keep:
            if (run / f).is_file() and (d is with_ref or f not in (F.SHIFT_REFERENCE, F.SHIFT_EMBEDDING)):
                shutil.copy2(run / f, d / f)
    if not (with_ref / F.SHIFT_REFERENCE).is_file():
        raise SystemExit(f"{run} has no {F.SHIFT_REFERENCE}: run `python -m trainer final` with this version first")
    return with_ref, without


def _time(run: Path, inputs: list[str], device: str) -> tuple[float, Any]:
    from trainer.predict import predict_files

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run without reference warns on every call
        frame = predict_files(run, inputs, device=device)
    return time.perf_counter() - t0, frame


def measure(run: Path, inputs: list[str], *, repeats: int, device: str) -> dict[str, Any]:
    """Median predict seconds with and without the reference, their ratio, the reference's footprint."""
    import numpy as np

    from trainer.runs import files as F

    with tempfile.TemporaryDirectory() as tmp:
        with_ref, without = _copies(run, Path(tmp))
        _time(with_ref, inputs, device)
        _time(without, inputs, device)
        times: dict[str, list[float]] = {"with": [], "without": []}
        frame = None
        for i in range(repeats):
            order = [("with", with_ref), ("without", without)] if i % 2 == 0 else [("without", without), ("with", with_ref)]
            for name, d in order:
                s, f = _time(d, inputs, device)
                times[name].append(s)
                frame = f if name == "with" else frame
        with np.load(with_ref / F.SHIFT_EMBEDDING, allow_pickle=False) as z:
            shapes = {k: list(z[k].shape) for k in z.files}
        ref_bytes = {f: (with_ref / f).stat().st_size for f in (F.SHIFT_REFERENCE, F.SHIFT_EMBEDDING)}
    med = {k: statistics.median(v) for k, v in times.items()}
    assert frame is not None
    return {"run": str(run), "n_inputs": len(frame), "n_scored": int((frame["status"] == "ok").sum()),
            "n_shifted": int(frame["shifted"].fillna(False).sum()), "repeats": repeats, "device": device,
            "times_s": times, "median_s": med, "ratio": med["with"] / med["without"], "reference_bytes": ref_bytes,
            "embedding_arrays": shapes, "threads": _threads(), "loadavg": list(os.getloadavg())}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def markdown(r: dict[str, Any]) -> str:
    t, m = r["times_s"], r["median_s"]
    size = sum(r["reference_bytes"].values())
    return "\n".join([
        "### Distribution-shift check: predict with and without the reference", "",
        f"`python -m bench.shift` on one final run: {r['n_inputs']} input files ({r['n_scored']} scored, {r['n_shifted']} "
        f"flagged), {r['device']}, {r['threads']} torch threads, load average {r['loadavg'][0]:.1f} at the end; "
        f"the same run copied with and without `shift_reference.json` / `shift_embedding.npz`, called alternately, "
        f"{r['repeats']} timed calls each after one warm-up call each.", "",
        "| predict | median s | calls (s) |", "| --- | ---: | --- |",
        f"| with the reference (hook + check) | {m['with']:.2f} | {', '.join(f'{x:.2f}' for x in t['with'])} |",
        f"| without (a run made before the check) | {m['without']:.2f} | {', '.join(f'{x:.2f}' for x in t['without'])} |", "",
        f"Ratio with / without: **{r['ratio']:.3f}** (limit 1.20). The reference on disk: {size / 1e3:.0f} kB "
        f"({', '.join(f'{k} {v / 1e3:.0f} kB' for k, v in r['reference_bytes'].items())}); its arrays: "
        f"{', '.join(f'{k} {tuple(v)}' for k, v in r['embedding_arrays'].items())}: statistics, no image data.", "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shift", description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a final run made with the shift check")
    ap.add_argument("inputs", nargs="+", help="DICOM files or folders to score (e.g. 500-1000 phantom slices)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per variant (default 3)")
    ap.add_argument("--device", default="cpu", help="predict's device (default cpu)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md's shift section")
    args = ap.parse_args(argv)
    r = measure(args.run, args.inputs, repeats=args.repeats, device=args.device)
    RESULTS.write_text(json.dumps(r, indent=2) + "\n")
    text = markdown(r)
    print(text)
    if not args.no_doc:
        from bench.scale import write_doc_section

        write_doc_section(text, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
