"""PEFT methods of infosam_hf, registered with PEFT on import."""

from .bottleneck_adapter import BottleneckAdapterConfig, BottleneckAdapterModel

__all__ = ["BottleneckAdapterConfig", "BottleneckAdapterModel"]
