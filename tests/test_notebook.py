"""notebooks/eda.ipynb: committed without outputs, executed top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _tiny_runs import tiny_runs

from neurocache.notebook import NotebookError, execute_notebook, set_parameters

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "eda.ipynb"

#: the named tables the notebook prints a title line for, in order
TABLES = [
    "Files by status", "Quarantined and missing, by reason", "Class balance", "Slices per patient",
    "Image sizes (ok slices)", "Transfer syntaxes", "Scanner and protocol mix", "Tissue fractions and HU statistics by class",
    "Outliers (robust |z| > 5", "quality.json metadata outliers", "Skull crop, label 0", "Skull crop, label 1",
    "Leakage check: logistic regression", "Univariate ROC-AUC of each feature", "Runs side by side (2 run(s)",
    "Best cv run",
]


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "STORE = " in params[0].source and "OUTPUTS = " in params[0].source


def test_set_parameters_keeps_comments_and_refuses_unknown_names():
    src = 'STORE = "store.zarr"  # a store\nOUTPUTS = "outputs"\nLEAK_AUC = 0.75'
    out = set_parameters(src, {"STORE": "/data/s.zarr", "LEAK_AUC": 0.5})
    assert out.splitlines() == ["STORE = '/data/s.zarr'  # a store", 'OUTPUTS = "outputs"', "LEAK_AUC = 0.5"]
    with pytest.raises(NotebookError, match="sets no NOPE; it sets: STORE, OUTPUTS, LEAK_AUC"):
        set_parameters(src, {"NOPE": 1})


def _texts(nb) -> tuple[str, list[str], int, list[str]]:
    """(all stdout, text/plain of displays, image/png count, errors)."""
    out, plain, png, errors = [], [], 0, []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.output_type == "stream":
                out.append(o.text)
            elif o.output_type in ("display_data", "execute_result"):
                png += "image/png" in o.data
                if "text/plain" in o.data and "image/png" not in o.data:
                    plain.append(o.data["text/plain"])
            elif o.output_type == "error":
                errors.append(f"{o.ename}: {o.evalue}")
    return "".join(out), plain, png, errors


def test_notebook_runs_top_to_bottom_on_the_test_store(trainer_store, tmp_path, tmp_path_factory):
    runs = tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")
    t0 = time.perf_counter()
    # LEAK_AUC=0 makes any AUC count as a leak: the loud branch must print
    nb = execute_notebook(NOTEBOOK, tmp_path / "eda_executed.ipynb",
                          {"STORE": str(trainer_store), "OUTPUTS": str(runs["cv"].parent), "LEAK_AUC": 0.0}, cwd=tmp_path)
    assert time.perf_counter() - t0 < 120
    assert (tmp_path / "eda_executed.ipynb").is_file()
    stdout, plain, png, errors = _texts(nb)
    assert errors == []
    positions = [stdout.find(f"== {t}") for t in TABLES]
    assert all(p >= 0 for p in positions), [t for t, p in zip(TABLES, positions) if p < 0]
    assert positions == sorted(positions)
    # figures: slices per patient, acquisition mix, HU histograms, tissue boxplots, outlier slices,
    # 2 skull-crop grids, windows, runs plot, OOF histogram
    assert png >= 10
    assert "64 files, 64 ok, 0 quarantined" in stdout  # the trainer store: 16 patients x 4 slices
    assert "!!! LEAKAGE: header metadata alone predicts the label" in stdout
    assert any("n_label1" in t and "positive_fraction" in t for t in plain)  # the class-balance table
    assert any("grouped_cv_roc_auc" in t and "header + HU" in t for t in plain)  # the leakage table
    runs_table = [t for t in plain if runs["cv"].name in t and runs["final"].name in t]
    assert runs_table and "cv_auprc" in runs_table[0]
    # the source notebook is untouched
    assert all(c.outputs == [] for c in nbformat.read(str(NOTEBOOK), as_version=4).cells if c.cell_type == "code")
