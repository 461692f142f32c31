"""The InfoSAM paper's bottleneck Adapter as a PEFT method (`config.py`, `layer.py`, `model.py`, as PEFT lays out a tuner).

Importing this package (which `import infosam_hf` does) registers the method with PEFT,
so `get_peft_model`, `PeftModel.from_pretrained`, `disable_adapter()` and safetensors
saving work as for LoRA.
"""

from .config import PEFT_TYPE, PLACEMENTS, PREFIX, BottleneckAdapterConfig
from .layer import NOT_MERGEABLE, BottleneckAdaptedLayerNorm, BottleneckAdapterLayer, BottleneckAdapterMLP
from .model import DEFAULT_TARGETS, BottleneckAdapterModel, target_kind
from .register import register_bottleneck_adapter

register_bottleneck_adapter()

__all__ = [
    "BottleneckAdapterConfig",
    "BottleneckAdapterLayer",
    "BottleneckAdapterMLP",
    "BottleneckAdaptedLayerNorm",
    "BottleneckAdapterModel",
    "DEFAULT_TARGETS",
    "NOT_MERGEABLE",
    "PEFT_TYPE",
    "PLACEMENTS",
    "PREFIX",
    "register_bottleneck_adapter",
    "target_kind",
]
