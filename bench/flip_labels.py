"""Flip a share of a data folder's labels, one slice per chosen patient, for the label-review check (docs/results.md).

``python -m bench.flip_labels DATA --frac 0.025 --seed 707 --truth flipped.csv`` rewrites ``DATA/labels1.csv`` with
the flipped labels and writes the truth (ID, patient, flipped 0/1, the label now in the CSV) apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom


def flip(data: Path, frac: float, seed: int) -> pd.DataFrame:
    """The labels table with ``round(frac * n)`` labels flipped, each in another patient (DICOM PatientID)."""
    df = pd.read_csv(data / "labels1.csv")
    df["patient"] = [pydicom.dcmread(data / "CTs" / f"{i}.dcm", stop_before_pixels=True).PatientID for i in df["ID"]]
    rng = np.random.default_rng(seed)
    n = int(round(frac * len(df)))
    patients = rng.choice(df["patient"].unique(), n, replace=False)
    rows = [rng.choice(df.index[df["patient"] == p]) for p in patients]
    df["flipped"] = 0
    df.loc[rows, "flipped"] = 1
    df.loc[rows, "Label"] = 1 - df.loc[rows, "Label"]
    return df


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.flip_labels", description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a data folder (CTs/, labels1.csv), e.g. from neurocache synth")
    ap.add_argument("--frac", type=float, default=0.025, help="share of the labels to flip (default 0.025)")
    ap.add_argument("--seed", type=int, default=707, help="random seed (default 707)")
    ap.add_argument("--truth", type=Path, required=True, help="CSV to write the flipped IDs to")
    args = ap.parse_args(argv)
    df = flip(args.data, args.frac, args.seed)
    df[["ID", "patient", "flipped", "Label"]].to_csv(args.truth, index=False)
    df[["ID", "Label"]].to_csv(args.data / "labels1.csv", index=False)
    print(f"flipped {int(df['flipped'].sum())} of {len(df)} labels; truth in {args.truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
