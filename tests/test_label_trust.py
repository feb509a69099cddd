"""Trusting the labels (issue 30): `trainer cv` writes label_review.csv and a report section of the most
suspect labels, records the labels it used (store.json labels_hash), and `trainer final` refuses a store
relabelled since."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _tiny_runs import TINY, tiny_runs

from neurocache.errors import UserError
from neurocache.relabel import labels_hash
from neurocache.store import open_store
from trainer.evaluation.label_review import REVIEW_COLUMNS, label_review
from trainer.runs import files as F


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


def test_cv_writes_the_label_review_of_its_oof_predictions(runs):
    cv = runs["cv"]
    review = pd.read_csv(cv / F.LABEL_REVIEW, dtype={"ID": str, "group": str})
    oof = pd.read_csv(cv / F.CV_OOF_PREDICTIONS, dtype={"ID": str})
    split = pd.read_csv(cv / F.SPLIT, dtype={"ID": str, "group": str}).set_index("ID")
    assert list(review.columns) == list(REVIEW_COLUMNS) and sorted(review["ID"]) == sorted(oof["ID"])
    direct = label_review(oof["ID"], split.loc[oof["ID"], "group"], oof["label"], oof["prob"])
    pd.testing.assert_frame_equal(review, direct, check_dtype=False)
    # the report shows the top gallery_n, each between its series neighbours, with label, OOF prob and suggestion
    page = (cv / F.REPORT).read_text()
    section = page[page.index('<section id="label-review">'):]
    section = section[: section.index("</section>")]
    top = review.head(TINY["gallery_n"])
    for r in top.itertuples():
        assert r.ID in section and f"OOF p = {r.prob:.3f}" in section
        assert f"given label <b>{r.label}</b>" in section and f"suggested label <b>{r.suggested_label}</b>" in section
    assert section.count('class="slice"') == len(top)  # every top slice drawn
    assert section.count("<img") + section.count('class="noimg"') == 3 * len(top)  # previous, slice, next
    assert "label review:" in section and "neurocache relabel" in section
    final_page = (runs["final"] / F.REPORT).read_text()  # a final run shows its cv run's review
    assert 'id="label-review-cases"' in final_page


def test_write_label_review_returns_the_cv_line(tmp_path):
    from trainer.cv import write_label_review

    rng = np.random.default_rng(0)
    oof = pd.DataFrame({"ID": [f"s{i}" for i in range(40)], "label": np.r_[np.zeros(30, int), np.ones(10, int)],
                        "prob": rng.random(40)})
    split = pd.DataFrame({"ID": oof["ID"], "group": [f"p{i // 4}" for i in range(40)]})
    line = write_label_review(tmp_path, split, oof)
    assert line.startswith("label review: ") and F.LABEL_REVIEW in line
    assert pd.read_csv(tmp_path / F.LABEL_REVIEW)["group"].str.startswith("p").all()
    assert write_label_review(tmp_path / "x", split, oof.assign(label=0)) is None  # one class: nothing to rank


def test_cv_records_its_labels_and_final_refuses_a_relabelled_store(runs, tmp_path, capsys):
    from trainer.cli import main
    from trainer.final import check_labels, read_cv_run

    cv_store = json.loads((runs["cv"] / F.STORE).read_text())
    assert cv_store["labels_hash"] == labels_hash(open_store(runs["store"]).ok_rows())
    store = tmp_path / "relabelled.zarr"
    shutil.copytree(runs["store"], store)  # the session's store stays as it is
    oof = pd.read_csv(runs["cv"] / F.CV_OOF_PREDICTIONS, dtype={"ID": str})
    flip = oof.iloc[0]
    (tmp_path / "fix.csv").write_text(f"ID,Label\n{flip['ID']},{1 - int(flip['label'])}\n")
    assert main_neurocache(["relabel", "--store", str(store), "--labels", str(tmp_path / "fix.csv")]) == 0
    new_hash = labels_hash(open_store(store).ok_rows())
    assert new_hash != cv_store["labels_hash"]
    out = tmp_path / "out"
    assert main(["final", "--cv-run", str(runs["cv"]), "--store", str(store), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert cv_store["labels_hash"] in err and new_hash in err and "relabelled after this cv run" in err
    assert "run `trainer cv` again" in err and not out.exists()  # refused before any run folder
    # a cv run made before labels_hash existed is not checked
    cv = read_cv_run(runs["cv"])
    old = type(cv)(**{**cv.__dict__, "store": {k: v for k, v in cv.store.items() if k != "labels_hash"}})
    check_labels(old, open_store(store).ok_rows(), str(store))
    with pytest.raises(UserError, match="relabelled"):
        check_labels(cv, open_store(store).ok_rows(), str(store))
    check_labels(cv, open_store(runs["store"]).ok_rows(), str(runs["store"]))  # the same labels pass


def main_neurocache(argv: list[str]) -> int:
    from neurocache.cli import main

    return main(argv)
