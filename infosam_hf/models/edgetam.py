"""EdgeTAM (`EdgeTamModel`): a convolutional RepViT image encoder (timm) under SAM 2's decoder."""

from torch import nn

from .family import SQUARE, SamFamily
from .sam2 import (
    SAM2_DECODER_ATTENTION,
    feature_levels,
    feature_pyramid_set_image_size,
    feature_pyramid_size_multiple,
)


def _untie_for_peft(model: nn.Module) -> None:
    # EdgeTamModel declares `_tied_weights_keys = {}`; get_peft_model fails on it unless it is None.
    model._tied_weights_keys = None


EDGETAM = SamFamily(
    set_image_size=feature_pyramid_set_image_size,
    image_size_multiple=feature_pyramid_size_multiple,
    processor_class="Sam2Processor",
    name="EdgeTAM",
    model_class="EdgeTamModel",
    model_type="edgetam",
    mask_decoder_class="EdgeTamMaskDecoder",
    two_way_transformer_class="EdgeTamTwoWayTransformer",
    first_mask_token=2,
    # RepViT has no attention: LoRA on its channel-mixer 1x1 convolutions.
    lora_target_modules=r".*vision_encoder\.backbone\..*channel_mixer\.conv[12]\.c",
    decoder_lora_target_modules=SAM2_DECODER_ATTENTION,
    geometry=SQUARE,
    adapter_unsupported="EdgeTAM, whose RepViT image encoder is convolutional (no MLP of Linear layers)",
    cache_inputs=feature_levels,
    prepare_for_peft=_untie_for_peft,
    example_checkpoint="yonigozlan/EdgeTAM-hf",
    notes="needs timm (its RepViT image encoder is a timm model)",
)
