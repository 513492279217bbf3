"""Ignite handlers SAT3D adds to MONAI's: a plain-text progress line (iterations, losses, speed, ETA) for log
files, the start of a run (fine-tuning from a weights file, or a note on the resumed checkpoint) and the
export of ``model.pt`` in the weights format of :mod:`sat3d.weights`.

Saving and resuming the training state is MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` (Ignite's
``Checkpoint``), the saver made atomic by :func:`atomic_checkpoint_saver`; :func:`latest_checkpoint` finds the
file to resume from and :func:`checkpoint_objects` lists what goes into it.
"""

from __future__ import annotations

import logging
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

__all__ = ["ProgressLogger", "TrainingStart", "ExportWeights", "atomic_checkpoint_saver", "latest_checkpoint", "checkpoint_file",
           "checkpoint_objects"]

logger = logging.getLogger("sat3d.train")

#: iteration-numbered checkpoints MONAI's CheckpointSaver writes (interval and final)
_CKPT_NAME = re.compile(r"^checkpoint_(?:final_)?iteration=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path, enabled: bool | str = True) -> str | None:
    """The newest complete training checkpoint in ``ckpt_dir`` (``checkpoint_iteration=N.pt`` or
    ``checkpoint_final_iteration=N.pt`` from MONAI's ``CheckpointSaver``), or ``None`` (also when not ``enabled``:
    the config's ``resume`` switch).

    MONAI writes these files in place (not atomically), so a kill during a save can leave the newest one
    truncated; such a file (not a complete zip archive) is skipped with a warning and the one before it
    (the saver keeps two) is used.
    """
    from .bundle_utils import flag

    folder = Path(ckpt_dir)
    if not flag(enabled) or not folder.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_NAME.match(p.name))), reverse=True)
    for _, path in found:
        if checkpoint_file(path) is not None:
            return str(path)
    return None


def checkpoint_file(path: str | Path | None) -> str | None:
    """``path`` if it is a complete checkpoint (a readable zip archive, as ``torch.save`` writes), else ``None``
    (``None``, missing, or truncated by a kill during a save: a warning names it)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path):  # opening reads the central directory, written last: a truncated file lacks it
            pass
    except (zipfile.BadZipFile, OSError):
        logger.warning("%s is incomplete (interrupted while saving); skipping it.", path)
        return None
    return str(path)


def atomic_checkpoint_saver(*args: Any, **kwargs: Any) -> Any:
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written whole or not at all.

    MONAI writes checkpoints in place (Ignite's ``DiskSaver(atomic=False)``, for the files' group/other read
    permission, which Ignite's atomic save now sets too), and a file of fixed name (``checkpoint_best_loss.pt``,
    rewritten at every new best) is deleted before its successor is written: a kill in between leaves a
    truncated file or none in place of the last good one.  Here every file is written to a temporary file in
    the same folder and renamed over the old one, which a fixed name no longer deletes first.
    """
    from monai.handlers import CheckpointSaver

    saver = CheckpointSaver(*args, **kwargs)
    for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
        checkpoint = getattr(saver, name, None)
        if checkpoint is not None:
            if not hasattr(checkpoint.save_handler, "_atomic"):
                raise RuntimeError("this MONAI/Ignite version's CheckpointSaver cannot be made atomic.")
            checkpoint.save_handler._atomic = True
            if getattr(checkpoint.save_handler, "filename", None) is not None:  # the rename replaces it
                checkpoint.save_handler.remove = lambda filename: None
    return saver


def checkpoint_objects(trainer: Any = None, **objects: Any) -> dict[str, Any]:
    """What a resumable checkpoint holds: the given objects (network, optimisers, schedulers) without
    ``None`` entries, plus the trainer and its AMP scalers when it has them."""
    out = {k: v for k, v in objects.items() if v is not None}
    if trainer is not None:
        out["trainer"] = trainer
        for name in ("scaler", "critic_scaler"):
            if getattr(trainer, name, None) is not None:
                out[name] = getattr(trainer, name)
    return out


def _rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class TrainingStart:
    """At ``STARTED`` (after MONAI's ``CheckpointLoader``): say where a resumed run continues, or, for a new run,
    load ``init_weights`` (fine-tuning; weights of a preset's base grow into it, see
    :func:`sat3d.weights.load_weights`).  A run that already reached ``max_epochs`` says so.

    Args:
        network: the SAT3D network.
        resumed_from: the checkpoint the loader restored (``None``: a new run).
        init_weights: weights file for a new run (``None``: random initialisation).
        model_config: the run's configuration; its checked keys must agree with the weights file's.
    """

    def __init__(self, network: torch.nn.Module, resumed_from: str | None = None, init_weights: str | None = None,
                 model_config: dict[str, Any] | None = None) -> None:
        from .weights import optional_path

        self.network = network
        self.resumed_from = resumed_from
        self.init_weights = optional_path(init_weights)
        self.model_config = dict(model_config or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.resumed_from:
            logger.info("resumed from %s at epoch %d, iteration %d", self.resumed_from, engine.state.epoch, engine.state.iteration)
        elif self.init_weights:
            from .weights import CHECKED_KEYS, FINE_TUNABLE_KEYS, load_weights

            expect = {k: v for k, v in self.model_config.items() if k in CHECKED_KEYS and k not in FINE_TUNABLE_KEYS}
            load_weights(self.network, self.init_weights, require=True, expect=expect, grow=True)
            logger.info("fine-tuning from %s", self.init_weights)
        if engine.state.max_epochs is not None and engine.state.epoch >= engine.state.max_epochs:
            logger.warning("training already finished: epoch %d of max_epochs %d; raise max_epochs to continue.",
                           engine.state.epoch, engine.state.max_epochs)


class ExportWeights:
    """Write ``path`` in the weights format (float32, carrying ``model_config`` and the iteration) every
    ``interval`` iterations and when the run completes; rank 0 only, atomically.  This is the ``model.pt``
    the inference and evaluate workflows read.

    Args:
        network: the SAT3D network.
        path: output file.
        model_config: configuration stored with the weights (see :mod:`sat3d.weights`).
        interval: iterations between exports.
    """

    def __init__(self, network: torch.nn.Module, path: str, model_config: dict[str, Any] | None = None, interval: int = 100) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1 iteration, got {interval}.")
        self.network = network
        self.path = Path(path)
        self.model_config = dict(model_config or {})
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _rank0():
            return
        from .weights import save_weights

        config = dict(self.model_config)
        config.setdefault("training", "sat3d train workflow")
        config["training"] = f"{config['training']} (iteration {engine.state.iteration}, epoch {engine.state.epoch})"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(self.network, self.path, config, half=False)


class ProgressLogger:
    """Every ``every`` iterations log ``iteration i/N (epoch e) loss ... s/it ETA hh:mm`` to ``sat3d.train``.

    Unlike a progress bar it writes whole lines, so a background run logging to a file stays readable.
    The speed is measured over the last ``every`` iterations of this process (a resumed run starts its clock
    at the resume).

    Args:
        every: log interval in iterations.
        keys: output keys to print (mean over the interval).
    """

    def __init__(self, every: int = 10, keys: tuple[str, ...] = ("loss", "loss_seg", "loss_iou", "critic_loss")) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.every = int(every)
        self.keys = tuple(keys)
        self.logger = logging.getLogger("sat3d.train")
        self._sums: dict[str, float] = {}
        self._n = 0
        self._t0: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _start(self, engine: Engine) -> None:
        self._t0 = time.perf_counter()
        self._sums, self._n = {}, 0

    def _iteration(self, engine: Engine) -> None:
        out = engine.state.output if isinstance(engine.state.output, dict) else {}
        for k in self.keys:
            if k in out:
                self._sums[k] = self._sums.get(k, 0.0) + float(out[k])
        self._n += 1
        if engine.state.iteration % self.every:
            return
        now = time.perf_counter()
        per_it = (now - (self._t0 or now)) / max(self._n, 1)
        total = (engine.state.max_epochs or 0) * (engine.state.epoch_length or 0)
        left = max(total - engine.state.iteration, 0) * per_it
        parts = " ".join(f"{k}={v / self._n:.4f}" for k, v in self._sums.items())
        self.logger.info(
            "iteration %d/%d (epoch %d) %s %.2f s/it ETA %d:%02d",
            engine.state.iteration, total, engine.state.epoch, parts, per_it, int(left // 3600), int(left % 3600 // 60),
        )
        self._t0, self._sums, self._n = now, {}, 0
