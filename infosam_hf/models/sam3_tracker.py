"""SAM 3 tracker (`Sam3TrackerModel`): SAM 3's ViT under SAM 2's decoder and feature pyramid."""

from .family import SQUARE, SamFamily
from .sam2 import (
    SAM2_DECODER_ATTENTION,
    feature_levels,
    feature_pyramid_set_image_size,
    feature_pyramid_size_multiple,
)

SAM3_TRACKER = SamFamily(
    set_image_size=feature_pyramid_set_image_size,
    image_size_multiple=feature_pyramid_size_multiple,
    processor_class="Sam3TrackerProcessor",
    name="SAM 3 tracker",
    model_class="Sam3TrackerModel",
    model_type="sam3_tracker",
    mask_decoder_class="Sam3TrackerMaskDecoder",
    two_way_transformer_class="Sam3TrackerTwoWayTransformer",
    first_mask_token=2,
    # The ViT's projections share their names with the decoder's: anchor them to the image encoder.
    lora_target_modules=r".*vision_encoder\.backbone\.layers\.\d+\.attention\.(q_proj|k_proj|v_proj)",
    decoder_lora_target_modules=SAM2_DECODER_ATTENTION,
    geometry=SQUARE,
    # SAM 3's ViT (`Sam3ViTLayer`: layer_norm1, attention, layer_norm2, mlp), anchored to the image encoder.
    adapter_targets=(
        r"(?:.*\.)?vision_encoder\.backbone\.layers\.\d+\.mlp",
        r"(?:.*\.)?vision_encoder\.backbone\.(?:layers\.\d+\.layer_norm[12]|layer_norm)",
    ),
    cache_inputs=feature_levels,
    opt_in_checkpointing=True,
    example_checkpoint="facebook/sam3",
)
