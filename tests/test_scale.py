"""The in-memory steps that see every file stay linear: operation counts at 2k vs 20k entries.

No wall time of a command: each step runs on an in-memory input of ``n`` entries under a profiler
that counts every Python and C function call (deterministic, unaffected by a loaded machine). A
step that is linear, or vectorised, makes at most ~10x the calls at 10x the entries; one with a
Python step per row *inside* a per-row loop (``p not in set(list)``, a table lookup per duplicate)
makes ~100x. The count is capped, so a quadratic step fails fast instead of running for minutes.
CPU time (``time.process_time``, best of 3) is compared too, with a wide margin, for quadratic work
hidden inside one C call.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from neurocache.build.labels import assemble as _assemble
from neurocache.config import PrepConfig
from neurocache.inputs import Inputs
from neurocache.preprocess import ROW_COLUMNS, empty_row
from neurocache.quality import quality_report
from neurocache.validate import structure

SMALL, LARGE = 2_000, 20_000
#: Calls at LARGE may be at most this multiple of the calls at SMALL (linear: <= 10).
CALL_RATIO = 13.0
#: Calls per entry at LARGE (these steps make 19-35; a pandas lookup per row or a table scan per
#: duplicate, as the table assembly once did, makes ~660).
PER_ENTRY = 80.0
#: CPU time at LARGE may be at most this multiple of the time at SMALL (linear: ~10; quadratic: ~100).
TIME_RATIO = 35.0


class _TooMany(Exception):
    pass


def count_calls(fn: Callable[[], Any], cap: int) -> int:
    """Python + C function calls made by ``fn()``; raises _TooMany past ``cap``."""
    n = 0

    def prof(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        nonlocal n
        if event in ("call", "c_call"):
            n += 1
            if n > cap:
                raise _TooMany

    sys.setprofile(prof)
    try:
        fn()
    except _TooMany:
        pass
    finally:
        sys.setprofile(None)
    return n


def cpu_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _inputs(n: int, seed: int = 0) -> tuple[Inputs, pd.DataFrame]:
    """n files (10% a second file of the same ID, 5% without label), labels with 5% without file, and
    the staged rows the decode phase would return (10% quarantined), in a shuffled order."""
    rng = np.random.default_rng(seed)
    ids = [f"ID_{i:07d}" for i in range(n)]
    names = [f"{i}.dcm" for i in ids] + [f"{ids[d]}.DCM" for d in rng.choice(n, n // 10, replace=False)]
    names.sort(key=lambda f: (Path(f).stem, f))
    label_ids = [i for i in ids if rng.random() > 0.05] + [f"ID_X{j}" for j in range(n // 20)]
    labels = pd.DataFrame({"ID": label_ids, "Label": rng.integers(0, 2, len(label_ids)),
                           "site": [f"s{k % 7}" for k in range(len(label_ids))]})
    rows = []
    for k, f in enumerate(names):
        r = empty_row()
        if rng.random() < 0.1:
            r.update(status="quarantined", reason="not_dicom")
        r.update(file=f, input_index=k, content_hash=f"{k % (n // 2):064x}", rows=512, cols=512,
                 patient_key=f"p{k % 500}", hu_p50=float(rng.normal(30, 5)))
        rows.append(r)
    staged = pd.DataFrame(rows, columns=[*ROW_COLUMNS, "file", "input_index"]).sample(frac=1, random_state=seed)
    cts = Path("/nonexistent/CTs")
    inputs = Inputs(data_root=cts.parent, cts_dir=cts, labels_path=cts.parent / "labels1.csv", labels=labels,
                    files=[cts / f for f in names])
    return inputs, staged


def _steps() -> dict[str, Callable[[int], Callable[[], Any]]]:
    def validate(n: int) -> Callable[[], Any]:
        inputs, _ = _inputs(n)
        flags = [i % 50 != 0 for i in range(len(inputs.files))]
        return lambda: structure(inputs, flags)

    def assemble(n: int) -> Callable[[], Any]:
        inputs, staged = _inputs(n)
        return lambda: _assemble(inputs, staged.copy())

    def quality(n: int) -> Callable[[], Any]:
        inputs, staged = _inputs(n)
        table, cfg = _assemble(inputs, staged), PrepConfig()
        return lambda: quality_report(table, cfg)

    return {"validate": validate, "assemble": assemble, "quality": quality}


@pytest.mark.parametrize("step", sorted(_steps()))
def test_step_is_linear_in_entries(step: str) -> None:
    make = _steps()[step]
    small, large = make(SMALL), make(LARGE)
    c_small = count_calls(small, cap=10**8)
    c_large = count_calls(large, cap=int(CALL_RATIO * c_small) + 1)
    assert c_large <= CALL_RATIO * c_small, (
        f"{step}: {c_large} calls at {LARGE} entries vs {c_small} at {SMALL} "
        f"(more than {CALL_RATIO}x: a per-entry step inside a per-entry loop?)"
    )
    assert c_large <= PER_ENTRY * LARGE, f"{step}: {c_large / LARGE:.0f} calls per entry (a Python step per row?)"
    t_small, t_large = cpu_seconds(small), cpu_seconds(large)
    assert t_large <= TIME_RATIO * max(t_small, 1e-3), (
        f"{step}: {t_large:.3f} s CPU at {LARGE} entries vs {t_small:.3f} s at {SMALL}"
    )


def test_counter_catches_a_quadratic_step() -> None:
    """The harness itself: the old ``validate`` comprehension (a set rebuilt per file) fails it."""
    def quadratic(n: int) -> Callable[[], Any]:
        files = [Path(f"/x/ID_{i}.dcm") for i in range(n)]
        dicom = files[::2]
        return lambda: [p.name for p in files if p not in set(dicom)]

    c_small = count_calls(quadratic(200), cap=10**8)
    c_large = count_calls(quadratic(2000), cap=int(CALL_RATIO * c_small) + 1)
    assert c_large > CALL_RATIO * c_small
