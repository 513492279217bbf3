"""Interactive evaluation: DSC, IoU, HD95, ASSD and RVE after K simulated clicks, with tables and plots."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)

from .atomic import atomic_path, write_text_atomic
from .bundle_utils import flag, parse_clicked_windows_only
from .click_simulation import next_click_volume
from .constants import MASK_THRESHOLD
from .volumes import case_name
from .weights import load_weights

__all__ = ["segmentation_metrics", "InteractiveEvaluation"]

logger = logging.getLogger("sat3d.evaluate")
METRICS = ["dice", "iou", "hd95_mm", "assd_mm", "rve"]


def segmentation_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """DSC, IoU, HD95 (mm), ASSD (mm) and relative volume error of one binary 3D prediction.

    Conventions for empty masks: both empty -> DSC = IoU = 1, distances 0, RVE 0; only one empty -> DSC =
    IoU = 0 and distances ``inf`` (no surface to measure against); empty ground truth with a prediction ->
    RVE ``inf``.
    """
    p = torch.as_tensor(np.asarray(pred) > 0)[None, None].float()
    g = torch.as_tensor(np.asarray(gt) > 0)[None, None].float()
    vp, vg = float(p.sum()), float(g.sum())
    if vp == 0 and vg == 0:
        return {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0, "rve": 0.0}
    out = {
        "dice": float(compute_dice(p, g, include_background=True, ignore_empty=False)),
        "iou": float(compute_iou(p, g, include_background=True, ignore_empty=False)),
        "rve": (vp - vg) / vg if vg > 0 else math.inf,
    }
    if vp == 0 or vg == 0:
        out.update(hd95_mm=math.inf, assd_mm=math.inf)
    else:
        sp = [float(s) for s in spacing]
        out["hd95_mm"] = float(compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=sp))
        out["assd_mm"] = float(compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=sp))
    return out


class InteractiveEvaluation:
    """Evaluate SAT3D with simulated clicks on every case of a datalist, through the user's session.

    Each case is loaded with the bundle's preprocessing and given to :class:`sat3d.session.InteractiveSession`,
    the object users and the MONAI Label path drive: the automatic result is scored (K = 0), then clicks
    are added one at a time at the centre of the largest error region
    (:func:`sat3d.click_simulation.next_click_volume`), each re-decoding the windows that contain it with
    the previous mask and confidence fed back, and the mask is scored after each K in ``clicks``.  With
    ``baseline`` a non-learned :class:`sat3d.baseline.RegionGrowing` is run under the same protocol
    (its clicks simulated from its own errors).  Metrics are computed on the preprocessed (resampled)
    grid with its spacing.  Writes ``per_case.csv``, ``summary.csv``, ``summary.md`` (per method,
    modality and K), ``dice_vs_clicks.png`` and ``boxplot_dice.png`` to ``output_dir``.

    Args:
        datalist: cases ``{"image", "label"}`` (see :func:`sat3d.data.load_datalist`); an optional
            ``modality`` groups the summary.
        output_dir: results folder (existing result files are not overwritten unless ``overwrite``).
        network: SAT3D network.
        preprocessing: dict transform loading ``image`` and ``label`` (binary target).
        inferer: :class:`sat3d.inferer.SAT3DInferer` whose window, overlap, blending, protocol and
            ``click_radius`` the session uses (the settings of folder inference and MONAI Label).
        clicks: the K values to score; clicks are simulated up to ``max(clicks)``.
        ckpt_path, require_weights: see :func:`sat3d.weights.load_weights`.
        device: network device.
        threshold: mask probability threshold.
        overwrite: replace existing result files.
        baseline: also evaluate the region-growing baseline.
        settings: the run's model settings, checked against the weights' configuration.
    """

    def __init__(
        self,
        datalist: list[dict[str, Any]],
        output_dir: str,
        network: torch.nn.Module,
        preprocessing: Callable,
        inferer: Callable,
        clicks: Sequence[int] = (0, 1, 3, 5, 10),
        ckpt_path: str | None = None,
        require_weights: bool = True,
        device: str | torch.device = "cpu",
        threshold: float = MASK_THRESHOLD,
        overwrite: bool = False,
        baseline: bool = True,
        settings: dict[str, Any] | None = None,
    ) -> None:
        if not clicks or any(int(k) < 0 for k in clicks):
            raise ValueError(f"clicks must be non-negative counts, got {clicks}.")
        self.datalist = datalist
        self.output_dir = Path(output_dir)
        self.network = network
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.clicks = sorted({int(k) for k in clicks})
        self.ckpt_path = ckpt_path
        self.require_weights = flag(require_weights)
        self.device = torch.device(device)
        self.threshold = float(threshold)
        self.overwrite = flag(overwrite)
        self.baseline = flag(baseline)
        self.settings = dict(settings or {})
        self.rows: list[dict[str, Any]] = []

    def _session(self, clicked_windows_only: bool | str | None = None):
        from .session import InteractiveSession

        if clicked_windows_only is None:
            clicked_windows_only = getattr(self.inferer, "clicked_windows_only", False)
        return InteractiveSession(
            self.network,
            roi_size=getattr(self.inferer, "roi_size", None),
            overlap=getattr(self.inferer, "overlap", 0.25),
            mode=getattr(self.inferer, "mode", "gaussian"),
            device=self.device,
            threshold=self.threshold,
            protocol=getattr(self.inferer, "protocol", "sat3d"),
            clicked_windows_only=clicked_windows_only,
            window_intensity=getattr(self.inferer, "window_intensity", None),
            click_radius=getattr(self.inferer, "click_radius", 0),
        )

    def session_modes(self) -> tuple[bool, bool]:
        """``clicked_windows_only`` of the session that scores K = 0 and of the one that scores K >= 1: with
        ``"auto"`` (as users get it) the automatic mode without clicks and the clicked windows with them."""
        setting = parse_clicked_windows_only(getattr(self.inferer, "clicked_windows_only", False))
        return (False, True) if setting == "auto" else (setting, setting)

    def _drive(self, name: str, method: str, predict, gt: np.ndarray, spacing, base: dict,
               quality: Callable[[], float | None] | None = None, ks: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Score ``predict(clicks) -> mask`` after each K (of ``ks``, default all) of simulated clicks (and
        the method's own ``quality()`` estimate of its mask, when it has one: SAT3D's predicted IoU)."""
        ks = list(self.clicks if ks is None else ks)
        given: list[tuple[tuple[int, int, int], int]] = []
        rows = []
        pred = predict(given)
        for k in range(max(ks) + 1):
            if k > 0:
                nxt = next_click_volume(pred, gt)
                if nxt is not None:
                    given.append(nxt)
                    pred = predict(given)
            if k in ks:
                row = {**base, "method": method, "clicks": k, "clicks_given": len(given), **segmentation_metrics(pred, gt, spacing)}
                row["predicted_iou"] = quality() if quality is not None else None
                rows.append(row)
                logger.info("%s %s K=%d dice=%.3f hd95=%.1f mm", name, method, k, row["dice"], row["hd95_mm"])
        return rows

    def evaluate_case(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows (one per method and K) for one case."""
        data = self.preprocessing(dict(item))
        image, label = data["image"], data["label"]
        gt = label[0].numpy() > 0.5
        spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
        name = item.get("case") or (" ".join(str(item[k]) for k in ("patient", "sequence") if item.get(k))
                                    or case_name(item["image"]))
        base = {"case": name, "modality": item.get("modality", ""), "target": item.get("target", data.get("target_label", 1))}
        def sat3d_drive(clicked_windows_only, ks):
            session = self._session(clicked_windows_only)
            session.set_image(torch.as_tensor(image))

            def predict(clicks):
                while len(session.clicks) < len(clicks):
                    c, lab = clicks[len(session.clicks)]
                    session.add_click(c, positive=lab == 1)
                return session.mask.cpu().numpy() > 0

            return self._drive(name, "sat3d", predict, gt, spacing, base, quality=lambda: session.predicted_iou, ks=ks)

        without, with_clicks = self.session_modes()
        if without == with_clicks:
            rows = sat3d_drive(without, self.clicks)
        else:  # as users get it: no click -> automatic mode; clicks -> the clicked windows only
            rows = sat3d_drive(without, [0]) if 0 in self.clicks else []
            if any(k > 0 for k in self.clicks):
                rows += sat3d_drive(with_clicks, [k for k in self.clicks if k > 0])
        if self.baseline:
            from .baseline import RegionGrowing

            rg = RegionGrowing()
            rg.set_image(torch.as_tensor(image)[0].numpy(), spacing)
            rows += self._drive(name, "region_growing", rg.predict, gt, spacing, base)
        return rows

    def run(self) -> list[dict[str, Any]]:
        """Evaluate all cases and write tables and plots."""
        outputs = [self.output_dir / n for n in ("per_case.csv", "summary.csv", "summary.md", "dice_vs_clicks.png", "boxplot_dice.png")]
        existing = [p.name for p in outputs if p.exists()]
        if existing and not self.overwrite:
            raise FileExistsError(f"{self.output_dir} already holds {existing}; choose another output_dir or set overwrite.")
        load_weights(self.network, self.ckpt_path, self.require_weights, self.settings)
        self.network.to(self.device).eval()
        self.rows = []
        for item in self.datalist:
            self.rows.extend(self.evaluate_case(item))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(_csv(self.rows), outputs[0], overwrite=True)
        summary = summarise(self.rows)
        write_text_atomic(_csv(summary), outputs[1], overwrite=True)
        write_text_atomic(_markdown(summary), outputs[2], overwrite=True)
        plot_results(self.rows, outputs[3], outputs[4])
        logger.info("evaluation written to %s", self.output_dir)
        return self.rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std of each metric per method, modality (and ``all``) and K; infinite distances are
    counted separately, not averaged."""
    out = []
    methods = sorted({r.get("method", "sat3d") for r in rows}, key=lambda m: (m != "sat3d", m))
    modalities = sorted({str(r.get("modality", "")) for r in rows} - {""})
    groups = ["all"] + (modalities if len(modalities) > 1 else [])
    for method in methods:
        for group in groups:
            for k in sorted({r["clicks"] for r in rows}):
                sel = [r for r in rows if r.get("method", "sat3d") == method and r["clicks"] == k
                       and (group == "all" or str(r.get("modality", "")) == group)]
                if not sel:
                    continue
                row: dict[str, Any] = {"method": method, "modality": group, "clicks": k, "cases": len(sel)}
                for m in METRICS:
                    vals = np.array([r[m] for r in sel], dtype=float)
                    finite = vals[np.isfinite(vals)]
                    row[f"{m}_mean"] = float(finite.mean()) if finite.size else math.nan
                    row[f"{m}_std"] = float(finite.std()) if finite.size else math.nan
                    if finite.size != vals.size:
                        row[f"{m}_infinite"] = int(vals.size - finite.size)
                pairs = [(r["predicted_iou"], r["iou"]) for r in sel if r.get("predicted_iou") is not None]
                if pairs:  # how well the IoU head's estimate tracks the true IoU
                    est, true = np.array(pairs, dtype=float).T
                    row["predicted_iou_mae"] = float(np.abs(est - true).mean())
                out.append(row)
    return out


def _csv(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| method | modality | clicks | cases | DSC | IoU | HD95 (mm) | ASSD (mm) | RVE |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        cells = [("–" if math.isnan(r[f"{m}_mean"]) else f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}")
                 + (f" ({r[f'{m}_infinite']} inf)" if f"{m}_infinite" in r else "") for m in METRICS]
        lines.append(f"| {r.get('method', 'sat3d')} | {r.get('modality', 'all')} | {r['clicks']} | {r['cases']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(rows: list[dict[str, Any]], curve_png: Path, box_png: Path) -> None:
    """Dice vs clicks (mean ± std and each case) and a box plot of Dice per target and K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["clicks"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    methods = sorted({r.get("method", "sat3d") for r in rows}, key=lambda m: (m != "sat3d", m))
    for n, method in enumerate(methods):
        mrows = [r for r in rows if r.get("method", "sat3d") == method]
        for case in sorted({r["case"] for r in mrows}):
            sel = sorted((r for r in mrows if r["case"] == case), key=lambda r: r["clicks"])
            ax.plot([r["clicks"] for r in sel], [r["dice"] for r in sel], color=f"C{n}", alpha=0.2, lw=0.8)
        mean = [np.mean([r["dice"] for r in mrows if r["clicks"] == k]) for k in ks]
        std = [np.std([r["dice"] for r in mrows if r["clicks"] == k]) for k in ks]
        ax.errorbar(ks, mean, yerr=std, color=f"C{n}", lw=2, marker="o", capsize=3, label=f"{method} mean ± std")
    ax.set(xlabel="simulated clicks K", ylabel="Dice", ylim=(0, 1), xticks=ks, title="Dice vs number of clicks")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save_fig(fig, curve_png)
    plt.close(fig)

    rows = [r for r in rows if r.get("method", "sat3d") == "sat3d"] or rows
    targets = sorted({str(r["target"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(ks) * len(targets)), 4), dpi=120)
    data, labels = [], []
    for t in targets:
        for k in ks:
            data.append([r["dice"] for r in rows if str(r["target"]) == t and r["clicks"] == k])
            labels.append(f"{t}\nK={k}")
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set(ylabel="Dice", ylim=(0, 1), title="Dice per target and number of clicks")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save_fig(fig, box_png)
    plt.close(fig)


def _save_fig(fig, target: Path) -> None:
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")


