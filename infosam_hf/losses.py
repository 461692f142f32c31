"""InfoSAM's information-theoretic terms and the segmentation losses.

The two InfoSAM terms use the matrix-based Renyi entropy of order 2 on trace-normalised
Gram matrices over the batch: S(G) = -log2 ||G / tr G||_F^2. They are batch-level
quantities (B x B Gram matrices), so with one image per batch they are exactly 0.
Entropies are always computed in float32 with autocast off: under bf16 the squared
Frobenius norm of a normalised Gram matrix loses most of its digits.

The functions here are pure (tensors in, tensor out) so that they can be tested and
reused outside the Trainer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import InfoSAMConfig

_warned_single_image = False


def _warn_single_image_once(batch_size: int) -> None:
    global _warned_single_image
    if batch_size < 2 and not _warned_single_image:
        _warned_single_image = True
        warnings.warn(
            "InfoSAM's relation losses are computed over the images of a batch (B x B Gram matrices); with "
            f"B={batch_size} they are exactly 0 and only the segmentation loss trains. Use a per-device batch of "
            "at least 2 images (or keep InfoSAMTrainingArguments.gather_across_processes on under multi-GPU "
            "training).",
            stacklevel=3,
        )


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        raise FloatingPointError(
            f"{name} contains NaN or Inf values; the InfoSAM losses cannot be computed. Check the learning rate, "
            "use bf16 rather than fp16, or enable gradient clipping (max_grad_norm)."
        )


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix of row-flattened `features`: (B, ...) -> (B, B)."""
    flat = features.reshape(features.shape[0], -1)
    return flat @ flat.T


def renyi_entropy(gram: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Matrix-based Renyi entropy of order 2 in bits: -log2 ||G / tr G||_F^2."""
    normalised = gram / torch.trace(gram).clamp_min(eps)
    return -torch.log2((normalised * normalised).sum().clamp_min(eps))


def _float32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def relation_compression_loss(
    image_feats: torch.Tensor,
    mask_tokens: torch.Tensor,
    relation: torch.Tensor,
    image_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_r = S(G_f) - S(G_i o G_m o G_f), on the teacher's features and relation.

    Inputs: `image_feats` (B, HW, C), `mask_tokens` (B, 1, C), `relation` (B, HW).
    The teacher features carry no gradient; the relation module receives it through
    `relation`.

    Several prompts per image: `mask_tokens` (M, 1, C) and `relation` (M, HW) hold M
    (image, prompt) pairs and `image_index` (M,) the image of each; `image_feats` stays one
    row per image, and G_i over the pairs is the image Gram matrix indexed by pair.
    """
    if image_index is not None:
        return _pairwise_compression_loss(image_feats, mask_tokens, relation, image_index)
    if image_feats.dim() != 3 or mask_tokens.dim() != 3 or relation.dim() != 2:
        raise ValueError(
            "relation_compression_loss expects image_feats (B, HW, C), mask_tokens (B, 1, C) and relation (B, HW); "
            f"got {tuple(image_feats.shape)}, {tuple(mask_tokens.shape)}, {tuple(relation.shape)}."
        )
    batch = image_feats.shape[0]
    if mask_tokens.shape[0] != batch or relation.shape[0] != batch:
        raise ValueError(
            f"Batch sizes differ: image_feats {image_feats.shape[0]}, mask_tokens {mask_tokens.shape[0]}, "
            f"relation {relation.shape[0]}."
        )
    _warn_single_image_once(batch)
    with torch.autocast(device_type=relation.device.type, enabled=False):
        zi, zm, r = _float32(image_feats, mask_tokens, relation)
        zi = F.normalize(zi.reshape(batch, -1), dim=1)
        zm = F.normalize(zm.reshape(batch, -1), dim=1)
        g_i, g_m, g_f = gram_matrix(zi), gram_matrix(zm), gram_matrix(r)
        return renyi_entropy(g_f) - renyi_entropy(g_i * g_m * g_f)


def _pairwise_compression_loss(image_feats, mask_tokens, relation, image_index) -> torch.Tensor:
    pairs = mask_tokens.shape[0]
    if mask_tokens.dim() != 3 or relation.dim() != 2 or relation.shape[0] != pairs or image_index.shape != (pairs,):
        raise ValueError(
            "With image_index, relation_compression_loss expects mask_tokens (M, 1, C), relation (M, HW) and "
            f"image_index (M,); got {tuple(mask_tokens.shape)}, {tuple(relation.shape)}, {tuple(image_index.shape)}."
        )
    _warn_single_image_once(pairs)
    with torch.autocast(device_type=relation.device.type, enabled=False):
        zi, zm, r = _float32(image_feats, mask_tokens, relation)
        zi = F.normalize(zi.reshape(zi.shape[0], -1), dim=1)
        zm = F.normalize(zm.reshape(pairs, -1), dim=1)
        g_i = gram_matrix(zi)[image_index][:, image_index]
        g_m, g_f = gram_matrix(zm), gram_matrix(r)
        return renyi_entropy(g_f) - renyi_entropy(g_i * g_m * g_f)


def relation_distillation_loss(relation_teacher: torch.Tensor, relation_student: torch.Tensor) -> torch.Tensor:
    """L_d = -I(r_t; r_s) = S(G_t o G_s) - S(G_t) - S(G_s); minimising it maximises the mutual information."""
    if relation_teacher.shape != relation_student.shape or relation_teacher.dim() != 2:
        raise ValueError(
            "relation_distillation_loss expects teacher and student relations of the same shape (B, HW); got "
            f"{tuple(relation_teacher.shape)} and {tuple(relation_student.shape)}."
        )
    _warn_single_image_once(relation_teacher.shape[0])
    with torch.autocast(device_type=relation_student.device.type, enabled=False):
        r_t, r_s = _float32(relation_teacher, relation_student)
        g_t, g_s = gram_matrix(r_t), gram_matrix(r_s)
        return renyi_entropy(g_t * g_s) - renyi_entropy(g_t) - renyi_entropy(g_s)


@dataclass
class InfoSAMLossOutput:
    loss: torch.Tensor
    loss_r: torch.Tensor
    loss_d: torch.Tensor


class InfoSAMLoss(nn.Module):
    """lambda_1 * L_r + lambda_2 * L_d from teacher and student features and the shared relation module.

    Holds no parameters: the relation module is passed in, so that it can live inside
    the model the Trainer wraps (DDP then all-reduces its gradients).
    """

    def __init__(self, config: InfoSAMConfig | None = None):
        super().__init__()
        self.config = config or InfoSAMConfig()

    def forward(
        self,
        teacher_image_feats: torch.Tensor,
        teacher_mask_tokens: torch.Tensor,
        student_image_feats: torch.Tensor,
        student_mask_tokens: torch.Tensor,
        relation_module: nn.Module,
    ) -> InfoSAMLossOutput:
        relation_teacher = relation_module(teacher_image_feats.detach(), teacher_mask_tokens.detach())
        relation_student = relation_module(student_image_feats, student_mask_tokens)
        return self.from_relations(teacher_image_feats, teacher_mask_tokens, relation_teacher, relation_student)

    def from_relations(
        self,
        teacher_image_feats: torch.Tensor,
        teacher_mask_tokens: torch.Tensor,
        relation_teacher: torch.Tensor,
        relation_student: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> InfoSAMLossOutput:
        """`image_index` (M,): several prompts per image, see `relation_compression_loss`."""
        zero = relation_student.new_zeros((), dtype=torch.float32)
        loss_r = (
            relation_compression_loss(
                teacher_image_feats.detach(), teacher_mask_tokens.detach(), relation_teacher, image_index
            )
            if self.config.lambda_1 > 0
            else zero
        )
        loss_d = (
            relation_distillation_loss(relation_teacher, relation_student) if self.config.lambda_2 > 0 else zero
        )
        loss = self.config.lambda_1 * loss_r + self.config.lambda_2 * loss_d
        return InfoSAMLossOutput(loss=loss, loss_r=loss_r, loss_d=loss_d)


# --------------------------------------------------------------------------- segmentation


def _check_mask_shapes(logits: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if logits.shape != target.shape:
        raise ValueError(
            f"{name}: mask logits {tuple(logits.shape)} and ground truth {tuple(target.shape)} differ in shape; "
            "upsample the logits to the ground-truth size first (infosam_hf.modeling.upsample_masks)."
        )


def _box_mean_31(target: torch.Tensor) -> torch.Tensor:
    """avg_pool2d(kernel 31, stride 1, padding 15) as two 1-D passes: the same numbers, ~15x fewer operations."""
    rows = F.avg_pool2d(target, kernel_size=(31, 1), stride=1, padding=(15, 0))
    return F.avg_pool2d(rows, kernel_size=(1, 31), stride=1, padding=(0, 15))


def structure_loss(logits: torch.Tensor, target: torch.Tensor, weighted_bce: bool = False) -> torch.Tensor:
    """PraNet's structure loss: BCE + weighted IoU with edge weight 1 + 5|avgpool31(y) - y|.

    `weighted_bce=False` (default) reproduces the InfoSAM reference code, whose BCE term
    is in effect a plain mean (it passes `reduce='none'`, which PyTorch reads as mean).
    Inputs: logits and binary targets, (B, 1, H, W).
    """
    _check_mask_shapes(logits, target, "structure_loss")
    logits, target = logits.float(), target.float()
    weight = 1 + 5 * torch.abs(_box_mean_31(target) - target)
    if weighted_bce:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    else:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="mean").expand(logits.shape[:2])
    prob = torch.sigmoid(logits)
    inter = (prob * target * weight).sum(dim=(2, 3))
    union = ((prob + target) * weight).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (bce + wiou).mean()


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * loss).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)).mean()


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded prediction (logit > 0) with the target, per mask: (B, 1, H, W) -> (B, 1)."""
    pred = (logits > 0).float()
    inter = (pred * target).sum(dim=(2, 3))
    union = pred.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) - inter
    return inter / union.clamp_min(1.0)


def focal_dice_iou_loss(
    logits: torch.Tensor, target: torch.Tensor, iou_predictions: torch.Tensor, focal_weight: float = 20.0
) -> torch.Tensor:
    """SAM's own recipe: 20 * focal(gamma 2, alpha 0.25) + dice + MSE(predicted IoU, actual IoU)."""
    _check_mask_shapes(logits, target, "focal_dice_iou_loss")
    logits, target = logits.float(), target.float()
    actual_iou = mask_iou(logits.detach(), target)
    iou_loss = F.mse_loss(iou_predictions.float().reshape(actual_iou.shape), actual_iou)
    return focal_weight * sigmoid_focal_loss(logits, target) + dice_loss(logits, target) + iou_loss


def segmentation_loss(
    config: InfoSAMConfig, logits: torch.Tensor, target: torch.Tensor, iou_predictions: torch.Tensor
) -> torch.Tensor:
    if config.seg_loss == "structure":
        # The IoU head joins the graph with weight 0 so DDP with find_unused_parameters=False still works.
        return structure_loss(logits, target, config.structure_loss_weighted_bce) + 0.0 * iou_predictions.sum()
    return focal_dice_iou_loss(logits, target, iou_predictions)
