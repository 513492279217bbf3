"""Composition of the SAT3D parts: image encoder, prompt encoder, mask decoder and critic."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import CONFIDENCE_THRESHOLD
from .auto_head import AutoHead3D
from .critic import Critic3D
from .geodesic import geodesic_click_maps
from .image_encoder import SwinImageEncoder3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D

__all__ = ["SAT3D"]


class SAT3D(nn.Module):
    """Promptable 3D segmentation network with a voxel-wise critic.

    The parts are passed in (see :func:`sat3d.build_sat3d` for named presets).  The image embedding can be
    computed once with :meth:`encode` and reused for every click with :meth:`decode`, which is what the
    interactive session does.

    Args:
        image_encoder: maps ``(B, C, D, H, W)`` to ``(B, E, D/s, H/s, W/s)``.
        prompt_encoder: embeds clicks and dense prompts to width ``E``.
        mask_decoder: turns embeddings into ``(B, 1, 4D/s, 4H/s, 4W/s)`` logits.
        critic: maps (image, mask probability) to a confidence map.
        confidence_threshold: confidence below this value marks a voxel as uncertain (paper: T = 0.3).
        auto_head: an :class:`~sat3d.modeling.auto_head.AutoHead3D` that corrects the decoder's output for
            prompt-free rows (the automatic mode: no click, no mask or confidence prompt), or ``None``.
        forward_output: what :meth:`forward` returns: ``"dict"`` (every output) or ``"logits"`` (the mask
            logits tensor alone, the bundle's ``pred``: what MONAI's ``verify_net_in_out`` and exporters expect).
            The session, training and inference use :meth:`encode` / :meth:`decode` and are not affected.

    Raises:
        ValueError: if the parts' widths do not fit together.
    """

    def __init__(
        self,
        image_encoder: SwinImageEncoder3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
        critic: Critic3D,
        confidence_threshold: float = CONFIDENCE_THRESHOLD,
        forward_output: str = "dict",
        auto_head: AutoHead3D | None = None,
    ) -> None:
        super().__init__()
        if forward_output not in ("dict", "logits"):
            raise ValueError(f"forward_output must be 'dict' or 'logits', got {forward_output!r}.")
        self.forward_output = forward_output
        if image_encoder.out_channels != prompt_encoder.embed_dim or prompt_encoder.embed_dim != mask_decoder.embed_dim:
            raise ValueError(
                f"widths differ: encoder {image_encoder.out_channels}, prompt encoder {prompt_encoder.embed_dim}, "
                f"decoder {mask_decoder.embed_dim}."
            )
        if not 0.0 < confidence_threshold < 1.0:
            raise ValueError(f"confidence_threshold must be in (0, 1), got {confidence_threshold}.")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.critic = critic
        self.auto_head = auto_head
        self.confidence_threshold = float(confidence_threshold)

    @property
    def roi_size(self) -> tuple[int, int, int]:
        """Crop size the prompt encoder was built for."""
        return self.prompt_encoder.input_size  # type: ignore[return-value]

    @property
    def needs_image(self) -> bool:
        """Whether :meth:`decode` needs the crop besides its embedding (a decoder with a detail branch, or an
        automatic head)."""
        return getattr(self.mask_decoder, "detail", None) is not None or self.auto_head is not None

    def set_trainable(self, prefixes=None) -> "SAT3D":
        """Train only the parameters whose name starts with one of ``prefixes`` (e.g. ``["auto_head."]``); the
        others get ``requires_grad=False``.  ``None`` or empty: every parameter is trainable.  Returns ``self``.

        Raises:
            ValueError: for a prefix that names no parameter.
        """
        prefixes = [str(p) for p in (prefixes or [])]
        names = [n for n, _ in self.named_parameters()]
        for prefix in prefixes:
            if not any(n.startswith(prefix) for n in names):
                raise ValueError(f"trainable prefix {prefix!r} names no parameter of this network.")
        for n, p in self.named_parameters():
            p.requires_grad_(not prefixes or any(n.startswith(k) for k in prefixes))
        return self

    def named_generator_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of encoder, prompt encoder and decoder (everything but the critic)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("critic.")]

    def named_trainable_generator_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """:meth:`named_generator_parameters` that are trainable (see :meth:`set_trainable`)."""
        return [(n, p) for n, p in self.named_generator_parameters() if p.requires_grad]

    def generator_parameters(self):
        """Parameters of encoder, prompt encoder and decoder (everything but the critic)."""
        return [p for _, p in self.named_generator_parameters()]

    def generator_param_groups(self, lr: float, lr_multipliers: dict[str, float] | None = None) -> list[dict]:
        """Optimiser parameter groups of the trainable :meth:`generator_parameters`: parameters whose name starts with a key of
        ``lr_multipliers`` learn at ``lr`` times its value (e.g. a part grown onto trained weights), the rest at ``lr``.

        Raises:
            ValueError: for a prefix that names no generator parameter or a multiplier that is not positive.
        """
        mult = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        named = self.named_trainable_generator_parameters()
        if not named:
            raise ValueError("no generator parameter is trainable (see set_trainable).")
        groups: dict[float, list] = {}
        for prefix, m in mult.items():
            if m <= 0:
                raise ValueError(f"lr multiplier of {prefix!r} must be > 0, got {m}.")
            if not any(n.startswith(prefix) for n, _ in named):
                raise ValueError(f"lr multiplier prefix {prefix!r} names no trainable generator parameter.")
        for n, p in named:
            m = next((v for k, v in mult.items() if n.startswith(k)), 1.0)
            groups.setdefault(m, []).append(p)
        return [{"params": ps, "lr": float(lr) * m} for m, ps in groups.items()]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` crop -> ``(B, E, d, h, w)`` image embedding."""
        return self.image_encoder(image)

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        prev_mask: torch.Tensor | None = None,
        confidence: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run prompt encoder and mask decoder on a cached embedding.

        Args:
            embedding: ``(B, E, d, h, w)`` from :meth:`encode`.
            points: ``(B, N, 3)`` clicks in crop voxel coordinates, or ``None``.
            point_labels: ``(B, N)`` 1 positive, 0 negative, -1 padding.
            prev_mask: ``(B, 1, ...)`` previous mask probability, or ``None``.
            confidence: ``(B, 1, ...)`` previous confidence map, or ``None``.
            image: ``(B, C, D, H, W)`` the crop the embedding was computed from; needed when the decoder has a
                detail branch (:attr:`needs_image`), ignored otherwise.

        Returns:
            low-resolution logits ``(B, 1, 4d, 4h, 4w)`` and IoU prediction ``(B, 1)``.  With an automatic head,
            rows without any prompt (no click other than padding, no mask, no confidence) get its correction.
        """
        if embedding.shape[2:] != self.prompt_encoder.embedding_size:
            raise ValueError(
                f"embedding grid {tuple(embedding.shape[2:])} differs from the prompt encoder's "
                f"{self.prompt_encoder.embedding_size}; crops must be {self.roi_size}."
            )
        sparse, dense = self.prompt_encoder(points, point_labels, prev_mask, confidence, batch_size=embedding.shape[0])
        maps = None
        if getattr(self.mask_decoder, "click_detail", None) is not None:
            if image is None:
                raise ValueError("this network's decoder has a click branch and needs the crop (pass image=...).")
            maps = geodesic_click_maps(image, points, point_labels, **self.mask_decoder.geodesic)
        low, iou = self.mask_decoder(embedding, self.prompt_encoder.get_dense_pe(), sparse.to(embedding.dtype),
                                     dense.to(embedding.dtype), image=image if self.needs_image else None, click_maps=maps)
        if self.auto_head is None or prev_mask is not None or confidence is not None:
            return low, iou
        b = embedding.shape[0]
        if points is None or points.shape[1] == 0 or point_labels is None:
            auto = torch.ones(b, dtype=torch.bool, device=low.device)
        else:
            auto = ~(point_labels >= 0).any(1)
        if not bool(auto.any()):
            return low, iou
        if image is None:
            raise ValueError("this network has an automatic head and needs the crop (pass image=...).")
        rows = torch.nonzero(auto).flatten()
        d_low, d_iou = self.auto_head(image[rows], embedding[rows], low[rows])
        if len(rows) == b:
            return low + d_low.to(low.dtype), iou + d_iou.to(iou.dtype)
        return (low.index_put((rows,), low[rows] + d_low.to(low.dtype)),
                iou.index_put((rows,), iou[rows] + d_iou.to(iou.dtype)))

    def judge(self, image: torch.Tensor, mask_prob: torch.Tensor) -> torch.Tensor:
        """Critic confidence ``(B, 1, D, H, W)`` in [0, 1] for a mask probability on an image crop."""
        return self.critic(image, mask_prob)

    def forward(
        self,
        image: torch.Tensor,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        prev_mask: torch.Tensor | None = None,
        confidence: torch.Tensor | None = None,
        with_critic: bool = True,
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """Segment a crop.

        Args:
            image: ``(B, C, D, H, W)`` crop of size :attr:`roi_size`.
            points, point_labels, prev_mask, confidence: prompts, see :meth:`decode`.
            with_critic: also compute the critic's confidence of the prediction.

        Returns:
            dict with ``logits`` ``(B, 1, D, H, W)``, ``low_res_logits`` ``(B, 1, 4d, 4h, 4w)``, ``iou`` ``(B, 1)``
            and, if ``with_critic``, ``confidence`` ``(B, 1, D, H, W)``; with ``forward_output="logits"`` only
            the ``logits`` tensor.
        """
        embedding = self.encode(image)
        low, iou = self.decode(embedding, points, point_labels, prev_mask, confidence, image=image)
        logits = F.interpolate(low, size=image.shape[2:], mode="trilinear", align_corners=False)
        if self.forward_output == "logits":
            return logits
        out = {"logits": logits, "low_res_logits": low, "iou": iou}
        if with_critic:
            out["confidence"] = self.judge(image, torch.sigmoid(logits))
        return out
