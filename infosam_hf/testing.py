"""Tiny SAM configurations for tests, benchmarks and the built-in default.

Real checkpoints cannot be fetched in CI, so everything that exercises the
pipeline builds a `SamModel` from one of these configs. They keep SAM's
structure (ViT encoder with windowed + global attention, prompt encoder,
two-way mask decoder with 256 channels) so that code paths match
`facebook/sam-vit-base`, only smaller.
"""

from __future__ import annotations

from transformers import SamConfig


def tiny_sam_config(
    image_size: int = 64,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    output_channels: int = 256,
    decoder_mlp_dim: int = 64,
    patch_size: int = 8,
) -> SamConfig:
    """A SamConfig small enough for a CPU unit test (well under a second per step)."""
    return SamConfig(
        vision_config=dict(
            hidden_size=vision_hidden_size,
            output_channels=output_channels,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            window_size=4,
            global_attn_indexes=[vision_layers - 1],
            mlp_dim=vision_hidden_size * 2,
            num_pos_feats=output_channels // 2,
            initializer_range=0.02,
        ),
        prompt_encoder_config=dict(
            hidden_size=output_channels,
            image_size=image_size,
            patch_size=patch_size,
        ),
        mask_decoder_config=dict(
            hidden_size=output_channels,
            mlp_dim=decoder_mlp_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            iou_head_hidden_dim=output_channels,
        ),
    )


def toy_segmentation_rows(num: int, image_size: int = 64, seed: int = 0) -> list[dict]:
    """Rows in the collator's output format (one sample each): bright rectangles on noise, box prompts.

    Kept independent of `infosam_hf.data` so the model and trainer can be tested alone.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num):
        h, w = (int(v) for v in torch.randint(image_size // 4, image_size // 2, (2,), generator=generator))
        y, x = (int(v) for v in torch.randint(0, image_size - max(h, w), (2,), generator=generator))
        mask = torch.zeros(1, image_size, image_size)
        mask[:, y : y + h, x : x + w] = 1.0
        pixels = 0.3 * torch.randn(3, image_size, image_size, generator=generator) + mask
        rows.append(
            {
                "pixel_values": pixels,
                "input_boxes": torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32),
                "gt_masks": mask,
            }
        )
    return rows


def toy_segmentation_dataset(num: int, image_size: int = 64, seed: int = 0):
    """`toy_segmentation_rows` as a `datasets.Dataset` in torch format."""
    from datasets import Dataset

    rows = toy_segmentation_rows(num, image_size, seed)
    return Dataset.from_list([{k: v.numpy() for k, v in row.items()} for row in rows]).with_format("torch")


def toy_batch(batch_size: int, image_size: int = 64, seed: int = 0) -> dict:
    import torch

    rows = toy_segmentation_rows(batch_size, image_size, seed)
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def builtin_sam_config() -> SamConfig:
    """The built-in default model's architecture: 128 px images, 16x16 embeddings, 4 ViT layers.

    Small enough to pre-train and fine-tune on 2 CPU cores in minutes, big enough that
    the image encoder dominates the step as it does in real SAM.
    """
    return tiny_sam_config(
        image_size=128, vision_hidden_size=96, vision_layers=4, decoder_mlp_dim=256, patch_size=8
    )


def vit_b_sam_config(image_size: int = 1024) -> SamConfig:
    """SAM ViT-B's architecture (`facebook/sam-vit-base`'s config) at `image_size`, for random-weight benchmarks.

    Below 1024 px the positional embedding and the prompt encoder's embedding grid are sized to the
    image (image_size / 16 tokens a side), so the encoder's layers, widths and windows, and thus the
    encoder-to-decoder cost ratio, stay ViT-B's while a CPU can run a step in seconds.
    """
    patch = 16
    if image_size % patch:
        raise ValueError(f"image_size must be a multiple of ViT-B's patch size {patch}, got {image_size}.")
    return SamConfig(
        vision_config=dict(image_size=image_size),
        prompt_encoder_config=dict(image_size=image_size, image_embedding_size=image_size // patch),
    )
