"""SAM (`SamModel`, `facebook/sam-vit-*`): a ViT image encoder, longest-side resize with padding."""

from .family import LONGEST_SIDE_PAD, SamFamily

# The two-way transformer's attention projections (token self-attention, both cross-attentions, the final one).
SAM_DECODER_ATTENTION = r".*mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|out_proj)"
# The ViT block (`SamVisionLayer`: layer_norm1, attn, layer_norm2, mlp): the Adapter's MLP and LayerNorm targets.
SAM_VIT_ADAPTER_TARGETS = (
    r"(?:.*\.)?vision_encoder\.layers\.\d+\.mlp",
    r"(?:.*\.)?vision_encoder\.(?:layers\.\d+\.layer_norm[12]|neck\.layer_norm[12])",
)

SAM = SamFamily(
    name="SAM",
    model_class="SamModel",
    model_type="sam",
    mask_decoder_class="SamMaskDecoder",
    two_way_transformer_class="SamTwoWayTransformer",
    first_mask_token=1,
    lora_target_modules=("qkv",),
    decoder_lora_target_modules=SAM_DECODER_ATTENTION,
    geometry=LONGEST_SIDE_PAD,
    adapter_targets=SAM_VIT_ADAPTER_TARGETS,
    example_checkpoint="facebook/sam-vit-base",
)
