"""``trainer threshold`` on a synthetic cv run folder of 5,000 out-of-fold rows, timed.

``python -m bench.threshold [--rows 5000] [--slices 5] [--work /tmp/bench_threshold] [--repeat 3]``

The run folder is made with the project's own writers from synthetic OOF predictions (``--rows``
rows, ``--slices`` slices per patient, 5 folds, a patient effect, a third of the patients positive;
the default config: ``n_boot`` 1000, ``threshold_candidates: oof``, ``group_by: patient``, so no
store is read). Timed: :func:`trainer.selection.choose` (tables, selection, OOF evaluation) with
``max_f1`` and with ``sens_target`` 0.85 at ``sens_confidence`` 0.95, and the whole command as a
child process (the interpreter's start-up and imports, reading the run, the selection, every
file written, ``report.html`` without a store). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _run_folder(work: Path, rows: int, slices: int) -> Path:
    from trainer.config import TrainConfig
    from trainer.runs import files as F
    from trainer.runs.results import CVResult, FoldResult
    from trainer.runs.write import write_config, write_json
    from trainer.selection import choose, result_fields, write_cv_metrics, write_operating_point

    rng = np.random.default_rng(0)
    g = np.arange(rows) // slices
    n_p = int(g.max()) + 1
    y = ((rng.random(n_p) < 0.35)[g] & (rng.random(rows) < 0.7)).astype(int)
    z = rng.normal(0, 0.8, n_p)[g] + rng.normal(0, 1, rows) + 2.2 * y - 1.2
    ids = [f"ID_{i:07d}" for i in range(rows)]
    fold = g % 5
    oof = pd.DataFrame({"ID": ids, "label": y, "prob": 1 / (1 + np.exp(-z)), "prob_raw": 1 / (1 + np.exp(-z)), "fold": fold})
    split = pd.DataFrame({"ID": ids, "group": [f"P{k}" for k in g], "label": y, "test": False, "fold": fold})
    run = work / "run_20260101_000000_cv"
    run.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig()
    write_config(run, cfg)
    write_json(run / F.RUN_ARGS, {"argv": ["bench.threshold"]})
    write_json(run / F.STORE, {"path": str(work / "no_store.zarr"), "fingerprint": "none", "n_ok": rows})
    split.to_csv(run / F.SPLIT, index=False)
    oof.to_csv(run / F.CV_OOF_PREDICTIONS, index=False)
    folds = [FoldResult(fold=k, train_auc=0.95, best_val_auprc=0.8) for k in range(5)]
    op = choose(oof, split, cfg, train_auc={k: 0.95 for k in range(5)})
    write_operating_point(run, op, oof, cfg, command="cv")
    write_cv_metrics(run, CVResult(k_folds=5, early_stopping="inner_holdout", calibration="platt", per_fold=folds,
                                   best_val_auprc_mean=0.8, best_val_auprc_std=0.0, oof_auc_mean=0.9, oof_auc_std=0.01,
                                   oof_ap_mean=0.8, oof_ap_std=0.01, n_train_pool=rows, n_test=0,
                                   **result_fields(op, [])))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--slices", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_threshold"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from trainer.config import TrainConfig
    from trainer.selection import choose

    run = _run_folder(args.work, args.rows, args.slices)
    oof = pd.read_csv(run / "cv_oof_predictions.csv", dtype={"ID": str})
    split = pd.read_csv(run / "split.csv", dtype={"ID": str, "group": str})
    policies = {"max_f1": TrainConfig(),
                "sens_confidence": TrainConfig(threshold_strategy="sens_target", sens_target=0.85, sens_confidence=0.95)}
    out: dict[str, object] = {"rows": args.rows, "patients": int(split["group"].nunique())}
    for name, cfg in policies.items():
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            sel = choose(oof, split, cfg, train_auc={k: 0.95 for k in range(5)}).selection
            times.append(time.perf_counter() - t)
        out[f"choose_{name}_s"] = [round(x, 3) for x in times]
        out[f"threshold_{name}"] = sel["threshold"]
    cmd = [sys.executable, "-m", "trainer", "threshold", "--cv-run", str(run), "--threshold-strategy", "sens_target",
           "--sens-target", "0.85", "--sens-confidence", "0.95"]
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    out["command_s"] = [round(x, 2) for x in times]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
