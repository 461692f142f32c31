"""The built-in models' architectures before pre-training, initialised as examples/pretrain_builtin_sam*.py start.

Used by those scripts and by benchmarks/prompt_path_toy.py (which trains the same architectures from scratch).
"""

from __future__ import annotations


def fresh_builtin_sam():
    """A randomly initialised built-in SAM whose prompt positions are readable.

    transformers initialises the random Fourier matrix of SAM's positional encoding (shared by the
    prompt encoder and the image-embedding grid) with std `vision_config.hidden_size // 2` (48
    here); the original SAM draws it with std 1 and never trains it (a buffer), and pre-trained
    checkpoints ship that matrix. At std 48 the encoding of a box corner is a hash of its exact
    coordinate, uncorrelated with the 16x16 grid cells around it, so a model trained from there
    cannot relate a prompt to a place and learns to ignore its prompts. Draw it as SAM does.
    """
    import torch
    from transformers import SamModel

    from .configs import builtin_sam_config

    sam = SamModel(builtin_sam_config())
    embedding = sam.shared_image_embedding.positional_embedding
    with torch.no_grad():
        embedding.normal_(0.0, 1.0)
    embedding.requires_grad_(False)
    return sam


def fresh_builtin_sam2():
    """A randomly initialised built-in SAM 2 whose prompt positions match its image positions.

    Sam2Model draws its random-Fourier positional matrix with std `scale` = 1, as SAM 2 does, but
    it keeps two of them, drawn independently: the prompt encoder's (points, box corners) and the
    image-embedding grid's (`shared_image_embedding`). SAM 2 has one (`pe_layer`, used for both),
    and converted checkpoints carry the same matrix twice; two unrelated draws give a prompt an
    encoding unrelated to the grid cells at its place, so the model cannot learn where a prompt
    points. Share one draw, as SAM 2 does (both are buffers, never trained).
    """
    import torch
    from transformers import Sam2Model

    from .configs import builtin_sam2_config

    sam = Sam2Model(builtin_sam2_config())
    with torch.no_grad():
        sam.prompt_encoder.shared_embedding.positional_embedding.copy_(sam.shared_image_embedding.positional_embedding)
    return sam
