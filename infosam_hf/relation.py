"""The relation module `f` of InfoSAM.

It scores how strongly the mask token attends to every image position. The same
module serves teacher and student, so the relations it produces are comparable and
the distillation can ask the student to keep the teacher's structure rather than
its raw features. Parameter names match the reference implementation, so state
dicts interchange with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RelationModule(nn.Module):
    """score = (W_q tok)(W_k feat)^T / sqrt(C) + tok feat^T, then l2-normalised per image."""

    def __init__(self, dim: int = 256, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.layer_norm_feat = nn.LayerNorm(dim, eps=eps)
        self.layer_norm_mask = nn.LayerNorm(dim, eps=eps)
        self.scale = dim**-0.5

    def forward(self, image_feats: torch.Tensor, mask_tokens: torch.Tensor) -> torch.Tensor:
        """`image_feats` (B, HW, C) and `mask_tokens` (B, 1, C) -> relation (B, HW), unit norm per row."""
        if image_feats.dim() != 3 or image_feats.shape[-1] != self.dim:
            raise ValueError(
                f"RelationModule expects image features of shape (B, HW, {self.dim}), got {tuple(image_feats.shape)}; "
                "flatten SAM's (B, C, h, w) image embeddings with infosam_hf.features.flatten_image_embeddings."
            )
        if mask_tokens.dim() != 3 or mask_tokens.shape[1] != 1 or mask_tokens.shape[-1] != self.dim:
            raise ValueError(
                f"RelationModule expects mask tokens of shape (B, 1, {self.dim}), got {tuple(mask_tokens.shape)}."
            )
        if image_feats.shape[0] != mask_tokens.shape[0]:
            raise ValueError(
                f"Batch sizes differ: {image_feats.shape[0]} image features vs {mask_tokens.shape[0]} mask tokens."
            )
        score = self._scores(image_feats, mask_tokens)
        return F.normalize(score.reshape(score.shape[0], -1), dim=1)

    def forward_prompts(self, image_feats: torch.Tensor, mask_tokens: torch.Tensor) -> torch.Tensor:
        """Several prompts per image: `image_feats` (B, HW, C), `mask_tokens` (B, N, C) -> (B, N, HW).

        Each row is the relation of one (image, prompt) pair, unit norm, as `forward` gives for
        N = 1; the image side (LayerNorm, key projection) is computed once per image.
        """
        if image_feats.dim() != 3 or mask_tokens.dim() != 3 or image_feats.shape[0] != mask_tokens.shape[0]:
            raise ValueError(
                f"forward_prompts expects image features (B, HW, {self.dim}) and mask tokens (B, N, {self.dim}); got "
                f"{tuple(image_feats.shape)} and {tuple(mask_tokens.shape)}."
            )
        return F.normalize(self._scores(image_feats, mask_tokens), dim=-1)

    def _scores(self, image_feats: torch.Tensor, mask_tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, HW): every token of an image against every position, the reference's formula."""
        feat = self.layer_norm_feat(image_feats)
        tok = self.layer_norm_mask(mask_tokens)
        return self.query_proj(tok) @ self.key_proj(feat).transpose(1, 2) * self.scale + tok @ feat.transpose(1, 2)
