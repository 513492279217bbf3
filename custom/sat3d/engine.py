"""Ignite engines for SAT3D: the min-max trainer iteration and checkpointing with resume."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from .click_simulation import CLICK_SAMPLING, sample_error_clicks, sample_first_clicks
from .constants import MASK_THRESHOLD
from .losses import CriticLoss, GeneratorLoss
from .protocols import Sat3dProtocol, StepOutput, StepState

__all__ = ["SAT3DTrainer", "frozen", "average_gradients", "target_rows"]

logger = logging.getLogger("sat3d.train")


@contextmanager
def frozen(module: torch.nn.Module):
    """Temporarily stop gradients into ``module``'s parameters (gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def average_gradients(params) -> None:
    """Average gradients over the processes of the default group (data-parallel training)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def instance_ids(label: torch.Tensor) -> torch.Tensor:
    """The instance values (> 0) present in one crop's instance label."""
    ids = torch.unique(torch.round(label).long())
    return ids[ids > 0]


def target_rows(labels: torch.Tensor, targets_per_crop: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training targets of a batch of crops whose labels hold instance values (0 background, 1, 2, ...).

    Row ``b`` of each sample is its union target (every labelled voxel: what the automatic mode must find).
    With ``targets_per_crop`` > 1, up to ``targets_per_crop - 1`` further rows per sample take one instance
    each (drawn without replacement), as SAM trains several prompts on one image embedding: the image is
    encoded once and the cheap prompt steps run for every row.  A crop with fewer instances gets fewer rows.

    Args:
        labels: ``(B, 1, D, H, W)`` instance labels (a binary label is one instance).
        targets_per_crop: rows per crop at most (>= 1).
        generator: random generator (on CPU) for the choice of instances.

    Returns:
        ``source`` ``(R,)`` the crop of each row, ``targets`` ``(R, 1, D, H, W)`` binary, ``instance``
        ``(R,)`` bool (True for single-instance rows, which always start from a click on their instance).
    """
    if targets_per_crop < 1:
        raise ValueError(f"targets_per_crop must be >= 1, got {targets_per_crop}.")
    union = (labels > 0.5).to(torch.float32)
    source, rows, inst = list(range(labels.shape[0])), [union], [False] * labels.shape[0]
    if targets_per_crop > 1:
        for b in range(labels.shape[0]):
            ids = instance_ids(labels[b])
            if len(ids) == 0:
                continue
            pick = ids[torch.randperm(len(ids), generator=generator)[: targets_per_crop - 1].to(ids.device)]
            for v in pick.tolist():
                source.append(b)
                rows.append((torch.round(labels[b : b + 1]) == v).to(torch.float32))
                inst.append(True)
    return (torch.as_tensor(source, device=labels.device), torch.cat(rows, 0),
            torch.as_tensor(inst, dtype=torch.bool, device=labels.device))


class SAT3DTrainer(SupervisedTrainer):
    """Supervised trainer whose iteration is SAT3D's min-max step.

    Per batch: the image embedding is computed once; then ``num_prompt_steps`` decoder passes follow, for
    each target row (one per crop, plus single-instance rows with ``targets_per_crop`` > 1).
    Step 1 has no clicks (or, with ``first_click_prob``, one positive click) and no dense prompt; each later step adds one click per sample drawn from the
    error region of the previous prediction (false negative -> positive click, false positive -> negative
    click) and feeds back the previous mask probability and the binarised critic confidence
    (``confidence >= T``).  The generator loss (see :class:`~sat3d.losses.GeneratorLoss`) is averaged over
    the steps and back-propagated into encoder, prompt encoder and decoder; the critic's parameters are
    frozen during this pass, so the adversarial term moves only the generator.  Then the critic gets its
    own update with its own optimiser (ground truth = real, last prediction = fake).

    With ``torch.distributed`` initialised, gradients of both networks are averaged over the processes
    before each optimiser step (data parallel; every process starts from the same weights).

    Args:
        critic_optimizer: optimiser over ``network.critic`` parameters.
        num_prompt_steps: m, prompt steps per sample.
        generator_loss: defaults to ``GeneratorLoss(0.01, 0.1, T)``.
        critic_loss: defaults to :class:`~sat3d.losses.CriticLoss`.
        seed: seed of the click sampler.
        grad_clip: clip each network's gradient norm to this value before its step (``None``: no clipping).
        mask_threshold: probability above which a voxel counts as predicted when clicks are drawn from errors.
        first_click_prob: probability that a sample with tumour starts (step 1) from one positive click
            deep inside the tumour instead of no prompt (0: the paper's schedule, step 1 automatic).  A
            curriculum for small compute: the click tells the decoder where to look from the first step.
            A click designates one object, so a crop whose label holds several instances starts its union
            row without a click (the automatic mode's target) and each instance row from its own click.
            With batch size > 1, samples drawn without a click get a padding point (and, with
            ``click_prompt_radius``, an empty painted prompt) instead of the automatic mode's "no prompt".
        click_sampling: where the error clicks are drawn, ``"uniform"`` (any error voxel, the paper) or
            ``"interior"`` (deep inside the largest error component, as the evaluation's user clicks).
        click_prompt_radius: clicks are also painted into the dense mask prompt (see
            :class:`sat3d.protocols.Sat3dProtocol`); must equal the weights' ``click_prompt_radius``.
        accumulation_steps: optimiser step every this many iterations (gradients averaged), as MONAI's.
        targets_per_crop: with labels that hold instance values (``RandSyntheticLesiond(instance_labels=True)``),
            each crop is encoded once and its prompt steps run for the union target plus up to
            ``targets_per_crop - 1`` single instances, each starting from a click inside it (see
            :func:`target_rows`).  1: one target per crop, every labelled voxel.
        other args: as :class:`monai.engines.SupervisedTrainer` (``optimizer`` must hold only
            ``network.generator_parameters()``; ``loss_function`` is unused and may be ``None``).
    """

    def __init__(
        self,
        *args: Any,
        critic_optimizer: torch.optim.Optimizer,
        num_prompt_steps: int = 5,
        generator_loss: GeneratorLoss | None = None,
        critic_loss: torch.nn.Module | None = None,
        seed: int = 0,
        grad_clip: float | None = None,
        mask_threshold: float = MASK_THRESHOLD,
        first_click_prob: float = 0.0,
        click_sampling: str = "uniform",
        click_prompt_radius: float = 0.0,
        targets_per_crop: int = 1,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("loss_function", None)
        # our iteration accumulates gradients itself (MONAI < 1.6's SupervisedTrainer has no accumulation_steps)
        accumulation_steps = int(kwargs.pop("accumulation_steps", 1))
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}.")
        super().__init__(*args, **kwargs)
        self.accumulation_steps = accumulation_steps
        if num_prompt_steps < 1:
            raise ValueError(f"num_prompt_steps must be >= 1, got {num_prompt_steps}.")
        net = self.network
        crit_ids = {id(p) for p in net.critic.parameters()}
        if any(id(p) in crit_ids for g in self.optimizer.param_groups for p in g["params"]):
            raise ValueError("the generator optimizer must not hold critic parameters; use network.generator_parameters().")
        self.critic_optimizer = critic_optimizer
        self.num_prompt_steps = int(num_prompt_steps)
        self.generator_loss = generator_loss or GeneratorLoss(threshold=net.confidence_threshold)
        self.critic_loss = critic_loss or CriticLoss()
        self.click_generator = torch.Generator().manual_seed(int(seed))
        if grad_clip is not None and float(grad_clip) <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}.")
        self.grad_clip = float(grad_clip) if grad_clip is not None else None
        self.critic_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        if not 0.0 < float(mask_threshold) < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}.")
        self.mask_threshold = float(mask_threshold)
        if not 0.0 <= float(first_click_prob) <= 1.0:
            raise ValueError(f"first_click_prob must be in [0, 1], got {first_click_prob}.")
        self.first_click_prob = float(first_click_prob)
        if click_sampling not in CLICK_SAMPLING:
            raise ValueError(f"click_sampling must be one of {CLICK_SAMPLING}, got {click_sampling!r}.")
        self.click_sampling = click_sampling
        # training follows our protocol (the paper's is for their weights only), with the settings the weights keep
        self.protocol = Sat3dProtocol(click_prompt_radius)
        if int(targets_per_crop) < 1:
            raise ValueError(f"targets_per_crop must be >= 1, got {targets_per_crop}.")
        self.targets_per_crop = int(targets_per_crop)

    def _steps(self, engine: "SAT3DTrainer") -> tuple[bool, bool]:
        acc = engine.accumulation_steps
        if acc == 1:
            return True, True
        length = engine.state.epoch_length
        local = (engine.state.iteration - 1) % length if length else engine.state.iteration - 1
        last = length is not None and local + 1 == length
        return local % acc == 0, (local + 1) % acc == 0 or last

    def _backward_step(self, loss, optimizer, scaler, params, step: bool) -> None:
        loss = loss / self.accumulation_steps
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if not step:
            return
        average_gradients(params)
        if self.grad_clip is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def _prompt_step(self, net, embedding, crops, points, labels, state: StepState, first: bool):
        """One protocol step for all rows.  In the first step, rows without a click run the automatic mode
        exactly (no point at all, as a user's automatic run), apart from rows that start from a click."""
        has = (labels >= 0).any(1) if labels.shape[1] else torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
        if not first or bool(has.all()) or not bool(has.any()):
            return self.protocol.step(net, embedding, crops, points, labels, state, detach_feedback=True)
        auto, clicked = torch.nonzero(~has).flatten(), torch.nonzero(has).flatten()
        a = self.protocol.step(net, embedding[auto], crops[auto], points[auto, :0], labels[auto, :0], StepState(),
                               detach_feedback=True)
        c = self.protocol.step(net, embedding[clicked], crops[clicked], points[clicked], labels[clicked], StepState(),
                               detach_feedback=True)
        back = torch.argsort(torch.cat([auto, clicked]))

        def merge(x, y):
            return torch.cat([x, y], 0)[back]

        return StepOutput(merge(a.logits, c.logits), merge(a.low_res_logits, c.low_res_logits), merge(a.iou, c.iou),
                          merge(a.confidence, c.confidence), merge(a.critic_logits, c.critic_logits),
                          StepState(merge(a.state.mask_prompt, c.state.mask_prompt),
                                    merge(a.state.confidence, c.state.confidence)))

    def _iteration(self, engine: "SAT3DTrainer", batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        images, targets = batch[0], batch[1]
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        labels_in = (targets.as_tensor() if hasattr(targets, "as_tensor") else targets).float()
        # row r trains target r on crop source[r]; rows share their crop's embedding
        source, targets, instance = target_rows(labels_in, engine.targets_per_crop, engine.click_generator)
        net = engine.network
        zero, step = self._steps(engine)
        net.train()
        for part in net.children():  # parts left out of training (set_trainable) run as at inference
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()
        if zero:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            engine.critic_optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(images.device.type, enabled=bool(engine.amp), **(engine.amp_kwargs or {}))
        b = images.shape[0]
        points = torch.zeros((len(source), 0, 3), device=images.device)
        labels = torch.zeros((len(source), 0), dtype=torch.long, device=images.device)
        if engine.first_click_prob > 0 or bool(instance.any()):
            first_p, first_l = sample_first_clicks(targets[:b], engine.first_click_prob, engine.click_generator)
            # a click designates one object: the union row of a crop with several instances (everything the
            # automatic mode must find) starts without one; its instances' rows start from their clicks
            for i in range(b):
                if len(instance_ids(labels_in[i])) > 1:
                    first_l[i] = -1
            if bool(instance.any()):  # single-instance rows always start from a click inside their instance
                inst_p, inst_l = sample_first_clicks(targets[b:], 1.0, engine.click_generator)
                first_p, first_l = torch.cat([first_p, inst_p], 0), torch.cat([first_l, inst_l], 0)
            if bool((first_l >= 0).any()):  # all without a click: no point at all (the automatic mode)
                points, labels = first_p, first_l
        crops = images[source] if len(source) > b else images
        state = StepState()
        terms: dict[str, float] = {}
        total = torch.zeros((), device=images.device)
        with frozen(net.critic), autocast:
            embedding = net.encode(images)
            if len(source) > b:
                embedding = embedding[source]
            for s in range(engine.num_prompt_steps):
                if s > 0:
                    new_p, new_l = sample_error_clicks((state.mask_prompt > engine.mask_threshold).float(), targets,
                                                       engine.click_generator, where=engine.click_sampling)
                    points, labels = torch.cat([points, new_p], 1), torch.cat([labels, new_l], 1)
                # the same prompt step (and feedback) the session, evaluation and MONAI Label run
                out = self._prompt_step(net, embedding, crops, points, labels, state, first=s == 0)
                logits = out.logits
                parts = engine.generator_loss(logits.float(), targets, out.critic_logits.float(), out.iou)
                total = total + parts["loss"] / engine.num_prompt_steps
                for k, v in parts.items():
                    terms[k] = terms.get(k, 0.0) + float(v.detach()) / engine.num_prompt_steps
                state = out.state
        prev_mask = state.mask_prompt
        engine.state.output = {Keys.IMAGE: crops, Keys.LABEL: targets, Keys.PRED: logits.detach(), Keys.LOSS: total}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._backward_step(total, engine.optimizer, engine.scaler if engine.amp else None,
                            [p for p in net.generator_parameters() if p.requires_grad], step)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = total.detach()
        engine.state.output.update({f"loss_{k}": v for k, v in terms.items()})
        if not any(p.requires_grad for p in net.critic.parameters()):  # a frozen critic (set_trainable) gets no step
            return engine.state.output
        with autocast:
            real = net.critic.forward_logits(crops, targets)
            fake = net.critic.forward_logits(crops, prev_mask)
            c_loss = engine.critic_loss(real.float(), fake.float())
        self._backward_step(c_loss, engine.critic_optimizer, engine.critic_scaler, list(net.critic.parameters()), step)
        engine.state.output["critic_loss"] = c_loss.detach()
        return engine.state.output


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Copy rank ``src``'s parameters and buffers to every process (same start for data-parallel training)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)
    return module
