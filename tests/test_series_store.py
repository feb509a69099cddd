"""Series geometry in a built store: columns, links along z, quality counts, a quarantined neighbour."""

from __future__ import annotations

import numpy as np
import pandas as pd

from neurocache import SCHEMA_VERSION
from neurocache.geometry import GEOMETRY_COLUMNS
from neurocache.store import open_store
from tests.conftest import _store


def _check_chains(ok: pd.DataFrame, spacing: float = 5.0) -> None:
    for _, s in ok.groupby("series_key"):
        s = s.sort_values("z_mm")
        rows = s["row"].tolist()
        assert s["series_rank"].tolist() == list(range(len(s)))
        assert s["prev_row"].tolist() == [-1, *rows[:-1]] and s["next_row"].tolist() == [*rows[1:], -1]
        assert (s["spacing_mm"] == spacing).all()


def test_store_links_every_slice_to_its_z_neighbours(synth_store):
    s = open_store(synth_store)
    assert s.attrs["schema_version"] == SCHEMA_VERSION == 4
    t = s.features
    assert set(GEOMETRY_COLUMNS) <= set(t.columns)
    ok = t[t["row"] >= 0]
    assert (ok["position_source"] == "ipp").all()
    np.testing.assert_allclose(ok["position_mm"], ok["z_mm"])  # axial phantoms: the normal is +z
    _check_chains(ok)
    assert s.quality["series"] == {"series": 8, "series_of_one": 0, "unordered_slices": 0, "gaps": 0,
                                   "duplicate_positions": 0, "mixed_orientation_slices": 0}


def test_quarantined_slice_breaks_its_series_chain(synth_data, data_copy, tmp_path):
    t0 = open_store(_store(synth_data, tmp_path / "ref.zarr")).features
    series = t0[t0["series_key"] == t0["series_key"].iloc[0]].sort_values("z_mm")
    victim = series["ID"].iloc[2]  # a middle slice
    path = data_copy / "CTs" / f"{victim}.dcm"
    path.write_bytes(path.read_bytes()[:-5000])  # truncated pixel data: quarantined, header kept
    t = open_store(_store(data_copy, tmp_path / "cut.zarr")).features
    mine = t[t["series_key"] == series["series_key"].iloc[0]].sort_values("z_mm").reset_index(drop=True)
    assert mine.loc[2, "row"] == -1 and mine.loc[2, "series_rank"] == -1
    assert mine.loc[1, "next_row"] == -1 and mine.loc[3, "prev_row"] == -1
    assert mine.loc[1, "prev_row"] == mine.loc[0, "row"] and mine.loc[3, "next_row"] == mine.loc[4, "row"]
    others = t[(t["row"] >= 0) & (t["series_key"] != series["series_key"].iloc[0])]
    _check_chains(others)
