"""``neurocache relabel`` on a 100k-row feature table: 1% of the labels changed, timed.

``python -m bench.relabel [--rows 100000] [--frac 0.01] [--work /tmp/bench_relabel] [--repeat 3]``

A small store is built from a synthetic folder (8 patients x 6 slices at 64 px, once per work
folder); a copy of it gets a ``features.parquet`` of ``--rows`` rows made by repeating the real
rows with new unique IDs (the real schema and column types, one status/label mix). The relabel
touches neither ``images`` nor the DICOM files, so their size does not matter. Timed: the whole
:func:`neurocache.relabel.relabel_store` call (open and check the store, read and validate the
CSV, read the table, swap the column, write the table, ``quality.json`` and the attrs), and the
``neurocache relabel`` command as a child process (adds the interpreter's start-up and imports).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _small_store(work: Path) -> Path:
    from neurocache.build import build_store
    from neurocache.config import PrepConfig
    from neurocache.synth import generate_dataset

    store = work / "small.zarr"
    if not (store / "features.parquet").exists():
        generate_dataset(work / "data", patients=8, slices_per_patient=6, size=128, positive_frac=0.4, seed=7)
        build_store(work / "data", store, cfg=PrepConfig(size=64, shard_size=16), workers=1, progress=False)
    return store


def _big_copy(small: Path, dst: Path, rows: int) -> pd.DataFrame:
    """``small`` copied to ``dst`` with a ``rows``-row feature table (unique IDs, the real columns)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(small, dst)
    base = pd.read_parquet(small / "features.parquet")
    big = base.iloc[np.arange(rows) % len(base)].reset_index(drop=True)
    big["ID"] = [f"ID_{i:09d}" for i in range(rows)]
    big.to_parquet(dst / "features.parquet", index=False)
    return big


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--frac", type=float, default=0.01, help="fraction of the rows whose label is flipped")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_relabel"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from neurocache.relabel import relabel_store

    args.work.mkdir(parents=True, exist_ok=True)
    small = _small_store(args.work)
    rng = np.random.default_rng(0)
    k = int(round(args.frac * args.rows))
    times, cli_times, changed = [], [], []
    for _ in range(args.repeat):
        big = _big_copy(small, args.work / "big.zarr", args.rows)
        pick = rng.choice(args.rows, k, replace=False)
        csv = args.work / "corrected.csv"
        pd.DataFrame({"ID": big["ID"].iloc[pick], "Label": 1 - big["label"].iloc[pick].astype(int)}).to_csv(csv, index=False)
        t0 = time.perf_counter()
        res = relabel_store(args.work / "big.zarr", csv)
        times.append(time.perf_counter() - t0)
        changed.append(res["n_changed"])
        big = _big_copy(small, args.work / "big.zarr", args.rows)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "neurocache", "relabel", "--store", str(args.work / "big.zarr"), "--labels", str(csv)],
                       check=True, capture_output=True)
        cli_times.append(time.perf_counter() - t0)
    print(json.dumps({"rows": args.rows, "labels_changed": changed, "relabel_store_s": [round(t, 3) for t in times],
                      "cli_s": [round(t, 3) for t in cli_times],
                      "features_bytes": (args.work / "big.zarr" / "features.parquet").stat().st_size}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
