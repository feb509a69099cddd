"""``make bench-saliency``: what ``predict --saliency`` costs beside ``predict`` (issue: at most 3x on 1,000 slices).

``python -m bench.saliency --run FINAL_RUN [--data DIR] [--n 1000] [--repeats 2]``

Both commands score the same ``--n`` DICOM files (the first n of ``DIR/CTs``, or of a phantom set made
with ``neurocache synth`` in ``--work`` when no ``--data`` is given) with the same final run on the
CPU, in one process, alternating (plain, saliency) ``--repeats`` times after a warm-up on 16 files;
each time covers :func:`trainer.predict.predict_files` and writing its CSV (and, with saliency, the
maps, the re-decoded slices and the PNGs). Reported: median seconds of each, their ratio, and the
saliency settings used (the run config's, or ``--method`` / ``--layer`` / ``--peak`` / ``--locate``). Writes
``bench/saliency_results.json`` and the "Saliency" section of ``docs/benchmarks.md`` (``make bench`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.scale import current_block, write_doc_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "saliency_results.json"
BEGIN, END = "<!-- bench-saliency:begin -->", "<!-- bench-saliency:end -->"


def _inputs(data: Path | None, work: Path, n: int) -> list[Path]:
    """The first ``n`` files of ``data/CTs`` (a phantom set of about ``n`` slices made in ``work`` when None)."""
    if data is None:
        from neurocache.synth import generate_dataset

        data = work / "data"
        if len(list((data / "CTs").glob("*.dcm"))) < n:
            generate_dataset(data, patients=-(-n // 6), slices_per_patient=6, seed=2026)
    files = sorted((data / "CTs").glob("*.dcm"))[:n]
    if len(files) < n:
        raise SystemExit(f"{data}/CTs holds {len(files)} files, fewer than --n {n}")
    return files


def time_both(run: Path, files: list[Path], work: Path, repeats: int, sal: dict[str, str | None]) -> dict[str, Any]:
    """Median seconds of predict with and without saliency over ``repeats`` alternating pairs."""
    from trainer.predict import predict_files, write_predictions

    def once(saliency: bool) -> float:
        out = work / ("sal" if saliency else "plain")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        kw: dict[str, Any] = {"saliency": out / "png", "saliency_method": sal["method"],
                              "saliency_layer": sal["layer"], "saliency_peak": sal["peak"],
                              "saliency_locate": sal["locate"]} if saliency else {}
        write_predictions(predict_files(run, files, device="cpu", **kw), out / "pred.csv")
        return time.perf_counter() - t0

    once(False), once(True)  # warm-up on everything but the files: imports, MONAI, the colormap
    plain, with_sal = [], []
    for _ in range(repeats):
        plain.append(once(False))
        with_sal.append(once(True))
    p, s = statistics.median(plain), statistics.median(with_sal)
    png_bytes = sum(f.stat().st_size for f in (work / "sal" / "png").glob("*.png"))
    return {"plain_s": plain, "saliency_s": with_sal, "plain_median_s": p, "saliency_median_s": s, "ratio": s / p,
            "png_mb": png_bytes / 1e6}


def markdown(r: dict[str, Any]) -> str:
    """The docs section: machine, sizes, the two medians and the ratio."""
    m = r["machine"]
    lines = [
        "## Saliency", "",
        f"`python -m bench.saliency` (`make bench-saliency`), {r['date']}: `trainer predict` on {r['n']} phantom slices "
        f"(512 px) with one final run (`{r['run_name']}`: {r['out_size']} px input, {r['precision']}), CPU, "
        f"{m['torch_threads']} torch threads on {m['cpus']} cores ({m['cpu']}), load average {m['loadavg'][0]:.1f} at the start; "
        f"median of {r['repeats']} alternating pairs after a warm-up.", "",
        "| predict | seconds | ms / slice |", "| --- | ---: | ---: |",
        f"| without `--saliency` | {r['plain_median_s']:.1f} | {1000 * r['plain_median_s'] / r['n']:.1f} |",
        f"| with `--saliency` ({r['method']}, {r['layer']}, peak {r['peak']}, {r.get('locate', 'max')}; {r['n']} PNGs, {r['png_mb']:.0f} MB) | "
        f"{r['saliency_median_s']:.1f} | "
        f"{1000 * r['saliency_median_s'] / r['n']:.1f} |",
        f"| ratio | **{r['ratio']:.2f}x** (issue: at most 3x) | |", "",
        "Each time covers reading, preprocessing, scoring and writing the CSV; with `--saliency` also the Grad-CAM "
        "forward and backward pass, the slice decoded again at its own size, the map resampled onto it and a palette "
        "PNG (compress level 1) written by a few threads while the next batch is scored. The times of every pair are "
        "in `bench/saliency_results.json`.", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.saliency", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a final run folder")
    p.add_argument("--data", type=Path, default=None, help="a data folder with CTs/ (default: synthesize one in --work)")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "saliency")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--method", default=None)
    p.add_argument("--layer", default=None)
    p.add_argument("--peak", default=None)
    p.add_argument("--locate", default=None)
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    a = p.parse_args(argv)
    from trainer.predict import load_final_run

    if a.threads:
        torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    files = _inputs(a.data, a.work, a.n)
    cfg = load_final_run(a.run).config
    sal = {"method": a.method, "layer": a.layer, "peak": a.peak, "locate": a.locate}
    r: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "run_name": a.run.name, "n": len(files), "repeats": a.repeats,
        "out_size": cfg.out_size, "precision": cfg.precision or "fp32", "method": a.method or cfg.saliency_method,
        "layer": a.layer or cfg.saliency_layer, "peak": a.peak or cfg.saliency_peak,
        "locate": a.locate or cfg.saliency_locate,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())},
        **time_both(a.run, files, a.work, a.repeats, sal),
    }
    RESULTS.write_text(json.dumps(r, indent=2))
    text = markdown(r)
    print(text)
    if not a.no_doc:
        write_doc_section(text, BEGIN, END)
    return 0


def kept_section() -> str:
    """This module's section of docs/benchmarks.md with its markers ('' when none), for ``bench.run`` to keep."""
    return current_block(BEGIN, END)


if __name__ == "__main__":
    raise SystemExit(main())
