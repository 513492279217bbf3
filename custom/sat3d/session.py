"""Interactive segmentation session: set an image once, add clicks, undo, reset.

Kept separate from the network (as SAM's predictor is): the session owns the image, the per-window image
embeddings, the clicks and the stitched mask / confidence map; the network only computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import compute_importance_map

from .bundle_utils import flag, parse_clicked_windows_only
from .constants import MASK_THRESHOLD
from .inferer import clicks_in_window
from .protocols import StepState, get_protocol, protocol_of

__all__ = ["InteractiveSession", "FileSession", "window_plan", "window_intensity_of"]


def window_plan(spatial: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[slice, slice, slice]]:
    """The overlapping windows covering a (padded, >= ``roi_size``) volume, as MONAI's sliding windows place them.

    The step per axis is ``int(roi * (1 - overlap))`` (at least 1), or the whole axis when it equals the
    window; MONAI's public ``dense_patch_slices`` places the windows (the last one flush with the end).
    """
    if any(s < r for s, r in zip(spatial, roi_size)):
        raise ValueError(f"volume {tuple(spatial)} is smaller than the window {tuple(roi_size)}; pad it first.")
    interval = [int(r) if int(r) == int(s) else max(int(r * (1 - overlap)), 1) for s, r in zip(spatial, roi_size)]
    return [tuple(sl[-3:]) for sl in dense_patch_slices(tuple(spatial), tuple(roi_size), interval)]


def window_intensity_of(config: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-window normalisation a weights configuration asks for (``None`` when the whole volume is
    normalised beforehand, as for our ``foreground_zscore``)."""
    if (config.get("intensity") or {}).get("name") == "window_zscore_positive":
        from .paper_preprocessing import zscore_positive

        return zscore_positive
    return None


@dataclass
class _Step:
    """What one click changed, for an exact undo."""

    click: tuple[tuple[float, float, float], int]
    windows: dict[int, "_WindowOut | None"] = field(default_factory=dict)  # old window outputs
    states: dict[int, StepState | None] = field(default_factory=dict)  # old per-window feedback
    boxes: list[tuple[tuple[slice, ...], torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # old sums


#: one window's result: logits, confidence (both ``roi_size``) and the decoder's predicted IoU
_WindowOut = tuple[torch.Tensor, torch.Tensor, float]

#: logit and confidence of voxels that no computed window covers (no click near them, automatic mode off)
SKIPPED_LOGIT, SKIPPED_CONFIDENCE = -20.0, 1.0
#: logit magnitude of voxels that agree with a click (``click_radius``)
CLICK_LOGIT = 20.0


class InteractiveSession:
    """Click-by-click segmentation of one volume with cached image embeddings.

    The volume is covered by the same overlapping windows and Gaussian blending as
    :class:`sat3d.inferer.SAT3DInferer`.  Each window's image embedding is computed once (on first use,
    or all at :meth:`set_image` with ``eager=True``).  The first access to :attr:`mask` runs the automatic
    mode on every window (unless ``clicked_windows_only``: then windows stay background until clicked, and
    the blend is over the computed windows only, so a clicked window's result holds up to its edges;
    with ``"auto"``, the first thing done with the image decides: a click means clicked windows only, reading
    the mask without a click means the automatic mode).
    :meth:`add_click` then runs one prompt step of the click protocol (:mod:`sat3d.protocols`) on the
    windows that contain the click only, and re-blends only those windows:

    * ``"sat3d"``: every click so far that lies in the window, plus the window's crop of the blended previous
      mask probability and binarised confidence (>= T);
    * ``"paper"`` (the authors' weights): only the new click, plus that window's own previous low-resolution
      logits and confidence (their loop, per window); each window is z-normalised over its voxels > 0 first.

    Args:
        network: a :class:`sat3d.SAT3D` (eval mode is set).
        roi_size: window size (default: the network's).
        overlap: window overlap fraction.
        mode: blending, ``"gaussian"`` or ``"constant"``.
        device: device of the network and caches.
        threshold: mask probability threshold.
        eager: compute all embeddings in :meth:`set_image`.
        protocol: ``"sat3d"`` or ``"paper"`` (or a protocol object).
        clicked_windows_only: ``True``: do not run the automatic mode; windows without a click stay
            background.  ``False``: automatic mode on every window, clicks refine it.  ``"auto"``: ``True`` when
            the session's first action is a click (the user segments what they click: no automatic results far
            from the clicks), ``False`` when the mask is read before any click; decided anew by
            :meth:`set_image`, and reported by :attr:`clicked_mode`.  The paper protocol has no automatic
            mode and always behaves as ``True``.
        window_intensity: applied to each window crop before the network sees it (``None``: nothing; the
            paper protocol uses :func:`sat3d.paper_preprocessing.zscore_positive`).
        encode_batch_size: windows per encoder pass when the automatic mode encodes every window.
        click_radius: the returned logits agree with the clicks: voxels within this radius (voxels) of a
            positive click are tumour, of a negative click background; 0 returns the network's output
            unchanged.  The fed-back state is the network's own output either way.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        mode: str = "gaussian",
        device: str | torch.device = "cpu",
        threshold: float = MASK_THRESHOLD,
        eager: bool = False,
        protocol: str | object = "sat3d",
        clicked_windows_only: bool | str = False,
        window_intensity: Callable[[torch.Tensor], torch.Tensor] | None = None,
        encode_batch_size: int = 1,
        click_radius: int = 0,
    ) -> None:
        if int(click_radius) < 0:
            raise ValueError(f"click_radius must be >= 0, got {click_radius}.")
        self.click_radius = int(click_radius)
        self.network = network.to(device).eval()
        self.roi_size = tuple(int(s) for s in (roi_size or network.roi_size))
        self.overlap = float(overlap)
        self.mode = mode
        self.device = torch.device(device)
        self.threshold = float(threshold)
        self.eager = flag(eager)
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        self.clicked_windows_only = parse_clicked_windows_only(clicked_windows_only)
        if not self.protocol.automatic:
            self.clicked_windows_only = True
        #: whether the current image runs clicked windows only (``None``: not decided yet, ``"auto"``)
        self.clicked_mode: bool | None = None
        self.window_intensity = window_intensity
        self.encode_batch_size = max(int(encode_batch_size), 1)
        self._image: torch.Tensor | None = None

    @classmethod
    def from_weights(cls, path: str, device: str | torch.device = "cpu", **kwargs) -> "InteractiveSession":
        """A session on the network, window, protocol and thresholds stored in a weights file (:mod:`sat3d.weights`).

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
        kwargs.setdefault("protocol", protocol_of(config))
        kwargs.setdefault("window_intensity", window_intensity_of(config))
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
        self.windows: list[tuple[slice, slice, slice]] = window_plan(padded, self.roi_size, self.overlap)
        self.weight = compute_importance_map(self.roi_size, mode=self.mode, device=self.device).to(torch.float32)
        self._embeddings: dict[int, torch.Tensor] = {}
        self._crops: dict[int, torch.Tensor] = {}
        self._window_out: dict[int, _WindowOut] = {}
        self._states: dict[int, StepState] = {}
        self._auto: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._sum_logit = torch.zeros(padded, device=self.device)
        self._sum_conf = torch.zeros(padded, device=self.device)
        # blending weight of the windows computed so far (a window not computed adds nothing, so a clicked
        # window's result reaches into its overlap with windows that were never run)
        self._sum_w = torch.zeros(padded, device=self.device)
        self._covered_w = 0.5 * float(self.weight.min())  # below it: no computed window (MONAI's map is >= 1e-3)
        self.clicks: list[tuple[tuple[float, float, float], int]] = []
        self._history: list[_Step] = []
        self.encoder_calls = 0
        self.decoder_calls = 0
        self.clicked_mode = None if self.clicked_windows_only == "auto" else self.clicked_windows_only
        if self.eager:
            self._encode_all()

    def _require_image(self) -> None:
        if self._image is None:
            raise ValueError("no image: call set_image() first.")

    def _crop(self, i: int) -> torch.Tensor:
        """``(1, C, *roi)`` window ``i`` as the network sees it."""
        if i not in self._crops:
            crop = self._image[None][(slice(None), slice(None), *self.windows[i])]
            self._crops[i] = self.window_intensity(crop) if self.window_intensity is not None else crop
        return self._crops[i]

    def _embedding(self, i: int) -> torch.Tensor:
        if i not in self._embeddings:
            with torch.inference_mode():
                self._embeddings[i] = self.network.encode(self._crop(i))
            self.encoder_calls += 1
        return self._embeddings[i]

    def _encode_all(self) -> None:
        """Embeddings of every window not yet encoded, ``encode_batch_size`` windows per pass."""
        todo = [i for i in range(len(self.windows)) if i not in self._embeddings]
        for k in range(0, len(todo), self.encode_batch_size):
            chunk = todo[k : k + self.encode_batch_size]
            with torch.inference_mode():
                emb = self.network.encode(torch.cat([self._crop(i) for i in chunk]))
            for j, i in enumerate(chunk):
                self._embeddings[i] = emb[j : j + 1]
            self.encoder_calls += len(chunk)

    def encode_next(self) -> bool:
        """Compute the embedding of the not-yet-encoded window nearest to the clicks (to the volume centre
        before any click), so that a later click there need not wait for the encoder.  Results do not
        change: a window's embedding is the same whenever it is computed.  Returns ``False`` when every
        window is encoded."""
        self._require_image()
        todo = [i for i in range(len(self.windows)) if i not in self._embeddings]
        if not todo:
            return False
        refs = [c for c, _ in self.clicks] or [tuple((s - 1) / 2 for s in self.spatial)]

        def distance(i: int) -> float:
            centre = [(w.start + w.stop - 1) / 2 for w in self.windows[i]]
            return min(sum((a - b) ** 2 for a, b in zip(centre, r)) for r in refs)

        self._embedding(min(todo, key=distance))
        return True

    # ------------------------------------------------------------------ prediction
    def _run_window(self, i: int, with_prompts: bool) -> _WindowOut:
        """One prompt step of the protocol on window ``i``; stores its feedback state."""
        w = self.windows[i]
        points = labels = None
        clicks = self.clicks if self.protocol.accumulates_clicks else self.clicks[-1:]
        if with_prompts and clicks:
            pts = torch.tensor([c for c, _ in clicks], dtype=torch.float32, device=self.device)
            lbl = torch.tensor([lab for _, lab in clicks], dtype=torch.long, device=self.device)
            local, lab = clicks_in_window(pts, lbl, w)
            keep = lab >= 0
            points, labels = local[keep][None], lab[keep][None]
        crop = self._crop(i)
        with torch.inference_mode():
            if self.protocol.blended_feedback:
                # the blended previous result at this window's place is the feedback (no prompt: automatic)
                state = StepState()
                if with_prompts and i in self._states:
                    prob = torch.sigmoid(self._blend(self._sum_logit, SKIPPED_LOGIT, w))
                    conf = self._blend(self._sum_conf, SKIPPED_CONFIDENCE, w)
                    state = StepState(prob[None, None], (conf >= self.network.confidence_threshold).float()[None, None])
            else:
                state = self._states.get(i) or self.protocol.initial_state(self.network, crop)
            out = self.protocol.step(self.network, self._embedding(i), crop, points, labels, state)
        self._states[i] = out.state
        self.decoder_calls += 1
        return out.logits[0, 0], out.confidence[0, 0], min(max(float(out.iou.reshape(-1)[0]), 0.0), 1.0)  # an IoU

    def _put(self, i: int, out: _WindowOut) -> None:
        """Set window ``i``'s contribution to the blend (replacing its previous one)."""
        w = self.windows[i]
        if i in self._window_out:
            old_l, old_c, _ = self._window_out.pop(i)
            self._sum_logit[w] -= old_l * self.weight
            self._sum_conf[w] -= old_c * self.weight
        else:  # the window joins the blend
            self._sum_w[w] += self.weight
        self._sum_logit[w] += out[0] * self.weight
        self._sum_conf[w] += out[1] * self.weight
        self._window_out[i] = out

    def _ensure_auto(self, clicking: bool = False) -> None:
        """The state before any click: the automatic result, or background where clicked windows only."""
        self._require_image()
        if self._auto is None:
            if self.clicked_mode is None:  # "auto": the first action decides
                self.clicked_mode = bool(clicking)
            if not self.clicked_mode:  # clicked windows only: nothing is computed before a click
                self._encode_all()
                for i in range(len(self.windows)):
                    self._put(i, self._run_window(i, with_prompts=False))
            self._auto = dict(self._window_out)
            self._auto_states = dict(self._states)

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
        if any(not math.isfinite(v) or v < 0 or v > s - 1 for v, s in zip(c, self.spatial)):
            raise ValueError(f"click {list(c)} lies outside the image of size {list(self.spatial)}.")
        self._ensure_auto(clicking=True)
        step = _Step(click=(c, 1 if positive else 0))
        affected = [i for i, w in enumerate(self.windows) if all(s.start <= v < s.stop for s, v in zip(w, c))]
        for i in affected:
            w = self.windows[i]
            step.windows[i] = self._window_out.get(i)
            step.states[i] = self._states.get(i)
            step.boxes.append((w, self._sum_logit[w].clone(), self._sum_conf[w].clone(), self._sum_w[w].clone()))
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
        for w, logit, conf, weight in reversed(step.boxes):
            self._sum_logit[w] = logit
            self._sum_conf[w] = conf
            self._sum_w[w] = weight
        for i, out in step.windows.items():
            if out is None:
                self._window_out.pop(i, None)
            else:
                self._window_out[i] = out
        for i, st in step.states.items():
            if st is None:
                self._states.pop(i, None)
            else:
                self._states[i] = st
        return True

    def reset(self) -> None:
        """Remove all clicks and return to the automatic result (embeddings stay cached)."""
        self._require_image()
        self.clicks, self._history = [], []
        if self._auto is not None:
            self._sum_logit.zero_()
            self._sum_conf.zero_()
            self._sum_w.zero_()
            self._window_out = {}
            for i, out in self._auto.items():
                self._put(i, out)
            self._states = dict(self._auto_states)

    # ------------------------------------------------------------------ results
    def _unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x[tuple(slice(0, s) for s in self.spatial)]

    def _blend(self, total: torch.Tensor, empty: float, region: tuple = (...,)) -> torch.Tensor:
        """The weighted mean of the computed windows' ``total`` (in ``region``, default everywhere); ``empty``
        where no computed window reaches."""
        sum_w = self._sum_w[region]
        return torch.where(sum_w > self._covered_w, total[region] / sum_w.clamp(min=self._covered_w), empty)

    def _agree_with_clicks(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with the balls of ``click_radius`` around the clicks set to tumour / background."""
        r = self.click_radius
        if not r or not self.clicks:
            return logits
        logits = logits.clone()
        size = logits.shape
        for c, lab in self.clicks:
            p = [int(round(v)) for v in c]
            box = tuple(slice(max(q - r, 0), min(q + r + 1, n)) for q, n in zip(p, size))
            grid = torch.stack(torch.meshgrid(*[torch.arange(b.start, b.stop, device=logits.device) for b in box],
                                              indexing="ij"), -1)
            ball = ((grid - torch.tensor(p, device=logits.device)) ** 2).sum(-1) <= r * r
            region = logits[box]
            region[ball] = CLICK_LOGIT if lab == 1 else -CLICK_LOGIT
        return logits

    @property
    def logits(self) -> torch.Tensor:
        """``(D, H, W)`` blended mask logits (agreeing with the clicks within ``click_radius``)."""
        self._ensure_auto()
        return self._agree_with_clicks(self._unpad(self._blend(self._sum_logit, SKIPPED_LOGIT)))

    @property
    def probability(self) -> torch.Tensor:
        """``(D, H, W)`` mask probability."""
        return torch.sigmoid(self.logits)

    @property
    def mask(self) -> torch.Tensor:
        """``(D, H, W)`` binary mask (uint8)."""
        return (self.probability > self.threshold).to(torch.uint8)

    @property
    def predicted_iou(self) -> float | None:
        """The decoder's predicted IoU of the mask (its IoU head), as a per-case quality estimate.

        The IoU each window's decoder predicts for its own mask, averaged over the windows weighted by how
        many voxels of the whole mask they hold; ``None`` when the mask is empty.  A learned estimate, not a
        measurement: the model card reports how well it tracks the true IoU.
        """
        mask = self.mask
        full = torch.zeros(self._sum_w.shape, dtype=torch.uint8, device=mask.device)
        full[tuple(slice(0, s) for s in self.spatial)] = mask
        num = den = 0.0
        for i, (_, _, iou) in self._window_out.items():
            n = float(full[self.windows[i]].sum())
            if n > 0 and math.isfinite(iou):
                num, den = num + n * iou, den + n
        return num / den if den > 0 else None

    @property
    def confidence(self) -> torch.Tensor:
        """``(D, H, W)`` critic confidence in [0, 1]."""
        self._ensure_auto()
        return self._unpad(self._blend(self._sum_conf, SKIPPED_CONFIDENCE)).clamp(0, 1)


class FileSession:
    """An interactive session on an image *file*, with the bundle's own preprocessing and coordinate mapping.

    The image is loaded and preprocessed exactly as ``inference.json`` does for the weights (RAS, their
    spacing, their intensity normalisation); clicks are given in the file's voxel indices or world (RAS mm)
    coordinates, as in a clicks file; mask and confidence come back on the file's own grid (the
    preprocessing inverted, as folder inference writes them).

    Args:
        weights: a SAT3D weights file (its configuration selects window, preprocessing and protocol).
        config_file: the bundle's ``inference.json`` (default: the one next to this package's bundle).
        device: device of the network.
        overrides: further ``inference.json`` settings (e.g. ``{"modality": "CT"}``).

    Example::

        fs = FileSession("model.pt")
        fs.set_image("case.nii.gz")
        fs.add_click((120, 88, 40))                       # voxel of the file
        fs.add_click((-12.5, 30.0, 81.0), positive=False, space="world")
        mask, confidence = fs.mask, fs.confidence         # numpy arrays on the file's grid
    """

    def __init__(self, weights: str, config_file: str | None = None, device: str | torch.device = "cpu",
                 overrides: Mapping[str, Any] | None = None) -> None:
        from pathlib import Path

        from monai.bundle import ConfigParser

        if config_file is None:
            here = Path(__file__).resolve()
            found = [c for c in (here.parents[2] / "bundle" / "configs" / "inference.json",
                                 here.parents[1] / "configs" / "inference.json") if c.is_file()]
            if not found:
                raise ValueError("the bundle's inference.json was not found next to the sat3d package; pass config_file.")
            config_file = str(found[0])
        parser = ConfigParser()
        parser.read_config(config_file)
        parser.update({"bundle_root": str(Path(config_file).resolve().parents[1]), "ckpt_path": str(weights),
                       "require_weights": True, **dict(overrides or {})})
        self.preprocessing = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        self.session = InteractiveSession.from_weights(
            str(weights), device=device, overlap=inferer.overlap, mode=inferer.mode,
            clicked_windows_only=inferer.clicked_windows_only, window_intensity=inferer.window_intensity,
            protocol=inferer.protocol, click_radius=inferer.click_radius)
        self.threshold = self.session.threshold
        self._image = None
        self._grid: tuple[np.ndarray, np.ndarray] | None = None  # inverted (logits, confidence) of the current state

    def set_image(self, path: str) -> None:
        """Load and preprocess ``path`` and give it to the session (clears clicks)."""
        self.path = str(path)
        self._image = self.preprocessing({"image": self.path})["image"]
        self.session.set_image(self._image.as_tensor())
        self._grid = None

    def _require(self):
        if self._image is None:
            raise ValueError("no image: call set_image(path) first.")
        return self._image

    def add_click(self, coord: Sequence[float], positive: bool = True, space: str = "voxel") -> None:
        """Add a click at ``coord`` in the file's ``"voxel"`` indices or ``"world"`` RAS mm coordinates."""
        from .clicks import clicks_to_voxels

        img = self._require()
        if space not in ("voxel", "world"):
            raise ValueError(f"space must be 'voxel' or 'world', got {space!r}.")
        entry = {"space": space, "positive" if positive else "negative": [list(coord)]}
        try:
            vox, _ = clicks_to_voxels(entry, np.asarray(img.meta["original_affine"]), np.asarray(img.affine), img.shape[1:])
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from None
        self.session.add_click(tuple(vox[0].tolist()), positive=positive)
        self._grid = None

    def undo(self) -> bool:
        """Remove the last click (exact)."""
        self._grid = None
        return self.session.undo()

    def reset(self) -> None:
        """Back to the automatic result."""
        self._grid = None
        self.session.reset()

    def _on_file_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Logits and confidence on the file's grid (the preprocessing inverted once per state)."""
        from monai.data import MetaTensor

        img = self._require()
        if self._grid is not None:
            return self._grid
        pred = torch.stack([self.session.logits, self.session.confidence]).cpu()
        pred = MetaTensor(pred, meta=dict(img.meta), applied_operations=list(img.applied_operations))
        out = self.preprocessing.inverse({"image": pred})["image"]
        out = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
        self._grid = (out[0].numpy(), out[1].numpy())
        return self._grid

    @property
    def mask(self) -> np.ndarray:
        """Binary mask (uint8) on the file's grid."""
        logits, _ = self._on_file_grid()
        return (1.0 / (1.0 + np.exp(-logits)) > self.threshold).astype(np.uint8)

    @property
    def confidence(self) -> np.ndarray:
        """Critic confidence in [0, 1] on the file's grid."""
        return np.clip(self._on_file_grid()[1], 0.0, 1.0).astype(np.float32)
