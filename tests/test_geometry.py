"""Series geometry (neurocache.geometry): positions along the normal, ranks, neighbours, counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurocache.geometry import (
    GEOMETRY_COLUMNS, geometry_counts, mixed_orientation, series_geometry, slice_normals, slice_positions,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # normal +z
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal (0,1,0) x (0,0,-1) = (-1, 0, 0)


def _axial(z: list[float], series: str = "s1", rows: list[int] | None = None) -> pd.DataFrame:
    n = len(z)
    return pd.DataFrame({
        "ID": [f"{series}_{k}" for k in range(n)], "series_key": series,
        "row": rows if rows is not None else list(range(n)),
        "ipp": [(-120.0, -120.0, float(v)) for v in z], "iop": [AXIAL] * n,
        "slice_location": np.nan, "instance_number": np.nan,
    })


def _geometry(t: pd.DataFrame, **kw) -> pd.DataFrame:
    pos, src = slice_positions(t["series_key"], np.array(t["ipp"].tolist(), dtype=float),
                               np.array(t["iop"].tolist(), dtype=float), t["slice_location"].to_numpy(float),
                               t["instance_number"].to_numpy(float))
    return pd.concat([t, series_geometry(t, positions=pos, sources=src, **kw)], axis=1)


def _links(g: pd.DataFrame) -> dict[str, tuple[int, int]]:
    return {i: (int(p), int(n)) for i, p, n in zip(g["ID"], g["prev_row"], g["next_row"])}


def test_normals_of_axial_sagittal_and_unknown():
    n = slice_normals(np.array([AXIAL, SAGITTAL, [np.nan] * 6, [1, 0, 0, 1, 0, 0]], dtype=float))
    np.testing.assert_allclose(n[0], [0, 0, 1])
    np.testing.assert_allclose(n[1], [-1, 0, 0])
    assert np.isnan(n[2]).all() and np.isnan(n[3]).all()  # unknown; parallel row/col cosines


def test_ordered_chain_ranks_spacing_and_columns():
    t = _axial([20.0, 0.0, 10.0, 5.0, 15.0])  # rows 0..4 in file order, z shuffled
    g = _geometry(t)
    assert tuple(g.columns[-len(GEOMETRY_COLUMNS):]) == GEOMETRY_COLUMNS
    by_z = g.sort_values("position_mm")
    assert by_z["series_rank"].tolist() == [0, 1, 2, 3, 4]
    assert by_z["row"].tolist() == [1, 3, 2, 4, 0]
    assert by_z["prev_row"].tolist() == [-1, 1, 3, 2, 4]
    assert by_z["next_row"].tolist() == [3, 2, 4, 0, -1]
    assert (g["spacing_mm"] == 5.0).all() and (g["position_source"] == "ipp").all()


def test_neighbours_do_not_depend_on_listing_order():
    rng = np.random.default_rng(3)
    t = pd.concat([_axial(list(rng.permutation(12) * 2.5), "a"), _axial([0, 5, 10, 20, 25], "b")], ignore_index=True)
    t["row"] = rng.permutation(len(t))
    ref = _links(_geometry(t))
    for seed in range(5):
        shuffled = t.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        assert _links(_geometry(shuffled)) == ref


def test_gap_breaks_the_chain():
    g = _geometry(_axial([0.0, 5.0, 10.0, 20.0, 25.0]))  # typical 5 mm; 10 mm > 1.5 x 5 mm
    assert _links(g)["s1_2"] == (1, -1) and _links(g)["s1_3"] == (-1, 4)
    assert _geometry(_axial([0.0, 5.0, 10.0, 17.0, 22.0]))["next_row"].tolist()[2] == 3  # 7 mm <= 7.5 mm: linked


def test_duplicate_position_links_neither_copy():
    g = _links(_geometry(_axial([0.0, 5.0, 5.0, 10.0, 15.0])))
    assert g["s1_1"] == (-1, -1) and g["s1_2"] == (-1, -1)
    assert g["s1_0"] == (-1, -1)  # its next would be one of two slices at 5 mm
    assert g["s1_3"] == (-1, 4) and g["s1_4"] == (3, -1)


def test_quarantined_neighbour_keeps_its_place():
    g = _geometry(_axial([0.0, 5.0, 10.0, 15.0], rows=[0, -1, 1, 2]))  # the slice at 5 mm was quarantined
    links = _links(g)
    assert links["s1_0"] == (-1, -1) and links["s1_2"] == (-1, 2) and links["s1_3"] == (1, -1)
    assert g["series_rank"].tolist() == [0, -1, 1, 2]


def test_quarantined_copy_at_a_position_leaves_the_ok_slice_linked():
    """A corrupt copy of the 0 mm slice (quarantined, row -1) is no image: the ok slice at 0 mm keeps its link
    to 5 mm, whichever comes first in the listing; a copy at 5 mm leaves the chain whole too."""
    for z, rows in (([0.0, 0.0, 5.0], [0, -1, 1]), ([0.0, 0.0, 5.0], [-1, 0, 1])):
        g = _geometry(_axial(z, rows=rows))
        ok0, copy = ("s1_0", "s1_1") if rows[0] == 0 else ("s1_1", "s1_0")
        links = _links(g)
        assert links[ok0] == (-1, 1) and links["s1_2"] == (0, -1)
        assert links[copy] == (-1, -1)
        assert g.set_index("ID").loc[copy, ["row", "series_rank"]].tolist() == [-1, -1]
        assert g.set_index("ID").loc[[ok0, "s1_2"], "series_rank"].tolist() == [0, 1]
    g = _geometry(_axial([0.0, 5.0, 5.0, 10.0], rows=[0, 1, -1, 2]))  # the copy at 5 mm, listed after the ok slice
    assert _links(g) == {"s1_0": (-1, 1), "s1_1": (0, 2), "s1_2": (-1, -1), "s1_3": (1, -1)}


def test_two_ok_copies_stay_ambiguous_beside_a_quarantined_third():
    g = _links(_geometry(_axial([0.0, 5.0, 5.0, 5.0, 10.0], rows=[0, 1, -1, 2, 3])))
    assert g["s1_0"] == (-1, -1) and g["s1_1"] == (-1, -1) and g["s1_3"] == (-1, -1) and g["s1_4"] == (-1, -1)


def test_series_of_one_and_series_kept_apart():
    t = pd.concat([_axial([0.0], "lone"), _axial([0.0, 5.0], "pair")], ignore_index=True)
    t["row"] = [0, 1, 2]
    g = _geometry(t)
    assert _links(g) == {"lone_0": (-1, -1), "pair_0": (-1, 2), "pair_1": (1, -1)}
    assert np.isnan(g["spacing_mm"].iloc[0]) and g["spacing_mm"].iloc[1] == 5.0


def test_sagittal_stack_is_ordered_along_its_own_normal():
    x = [30.0, -10.0, 10.0, 0.0, 20.0]
    n = len(x)
    t = pd.DataFrame({"ID": [f"s1_{k}" for k in range(n)], "series_key": "s1", "row": range(n),
                      "ipp": [(v, -100.0, 50.0) for v in x], "iop": [SAGITTAL] * n,  # z is the same on every slice
                      "slice_location": np.nan, "instance_number": np.nan})
    g = _geometry(t)
    np.testing.assert_allclose(g["position_mm"], [-v for v in x])  # along (-1, 0, 0)
    assert g.sort_values("series_rank")["row"].tolist() == [0, 4, 2, 3, 1]  # x descending
    assert (g["spacing_mm"] == 10.0).all() and (g["next_row"] >= 0).sum() == 4


def test_fallback_sources_are_named_per_series():
    t = pd.DataFrame({
        "ID": ["a0", "a1", "b0", "b1", "c0", "c1"], "series_key": ["a", "a", "b", "b", "c", "c"], "row": range(6),
        "ipp": [(0, 0, 1.0), (0, 0, np.nan), (np.nan,) * 3, (np.nan,) * 3, (np.nan,) * 3, (np.nan,) * 3],
        "iop": [AXIAL] * 6, "slice_location": [3.0, 6.0, 9.0, 4.0, np.nan, np.nan],
        "instance_number": [1, 2, 7, 8, np.nan, 2],
    })
    g = _geometry(t)
    assert g["position_source"].tolist() == ["slice_location"] * 4 + ["none"] * 2
    assert _links(g)["b1"] == (-1, 2) and _links(g)["b0"] == (3, -1)  # 4 mm before 9 mm
    assert g["series_rank"].tolist()[4:] == [-1, -1] and _links(g)["c1"] == (-1, -1)


def test_instance_number_is_the_last_resort():
    t = pd.DataFrame({"ID": ["a0", "a1", "a2"], "series_key": "a", "row": [0, 1, 2], "ipp": [(np.nan,) * 3] * 3,
                      "iop": [(np.nan,) * 6] * 3, "slice_location": np.nan, "instance_number": [3, 1, 2]})
    g = _geometry(t)
    assert (g["position_source"] == "instance_number").all()
    assert g["series_rank"].tolist() == [2, 0, 1] and _links(g)["a2"] == (1, 0)


def test_counts_for_quality_json():
    t = pd.concat([_axial([0, 5, 5, 10, 20, 25], "a"), _axial([0.0], "b"), _axial([0, 5], "c")], ignore_index=True)
    t["row"] = list(range(len(t) - 1)) + [-1]  # c's second slice quarantined
    t.at[3, "iop"] = SAGITTAL  # one slice of series a acquired in another orientation
    pos, _ = slice_positions(t["series_key"], np.array(t["ipp"].tolist(), float), np.array(t["iop"].tolist(), float),
                             t["slice_location"].to_numpy(float), t["instance_number"].to_numpy(float))
    mixed = mixed_orientation(t["series_key"], slice_normals(np.array(t["iop"].tolist(), float)))
    assert mixed.tolist() == [False] * 3 + [True] + [False] * 5
    counts = geometry_counts(t, pos, mixed)
    assert counts == {"series": 3, "series_of_one": 2,  # b, and c whose other slice was quarantined
                      "unordered_slices": 0, "gaps": 1, "duplicate_positions": 1,
                      "mixed_orientation_slices": 1}


@pytest.mark.parametrize("n", [1, 0])
def test_tiny_tables(n):
    g = _geometry(_axial([0.0] * n))
    assert len(g) == n and (g["prev_row"] == -1).all()


def test_series_codes_give_the_same_geometry_as_keys():
    from neurocache.geometry import series_codes

    t = pd.concat([_axial([0, 5, 10], "x"), _axial([3, 8], "y"), _axial([0, 5, 10], "x2")], ignore_index=True)
    t["row"] = range(len(t))
    args = (np.array(t["ipp"].tolist(), float), np.array(t["iop"].tolist(), float),
            t["slice_location"].to_numpy(float), t["instance_number"].to_numpy(float))
    codes = series_codes(t["series_key"])
    assert codes.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    pos_k, src_k = slice_positions(t["series_key"], *args)
    pos_c, src_c = slice_positions(codes, *args)
    np.testing.assert_array_equal(pos_k, pos_c)
    pd.testing.assert_frame_equal(series_geometry(t, positions=pos_k, sources=src_k),
                                  series_geometry(t, positions=pos_c, sources=src_c, series=codes))


def test_counts_without_any_position():
    t = pd.DataFrame({"series_key": ["a", "a", "b"], "row": [0, 1, -1]})
    counts = geometry_counts(t, np.full(3, np.nan), np.zeros(3, dtype=bool))
    assert counts == {"series": 1, "series_of_one": 0, "unordered_slices": 2, "gaps": 0, "duplicate_positions": 0,
                      "mixed_orientation_slices": 0}
