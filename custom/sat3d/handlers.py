"""Ignite handlers SAT3D adds: a plain-text progress line (iterations, losses, speed, ETA) for log files."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["ProgressLogger"]


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
