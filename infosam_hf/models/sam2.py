"""SAM 2 (`Sam2Model`): a Hiera feature pyramid, square resize; the pyramid helpers serve its descendants too."""

from .family import SQUARE, SamFamily

# SAM 2 names the decoder attention's output projection o_proj.
SAM2_DECODER_ATTENTION = r".*mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|o_proj)"


def feature_levels(decoder_kwargs: dict) -> dict:
    # The SAM 2 decoder gets the stride-16 level as `image_embeddings` and the two higher-resolution
    # levels (already projected) as `high_resolution_features`; the model's `image_embeddings=` takes
    # all three, finest first.
    return {"image_embeddings": [*decoder_kwargs["high_resolution_features"], decoder_kwargs["image_embeddings"]]}


def feature_pyramid_set_image_size(config, size: int) -> None:
    # SAM 2 / SAM 3 tracker / EdgeTAM: the image encoder interpolates its position embeddings (or is a
    # convolution network), so only the recorded input side and the feature-level sizes change.
    old = SamFamily.image_size(config)
    config.vision_config.backbone_feature_sizes = [
        [int(side) * size // old for side in level] for level in config.vision_config.backbone_feature_sizes
    ]
    backbone = getattr(config.vision_config, "backbone_config", None)
    if backbone is not None and hasattr(backbone, "image_size"):
        backbone.image_size = [size, size] if isinstance(backbone.image_size, (list, tuple)) else size
    config.prompt_encoder_config.image_size = size


def feature_pyramid_size_multiple(config) -> int:
    # Twice the stride of the coarsest level the decoder reads: one more 2x pooling stage sits above it.
    coarsest = min(int(level[0]) for level in config.vision_config.backbone_feature_sizes)
    return 2 * (SamFamily.image_size(config) // coarsest)


SAM2 = SamFamily(
    set_image_size=feature_pyramid_set_image_size,
    image_size_multiple=feature_pyramid_size_multiple,
    processor_class="Sam2Processor",
    name="SAM 2",
    model_class="Sam2Model",
    model_type="sam2",
    mask_decoder_class="Sam2MaskDecoder",
    two_way_transformer_class="Sam2TwoWayTransformer",
    first_mask_token=2,
    lora_target_modules=("qkv",),  # Hiera's fused attention projection
    decoder_lora_target_modules=SAM2_DECODER_ATTENTION,
    geometry=SQUARE,
    # Hiera (`Sam2MultiScaleBlock`: layer_norm1, attn, layer_norm2, mlp). A block that changes width does so in
    # its attention; its MLP keeps the width, so both placements fit every block.
    adapter_targets=(
        r"(?:.*\.)?vision_encoder\.backbone\.blocks\.\d+\.mlp",
        r"(?:.*\.)?vision_encoder\.backbone\.blocks\.\d+\.layer_norm[12]",
    ),
    cache_inputs=feature_levels,
    opt_in_checkpointing=True,
    example_checkpoint="facebook/sam2.1-hiera-base-plus",
)
