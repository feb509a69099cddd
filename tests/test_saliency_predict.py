"""``predict --saliency DIR``: one PNG per scored slice, ``peak_row`` / ``peak_col`` inside the image, the peak
on a planted lesion for a model whose saliency is known, context_slices > 0, and nothing new without the flag."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from _tiny_runs import tiny_runs
from PIL import Image

from neurocache.store import open_store
from trainer.cli import main as trainer_main
from trainer.predict import PREDICT_COLUMNS, predict_files
from trainer.transforms import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def runs(trainer_store, tmp_path_factory) -> dict[str, Path]:
    return tiny_runs(trainer_store, tmp_path_factory.getbasetemp() / "eval_runs")


def _sources(store: Path) -> dict[str, Path]:
    st = open_store(store)
    src = st.attrs["source"]
    cts = Path(src["data_root"]) / src["cts"]
    return {i: cts / f for i, f in zip(st.features["ID"].astype(str), st.features["file"].astype(str))}


def _test_files(runs: dict[str, Path], n: int) -> list[Path]:
    test = pd.read_csv(runs["final"] / "test_predictions.csv", dtype={"ID": str})
    src = _sources(runs["store"])
    return [src[i] for i in test["ID"].head(n)]


def test_one_png_per_scored_slice_and_peaks_inside_the_image(runs, tmp_path):
    files = _test_files(runs, 6)
    (tmp_path / "notes.txt").write_text("not a DICOM file\n")
    out, pngs = tmp_path / "pred.csv", tmp_path / "sal"
    rc = trainer_main(["predict", "--run", str(runs["final"]), *map(str, files), str(tmp_path / "notes.txt"),
                       "--out", str(out), "--quiet", "--device", "cpu", "--batch-size", "4", "--saliency", str(pngs)])
    assert rc == 0
    got = pd.read_csv(out, dtype={"ID": str}, keep_default_na=False, na_values={"peak_row": [""], "peak_col": [""]})
    assert list(got.columns) == [*PREDICT_COLUMNS, "peak_row", "peak_col"]
    ok = got[got["status"] == "ok"]
    assert len(ok) == 6 and sorted(p.stem for p in pngs.glob("*.png")) == sorted(ok["ID"])
    bad = got[got["ID"] == "notes"].iloc[0]
    assert bad["status"] == "quarantined" and np.isnan(bad["peak_row"]) and np.isnan(bad["peak_col"])
    for f, (_, r) in zip(files, ok.iterrows()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert 0 <= r["peak_row"] < ds.Rows and 0 <= r["peak_col"] < ds.Columns
        with Image.open(pngs / f"{r['ID']}.png") as im:  # the DICOM's own size
            assert im.size == (ds.Columns, ds.Rows) and im.mode == "P"  # a palette PNG (overlay.palette)
    # the same probabilities and shift scores as without the flag (the saliency copy of the model has no shift hook)
    plain = predict_files(runs["final"], files, device="cpu")
    np.testing.assert_allclose(ok["prob"].to_numpy(float), plain["prob"].to_numpy(float), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ok["shift_score"].to_numpy(float), plain["shift_score"].to_numpy(float), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("option", "value"), [("saliency_peak", "skull"), ("saliency_locate", "mean"),
                                             ("saliency_method", "cam")])
def test_a_bad_saliency_override_is_a_config_error_naming_the_key(runs, tmp_path, option, value):
    from neurocache.config import ConfigError

    with pytest.raises(ConfigError, match=f"{option}={value!r} is invalid; allowed values"):
        predict_files(runs["final"], _test_files(runs, 1), device="cpu", saliency=tmp_path / "sal", **{option: value})


def test_without_the_flag_no_saliency_code_runs(runs, tmp_path, monkeypatch):
    import trainer.saliency.cam as cam
    import trainer.saliency.writer as writer

    def boom(*a, **k):
        raise AssertionError("saliency code ran without --saliency")

    monkeypatch.setattr(writer.SaliencyWriter, "__init__", boom)
    monkeypatch.setattr(cam.SaliencyModel, "__call__", boom)
    frame = predict_files(runs["final"], _test_files(runs, 3), device="cpu")
    assert list(frame.columns) == list(PREDICT_COLUMNS)


def test_context_slices_give_the_centre_slices_map(runs, tmp_path):
    """One window and k = 1 make the same 3 input channels as k = 0, so the tiny final run's weights serve
    for a 2.5D card: the maps come from the (previous, slice, next) stacks."""
    run = shutil.copytree(runs["final"], tmp_path / "run_k1")
    card = json.loads((run / "model_card.json").read_text())
    card["config"]["context_slices"] = 1
    (run / "model_card.json").write_text(json.dumps(card))
    series = sorted(_sources(runs["store"]).values())[:4]
    frame = predict_files(run, series, device="cpu", saliency=tmp_path / "sal")
    assert list(frame.columns) == [*PREDICT_COLUMNS, "neighbours_missing", "peak_row", "peak_col"]
    assert (frame["status"] == "ok").all() and frame["peak_row"].notna().all()
    assert len(list((tmp_path / "sal").glob("*.png"))) == len(series)


# ---- a model whose saliency is known --------------------------------------------------------------
#: Two windows (HU): a narrow one around the planted lesion's 90 HU, and a bone window subtracted from it.
_WINDOWS = [[90.0, 20.0], [550.0, 900.0]]


def _known_model() -> torch.nn.Module:
    """A ResNet18 whose every stage passes channel 0 through: conv1 = the 7 x 7 mean of (lesion window
    - 3 x bone window) in input units, identity batch norms, zero residual branches in stage 1, a 3 x 3
    stride-2 mean of channel 0 as the first branch of stages 2-4 (zero 1x1 downsamples: their stride-2
    sampling would skip the lesion), and a head reading channel 0. Its Grad-CAM map at ``layer1`` is that channel:
    large on a disc of about 90 HU, small on thin skull edges and everywhere else."""
    from trainer.model import build_model

    m = build_model(weights="none", dropout=0.0, in_channels=3, pool="max")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.zero_()
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0), mod.bias.zero_(), mod.running_mean.zero_(), mod.running_var.fill_(1.0)
        # channel k (normalised) = (v_k - mean_k) / std_k; conv1 out = mean over 7x7 of v_0 - 3 v_1 (+ bias below)
        m.conv1.weight[0, 0] = IMAGENET_STD[0] / 49.0
        m.conv1.weight[0, 1] = -3.0 * IMAGENET_STD[1] / 49.0
        m.bn1.bias[0] = IMAGENET_MEAN[0] - 3.0 * IMAGENET_MEAN[1]
        for stage in (m.layer2, m.layer3, m.layer4):  # the first block halves the map: a 3 x 3 mean, stride 2, then the centre
            stage[0].conv1.weight[0, 0] = 1.0 / 9.0
            stage[0].conv2.weight[0, 0, 1, 1] = 1.0
        m.fc[1].weight.zero_(), m.fc[1].bias.fill_(-0.1)
        m.fc[1].weight[0, 0] = 1.0
    return m.eval()


def _planted_slice(template: Path, dst: Path, lesion: tuple[int, int]) -> Path:
    """A CT file shaped like ``template`` (128 px): an off-centre elliptical head (1000 HU skull 4 px thick,
    30 HU brain) in air and a 90 HU disc of radius 8 px centred on ``lesion`` (row, col)."""
    ds = pydicom.dcmread(template)
    rows, cols = int(ds.Rows), int(ds.Columns)
    rr, cc = np.mgrid[:rows, :cols].astype(np.float64)
    q = np.sqrt(((rr - 60) / 45.0) ** 2 + ((cc - 70) / 55.0) ** 2)
    hu = np.full((rows, cols), -1000.0)
    hu[q <= 1.0] = 1000.0
    hu[q <= 1.0 - 4.0 / 45.0] = 30.0
    hu[np.hypot(rr - lesion[0], cc - lesion[1]) <= 8.0] = 90.0
    slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
    dtype = np.int16 if int(ds.PixelRepresentation) else np.uint16
    ds.PixelData = np.rint((hu - intercept) / slope).astype(dtype).tobytes()
    ds.save_as(dst)
    return dst


def test_the_peak_lands_on_a_planted_lesion(runs, tmp_path):
    run = shutil.copytree(runs["final"], tmp_path / "known")
    card = json.loads((run / "model_card.json").read_text())
    card["config"].update(windows=_WINDOWS, out_size=64, saliency_layer="layer1", saliency_method="gradcam")
    (run / "model_card.json").write_text(json.dumps(card))
    torch.save(_known_model().state_dict(), run / card.get("weights_file", "final_model.pt"))
    template = _test_files(runs, 1)[0]
    spots = [(45, 85), (75, 50), (60, 100)]
    files = [_planted_slice(template, tmp_path / f"planted_{i}.dcm", s) for i, s in enumerate(spots)]
    frame = predict_files(run, files, device="cpu", saliency=tmp_path / "sal")
    assert (frame["status"] == "ok").all()
    for (r, c), (_, row) in zip(spots, frame.iterrows()):
        assert np.hypot(row["peak_row"] - r, row["peak_col"] - c) <= 6.0, (row["peak_row"], row["peak_col"], r, c)
