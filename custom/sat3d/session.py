"""Interactive segmentation session: set an image once, add clicks, undo, reset.

Kept separate from the network (as SAM's predictor is): the session owns the image, the per-window image
embeddings, the clicks and the stitched mask / confidence map; the network only computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval, compute_importance_map

from .inferer import clicks_in_window

__all__ = ["InteractiveSession"]


@dataclass
class _Step:
    """What one click changed, for an exact undo."""

    click: tuple[tuple[float, float, float], int]
    windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # old window outputs
    boxes: list[tuple[tuple[slice, ...], torch.Tensor, torch.Tensor]] = field(default_factory=list)  # old sums


class InteractiveSession:
    """Click-by-click segmentation of one volume with cached image embeddings.

    The volume is covered by the same overlapping windows and Gaussian blending as
    :class:`sat3d.inferer.SAT3DInferer`.  Each window's image embedding is computed once (on first use,
    or all at :meth:`set_image` with ``eager=True``).  The first access to :attr:`mask` runs the automatic
    mode on every window.  :meth:`add_click` then re-runs only prompt encoder, mask decoder and critic on
    the windows that contain the click, feeding back each window's crop of the previous mask probability
    and binarised confidence map (>= T), and re-blends only those windows.

    Args:
        network: a :class:`sat3d.SAT3D` (eval mode is set).
        roi_size: window size (default: the network's).
        overlap: window overlap fraction.
        mode: blending, ``"gaussian"`` or ``"constant"``.
        device: device of the network and caches.
        threshold: mask probability threshold.
        eager: compute all embeddings in :meth:`set_image`.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        mode: str = "gaussian",
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        eager: bool = False,
    ) -> None:
        self.network = network.to(device).eval()
        self.roi_size = tuple(int(s) for s in (roi_size or network.roi_size))
        self.overlap = float(overlap)
        self.mode = mode
        self.device = torch.device(device)
        self.threshold = float(threshold)
        self.eager = bool(eager)
        self._image: torch.Tensor | None = None

    @classmethod
    def from_weights(cls, path: str, device: str | torch.device = "cpu", **kwargs) -> "InteractiveSession":
        """A session on the network, window and thresholds stored in a weights file (:mod:`sat3d.weights`).

        The image given to :meth:`set_image` must be preprocessed as ``session.config`` says (RAS, the
        ``spacing``, ``intensity`` normalisation), as the bundle's ``inference.json`` does.
        """
        from .build import build_sat3d
        from .weights import load_weights, read_config

        config = read_config(path)
        network = build_sat3d(config["preset"], confidence_threshold=config["confidence_threshold"],
                              overrides={"roi_size": config["roi_size"]})
        load_weights(network, path, require=True, expect={"preset": config["preset"], "roi_size": config["roi_size"]})
        kwargs.setdefault("threshold", config["mask_threshold"])
        session = cls(network, device=device, **kwargs)
        session.config = config
        return session

    # ------------------------------------------------------------------ image
    def set_image(self, image: torch.Tensor) -> None:
        """Set the (preprocessed) volume and clear clicks and caches.

        Args:
            image: ``(C, D, H, W)`` or ``(1, C, D, H, W)`` normalised image.
        """
        img = torch.as_tensor(image, dtype=torch.float32)
        if img.ndim == 5 and img.shape[0] == 1:
            img = img[0]
        if img.ndim != 4:
            raise ValueError(f"expected a (C, D, H, W) image, got shape {tuple(image.shape)}.")
        if not torch.isfinite(img).all():
            raise ValueError("the image contains NaN or infinite values.")
        self.spatial = tuple(int(s) for s in img.shape[1:])
        pad = [max(r - s, 0) for r, s in zip(self.roi_size, self.spatial)]
        img = F.pad(img, (0, pad[2], 0, pad[1], 0, pad[0])) if any(pad) else img
        self._image = img.to(self.device)
        padded = tuple(img.shape[1:])
        interval = _get_scan_interval(padded, self.roi_size, 3, (self.overlap,) * 3)
        self.windows: list[tuple[slice, slice, slice]] = [tuple(s[-3:]) for s in dense_patch_slices(padded, self.roi_size, interval)]
        self.weight = compute_importance_map(self.roi_size, mode=self.mode, device=self.device).to(torch.float32)
        self._embeddings: dict[int, torch.Tensor] = {}
        self._window_out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._auto: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._sum_logit = torch.zeros(padded, device=self.device)
        self._sum_conf = torch.zeros(padded, device=self.device)
        self._sum_w = torch.zeros(padded, device=self.device)
        for w in self.windows:
            self._sum_w[w] += self.weight
        self.clicks: list[tuple[tuple[float, float, float], int]] = []
        self._history: list[_Step] = []
        self.encoder_calls = 0
        self.decoder_calls = 0
        if self.eager:
            for i in range(len(self.windows)):
                self._embedding(i)

    def _require_image(self) -> None:
        if self._image is None:
            raise ValueError("no image: call set_image() first.")

    def _embedding(self, i: int) -> torch.Tensor:
        if i not in self._embeddings:
            with torch.inference_mode():
                self._embeddings[i] = self.network.encode(self._image[None][(slice(None), slice(None), *self.windows[i])])
            self.encoder_calls += 1
        return self._embeddings[i]

    # ------------------------------------------------------------------ prediction
    def _run_window(self, i: int, with_prompts: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows[i]
        crop = self._image[None][(slice(None), slice(None), *w)]
        kw = {}
        if with_prompts and self.clicks:
            pts = torch.tensor([c for c, _ in self.clicks], dtype=torch.float32, device=self.device)
            lbl = torch.tensor([lab for _, lab in self.clicks], dtype=torch.long, device=self.device)
            local, lab = clicks_in_window(pts, lbl, w)
            keep = lab >= 0
            kw["points"], kw["point_labels"] = local[keep][None], lab[keep][None]
        if with_prompts:
            prob = torch.sigmoid(self._sum_logit[w] / self._sum_w[w])
            conf = self._sum_conf[w] / self._sum_w[w]
            kw["prev_mask"] = prob[None, None]
            kw["confidence"] = (conf >= self.network.confidence_threshold).float()[None, None]
        with torch.inference_mode():
            low, _ = self.network.decode(self._embedding(i), **kw)
            logits = F.interpolate(low, size=self.roi_size, mode="trilinear", align_corners=False)
            conf = self.network.judge(crop, torch.sigmoid(logits))
        self.decoder_calls += 1
        return logits[0, 0], conf[0, 0]

    def _put(self, i: int, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        w = self.windows[i]
        if i in self._window_out:
            old_l, old_c = self._window_out[i]
            self._sum_logit[w] -= old_l * self.weight
            self._sum_conf[w] -= old_c * self.weight
        self._sum_logit[w] += out[0] * self.weight
        self._sum_conf[w] += out[1] * self.weight
        self._window_out[i] = out

    def _ensure_auto(self) -> None:
        self._require_image()
        if self._auto is None:
            for i in range(len(self.windows)):
                self._put(i, self._run_window(i, with_prompts=False))
            self._auto = dict(self._window_out)

    # ------------------------------------------------------------------ clicks
    def add_click(self, coord: Sequence[float], positive: bool = True) -> None:
        """Add a click and update the windows that contain it.

        Args:
            coord: ``(i, j, k)`` voxel coordinates in the image given to :meth:`set_image`.
            positive: ``True`` for tumour, ``False`` for background.
        """
        self._require_image()
        c = tuple(float(v) for v in coord)
        if len(c) != 3:
            raise ValueError(f"a click needs 3 coordinates, got {coord!r}.")
        if any(v < 0 or v > s - 1 for v, s in zip(c, self.spatial)):
            raise ValueError(f"click {list(c)} lies outside the image of size {list(self.spatial)}.")
        self._ensure_auto()
        step = _Step(click=(c, 1 if positive else 0))
        affected = [i for i, w in enumerate(self.windows) if all(s.start <= v < s.stop for s, v in zip(w, c))]
        for i in affected:
            w = self.windows[i]
            step.windows[i] = self._window_out[i]
            step.boxes.append((w, self._sum_logit[w].clone(), self._sum_conf[w].clone()))
        self.clicks.append(step.click)
        new = {i: self._run_window(i, with_prompts=True) for i in affected}  # all read the state before the click
        for i, out in new.items():
            self._put(i, out)
        self._history.append(step)

    def undo(self) -> bool:
        """Remove the last click and restore the state before it exactly; returns whether there was one."""
        if not self._history:
            return False
        step = self._history.pop()
        self.clicks.pop()
        for w, logit, conf in reversed(step.boxes):
            self._sum_logit[w] = logit
            self._sum_conf[w] = conf
        self._window_out.update(step.windows)
        return True

    def reset(self) -> None:
        """Remove all clicks and return to the automatic result (embeddings stay cached)."""
        self._require_image()
        self.clicks, self._history = [], []
        if self._auto is not None:
            self._sum_logit.zero_()
            self._sum_conf.zero_()
            self._window_out = {}
            for i, out in self._auto.items():
                self._put(i, out)

    # ------------------------------------------------------------------ results
    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[tuple(slice(0, s) for s in self.spatial)]

    @property
    def logits(self) -> torch.Tensor:
        """``(D, H, W)`` blended mask logits."""
        self._ensure_auto()
        return self._crop(self._sum_logit / self._sum_w)

    @property
    def probability(self) -> torch.Tensor:
        """``(D, H, W)`` mask probability."""
        return torch.sigmoid(self.logits)

    @property
    def mask(self) -> torch.Tensor:
        """``(D, H, W)`` binary mask (uint8)."""
        return (self.probability > self.threshold).to(torch.uint8)

    @property
    def confidence(self) -> torch.Tensor:
        """``(D, H, W)`` critic confidence in [0, 1]."""
        self._ensure_auto()
        return self._crop(self._sum_conf / self._sum_w).clamp(0, 1)
