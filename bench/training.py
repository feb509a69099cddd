"""Training-step speed by precision and memory format: ``python -m bench.training`` (part of ``make bench``).

For each setting (fp32 / fp32 + channels_last / bf16 / bf16 + channels_last / bf16 + channels_last +
``torch.compile``) and each input size (128 and 224 px), the trainer's own step is timed: the batch
transform (window, resize, random affine, normalise) of an int16 HU batch already in memory, the
ResNet18 forward and backward under :func:`trainer.precision.autocast`, the AdamW step. Reported:
training images/s (median over timed steps, after warm-up steps that include compilation, whose
seconds are reported apart) and evaluation images/s (``inference_mode``, batch 128). Writes
``bench/training_results.json`` and prints a markdown table; ``docs/benchmarks.md`` carries it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from trainer.config_parts import AugConfig
from trainer.model import build_model
from trainer.precision import autocast, cpu_flags, native_bf16
from trainer.transforms import BatchTransform

RESULTS = Path(__file__).with_name("training_results.json")
BEGIN, END = "<!-- bench-training:begin -->", "<!-- bench-training:end -->"

#: (name, precision, channels_last, compile)
SETTINGS: tuple[tuple[str, str, bool, bool], ...] = (
    ("fp32", "fp32", False, False),
    ("fp32 + channels_last", "fp32", True, False),
    ("bf16", "bf16", False, False),
    ("bf16 + channels_last", "bf16", True, False),
    ("bf16 + channels_last + compile", "bf16", True, True),
)


def _hu(batch: int, size: int, seed: int) -> torch.Tensor:
    """int16 (batch, size, size) HU: air, a brain-like disc and noise (content does not change the step's cost)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2
    base = torch.where(disc, 35.0, -1024.0)
    return (base + 10 * torch.randn(batch, size, size, generator=g)).to(torch.int16)


def time_setting(precision: str, channels_last: bool, compile: bool, size: int, *, batch: int = 16,
                 warmup: int = 3, steps: int = 8, eval_batch: int = 128, eval_steps: int = 3) -> dict[str, Any]:
    """Train and eval images/s of one setting at ``size`` px (the store's size is the model input, as in the demo)."""
    dev = torch.device("cpu")
    torch.manual_seed(0)
    tf = BatchTransform(windows=((40.0, 80.0), (80.0, 200.0), (40.0, 40.0)), out_size=size, aug=AugConfig(),
                        channels_last=channels_last)
    model = build_model(weights="none", dropout=0.3, in_channels=tf.channels, pool="max")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=7e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)
    hu, y = _hu(batch, size, 1), (torch.arange(batch) % 2).float()
    times = []
    t_start = time.perf_counter()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x = tf(hu, train=True, generator=gen)
        with autocast(dev, precision):
            loss = loss_fn(run(x).float().squeeze(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if i == warmup - 1:
            warm_s = time.perf_counter() - t_start
    model.eval()
    hu_e = _hu(eval_batch, size, 2)
    etimes = []
    with torch.inference_mode():
        for i in range(1 + eval_steps):  # one warm-up batch (compiles the eval graph with compile)
            t0 = time.perf_counter()
            with autocast(dev, precision):
                run(tf(hu_e, train=False)).float()
            if i:
                etimes.append(time.perf_counter() - t0)
    return {"train_img_s": batch / statistics.median(times[warmup:]), "eval_img_s": eval_batch / statistics.median(etimes),
            "warmup_s": warm_s, "batch": batch, "eval_batch": eval_batch, "steps": steps}


def machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_flags": sorted(f for f in flags if "bf16" in f), "native_bf16": native_bf16(flags)}


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"### Training step by precision (CPU: torch {m['torch']}, {m['threads']} threads, capability {m['capability']}, "
             f"bf16 units: {', '.join(m['bf16_flags']) or 'none'})", "",
             "ResNet18 (3 windows, max pool), AdamW, batch 16, the trainer's batch transform included; median of timed "
             "steps after warm-up (`python -m bench.training`).", "",
             "| setting | " + " | ".join(f"train img/s {s} px | vs fp32 | eval img/s {s} px" for s in r["sizes"]) + " |",
             "| --- |" + " ---: | ---: | ---: |" * len(r["sizes"])]
    for name, *_ in SETTINGS:
        if name not in r["results"][str(r["sizes"][0])]:
            continue
        cells = []
        for s in r["sizes"]:
            v, base = r["results"][str(s)][name], r["results"][str(s)]["fp32"]
            warm = f" (warm-up {v['warmup_s']:.0f} s)" if "compile" in name else ""
            cells.append(f"{v['train_img_s']:.0f}{warm} | {v['train_img_s'] / base['train_img_s']:.2f}x | {v['eval_img_s']:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def notes(r: dict[str, Any]) -> str:
    """What this run's table says for the trainer's defaults (amp, channels_last, compile)."""
    out = []
    for size in r["sizes"]:
        res = r["results"][str(size)]
        eager, comp = res.get("bf16 + channels_last"), res.get("bf16 + channels_last + compile")
        best = max(res, key=lambda k: res[k]["train_img_s"])
        line = f"- {size} px: fastest training step: {best} ({res[best]['train_img_s'] / res['fp32']['train_img_s']:.2f}x fp32)"
        if eager and comp:
            line += (f"; compile vs eager bf16 + channels_last: {comp['train_img_s'] / eager['train_img_s']:.2f}x per step after "
                     f"a {comp['warmup_s']:.0f} s warm-up, paid again for every new model and stage (each fold, then final)")
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="input sides, pixels (default: 128 224)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per setting (default 8)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile setting (its warm-up takes minutes)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md's training-step section")
    args = ap.parse_args(argv)
    res: dict[str, Any] = {"machine": machine(), "sizes": args.sizes, "results": {}}
    for s in args.sizes:
        res["results"][str(s)] = {}
        for name, prec, cl, comp in SETTINGS:
            if comp and args.no_compile:
                continue
            res["results"][str(s)][name] = time_setting(prec, cl, comp, s, steps=args.steps)
            print(f"{s} px {name}: {res['results'][str(s)][name]}", flush=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    text = markdown(res)
    print(text + "\n" + notes(res))
    if not args.no_doc:
        from bench.scale import write_doc_section

        write_doc_section(text + "\n" + notes(res), BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
