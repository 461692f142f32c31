"""Tiny SAM configurations for tests and benchmarks (the built-in models' own: `infosam_hf.builtin.configs`).

Real checkpoints cannot be fetched in CI, so everything that exercises the
pipeline builds a `SamModel` from one of these configs. They keep SAM's
structure (ViT encoder with windowed + global attention, prompt encoder,
two-way mask decoder with 256 channels) so that code paths match
`facebook/sam-vit-base`, only smaller.
"""

from __future__ import annotations

from transformers import SamConfig

from .builtin.configs import builtin_sam2_config, builtin_sam_config  # noqa: F401  (moved; re-exported)
from .builtin.configs import feature_sizes as _feature_sizes


def load_script(path, name: str):
    """Import a script (examples/*.py, benchmarks/*.py: not a package) as module `name`.

    Registered in sys.modules before it runs, because dataclasses defined in a script look
    their module up by name (HfArgumentParser's argument classes do).
    """
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
# ---------------------------------------------------------------------------------------- other SAM families
# Tiny random configs of every family in `infosam_hf.models`, the same size class as `tiny_sam_config`
# (64 px inputs, 1-2 layers, a 32-wide decoder): InfoSAMConfig(relation_dim=32) goes with them.
TINY_DECODER = dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32)


def tiny_sam_hq_config(image_size: int = 64):
    from transformers import SamHQConfig

    return SamHQConfig(
        vision_config=dict(
            hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=16, initializer_range=0.02,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=8),
        mask_decoder_config=dict(TINY_DECODER, vit_dim=32),
    )


def tiny_sam2_config(image_size: int = 64):
    """A 5-block Hiera (4 stages, one global-attention block), 16x16/8x8/4x4 feature levels at 64 px."""
    from transformers import Sam2Config, Sam2HieraDetConfig

    backbone = Sam2HieraDetConfig(
        hidden_size=16, num_attention_heads=1, image_size=[image_size, image_size],
        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 2],
        global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2],
    )
    return Sam2Config(
        vision_config=dict(
            backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=_feature_sizes(image_size, 16), fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=16),
        mask_decoder_config=dict(TINY_DECODER),
    )


def tiny_sam3_tracker_config(image_size: int = 56):
    """A 2-layer ViT with 14 px patches (SAM 3's), so the input is a multiple of 14: 56 px by default."""
    from transformers import Sam3TrackerConfig, Sam3ViTConfig

    backbone = Sam3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=14, window_size=2, global_attn_indexes=[1], pretrain_image_size=image_size,
    )
    return Sam3TrackerConfig(
        vision_config=dict(
            backbone_config=backbone, backbone_feature_sizes=_feature_sizes(image_size, 14), fpn_hidden_size=32
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=14),
        mask_decoder_config=dict(TINY_DECODER),
    )


def tiny_edgetam_config(image_size: int = 64, timm_backbone: bool = False):
    """EdgeTAM with a 4-stage convolutional image encoder.

    Its real encoder is a timm RepViT, and timm needs torchvision, which has no CPU build here:
    by default a stand-in with RepViT's module names (`...channel_mixer.conv1.c`, the LoRA
    targets) and output (four feature maps, strides 4-32) takes its place, registered with the
    Auto classes so that save/load work. `timm_backbone=True` uses timm's `repvit_m0_9` (not run here:
    no torchvision).
    """
    from transformers import EdgeTamConfig

    if timm_backbone:
        from transformers import TimmWrapperConfig

        # a config object: as a dict, TimmWrapperConfig.from_dict sets num_labels=None and fails (transformers 5.24)
        backbone = TimmWrapperConfig(
            architecture="repvit_m0_9", do_pooling=False,
            model_args=dict(in_chans=3, features_only=True, out_indices=[0, 1, 2, 3]),
        )
        channels = [384, 192, 96, 48]
    else:
        backbone = _tiny_repvit_config()
        channels = list(reversed(backbone.channels))
    return EdgeTamConfig(
        vision_config=dict(
            backbone_config=backbone, backbone_channel_list=channels,
            backbone_feature_sizes=_feature_sizes(image_size, 16), fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=16),
        mask_decoder_config=dict(TINY_DECODER),
    )


def _tiny_repvit_config():
    """A RepViT-shaped backbone (see `tiny_edgetam_config`), registered with AutoConfig/AutoModel on first use."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput

    if "infosam_tiny_repvit" in _REGISTERED:
        return _REGISTERED["infosam_tiny_repvit"]()

    class TinyRepVitConfig(PreTrainedConfig):
        model_type = "infosam_tiny_repvit"

        def __init__(self, channels=(16, 32, 64, 128), **kwargs):
            self.channels = list(channels)
            super().__init__(**kwargs)

    class _Conv(nn.Module):  # RepViT's Conv2d_BN keeps the convolution at `.c`
        def __init__(self, cin, cout):
            super().__init__()
            self.c = nn.Conv2d(cin, cout, 1)

    class _ChannelMixer(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1, self.conv2 = _Conv(channels, 2 * channels), _Conv(2 * channels, channels)

        def forward(self, x):
            return x + self.conv2.c(torch.relu(self.conv1.c(x)))

    class _Stage(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.downsample = nn.Conv2d(cin, cout, stride, stride=stride)
            self.channel_mixer = _ChannelMixer(cout)

        def forward(self, x):
            return self.channel_mixer(self.downsample(x))

    class TinyRepVit(PreTrainedModel):
        config_class = TinyRepVitConfig

        def __init__(self, config):
            super().__init__(config)
            c = config.channels
            self.stages = nn.ModuleList(
                [_Stage(3, c[0], 4), _Stage(c[0], c[1], 2), _Stage(c[1], c[2], 2), _Stage(c[2], c[3], 2)]
            )
            self.post_init()

        def forward(self, pixel_values, **_kwargs):
            features, x = [], pixel_values
            for stage in self.stages:
                x = stage(x)
                features.append(x)
            return BaseModelOutput(last_hidden_state=features)

    AutoConfig.register(TinyRepVitConfig.model_type, TinyRepVitConfig)
    AutoModel.register(TinyRepVitConfig, TinyRepVit)
    _REGISTERED[TinyRepVitConfig.model_type] = TinyRepVitConfig
    return TinyRepVitConfig()


_REGISTERED: dict = {}


TINY_FAMILY_CONFIGS = {
    "SamModel": tiny_sam_config,
    "SamHQModel": tiny_sam_hq_config,
    "Sam2Model": tiny_sam2_config,
    "Sam3TrackerModel": tiny_sam3_tracker_config,
    "EdgeTamModel": tiny_edgetam_config,
}


def tiny_family_model(model_class: str, seed: int = 0):
    """A tiny random model of one family, by class name (SamModel with a 32-wide decoder like the others)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if model_class == "SamModel":
        config = tiny_sam_config(output_channels=32)
    else:
        config = TINY_FAMILY_CONFIGS[model_class]()
    return getattr(transformers, model_class)(config).eval()
