"""Losses of SAT3D's min-max training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from .constants import CONFIDENCE_THRESHOLD, MASK_THRESHOLD

__all__ = ["GeneratorLoss", "CriticLoss", "uncertainty_masked_bce", "mask_iou"]


def mask_iou(logits: torch.Tensor, target: torch.Tensor, threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """IoU ``(B,)`` of the thresholded prediction with the target (1 when both are empty)."""
    pred = torch.sigmoid(logits.detach().float()) > threshold
    t = target > 0.5
    inter = (pred & t).flatten(1).sum(1).float()
    union = (pred | t).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def uncertainty_masked_bce(logits: torch.Tensor, target: torch.Tensor, uncertain: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the uncertain voxels only (0 when there are none).

    Args:
        logits: ``(B, 1, D, H, W)`` mask logits.
        target: ``(B, 1, D, H, W)`` binary ground truth.
        uncertain: ``(B, 1, D, H, W)`` boolean map (critic confidence below T).
    """
    ce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    w = uncertain.to(ce.dtype)
    return (ce * w).sum() / w.sum().clamp(min=1.0)


class GeneratorLoss(nn.Module):
    """``Dice+CE + lambda_adv * adversarial + lambda_unc * uncertainty-masked CE + lambda_iou * IoU MSE``.

    Paper weights: 0.01, 0.1, T = 0.3.  The adversarial term asks the critic to call the prediction real
    (BCE of the critic's logits against 1), so its gradient reaches the generator through the predicted
    probability.  The IoU term trains the decoder's IoU head as in SAM: MSE between the predicted IoU and
    the IoU of the thresholded prediction with the ground truth (its predicted quality per case).

    Args:
        lambda_adv: weight of the adversarial term.
        lambda_unc: weight of the uncertainty-masked CE.
        threshold: confidence below which a voxel is uncertain (T).
        lambda_iou: weight of the IoU-head MSE (used when the IoU prediction is passed).
        mask_threshold: probability threshold of the mask whose IoU is predicted.
        batch_dice: compute the Dice term over the whole batch (nnU-Net's batch Dice) instead of per sample (the
            paper).  Per sample, a crop whose target is empty scores a Dice loss of about 1 whatever is predicted
            in it (MONAI's smoothing terms are 1e-5), so false alarms in empty crops are penalised by the CE term
            alone; over the batch they lower the Dice of the batch.
    """

    def __init__(self, lambda_adv: float = 0.01, lambda_unc: float = 0.1, threshold: float = CONFIDENCE_THRESHOLD,
                 lambda_iou: float = 1.0, mask_threshold: float = MASK_THRESHOLD, batch_dice: bool = False) -> None:
        super().__init__()
        if lambda_adv < 0 or lambda_unc < 0 or lambda_iou < 0:
            raise ValueError(
                f"loss weights must be >= 0, got lambda_adv={lambda_adv}, lambda_unc={lambda_unc}, lambda_iou={lambda_iou}."
            )
        self.seg = DiceCELoss(sigmoid=True, batch=bool(batch_dice))
        self.lambda_adv = float(lambda_adv)
        self.lambda_unc = float(lambda_unc)
        self.lambda_iou = float(lambda_iou)
        self.threshold = float(threshold)
        self.mask_threshold = float(mask_threshold)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, critic_logits: torch.Tensor,
                iou_pred: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return the total and each term.

        Args:
            logits: ``(B, 1, D, H, W)`` mask logits.
            target: ``(B, 1, D, H, W)`` binary ground truth.
            critic_logits: ``(B, 1, D, H, W)`` critic logits on (image, sigmoid(logits)), not detached.
            iou_pred: ``(B, 1)`` the decoder's predicted IoU, or ``None``.
        """
        target = target.to(logits.dtype)
        seg = self.seg(logits, target)
        adv = F.binary_cross_entropy_with_logits(critic_logits.float(), torch.ones_like(critic_logits, dtype=torch.float32))
        uncertain = torch.sigmoid(critic_logits.detach()) < self.threshold
        unc = uncertainty_masked_bce(logits.float(), target.float(), uncertain)
        total = seg + self.lambda_adv * adv + self.lambda_unc * unc
        out = {"seg": seg, "adv": adv, "unc": unc, "uncertain_fraction": uncertain.float().mean()}
        if iou_pred is not None:
            true_iou = mask_iou(logits, target, self.mask_threshold)
            out["iou"] = F.mse_loss(iou_pred.float().reshape(-1), true_iou)
            total = total + self.lambda_iou * out["iou"]
        return {"loss": total, **out}


class CriticLoss(nn.Module):
    """Critic objective: ground-truth masks are real (1), predicted masks are fake (0), voxel-wise BCE."""

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32))
        fake = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32))
        return 0.5 * (real + fake)
