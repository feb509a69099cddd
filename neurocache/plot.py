"""``neurocache plot``: the preprocessing grid (raw -> HU -> skull box -> letterbox -> brain window)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurocache.dicomio import read_slice
from neurocache.errors import InputError
from neurocache.hu import stored_to_hu
from neurocache.preprocess import preprocess_slice
from neurocache.store import Store


def brain_window(hu: np.ndarray, center: float = 40.0, width: float = 80.0) -> np.ndarray:
    """HU -> [0, 1] through a window (center, width), HU; float32 of the same shape."""
    lo = center - width / 2.0
    return np.clip((hu.astype(np.float32) - lo) / width, 0.0, 1.0)


def plot_preprocessing(store: Store, label: int, n: int, out: str | Path, seed: int = 0) -> list[str]:
    """Draw, for ``n`` ok slices of class ``label``, one row per slice with five panels.

    Panels: stored values, HU (bone window), bone mask with the skull box, the cached letterbox
    (read back from ``images``), and the brain window (40/80 HU) of the cached image.

    Returns:
        The IDs drawn. Raises InputError (a ValueError) when the class has no ok slice or the CT folder
        the store was built from is gone, or for an ``n`` below 1 or an ``out`` in no folder.
    """
    if n < 1:
        raise InputError(f"n={n}: the number of slices to draw must be at least 1 (--n)")
    if not Path(out).parent.is_dir():
        raise InputError(f"the folder of {out} does not exist: create it or choose another --out")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ok = store.ok_rows()
    rows = ok[ok["label"] == label]
    if rows.empty:
        raise InputError(f"store {store.path} has no ok slice with label={label}")
    pick = rows.sample(n=min(n, len(rows)), random_state=seed).sort_values("ID")
    src = store.attrs["source"]
    cts_dir = Path(src["data_root"]) / src["cts"]
    if not cts_dir.is_dir():
        raise InputError(f"the CT folder {cts_dir} that store {store.path} was built from does not exist any more; "
                         "plot reads the source DICOM files: restore the folder or plot a store built from an existing one")
    cfg = store.prep
    key = bytes.fromhex(store.attrs["hash_key"])
    fig, axes = plt.subplots(len(pick), 5, figsize=(15, 3.1 * len(pick)), squeeze=False)
    titles = ["stored values", "HU (window -200/1800)", "bone mask + skull box", f"cached {cfg.size}² (HU)", "brain window 40/80"]
    for ax, t in zip(axes[0], titles):
        ax.set_title(t, fontsize=10)
    for r, (_, rec) in enumerate(pick.iterrows()):
        data = read_slice(cts_dir / rec["file"], cfg, key)
        prep = preprocess_slice(data, cfg, name=rec["file"])
        hu = stored_to_hu(data.stored, data.slope, data.intercept)
        cached = np.asarray(store.images[int(rec["row"])])
        r0, r1, c0, c1 = prep.box
        ax = axes[r]
        ax[0].imshow(data.stored, cmap="gray")
        ax[0].set_ylabel(f"{rec['ID']}\nlabel {label}", fontsize=8)
        ax[1].imshow(hu, cmap="gray", vmin=-200, vmax=1800)
        ax[2].imshow(hu >= prep.skull_hu, cmap="gray")
        ax[2].add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="red", lw=1.5))
        ax[3].imshow(cached, cmap="gray", vmin=-200, vmax=1800)
        ax[4].imshow(brain_window(cached), cmap="gray", vmin=0, vmax=1)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"{store.path.name}: preprocessing of {len(pick)} label-{label} slices", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return pick["ID"].tolist()
