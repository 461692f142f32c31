"""infosam-hf: InfoSAM relation distillation for fine-tuning Segment Anything, the Hugging Face way."""

from .config import InfoSAMConfig
from .features import CapturedFeatures, capture_sam_features
from .losses import (
    InfoSAMLoss,
    focal_dice_iou_loss,
    relation_compression_loss,
    relation_distillation_loss,
    structure_loss,
)
from .modeling import InfoSAMModel, InfoSAMModelOutput, build_student, default_peft_config
from .relation import RelationModule
from .trainer import InfoSAMTrainer

__version__ = "0.1.0"


def load(*args, **kwargs):
    """Load a trained InfoSAM adapter from a folder or the Hub, ready for inference. See `infosam_hf.hub.load`."""
    from .hub import load as _load

    return _load(*args, **kwargs)


__all__ = [
    "InfoSAMConfig",
    "InfoSAMLoss",
    "InfoSAMModel",
    "InfoSAMModelOutput",
    "InfoSAMTrainer",
    "RelationModule",
    "CapturedFeatures",
    "build_student",
    "capture_sam_features",
    "default_peft_config",
    "focal_dice_iou_loss",
    "load",
    "relation_compression_loss",
    "relation_distillation_loss",
    "structure_loss",
]
