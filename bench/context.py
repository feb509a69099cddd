"""2.5D input cost: streaming batches with and without neighbour context, and what ordering ``images``
by series would change (issue #14). ``python -m bench.context`` (about a minute on 2 cores).

Synthesises a 3d-lesion phantom (series of 5 mm slices), builds its store with small shards so the
store is many shards, then times :meth:`trainer.data.SliceSource.batches` in streaming mode at
``context_slices`` 0 and 1 (samples/s of the batch path alone: no transform, no model), counts the
neighbour rows that were not in the shard group on the device (read from the store one by one), and
computes the same fraction for a store whose rows were ordered by (series, position) instead of by ID.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _outside_group_fraction(shard_of_row: np.ndarray, stacks: np.ndarray, order: np.ndarray, group_shards: int) -> float:
    """Fraction of neighbour rows of ``stacks`` (B, K) whose shard is not in the centre's shard group,
    with shards grouped ``group_shards`` at a time in visiting order ``order`` (a permutation of shards)."""
    group = np.empty(len(order), dtype=np.int64)
    group[order] = np.arange(len(order)) // group_shards
    g = group[shard_of_row[stacks]]
    centre = g[:, stacks.shape[1] // 2][:, None]
    neigh = np.delete(g, stacks.shape[1] // 2, axis=1)
    real = np.delete(stacks, stacks.shape[1] // 2, axis=1) != stacks[:, [stacks.shape[1] // 2]]
    return float(((neigh != centre) & real).sum() / max(1, real.sum()))


def measure(work: Path, patients: int = 60, slices: int = 24, shard: int = 32, seconds: float = 8.0) -> dict[str, Any]:
    import torch

    from trainer.config import load_config
    from trainer.context import context_rows
    from trainer.data import load_dataset

    data, store = work / "data", work / "store.zarr"
    nc = [sys.executable, "-m", "neurocache"]
    if not data.is_dir():
        subprocess.run([*nc, "synth", str(data), "--patients", str(patients), "--slices-per-patient", str(slices),
                        "--size", "256", "--lesions", "3d", "--seed", "3"], check=True, capture_output=True)
    cfg_path = work / "prep.yaml"
    cfg_path.write_text(f"preprocess: {{size: 256, shard_size: {shard}}}\n")
    subprocess.run([*nc, "build", "--data-root", str(data), "--store", str(store), "--config", str(cfg_path)],
                   check=True, capture_output=True)
    out: dict[str, Any] = {"patients": patients, "slices_per_series": slices, "size": 256, "shard_rows": shard}
    for k in (0, 1):
        cfg = load_config(cfg_path, sets=["memory_budget_gb=0", "device=cpu", f"context_slices={k}", "stream_shards=4"])
        src = load_dataset(str(store), cfg, torch.device("cpu"))
        idx = np.arange(len(src.labels))
        seen, t = 0, time.perf_counter()
        epochs = 0
        while time.perf_counter() - t < seconds:
            for _, hu in src.batches(idx, 32, generator=torch.Generator().manual_seed(epochs)):
                seen += len(hu)
            epochs += 1
        out[f"context_{k}_samples_per_s"] = seen / (time.perf_counter() - t)
        if k:
            links = src.links
            stacks = context_rows(torch.as_tensor(idx), links[0], links[1], 1).numpy()
            n_shards = -(-len(idx) // shard)
            rng = np.random.default_rng(0)
            out["neighbours_outside_group_id_order"] = _outside_group_fraction(
                idx // shard, stacks, rng.permutation(n_shards), 4)
            # the same stacks if images were ordered by (series, position): row r would sit at place[r]
            t_ = src.table
            place = np.empty(len(idx), dtype=np.int64)
            place[np.lexsort((t_["position_mm"].to_numpy(), t_["series_key"].to_numpy()))] = idx
            out["neighbours_outside_group_series_order"] = _outside_group_fraction(
                place // shard, stacks, rng.permutation(n_shards), 4)
            out["rows"] = len(idx)
            out["full_context_frac"] = float((stacks[:, 0] != stacks[:, 1]).mean() * 0.5 + (stacks[:, 2] != stacks[:, 1]).mean() * 0.5)
    out["context_cost_ratio"] = out["context_0_samples_per_s"] / out["context_1_samples_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.context", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "context", help="scratch folder")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per streaming figure")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    r = measure(args.work, seconds=args.seconds)
    (ROOT / "bench" / "context_results.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
