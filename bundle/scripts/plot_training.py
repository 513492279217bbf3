"""Plot a training run's loss and validation curves from its TensorBoard logs (for the model card).

Usage: ``python bundle/scripts/plot_training.py RUN_DIR [RUN_DIR ...] OUTPUT.png``; several run folders
(e.g. a run and its fine-tuning continuation) are drawn one after the other on one iteration axis.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def scalars(run: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    if tag not in ea.Tags()["scalars"]:
        return np.zeros(0), np.zeros(0)
    ev, top = [], -1
    for e in ea.Scalars(tag):  # runs of 0.2.2 before the fix also logged the epoch mean under this tag at step=epoch
        if e.step > top:
            ev.append(e)
            top = e.step
    return np.array([e.step for e in ev], float), np.array([e.value for e in ev], float)


def smooth(y: np.ndarray, n: int = 50) -> np.ndarray:
    if len(y) < n:
        return y
    return np.convolve(y, np.ones(n) / n, mode="valid")


def main(*args: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, out = [Path(a) for a in args[:-1]], Path(args[-1])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    offset, offset_ep = 0.0, 0.0
    for n, run in enumerate(runs):
        x, y = scalars(run, "train_loss")
        xc, yc = scalars(run, "critic_loss")
        if len(x):
            ax1.plot(x + offset, y, color="C0", alpha=0.15, lw=0.5)
            ax1.plot(x[len(x) - len(smooth(y)):] + offset, smooth(y), color="C0", lw=1.5, label="generator loss (mean of 50)" if n == 0 else None)
        if len(xc):
            ax1.plot(xc[len(xc) - len(smooth(yc)):] + offset, smooth(yc), color="C1", lw=1.2, label="critic loss (mean of 50)" if n == 0 else None)
        xv, yv = scalars(run, "val_mean_dice")
        if len(xv):
            ax2.plot(xv + offset_ep, yv, "o-", color=f"C{2 + n}", label=run.name)
            offset_ep += xv[-1]
        offset += x[-1] if len(x) else 0.0
    ax1.set(xlabel="iteration", ylabel="loss", title="training loss")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.set(xlabel="epoch", ylabel="Dice", ylim=(0, 1),
            title="validation Dice, automatic mode, held-out patients")
    ax2.grid(alpha=0.3)
    if ax2.lines:
        ax2.legend()
    else:  # say so rather than draw an empty panel
        ax2.text(0.5, 0.5, "no validation during these runs\n(see the held-out evaluation in the model card)",
                 ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
