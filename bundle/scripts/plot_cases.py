"""Draw held-out cases for the model card: image with ground truth, the automatic and the 3-click
prediction (the evaluate workflow's sessions and simulated clicks), and the critic's confidence map
after the clicks.

Usage: ``python bundle/scripts/plot_cases.py DATALIST WEIGHTS OUTPUT.png [CASE_INDEX ...]`` (cases of the
datalist's ``validation`` list; paths as in the datalist).  Runs on the CPU in a minute or two.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parents[1]


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return 2 * float((pred & gt).sum()) / max(float(pred.sum() + gt.sum()), 1.0)


def main(datalist: str, weights: str, out: str, *indices: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from monai.bundle import ConfigParser
    from sat3d.click_simulation import next_click_volume
    from sat3d.weights import load_weights

    cp = ConfigParser()
    cp.read_config(str(BUNDLE / "configs" / "evaluate.json"))
    cp.update({"bundle_root": str(BUNDLE), "ckpt_path": weights, "dataset_dir": "/", "datalist": datalist,
               "datalist_key": "validation", "output_dir": str(Path(out).parent)})
    # the evaluate workflow's own evaluator: its preprocessing, cases and sessions (the Dice printed here is
    # the evaluation's at K = 0 and K = 3)
    ev = cp.get_parsed_content("evaluator")
    load_weights(ev.network, ev.ckpt_path, ev.require_weights, ev.settings)
    ev.network.to(ev.device).eval()
    without, with_clicks = ev.session_modes()
    auto_session, session = ev._session(without), ev._session(with_clicks)
    items = ev.datalist
    picks = [int(i) for i in indices] or list(range(min(4, len(items))))
    fig, axes = plt.subplots(len(picks), 4, figsize=(13, 3.3 * len(picks)), dpi=90, squeeze=False)
    for row, idx in enumerate(picks):
        item = items[idx]
        data = ev.preprocessing(dict(item))
        img, gt = data["image"][0].numpy(), data["label"][0].numpy() > 0.5
        auto_session.set_image(torch.as_tensor(data["image"]))
        auto = auto_session.mask.numpy() > 0
        session.set_image(torch.as_tensor(data["image"]))
        pred, clicks = session.mask.numpy() > 0, []
        for _ in range(3):
            nxt = next_click_volume(pred, gt)
            if nxt is None:
                break
            clicks.append(nxt)
            session.add_click(nxt[0], positive=nxt[1] == 1)
            pred = session.mask.numpy() > 0
        conf = session.confidence.numpy()
        z = int(np.argmax(gt.sum((0, 1)))) if gt.any() else img.shape[2] // 2
        title = f"{item.get('patient', Path(item['image']).name)} ({item.get('sequence', item.get('modality', ''))})"
        panels = [("image + ground truth", None), (f"automatic, Dice {_dice(auto, gt):.2f}", auto),
                  (f"3 clicks, Dice {_dice(pred, gt):.2f}", pred), ("critic confidence", None)]
        for col, (name, mask) in enumerate(panels):
            ax = axes[row, col]
            if col == 3:
                im = ax.imshow(conf[:, :, z].T, cmap="viridis", vmin=0, vmax=1, origin="lower")
                fig.colorbar(im, ax=ax, fraction=0.046)
            else:
                ax.imshow(img[:, :, z].T, cmap="gray", vmin=-2.5, vmax=4, origin="lower")
                ax.contour(gt[:, :, z].T, [0.5], colors="lime", linewidths=1.0)
            if mask is not None:
                ax.contour(mask[:, :, z].T, [0.5], colors="red", linewidths=1.0)
            if col == 2:
                for (i, j, k), lab in clicks:
                    if abs(k - z) <= 3:
                        ax.plot(i, j, "+" if lab else "x", color="yellow" if lab else "cyan", ms=10, mew=2)
            ax.set_title(f"{title}\n{name}" if col == 0 else name, fontsize=9)
            ax.axis("off")
    fig.suptitle("held-out patients (green: ground truth, red: SAT3D; + positive / x negative click within 3 slices)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
