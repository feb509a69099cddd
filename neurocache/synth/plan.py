"""The data set's plan: patients, image sizes, stored representation, IDs and lesion runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurocache.synth.seeds import _rng


@dataclass(frozen=True)
class _PatientPlan:
    """Per-patient choices made by the dataset-level RNG."""

    index: int
    patient_id: str
    rows: int  # pixels
    cols: int  # pixels
    signed: bool
    spacing_mm: float
    run_start: int  # first lesion slice (z index)
    run_len: int  # number of lesion slices; 0 => negative patient
    ids: tuple[str, ...]  # one "ID_<hex>" per slice, z order

    def label(self, k: int) -> int:
        """Label (0/1) of slice ``k``."""
        return int(self.run_start <= k < self.run_start + self.run_len)


def _pick(rng: np.random.Generator, n: int, k: int) -> set[int]:
    """``k`` distinct indices out of ``range(n)``."""
    return {int(i) for i in rng.permutation(n)[: max(0, min(k, n))]}


def _run_lengths(rng: np.random.Generator, n_pos: int, total: int, cap: int) -> list[int]:
    """Split ``total`` positive slices over ``n_pos`` patients, each in [1, cap]."""
    share = rng.dirichlet(np.full(n_pos, 4.0)) * (total - n_pos)
    lens = [1 + int(np.floor(s)) for s in share]
    lens = [min(cap, x) for x in lens]
    while sum(lens) < total:
        i = int(rng.choice([j for j, x in enumerate(lens) if x < cap]))
        lens[i] += 1
    while sum(lens) > total:
        i = int(rng.choice([j for j, x in enumerate(lens) if x > 1]))
        lens[i] -= 1
    return lens


def _plan(
    patients: int, slices: int, size: int, positive_frac: float, seed: int
) -> list[_PatientPlan]:
    """Decide per patient: image shape, representation, spacing, lesion run and IDs."""
    rng = _rng("plan", seed)
    n_signed = patients // 2 + (int(rng.integers(0, 2)) if patients % 2 else 0)
    signed = _pick(rng, patients, n_signed)
    n_nonsq = int(round(0.15 * patients))
    if patients >= 4:
        n_nonsq = max(1, n_nonsq)
    nonsquare = _pick(rng, patients, n_nonsq)

    total_pos = int(round(positive_frac * patients * slices))
    if positive_frac > 0:
        total_pos = max(1, total_pos)
    if total_pos > 0:
        n_pos = int(round(positive_frac * 1.6 * patients))
        n_pos = min(patients, max(1, n_pos, -(-total_pos // slices)))
        n_pos = min(n_pos, total_pos)
        pos_patients = sorted(_pick(rng, patients, n_pos))
        lens = dict(zip(pos_patients, _run_lengths(rng, n_pos, total_pos, slices)))
    else:
        lens = {}

    short = max(16, int(round(size * 0.875)))
    seen: set[str] = set()
    plans = []
    for p in range(patients):
        if p in nonsquare:
            rows, cols = (size, short) if rng.random() < 0.5 else (short, size)
        else:
            rows, cols = size, size
        spacing = round(float(rng.uniform(0.40, 0.50)), 4)
        run_len = lens.get(p, 0)
        run_start = int(rng.integers(0, slices - run_len + 1)) if run_len else 0
        ids = []
        for _ in range(slices):
            while True:
                ident = f"ID_{int(rng.integers(0, 16**10)):010x}"
                if ident not in seen:
                    seen.add(ident)
                    ids.append(ident)
                    break
        plans.append(
            _PatientPlan(
                index=p,
                patient_id=f"SYN{p + 1:04d}",
                rows=rows,
                cols=cols,
                signed=p in signed,
                spacing_mm=spacing,
                run_start=run_start,
                run_len=run_len,
                ids=tuple(ids),
            )
        )
    return plans
