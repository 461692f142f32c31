"""The tuner layers: a bottleneck adapter around an MLP block, and a trainable LayerNorm copy.

Both keep the wrapped module as `base_layer` and never change it, so with the adapters
disabled (`PeftModel.disable_adapter()`, InfoSAM's shared-weights teacher) the output is
the base model's, bit for bit.
"""

from __future__ import annotations

import copy

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import BottleneckAdapterConfig

NOT_MERGEABLE = (
    "The bottleneck adapter cannot be merged into the base weights: it is nonlinear (down-projection, activation, "
    "up-projection). Keep the PeftModel for inference (infosam_hf.load(...) without merge=True), or use "
    "unload() to get the unchanged base model back."
)


# The output projection of the MLP blocks of the SAM families in transformers (SAM/SAM-HQ `lin2`, SAM 2 Hiera
# `proj_out`, SAM 3 ViT `fc2`); other MLPs: the last Linear registered.
OUTPUT_PROJECTIONS = ("lin2", "proj_out", "fc2", "down_proj")


def mlp_features(module: nn.Module) -> tuple[int, int]:
    """(input, output) features of an MLP block: its first `nn.Linear` and its output projection.

    A block without Linear layers (e.g. a convolution-only stage such as EdgeTAM's RepViT)
    cannot take this adapter.
    """
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"The bottleneck adapter targets MLP blocks made of nn.Linear layers, but {type(module).__name__} has "
            "none (a convolution-only block cannot take it). Point target_modules at the transformer blocks' MLPs."
        )
    out = next((getattr(module, n) for n in OUTPUT_PROJECTIONS if isinstance(getattr(module, n, None), nn.Linear)), None)
    return linears[0].in_features, (out or linears[-1]).out_features


class BottleneckAdapterLayer(BaseTunerLayer):
    """What both layers share: no merging, and the adapter state PEFT saves and toggles."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(NOT_MERGEABLE)

    def unmerge(self) -> None:  # nothing is ever merged
        return None

    def _active_with(self, container: nn.ModuleDict) -> list[str]:
        return [name for name in self.active_adapters if name in container]


class BottleneckAdapterMLP(nn.Module, BottleneckAdapterLayer):
    """`mlp(x) + s * up(act(down(h)))`, h = mlp(x) (sequential) or x (parallel); `up` starts at zero."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_placement", "bottleneck_scaling")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckAdapterConfig, **kwargs) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = mlp_features(base_layer)
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_act = nn.ModuleDict({})
        self.bottleneck_dropout = nn.ModuleDict({})
        self.bottleneck_placement: dict[str, str] = {}
        self.bottleneck_scaling: dict[str, float] = {}
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckAdapterConfig) -> None:
        from transformers.activations import ACT2FN

        if config.placement == "parallel" and self.in_features != self.out_features:
            raise ValueError(
                f"A parallel bottleneck adapter adds f(x) to mlp(x), so the MLP must keep its width; this one maps "
                f"{self.in_features} -> {self.out_features} features. Use placement='sequential'."
            )
        source = self.out_features if config.placement == "sequential" else self.in_features
        width = config.width(source)
        self.bottleneck_down[adapter_name] = nn.Linear(source, width)  # PyTorch's default init, as a Linear layer
        self.bottleneck_up[adapter_name] = nn.Linear(width, self.out_features)
        nn.init.zeros_(self.bottleneck_up[adapter_name].weight)  # the adapted model starts equal to the base
        nn.init.zeros_(self.bottleneck_up[adapter_name].bias)
        self.bottleneck_act[adapter_name] = ACT2FN[config.activation]
        self.bottleneck_dropout[adapter_name] = (
            nn.Dropout(config.adapter_dropout) if config.adapter_dropout > 0 else nn.Identity()
        )
        self.bottleneck_placement[adapter_name] = config.placement
        self.bottleneck_scaling[adapter_name] = config.scaling
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self._active_with(self.bottleneck_down):
            down = self.bottleneck_down[name]
            source = result if self.bottleneck_placement[name] == "sequential" else x
            hidden = self.bottleneck_dropout[name](source.to(down.weight.dtype))
            delta = self.bottleneck_up[name](self.bottleneck_act[name](down(hidden)))
            result = result + self.bottleneck_scaling[name] * delta.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "bottleneck_adapter." + super().__repr__()


class BottleneckAdaptedLayerNorm(nn.Module, BottleneckAdapterLayer):
    """A trainable copy of a LayerNorm that replaces it while the adapter is active.

    Training the encoder's LayerNorms in place would change the frozen teacher too; a copy
    keeps `disable_adapter()` exact.
    """

    adapter_layer_names = ("bottleneck_norm",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckAdapterConfig, **kwargs) -> None:
        super().__init__()
        if not any(p.dim() == 1 for p in base_layer.parameters(recurse=False)):
            raise ValueError(
                f"train_layernorms copies LayerNorm-like modules with a weight vector; {type(base_layer).__name__} is "
                "not one. Fix layernorm_modules so it names only the encoder's LayerNorms."
            )
        self.base_layer = base_layer
        self.bottleneck_norm = nn.ModuleDict({})
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckAdapterConfig) -> None:
        norm = copy.deepcopy(self.get_base_layer())
        norm.requires_grad_(True)
        self.bottleneck_norm[adapter_name] = norm
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        active = [] if self.disable_adapters else self._active_with(self.bottleneck_norm)
        if not active:
            return self.base_layer(x, *args, **kwargs)
        return self.bottleneck_norm[active[-1]](x, *args, **kwargs)

    def __repr__(self) -> str:
        return "bottleneck_adapter." + super().__repr__()
