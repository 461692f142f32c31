"""The architectures of the shipped built-in models (`sam-tiny-general`, `sam2-tiny-general`).

Their pre-training scripts (examples/pretrain_builtin_sam*.py) build the models from these; the
committed `config.json` files are what they wrote, and a test keeps the two equal.
"""

from __future__ import annotations

from transformers import SamConfig


def feature_sizes(image_size: int, stride: int) -> list[list[int]]:
    """SAM 2's three feature levels (strides 4, 8, 16 of a Hiera; 4x, 2x, 1x the ViT grid in SAM 3)."""
    return [[image_size // stride * 4] * 2, [image_size // stride * 2] * 2, [image_size // stride] * 2]


def builtin_sam_config() -> SamConfig:
    """The built-in default model's architecture: 128 px images, 16x16 embeddings, 4 ViT layers.

    Small enough to pre-train and fine-tune on 2 CPU cores in minutes, big enough that
    the image encoder dominates the step as it does in real SAM.
    """
    size, patch, width = 128, 8, 256
    return SamConfig(
        vision_config=dict(
            hidden_size=96, output_channels=width, num_hidden_layers=4, num_attention_heads=2, image_size=size,
            patch_size=patch, window_size=4, global_attn_indexes=[3], mlp_dim=192, num_pos_feats=width // 2,
            initializer_range=0.02,
        ),
        prompt_encoder_config=dict(hidden_size=width, image_size=size, patch_size=patch),
        mask_decoder_config=dict(
            hidden_size=width, mlp_dim=256, num_hidden_layers=2, num_attention_heads=4, iou_head_hidden_dim=width
        ),
    )


def builtin_sam2_config():
    """The built-in SAM 2's architecture: 128 px, a 6-block Hiera (strides 4-32), a SAM-sized 256-wide decoder.

    The decoder reads the stride-16 level (8x8) plus the stride-4/8 high-resolution features, as
    SAM 2 does; 256 channels like the built-in SAM, so InfoSAM's default relation_dim fits both.
    `dynamic_multimask_via_stability` is off: in eval mode SAM 2 swaps an unstable single mask for
    its best multimask output, and this model is trained (like the built-in SAM) on single masks
    only, so those outputs are untrained.
    """
    from transformers import Sam2Config, Sam2HieraDetConfig

    size, dims = 128, [24, 48, 96, 192]
    backbone = Sam2HieraDetConfig(
        hidden_size=dims[0], num_attention_heads=1, image_size=[size, size],
        blocks_per_stage=[1, 1, 3, 1], embed_dim_per_stage=dims, num_attention_heads_per_stage=[1, 1, 2, 4],
        window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[4],
        window_positional_embedding_background_size=[4, 4],
    )
    return Sam2Config(
        vision_config=dict(
            backbone_config=backbone, backbone_channel_list=list(reversed(dims)),
            backbone_feature_sizes=feature_sizes(size, 16), fpn_hidden_size=256,
        ),
        prompt_encoder_config=dict(hidden_size=256, image_size=size, patch_size=16),
        mask_decoder_config=dict(
            hidden_size=256, mlp_dim=256, num_hidden_layers=2, num_attention_heads=4, iou_head_hidden_dim=256,
            dynamic_multimask_via_stability=False,
        ),
    )
