"""The input pipelines neurocache is measured against, with the original pipeline's preprocessing.

(a) :func:`original_loader`: the original pipeline's per-item path — a map-style ``Dataset`` that decodes one
    DICOM per item (pydicom -> modality LUT -> floor at the 1st percentile -> skull box at the 98th
    percentile with ``np.percentile`` -> crop -> brain window -> PIL), then torchvision v2
    transforms (RandomAffine, RandomHorizontalFlip, Resize, ToImage/ToDtype, ImageNet Normalize),
    3 channels, in a ``DataLoader(num_workers=cores)``. Every epoch decodes every file again.
(b) :func:`monai_loader`: MONAI ``CacheDataset`` caching the same deterministic preprocessing
    (windowed, resized float32 (1, out, out)) + ``RandAffined``/``RandFlipd`` + 3 channels +
    ImageNet normalisation, in a ``ThreadDataLoader``. MONAI is an optional dependency
    (``pip install -e '.[bench]'``); :func:`monai_available` says whether it can be imported.

Both use the same random ranges as the trainer's defaults (rotation +-10 degrees, translation
+-5 %, scale 0.9-1.1, flip p=0.5).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BRAIN_WINDOW = (40.0, 80.0)  # center, width (HU)


def original_preprocess(path: str | Path) -> np.ndarray:
    """The original pipeline's deterministic preprocessing of one file: uint8 (h, w) brain-window image of the skull crop.

    pydicom decode -> HU via ``apply_modality_lut`` -> values <= the 1st percentile set to -1024 ->
    box of HU >= the 98th percentile (two ``np.percentile`` calls, which sort the slice) -> crop ->
    window (40, 80) -> uint8.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(str(path))
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    p1 = np.percentile(hu, 1.0)
    hu[hu <= p1] = -1024.0
    p98 = np.percentile(hu, 98.0)
    mask = hu >= p98
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size and cols.size:
        hu = hu[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    c, w = BRAIN_WINDOW
    return (np.clip((hu - (c - w / 2)) / w, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class OriginalDicomDataset(torch.utils.data.Dataset):
    """Baseline (a): one DICOM decoded and transformed per ``__getitem__``."""

    def __init__(self, paths: list[str], labels: list[int], out_size: int, train: bool) -> None:
        from torchvision.transforms import v2

        self.paths, self.labels = paths, labels
        steps: list[Any] = [v2.Resize((out_size, out_size), antialias=True)]
        if train:
            steps += [v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)), v2.RandomHorizontalFlip()]
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.tf = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.fromarray(original_preprocess(self.paths[i])).convert("RGB")
        return self.tf(img), self.labels[i]


def original_loader(paths: list[str], labels: list[int], out_size: int, *, train: bool, batch_size: int,
                    workers: int) -> torch.utils.data.DataLoader:
    """Baseline (a)'s loader: shuffled when training, ``persistent_workers`` so later epochs skip the spawn."""
    ds = OriginalDicomDataset(paths, labels, out_size, train)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=train, num_workers=workers, persistent_workers=workers > 0,
        drop_last=False,
    )


def monai_available() -> tuple[bool, str]:
    """(True, version) when MONAI imports, else (False, the reason)."""
    try:
        import monai
    except Exception as e:  # ImportError, or a broken install
        return False, f"{type(e).__name__}: {e}"
    return True, str(monai.__version__)


def _prep_for_monai(out_size: int) -> Any:
    """Deterministic part cached by baseline (b): the original pipeline's preprocessing, resized, float32 (1, out, out) in [0, 1].

    A ``monai.transforms.Transform`` subclass: ``CacheDataset`` caches the leading transforms up to
    the first random one *or the first callable that is not a MONAI Transform*.
    """
    from monai.transforms import Transform
    from PIL import Image

    class PrepSeed(Transform):
        def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
            img = Image.fromarray(original_preprocess(item["path"])).resize((out_size, out_size), Image.BILINEAR)
            return {"img": (np.asarray(img, dtype=np.float32) / 255.0)[None], "label": item["label"]}

    return PrepSeed()


def monai_loader(paths: list[str], labels: list[int], out_size: int, *, train: bool, batch_size: int,
                 workers: int) -> Any:
    """Baseline (b): ``CacheDataset`` (cache built with ``workers`` threads) + ``ThreadDataLoader``.

    Meta-data tracking is switched off and ``copy_cache=False`` (the random transforms return new
    arrays): MONAI's own advice for speed, so the baseline gets its best configuration.
    """
    from monai.data import CacheDataset, ThreadDataLoader, set_track_meta
    from monai.transforms import Compose, NormalizeIntensityd, RandAffined, RandFlipd, RepeatChanneld, ToTensord

    set_track_meta(False)
    steps: list[Any] = [_prep_for_monai(out_size)]
    if train:
        steps += [
            RandAffined(keys="img", prob=1.0, rotate_range=(math.radians(10),), translate_range=(0.05 * out_size,) * 2,
                        scale_range=(0.1, 0.1), mode="bilinear", padding_mode="zeros"),
            RandFlipd(keys="img", prob=0.5, spatial_axis=1),
        ]
    steps += [
        RepeatChanneld(keys="img", repeats=3),
        NormalizeIntensityd(keys="img", subtrahend=np.array(IMAGENET_MEAN), divisor=np.array(IMAGENET_STD), channel_wise=True),
        ToTensord(keys="img", track_meta=False),
    ]
    data = [{"path": p, "label": y} for p, y in zip(paths, labels)]
    ds = CacheDataset(data, transform=Compose(steps), cache_rate=1.0, num_workers=workers, progress=False, copy_cache=False)
    return ThreadDataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=0)
