"""``preprocessing_examples_label{0,1}.png``: what the network sees, from the cached HU slice."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from trainer.data import SliceSource
from trainer.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchTransform


def _denorm(x: torch.Tensor, c: int = 0) -> np.ndarray:
    """Channel ``c`` of a normalised (C, H, W) tensor back to [0, 1] (ImageNet statistics; their means when C != 3)."""
    three = x.shape[0] == 3
    mean, std = (IMAGENET_MEAN[c], IMAGENET_STD[c]) if three else (sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3)
    return (x[c] * std + mean).clamp(0, 1).cpu().numpy()


def plot_examples(data: SliceSource, idx: np.ndarray, label: int, n: int, tf: BatchTransform, path: Path, seed: int) -> list[str]:
    """For ``n`` rows of class ``label`` among ``idx``: cached HU, model input (eval) and two augmented inputs.

    With neighbour context the pictures show the centre slice (its first window's channel)."""
    rows = idx[data.labels[idx] == label]
    if len(rows) == 0:
        return []
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))
    b = torch.as_tensor(pick, device=data.device)
    hu = data.sample_images(b)
    ev = tf(hu, train=False)
    centre = hu[:, tf.context] if tf.context else hu
    ch = tf.context * (tf.channels // tf.stack)
    gen = torch.Generator().manual_seed(seed)
    aug1, aug2 = tf(hu, train=True, generator=gen), tf(hu, train=True, generator=gen)
    fig, axes = plt.subplots(len(pick), 4, figsize=(11, 2.9 * len(pick)), squeeze=False)
    for ax, t in zip(axes[0], ["cached HU (-200/1800)", f"input {tf.out_size}² (window, eval)", "augmented #1", "augmented #2"]):
        ax.set_title(t, fontsize=9)
    ids = data.table["ID"].to_numpy()[pick]
    for r in range(len(pick)):
        axes[r, 0].imshow(centre[r].cpu().numpy(), cmap="gray", vmin=-200, vmax=1800)
        axes[r, 0].set_ylabel(f"{ids[r]}\nlabel {label}", fontsize=8)
        for c, x in enumerate((ev, aug1, aug2), start=1):
            axes[r, c].imshow(_denorm(x[r], ch), cmap="gray", vmin=0, vmax=1)
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return list(ids)
