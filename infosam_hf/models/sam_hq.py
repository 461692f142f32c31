"""SAM-HQ (`SamHQModel`): SAM's ViT and geometry, plus an HQ token fed with early ViT features."""

from .family import LONGEST_SIDE_PAD, SamFamily
from .sam import SAM_DECODER_ATTENTION, SAM_VIT_ADAPTER_TARGETS


def _with_intermediate_embeddings(decoder_kwargs: dict) -> dict:
    # SAM-HQ's decoder fuses early ViT features into its HQ token: they are part of the image encoding.
    return {
        "image_embeddings": decoder_kwargs["image_embeddings"],
        "intermediate_embeddings": list(decoder_kwargs["intermediate_embeddings"]),
    }


def _embeddings_and_intermediate(embeddings) -> dict:
    # `SamHQModel.get_image_embeddings` returns (image embeddings, the early ViT features its HQ token fuses).
    image, intermediate = embeddings
    return {"image_embeddings": image, "intermediate_embeddings": list(intermediate)}


SAM_HQ = SamFamily(
    processor_class="SamHQProcessor",
    name="SAM-HQ",
    model_class="SamHQModel",
    model_type="sam_hq",
    mask_decoder_class="SamHQMaskDecoder",
    two_way_transformer_class="SamHQTwoWayTransformer",
    first_mask_token=1,
    lora_target_modules=("qkv",),
    decoder_lora_target_modules=SAM_DECODER_ATTENTION,
    geometry=LONGEST_SIDE_PAD,
    adapter_targets=SAM_VIT_ADAPTER_TARGETS,
    cache_inputs=_with_intermediate_embeddings,
    encoding_inputs=_embeddings_and_intermediate,
    example_checkpoint="syscv-community/sam-hq-vit-base",
)
