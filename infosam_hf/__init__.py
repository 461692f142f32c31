"""infosam-hf: InfoSAM relation distillation for fine-tuning Segment Anything, the Hugging Face way."""

from .config import InfoSAMConfig, PeftArguments
from .features import CapturedFeatures, capture_sam_features
from .inference import Predictor
from .losses import (
    InfoSAMLoss,
    focal_dice_iou_loss,
    relation_compression_loss,
    relation_distillation_loss,
    structure_loss,
)
from .modeling import InfoSAMModel, InfoSAMModelOutput, build_student, default_peft_config
from .relation import RelationModule
from .tuners import BottleneckAdapterConfig  # registers the bottleneck adapter with PEFT
from .trainer import InfoSAMTrainer
from .training_args import InfoSAMTrainingArguments

from .loading import load, load_for_training
from .export import export, mask_generation_pipeline  # noqa: E402  (the function shadows the submodule name, as intended)

__version__ = "0.1.0"


__all__ = [
    "BottleneckAdapterConfig",
    "InfoSAMConfig",
    "InfoSAMLoss",
    "InfoSAMModel",
    "InfoSAMModelOutput",
    "InfoSAMTrainer",
    "InfoSAMTrainingArguments",
    "PeftArguments",
    "Predictor",
    "RelationModule",
    "CapturedFeatures",
    "build_student",
    "capture_sam_features",
    "default_peft_config",
    "export",
    "focal_dice_iou_loss",
    "load",
    "load_for_training",
    "mask_generation_pipeline",
    "relation_compression_loss",
    "relation_distillation_loss",
    "structure_loss",
]
