"""Click protocols: one prompt step of SAT3D on one window and what it feeds back to the next step.

A protocol turns (cached image embedding, window crop, clicks, state) into the window's logits and
confidence map and the state of the next step.  Two exist, selected by the weights' ``protocol``:

* ``"sat3d"`` (ours, default): every click so far is given; the previous mask *probability* at crop size
  and the binarised confidence (``>= T``) are fed back; no prompt at all is the automatic mode.  With
  ``click_prompt_radius`` > 0 (a setting the weights carry) the clicks are also painted into the dense mask
  prompt: a ball of that radius (window voxels) around each positive click is set to 1, around each
  negative click to 0, over the previous probability (or over zeros when there is none), so a click tells
  the decoder where to look through the dense branch as well as through its sparse token.
* ``"paper"`` (the authors' ``finetune_model_predict3D``, only for their converted weights): only the
  current click plus a padding point ``(0, 0, 0)`` with label -1; the previous *low-resolution logits* are
  the mask prompt (zeros at the start); the confidence fed back is ``sigmoid(critic(sigmoid(logits))) > 0.5``
  nearest-downsampled to the low-resolution grid, computed from the previous state (a constant 0.5
  probability at the start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["StepState", "StepOutput", "Sat3dProtocol", "PaperProtocol", "get_protocol", "protocol_of", "paint_clicks",
           "PROTOCOLS"]


@dataclass
class StepState:
    """What a prompt step feeds back to the next one, for one window (batch ``B``).

    Attributes:
        mask_prompt: ``(B, 1, ...)`` dense mask prompt, or ``None`` for none.
        confidence: ``(B, 1, ...)`` binary confidence map fed to the confidence branch, or ``None``.
    """

    mask_prompt: torch.Tensor | None = None
    confidence: torch.Tensor | None = None


@dataclass
class StepOutput:
    """The result of one prompt step on a window.

    Attributes:
        logits: ``(B, 1, D, H, W)`` mask logits at the window size.
        low_res_logits: ``(B, 1, d', h', w')`` decoder output.
        iou: ``(B, 1)`` predicted IoU of the mask.
        confidence: ``(B, 1, D, H, W)`` critic confidence in [0, 1].
        critic_logits: ``(B, 1, ...)`` critic output before the sigmoid (at the window size for ``"sat3d"``).
        state: what the next step receives.
    """

    logits: torch.Tensor
    low_res_logits: torch.Tensor
    iou: torch.Tensor
    confidence: torch.Tensor
    critic_logits: torch.Tensor
    state: StepState


def paint_clicks(prompt: torch.Tensor | None, points: torch.Tensor, labels: torch.Tensor, radius: float,
                 size) -> torch.Tensor:
    """The dense mask prompt with the clicks painted in.

    Args:
        prompt: ``(B, 1, D, H, W)`` previous mask probability, or ``None`` (zeros).
        points: ``(B, N, 3)`` click voxel coordinates in the window.
        labels: ``(B, N)`` 1 positive, 0 negative, -1 padding (not painted).
        radius: ball radius in window voxels.
        size: ``(D, H, W)`` of the window (the prompt's size when it is given).

    Returns:
        ``(B, 1, D, H, W)``: 1 in the balls of positive clicks, 0 in those of negative clicks (painted in
        click order, so a later click wins), the prompt elsewhere.
    """
    b = points.shape[0]
    out = torch.zeros((b, 1, *size), device=points.device) if prompt is None else prompt.clone()
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, device=points.device, dtype=torch.float32)
                                        for n in out.shape[2:]], indexing="ij"), -1)
    for i in range(b):
        for p, lab in zip(points[i].float(), labels[i].tolist()):
            if lab < 0:
                continue
            ball = ((grid - p) ** 2).sum(-1) <= radius * radius
            out[i, 0][ball] = 1.0 if lab == 1 else 0.0
    return out


class Sat3dProtocol:
    """Our protocol: all clicks, probability and binarised confidence (``>= T``) fed back.

    Args:
        click_prompt_radius: radius (window voxels) of the balls the clicks are painted into the dense mask
            prompt with (0: clicks reach the decoder only as sparse tokens).
    """

    name = "sat3d"
    #: whether every click so far is passed to each step (else only the new one)
    accumulates_clicks = True
    #: whether a step without any click (the automatic mode) is meaningful
    automatic = True
    #: whether a whole-volume session feeds each window its crop of the blended result (else the window's
    #: own previous state)
    blended_feedback = True

    def __init__(self, click_prompt_radius: float = 0.0) -> None:
        if not float(click_prompt_radius) >= 0:
            raise ValueError(f"click_prompt_radius must be >= 0, got {click_prompt_radius}.")
        self.click_prompt_radius = float(click_prompt_radius)

    def initial_state(self, network, image: torch.Tensor) -> StepState:
        """No dense prompt before the first step (the automatic mode)."""
        return StepState()

    def step(self, network, embedding, image, points=None, labels=None, state: StepState | None = None,
             detach_feedback: bool = True) -> StepOutput:
        """One decode + upsample + critic pass.

        Args:
            network: a SAT3D.
            embedding: ``(B, E, d, h, w)`` cached image embedding of ``image``.
            image: ``(B, C, D, H, W)`` the window crop (for the critic and the output size).
            points: ``(B, N, 3)`` every click so far in window voxels, or ``None``.
            labels: ``(B, N)`` 1 positive, 0 negative, -1 padding.
            state: the previous step's feedback (``None``: none).
            detach_feedback: cut the gradient through the fed-back state (training feeds back detached maps).
        """
        state = state or StepState()
        mask_prompt = state.mask_prompt
        if self.click_prompt_radius > 0 and points is not None and labels is not None and bool((labels >= 0).any()):
            mask_prompt = paint_clicks(mask_prompt, points, labels, self.click_prompt_radius, image.shape[2:])
        low, iou = network.decode(embedding, points, labels, mask_prompt, state.confidence, image=image)
        logits = F.interpolate(low, size=image.shape[2:], mode="trilinear", align_corners=False)
        prob = torch.sigmoid(logits)
        critic_logits = network.critic.forward_logits(image, prob)
        confidence = torch.sigmoid(critic_logits)
        fb_prob, fb_conf = (prob.detach(), confidence.detach()) if detach_feedback else (prob, confidence)
        nxt = StepState(fb_prob, (fb_conf >= network.confidence_threshold).to(prob.dtype))
        return StepOutput(logits, low, iou, confidence, critic_logits, nxt)


class PaperProtocol:
    """The authors' protocol (see the module docstring); their critic is voxel-wise.

    With the critic in eval mode the fed-back confidence is computed on the low-resolution grid only (the
    voxels the nearest downsampling keeps), which is exact because the critic judges each voxel alone;
    the confidence map returned for display is upsampled from that grid.  With the critic in train mode
    (BatchNorm on batch statistics, as the authors' inference script leaves it) it runs at full size.
    """

    name = "paper"
    accumulates_clicks = False
    automatic = False  # the authors' loop always starts from a click
    blended_feedback = False

    @staticmethod
    def _feedback(network, image: torch.Tensor, logits: torch.Tensor, low_size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(binary confidence on the low-res grid, display confidence at full size, critic logits used)."""
        prob = torch.sigmoid(logits)
        step = [s // t for s, t in zip(prob.shape[2:], low_size)]
        if network.critic.training or not getattr(network.critic, "voxelwise", False):
            critic_logits = network.critic.forward_logits(image, prob)
            conf_full = torch.sigmoid(critic_logits)
            conf_low = F.interpolate(conf_full, size=tuple(low_size), mode="nearest")
            return (conf_low > 0.5).to(prob.dtype), conf_full, critic_logits
        sub = prob[(slice(None), slice(None), *[slice(None, None, k) for k in step])]
        critic_logits = network.critic.forward_logits(sub, sub)
        conf_low = torch.sigmoid(critic_logits)
        conf_full = F.interpolate(conf_low, size=prob.shape[2:], mode="trilinear", align_corners=False)
        return (conf_low > 0.5).to(prob.dtype), conf_full, critic_logits

    def initial_state(self, network, image: torch.Tensor) -> StepState:
        """Zero low-resolution logits and the confidence of a constant 0.5 probability."""
        low_size = network.prompt_encoder.mask_input_size
        zeros = torch.zeros((image.shape[0], 1, *low_size), device=image.device, dtype=image.dtype)
        logits = torch.zeros((image.shape[0], 1, *image.shape[2:]), device=image.device, dtype=image.dtype)
        conf_low, _, _ = self._feedback(network, image, logits, low_size)
        return StepState(zeros, conf_low)

    def step(self, network, embedding, image, points=None, labels=None, state: StepState | None = None,
             detach_feedback: bool = True) -> StepOutput:
        """One step with the current click only (``points``/``labels`` hold just that click, or nothing)."""
        state = state or self.initial_state(network, image)
        b = image.shape[0]
        pad_p = torch.zeros((b, 1, 3), device=image.device)
        pad_l = torch.full((b, 1), -1, dtype=torch.long, device=image.device)
        if points is None or points.shape[1] == 0:
            points, labels = pad_p, pad_l
        else:
            points = torch.cat([points.to(pad_p.dtype), pad_p], 1)
            labels = torch.cat([labels.to(torch.long), pad_l], 1)
        low, iou = network.decode(embedding, points, labels, state.mask_prompt, state.confidence, image=image)
        logits = F.interpolate(low, size=image.shape[2:], mode="trilinear", align_corners=False)
        conf_low, conf_full, critic_logits = self._feedback(network, image, logits, low.shape[2:])
        mask_prompt = low.detach() if detach_feedback else low
        return StepOutput(logits, low, iou, conf_full, critic_logits, StepState(mask_prompt, conf_low))


PROTOCOLS = {"sat3d": Sat3dProtocol, "paper": PaperProtocol}


def get_protocol(name: str, **options):
    """The protocol object of a ``protocol`` name (``options``: its settings, e.g. ``click_prompt_radius``)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown click protocol {name!r}; choose one of {sorted(PROTOCOLS)}.")
    return PROTOCOLS[name](**options)


def protocol_of(config) -> object:
    """The protocol a weights configuration selects, with its settings (:mod:`sat3d.weights`)."""
    name = config.get("protocol", "sat3d")
    if name == "sat3d":
        return get_protocol(name, click_prompt_radius=float(config.get("click_prompt_radius", 0) or 0))
    return get_protocol(name)
