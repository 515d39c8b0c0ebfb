"""The learning-curve figure of a training run: where overfitting shows.

Training loss that keeps falling while validation loss turns up is overfitting; the epoch
kept is marked so a reader can see whether it sits at the bottom of the validation curve.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def plot_learning_curve(history: pd.DataFrame, out: str | os.PathLike, best_epoch: int | None = None,
                        title: str | None = None) -> Path:
    """Loss (left) and AP (right) per epoch, training and validation; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    e = history["epoch"]
    ax_loss.plot(e, history["train_loss"], "-o", ms=3, label="training (augmented crops)")
    if history["val_loss"].notna().any():
        ax_loss.plot(e, history["val_loss"], "-o", ms=3, label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("binary cross-entropy")
    ax_ap.plot(e, history["train_ap"], "-o", ms=3, label="training (augmented crops)")
    if history["val_ap"].notna().any():
        ax_ap.plot(e, history["val_ap"], "-o", ms=3, label="validation")
    ax_ap.set_xlabel("epoch")
    ax_ap.set_ylabel("average precision (macro)")
    ax_ap.set_ylim(0, 1.02)
    for ax in (ax_loss, ax_ap):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept: epoch {best_epoch}")
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
