"""Whole-volume inference of SAT3D with clicks (MONAI ``Inferer`` over the interactive session)."""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from .bundle_utils import parse_clicked_windows_only
from .transforms import CLICKS_META_KEY

__all__ = ["SAT3DInferer", "clicks_in_window", "PREDICTED_IOU_KEY"]

#: metadata key of the inferer's output holding the predicted IoU of the mask (``None``: empty mask)
PREDICTED_IOU_KEY = "sat3d_predicted_iou"


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
    """Run SAT3D over a whole volume with overlapping windows, through :class:`sat3d.session.InteractiveSession`.

    The result is what a user of the session gets (one engine for folder inference, MONAI Label and the
    evaluation): the automatic result of every window, then the clicks added one by one in their order,
    each running one prompt step of the click protocol (:mod:`sat3d.protocols`) on the windows that contain
    it.  With ``clicked_windows_only`` (or the paper protocol, which has no automatic mode) windows without
    a click are not computed at all and stay background; with ``"auto"``, a request with clicks gets that
    and a request without clicks the automatic mode, whatever was asked of the same image before (clicks
    never run on top of a cached automatic result).

    Sessions are kept in a small LRU cache (``cache_size``) keyed by the image content: a later request on
    the same image whose clicks include the cached session's clicks only runs the new clicks (embeddings,
    previous mask and confidence are reused), in whatever order the request lists them (3D Slicer sends the
    positive clicks first); the cached clicks less the last one is an undo.  Calls are serialised by a lock,
    so concurrent requests are safe.  With ``prefetch_windows``, a call that ran clicks in the clicked-windows
    mode is followed by a background thread that encodes up to that many further windows, nearest to the
    clicks first, one at a time under the lock, while the user looks at the answer; a new call stops it after
    the window in progress.  So as not to slow down the rest of the answer (inverse resampling, writing), it
    starts when :meth:`answered` is called (the bundle's postprocessing ends with it) or ``prefetch_delay``
    seconds after the call, whichever comes first.  A later click that reaches those windows then runs the
    decoder only.  Results do not change (an embedding is the same whenever it is computed).

    The output is a ``MetaTensor`` ``(1, 2, D, H, W)`` carrying the input's metadata: channel 0 the mask
    logits, channel 1 the critic's confidence in [0, 1].

    Args:
        roi_size: window size (the network's crop size).
        sw_batch_size: windows per encoder pass when all windows are encoded.
        overlap: window overlap fraction.
        mode: blending mode, ``"gaussian"`` or ``"constant"``.
        sw_device: device of the network; ``None`` uses the input's device.
        device: device of the stitched output; ``None`` uses the input's device.
        clicked_windows_only: see above.
        protocol: click protocol, ``"sat3d"`` or ``"paper"`` (from the weights' configuration).
        window_intensity: per-window normalisation (from the weights' configuration), or ``None``.
        cache_size: sessions kept between calls (0: none).
        click_radius: the returned mask agrees with the clicks within this radius (voxels; see
            :class:`sat3d.session.InteractiveSession`); 0 returns the network's output unchanged.
        prefetch_windows: windows encoded in the background after a call with clicks (0: none; needs
            ``cache_size`` >= 1, since only a cached session is used again).
        prefetch_delay: seconds after a call at which the prefetch starts if :meth:`answered` was not called.
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (128, 128, 128),
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        mode: str = "gaussian",
        sw_device: Any = None,
        device: Any = None,
        clicked_windows_only: bool | str = False,
        protocol: str = "sat3d",
        window_intensity: Any = None,
        cache_size: int = 0,
        click_radius: int = 0,
        prefetch_windows: int = 0,
        prefetch_delay: float = 2.0,
    ) -> None:
        super().__init__()
        if int(prefetch_windows) < 0:
            raise ValueError(f"prefetch_windows must be >= 0, got {prefetch_windows}.")
        self.prefetch_windows = int(prefetch_windows)
        self.prefetch_delay = float(prefetch_delay)
        self._answered = threading.Event()
        _INFERERS.add(self)
        if int(click_radius) < 0:
            raise ValueError(f"click_radius must be >= 0, got {click_radius}.")
        self.click_radius = int(click_radius)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        if int(sw_batch_size) < 1 or int(cache_size) < 0:
            raise ValueError(f"sw_batch_size must be >= 1 and cache_size >= 0, got {sw_batch_size} and {cache_size}.")
        self.roi_size = tuple(int(s) for s in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.sw_device = sw_device
        self.device = device
        self.clicked_windows_only = parse_clicked_windows_only(clicked_windows_only)  # the command line gives strings
        self.protocol = protocol
        self.window_intensity = window_intensity
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every call: a prefetch thread of an older call stops
        #: the background thread of the last prefetch (``None``: none started)
        self.prefetch_thread: threading.Thread | None = None
        #: how the last call used the cache: "new", "extended", "undo", "same" or "replayed"
        self.last_cache_use = ""

    def _session(self, network, image: torch.Tensor, clicks: list) -> Any:
        from .session import InteractiveSession

        key = (id(network), tuple(image.shape), _fingerprint(image)) if self.cache_size else None
        session = self._cache.pop(key, None) if key is not None else None
        if session is not None and self.clicked_windows_only == "auto" and bool(session.clicked_mode) != bool(clicks):
            # no click now: the automatic mode, not the clicked session emptied; clicks on a cached automatic
            # result: the clicked windows from nothing, as a request with clicks always gets (and is scored)
            session = None
        if session is not None:
            have = session.clicks
            missing, added = Counter(have) - Counter(clicks), Counter(clicks) - Counter(have)
            if not missing:
                # every cached click is still there: the rest are new.  Order within a request is not the order
                # they were made in (3D Slicer sends all positive clicks, then all negative ones), so the new
                # clicks are found as a multiset difference and run after the cached ones.
                new = []
                for c in clicks:
                    if added[c] > 0:
                        new.append(c)
                        added[c] -= 1
                clicks = have + new
                self.last_cache_use = "extended" if new else "same"
            elif have and Counter(have[:-1]) == Counter(clicks):
                session.undo()
                self.last_cache_use = "undo"
            else:
                session.reset()
                self.last_cache_use = "replayed"
        else:
            session = InteractiveSession(
                network, roi_size=self.roi_size, overlap=self.overlap, mode=self.mode,
                device=self.sw_device if self.sw_device is not None else image.device,
                protocol=self.protocol, clicked_windows_only=self.clicked_windows_only,
                window_intensity=self.window_intensity, encode_batch_size=self.sw_batch_size,
                click_radius=self.click_radius,
            )
            session.set_image(image[0])
            self.last_cache_use = "new"
        for c, lab in clicks[len(session.clicks):]:
            session.add_click(c, positive=lab == 1)
        if key is not None:
            self._cache[key] = session
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return session

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
    ) -> MetaTensor:
        """Segment a volume.

        Args:
            inputs: ``(1, C, D, H, W)`` normalised image (batch size 1: clicks are per image).
            network: a :class:`sat3d.SAT3D`.
            points: ``(N, 3)`` or ``(1, N, 3)`` click voxel coordinates in ``inputs``, in the order they were
                made; when ``None``, clicks that :class:`sat3d.transforms.ClicksFromRequestd` stored in the
                input's metadata are used.
            point_labels: ``(N,)`` or ``(1, N)`` 1 positive / 0 negative.

        Returns:
            ``(1, 2, D, H, W)`` MetaTensor: logits and confidence; its metadata ``PREDICTED_IOU_KEY`` holds the
            session's :attr:`~sat3d.session.InteractiveSession.predicted_iou`.
        """
        if inputs.ndim != 5 or inputs.shape[0] != 1:
            raise ValueError(f"expected a (1, C, D, H, W) image (clicks are per image), got shape {tuple(inputs.shape)}.")
        spatial = tuple(inputs.shape[2:])
        if points is None and isinstance(inputs, MetaTensor) and inputs.meta.get(CLICKS_META_KEY):
            points, point_labels = inputs.meta[CLICKS_META_KEY]["points"], inputs.meta[CLICKS_META_KEY]["labels"]
        pts, lbl = _normalise_clicks(points, point_labels, spatial, inputs.device)
        clicks = [] if pts is None else [(tuple(float(v) for v in p), int(q)) for p, q in zip(pts.tolist(), lbl.tolist())]
        raw = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        self._generation += 1  # before waiting for the lock: a running prefetch stops after its window
        self._answered.clear()
        with self._lock:
            self._generation += 1  # this call's own number, for its prefetch
            generation = self._generation
            session = self._session(network, raw, clicks)
            out = torch.stack([session.logits, session.confidence])[None]
            iou = session.predicted_iou
        if self.prefetch_windows and self.cache_size and clicks and session.clicked_mode:
            self.prefetch_thread = threading.Thread(target=self._prefetch, args=(session, generation), daemon=True,
                                                    name="sat3d-prefetch")
            self.prefetch_thread.start()
        out = out.to(self.device if self.device is not None else inputs.device)
        if not isinstance(inputs, MetaTensor):
            return MetaTensor(out, meta={PREDICTED_IOU_KEY: iou})
        return MetaTensor(out, meta={**inputs.meta, PREDICTED_IOU_KEY: iou}, applied_operations=list(inputs.applied_operations))

    def stop_prefetch(self) -> None:
        """Stop a running prefetch after the window in progress and wait for it (also done at exit: a thread
        left inside torch while the interpreter shuts down aborts the process)."""
        self._generation += 1
        self._answered.set()
        thread = self.prefetch_thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join()

    def answered(self, value: Any = None) -> Any:
        """Tell the inferer that the answer of the last call is complete (the prefetch may start); returns
        ``value`` unchanged, so that a ``Lambdad`` at the end of the postprocessing can call it."""
        self._answered.set()
        return value

    def _prefetch(self, session: Any, generation: int) -> None:
        """Encode up to ``prefetch_windows`` windows of ``session``, one per lock hold, until a new call comes."""
        self._answered.wait(self.prefetch_delay)
        try:
            for _ in range(self.prefetch_windows):
                with self._lock:
                    if self._generation != generation or not any(s is session for s in self._cache.values()):
                        return
                    if not session.encode_next():
                        return
        except Exception as e:  # a background nicety: never take the server down
            logging.getLogger(__name__).warning("window prefetch stopped: %s", e)


#: every inferer, so that their prefetch threads are stopped before the interpreter exits
_INFERERS: "weakref.WeakSet[SAT3DInferer]" = weakref.WeakSet()


@atexit.register
def _stop_all_prefetches() -> None:
    for inferer in list(_INFERERS):
        inferer.stop_prefetch()


def _fingerprint(image: torch.Tensor) -> str:
    """A content hash of an image (cache key of sessions)."""
    arr = image.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest()


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
