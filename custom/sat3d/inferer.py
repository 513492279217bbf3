"""Sliding-window inference of SAT3D with clicks and dense prompts mapped into every window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, sliding_window_inference

from .transforms import CLICKS_META_KEY

__all__ = ["SAT3DInferer", "clicks_in_window"]


def clicks_in_window(
    points: torch.Tensor, labels: torch.Tensor, window: Sequence[slice]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate image-level clicks into one window's local coordinates.

    Clicks outside the window are kept as padding (label ``-1``) so that batches of windows stack.

    Args:
        points: ``(N, 3)`` click voxel coordinates in the (padded) image.
        labels: ``(N,)`` 1 positive, 0 negative.
        window: three slices of the window in the same image.

    Returns:
        ``(N, 3)`` local coordinates and ``(N,)`` labels, ``-1`` where the click lies outside.
    """
    start = torch.tensor([s.start for s in window], dtype=points.dtype, device=points.device)
    stop = torch.tensor([s.stop for s in window], dtype=points.dtype, device=points.device)
    inside = ((points >= start) & (points < stop)).all(dim=-1)
    local = points - start
    return torch.where(inside[:, None], local, torch.zeros_like(local)), torch.where(
        inside, labels, torch.full_like(labels, -1)
    )


class SAT3DInferer(Inferer):
    """Run SAT3D over a whole volume with overlapping windows.

    Uses MONAI's ``sliding_window_inference(with_coord=True)``: each window receives the clicks that fall
    inside it (translated to window coordinates) and the crop of the previous mask / confidence map at
    exactly its own location, so dense prompts stay aligned across windows.  Windows without a click run
    in automatic mode unless ``clicked_windows_only`` is set, in which case they are skipped (logit -inf)
    whenever the image has at least one positive click.

    The output is a ``MetaTensor`` ``(B, 2, D, H, W)`` carrying the input's metadata: channel 0 the mask
    logits, channel 1 the critic's confidence in [0, 1].

    Args:
        roi_size: window size (the network's crop size).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction.
        mode: blending mode, ``"gaussian"`` or ``"constant"``.
        sw_device: device of the network; ``None`` uses the input's device.
        device: device of the stitched output; ``None`` uses the input's device.
        clicked_windows_only: see above.
        progress: show a progress bar.
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (128, 128, 128),
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        mode: str = "gaussian",
        sw_device: Any = None,
        device: Any = None,
        clicked_windows_only: bool = False,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        self.roi_size = tuple(int(s) for s in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.sw_device = sw_device
        self.device = device
        self.clicked_windows_only = clicked_windows_only
        self.progress = progress

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        prev_mask: torch.Tensor | None = None,
        prev_confidence: torch.Tensor | None = None,
    ) -> MetaTensor:
        """Segment a volume.

        Args:
            inputs: ``(1, C, D, H, W)`` normalised image (batch size 1: clicks are per image).
            network: a :class:`sat3d.SAT3D`.
            points: ``(N, 3)`` or ``(1, N, 3)`` click voxel coordinates in ``inputs``; when ``None``, clicks that
                :class:`sat3d.transforms.ClicksFromRequestd` stored in the input's metadata are used.
            point_labels: ``(N,)`` or ``(1, N)`` 1 positive / 0 negative.
            prev_mask: ``(1, 1, D, H, W)`` previous mask probability, aligned with ``inputs``.
            prev_confidence: ``(1, 1, D, H, W)`` previous confidence map, aligned with ``inputs``.

        Returns:
            ``(1, 2, D, H, W)`` MetaTensor: logits and confidence.
        """
        if inputs.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) image, got shape {tuple(inputs.shape)}.")
        if inputs.shape[0] != 1 and (points is not None or prev_mask is not None):
            raise ValueError("prompts are per image: use batch size 1 with clicks or a previous mask.")
        spatial = tuple(inputs.shape[2:])
        if points is None and isinstance(inputs, MetaTensor) and inputs.meta.get(CLICKS_META_KEY):
            points, point_labels = inputs.meta[CLICKS_META_KEY]["points"], inputs.meta[CLICKS_META_KEY]["labels"]
        pts, lbl = _normalise_clicks(points, point_labels, spatial, inputs.device)
        for name, t in (("prev_mask", prev_mask), ("prev_confidence", prev_confidence)):
            if t is not None and tuple(t.shape[2:]) != spatial:
                raise ValueError(f"{name} has size {tuple(t.shape[2:])} but the image has {spatial}.")
        has_positive = bool(pts is not None and (lbl == 1).any())
        # Sliding windows pad images smaller than the ROI symmetrically; pad here instead so that click and
        # mask coordinates need no shift, and crop the result back.
        pad = [max(r - s, 0) for r, s in zip(self.roi_size, spatial)]
        dense = None
        if prev_mask is not None or prev_confidence is not None:
            dense = torch.cat(
                [
                    _pad_end(prev_mask if prev_mask is not None else torch.full_like(inputs[:, :1], float("nan")), pad),
                    _pad_end(
                        prev_confidence if prev_confidence is not None else torch.full_like(inputs[:, :1], float("nan")),
                        pad,
                    ),
                ],
                dim=1,
            )

        def predictor(window: torch.Tensor, coords: Sequence[Sequence[slice]]) -> torch.Tensor:
            bw = window.shape[0]
            kw: dict[str, Any] = {}
            if pts is not None:
                local = [clicks_in_window(pts, lbl, c[-3:]) for c in coords]
                wp = torch.stack([p for p, _ in local])
                wl = torch.stack([q for _, q in local])
                used = (wl >= 0).any(dim=0)  # drop clicks that fall in none of these windows
                kw["points"], kw["point_labels"] = wp[:, used].to(window.device), wl[:, used].to(window.device)
            if dense is not None:
                crops = torch.cat([dense[(slice(None), slice(None), *c[-3:])] for c in coords]).to(window.device)
                if prev_mask is not None:
                    kw["prev_mask"] = crops[:, :1]
                if prev_confidence is not None:
                    kw["confidence"] = crops[:, 1:2]
            out = network(window, **kw)
            result = torch.cat([out["logits"], out["confidence"]], dim=1)
            if self.clicked_windows_only and has_positive:
                has = (kw["point_labels"] == 1).any(dim=1).view(bw, 1, 1, 1, 1)
                result = torch.where(has, result, _skipped(result))
            return result

        raw = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        with torch.no_grad():
            out = sliding_window_inference(
                _pad_end(raw, pad),
                self.roi_size,
                self.sw_batch_size,
                predictor,
                overlap=self.overlap,
                mode=self.mode,
                sw_device=self.sw_device,
                device=self.device,
                progress=self.progress,
                with_coord=True,
            )
        out = out[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
        if isinstance(out, MetaTensor):
            out = out.as_tensor()
        if not isinstance(inputs, MetaTensor):
            return MetaTensor(out)
        return MetaTensor(out, meta=dict(inputs.meta), applied_operations=list(inputs.applied_operations))


def _skipped(result: torch.Tensor) -> torch.Tensor:
    skipped = torch.empty_like(result)
    skipped[:, 0] = -20.0
    skipped[:, 1] = 1.0
    return skipped


def _pad_end(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    if not any(pad):
        return x
    return F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))


def _normalise_clicks(points, labels, spatial, device):
    if points is None or len(points) == 0:
        return None, None
    pts = torch.as_tensor(points, dtype=torch.float32, device=device)
    lbl = torch.as_tensor(labels, dtype=torch.long, device=device) if labels is not None else None
    if pts.ndim == 3:
        pts = pts[0]
    if lbl is not None and lbl.ndim == 2:
        lbl = lbl[0]
    if lbl is None or pts.ndim != 2 or pts.shape[-1] != 3 or lbl.shape != pts.shape[:1]:
        raise ValueError(f"clicks must be (N, 3) points with (N,) labels; got {tuple(pts.shape)} and {labels!r}.")
    if not torch.isin(lbl, torch.tensor([0, 1], device=device)).all():
        raise ValueError(f"click labels must be 1 (positive) or 0 (negative), got {lbl.tolist()}.")
    size = torch.tensor(spatial, dtype=torch.float32, device=device)
    outside = ((pts < 0) | (pts > size - 1)).any(dim=-1)
    if outside.any():
        raise ValueError(f"clicks {pts[outside].tolist()} lie outside the image of size {list(spatial)}.")
    return pts, lbl
