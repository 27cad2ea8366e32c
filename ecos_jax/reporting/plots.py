"""Figures of the valuation experiments: image grids of the top-/bottom-ranked samples and
score histograms (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax, image: np.ndarray) -> None:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(np.clip(img, 0.0, 1.0))
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(
    path: str,
    rows: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    title: str = "",
) -> None:
    """One row per (label, top images [k,H,W,C], bottom images [k,H,W,C]): top-k | bottom-k.

    Images are shown best first on the left half and lowest first on the right half.
    """
    k = max(max(len(t), len(b)) for _, t, b in rows)
    fig, axes = plt.subplots(len(rows), 2 * k + 1, figsize=(0.75 * (2 * k + 1) + 1.2, 0.85 * len(rows) + 0.6),
                             squeeze=False)
    for r, (label, top, bottom) in enumerate(rows):
        for c in range(2 * k + 1):
            axes[r, c].axis("off")
        for c, img in enumerate(top):
            axes[r, c].axis("on")
            _show(axes[r, c], img)
        for c, img in enumerate(bottom):
            axes[r, k + 1 + c].axis("on")
            _show(axes[r, k + 1 + c], img)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title(f"top {k} →", fontsize=8, loc="left")
    axes[0, k + 1].set_title(f"bottom {k} →", fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_histograms(
    path: str,
    scores: Mapping[str, Mapping[str, np.ndarray]],
    *,
    bins: int = 40,
    title: str = "",
) -> None:
    """One panel per metric; one step histogram per run label within it.

    scores: {metric: {run label (e.g. 'ε=3'): [N] scores}}.
    """
    metrics = list(scores)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, values in scores[metric].items():
            ax.hist(np.asarray(values), bins=bins, histtype="step", density=True, label=label)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
