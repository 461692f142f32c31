"""`InfoSAMConfig`: every knob of the InfoSAM method in one serialisable dataclass.

It is kept separate from `TrainingArguments` on purpose: the method's knobs travel
with the adapter (`infosam_config.json`) and are needed again at inference and when
training continues, while optimiser settings belong to a run. Both are parsed by one
`HfArgumentParser` in `examples/train.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

INFOSAM_CONFIG_NAME = "infosam_config.json"
SEGMENTATION_LOSSES = ("structure", "focal_dice_iou")
PEFT_METHODS = ("lora", "adapter")


def _auto_or_bool(value: Any, name: str) -> bool | str:
    """True, False or "auto" from a bool or its command-line spellings (saved configs hold JSON booleans)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none"):
        return False
    raise ValueError(f"InfoSAMConfig.{name} must be 'auto', true or false, got {value!r}.")


@dataclass
class InfoSAMConfig:
    """Hyper-parameters of InfoSAM (Zhang, Yuan et al., ICML 2025, arXiv 2505.21920).

    Defaults are those of the paper's reference runs: lambda_1 = 1.0 for the relation
    compression term L_r, lambda_2 = 0.5 for the relation distillation term L_d, the
    "structure" segmentation loss, single-mask output, and prompts that are a jittered
    ground-truth box or one foreground point with equal probability.
    """

    lambda_1: float = field(default=1.0, metadata={"help": "Weight of the relation compression loss L_r."})
    lambda_2: float = field(default=0.5, metadata={"help": "Weight of the relation distillation loss L_d."})
    relation_dim: int = field(
        default=256, metadata={"help": "Channels C of the image embeddings and mask tokens (256 for every SAM)."}
    )
    train_relation_module: bool = field(
        default=True, metadata={"help": "Train the relation module with the student (paper: yes)."}
    )
    seg_loss: str = field(
        default="structure",
        metadata={"help": f"Segmentation loss: one of {SEGMENTATION_LOSSES}.", "choices": list(SEGMENTATION_LOSSES)},
    )
    structure_loss_weighted_bce: bool = field(
        default=False,
        metadata={
            "help": "Weight the BCE term of the structure loss by the PraNet edge weight. The reference code's BCE "
            "is in effect unweighted (default False reproduces it)."
        },
    )
    box_prompt_probability: float = field(
        default=0.5, metadata={"help": "Probability that a training batch is prompted with a box (else points)."}
    )
    num_points: int = field(default=1, metadata={"help": "Foreground points per point prompt."})
    box_noise: float = field(default=0.1, metadata={"help": "Box jitter, as a fraction of the box side."})
    max_box_noise: float | None = field(
        default=5.0,
        metadata={
            "help": "Cap on the box jitter, in pixels of SAM's 1024 px input (scaled to smaller inputs). The "
            "reference code uses 5; SAM's own recipe 20. None: no cap."
        },
    )
    box_jitter: str = field(
        default="shift",
        metadata={
            "help": "'shift' (reference code: the whole box moves by one offset) or 'corners' (SAM's recipe: each "
            "coordinate gets its own noise).",
            "choices": ["shift", "corners"],
        },
    )
    multimask_output: bool = field(
        default=False, metadata={"help": "Ask SAM for 3 masks and train the best one (paper: single mask)."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of the default student adapter."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha of the default student adapter."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout of the default student adapter."})
    lora_target_modules: str = field(
        default="encoder",
        metadata={
            "help": "What receives LoRA: a preset resolved for the model's family, 'encoder' (the image encoder's "
            "attention projections) or 'decoder' (the mask decoder's; with --modules_to_save ''), or comma-separated "
            "module names. A name that matches no module is an error listing the model's names."
        },
    )
    modules_to_save: str = field(
        default="mask_decoder", metadata={"help": "Comma-separated modules trained in full (default: mask decoder)."}
    )
    peft_method: str = field(
        default="lora",
        metadata={
            "help": "The student's PEFT method: 'lora' (LoRA on lora_target_modules) or 'adapter' (the paper's "
            "bottleneck Adapter on the image encoder's MLP blocks, infosam_hf.tuners.BottleneckAdapterConfig).",
            "choices": list(PEFT_METHODS),
        },
    )
    adapter_ratio: float = field(
        default=0.25, metadata={"help": "Adapter bottleneck width as a fraction of the encoder's hidden size."}
    )
    adapter_placement: str = field(
        default="sequential",
        metadata={
            "help": "'sequential' (adapter on the MLP's output) or 'parallel' (on the MLP's input), added residually "
            "to the MLP's output.",
            "choices": ["sequential", "parallel"],
        },
    )
    adapter_scaling: float = field(default=1.0, metadata={"help": "Factor on the adapter's output."})
    adapter_layers: str = field(
        default="",
        metadata={
            "help": "Encoder blocks that get an adapter: comma-separated indices and ranges, e.g. '2-11' (the paper, "
            "ViT-B: all but the first two). Empty: every block."
        },
    )
    adapter_train_layernorms: bool = field(
        default=False,
        metadata={"help": "Also train the image encoder's LayerNorms (as copies, so the shared teacher stays exact)."},
    )
    adapter_target_modules: str = field(
        default="",
        metadata={
            "help": "Regex over module names of the MLP blocks that get an adapter. Empty: the model type's default "
            "(SAM / SAM-HQ: vision_encoder.layers.<i>.mlp; SAM 2: vision_encoder.backbone.blocks.<i>.mlp; SAM 3 tracker: "
            "vision_encoder.backbone.layers.<i>.mlp)."
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A separate teacher SamModel (e.g. ViT-H teaching ViT-B). Default: the student's own weights "
            "with the adapters disabled, so no second copy of SAM is held in memory."
        },
    )
    gather_across_processes: bool = field(
        default=True,
        metadata={
            "help": "Under DDP, gather relation features from every rank (with gradient) so the B x B Gram "
            "matrices span the global batch instead of each rank's small local batch."
        },
    )
    # Typed `str` for HfArgumentParser ("auto" / "true" / "false"); `validate` stores True, False or "auto".
    cache_teacher_embeddings: str = field(
        default="auto",
        metadata={
            "help": "Cache the teacher's image embeddings by image content, so its image encoder runs once per image. "
            "auto (default): on when the training data has a known size, is seen for more than one epoch, keeps its "
            "pixels from epoch to epoch, and the embeddings fit --teacher_cache_max_gb; off where the cache could not "
            "be exact (a trained image-encoder part the shared teacher also runs). The decision and its reason are "
            "printed with the schedule (InfoSAMTrainer.teacher_cache_decision). true / false force it."
        },
    )
    teacher_cache_max_gb: float | None = field(
        default=None,
        metadata={
            "help": "Memory bound of the teacher-embedding cache (GB, per process). Default: 25% of the memory "
            "available when training starts (RAM; the GPU's free memory where the cache lives there), shared by "
            "the processes of the machine."
        },
    )
    teacher_cache_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Keep the cached teacher embeddings in 'bfloat16' (half the memory; the loss parts stay within "
            "the tolerance of --teacher_dtype bfloat16). Default: the teacher's compute precision, exact.",
        },
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Run the frozen teacher's forward under autocast in this dtype ('bfloat16' or 'float16') even "
            "when the student trains in float32: the teacher needs no gradient, so half precision only costs "
            "rounding in z_i and the mask token. Default: the student's precision."
        },
    )
    teacher_store: str | None = field(
        default=None,
        metadata={
            "help": "A folder for a persistent on-disk store of the teacher's image embeddings (implies "
            "cache_teacher_embeddings). Keyed by the teacher's weights and the image content, so later runs on the "
            "same data and base (e.g. a sweep) skip the teacher's image encoder entirely. See "
            "examples/precompute_teacher.py to fill it up front."
        },
    )
    teacher_store_max_gb: float | None = field(
        default=None, metadata={"help": "Stop writing new entries to teacher_store beyond this size (GB)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Train at this input side in pixels instead of the checkpoint's (e.g. 512 or 256 for SAM's 1024): "
            "the base (and teacher) is adapted once (infosam_hf.resolution) and the adapter records the size. A "
            "multiple of the patch size. Default: the checkpoint's size."
        },
    )
    allow_image_upscaling: bool = field(
        default=False,
        metadata={"help": "Allow image_size above the checkpoint's (position embeddings interpolated upwards)."},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fail early, with the field name and the fix, rather than deep inside a training step."""
        for f in dataclasses.fields(self):  # inf / nan (`--lambda_1 inf` parses) would fail at step 0 at best
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"InfoSAMConfig.{f.name} must be a finite number, got {value!r}.")
        for name in ("lambda_1", "lambda_2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"InfoSAMConfig.{name} must be a non-negative number, got {value!r}.")
        if self.seg_loss not in SEGMENTATION_LOSSES:
            raise ValueError(
                f"InfoSAMConfig.seg_loss={self.seg_loss!r} is not a known segmentation loss; "
                f"use one of {', '.join(SEGMENTATION_LOSSES)}."
            )
        if not 0.0 <= self.box_prompt_probability <= 1.0:
            raise ValueError(
                f"InfoSAMConfig.box_prompt_probability must lie in [0, 1], got {self.box_prompt_probability}."
            )
        if self.relation_dim <= 0:
            raise ValueError(f"InfoSAMConfig.relation_dim must be positive, got {self.relation_dim}.")
        if self.num_points < 1:
            raise ValueError(f"InfoSAMConfig.num_points must be at least 1, got {self.num_points}.")
        if self.box_noise < 0:
            raise ValueError(f"InfoSAMConfig.box_noise must be >= 0, got {self.box_noise}.")
        if self.max_box_noise is not None and self.max_box_noise < 0:
            raise ValueError(f"InfoSAMConfig.max_box_noise must be >= 0 or None, got {self.max_box_noise}.")
        if self.box_jitter not in ("shift", "corners"):
            raise ValueError(f"InfoSAMConfig.box_jitter must be 'shift' or 'corners', got {self.box_jitter!r}.")
        if self.teacher_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(
                f"InfoSAMConfig.teacher_dtype must be None, 'bfloat16' or 'float16', got {self.teacher_dtype!r}."
            )
        self.cache_teacher_embeddings = _auto_or_bool(self.cache_teacher_embeddings, "cache_teacher_embeddings")
        if self.teacher_cache_dtype not in (None, "bfloat16"):
            raise ValueError(
                f"InfoSAMConfig.teacher_cache_dtype must be None (the teacher's precision) or 'bfloat16', got "
                f"{self.teacher_cache_dtype!r}."
            )
        if self.teacher_cache_max_gb is not None and not self.teacher_cache_max_gb > 0:
            raise ValueError(
                f"InfoSAMConfig.teacher_cache_max_gb must be positive or None, got {self.teacher_cache_max_gb}; "
                "--cache_teacher_embeddings false turns the cache off."
            )
        if self.teacher_store_max_gb is not None and self.teacher_store_max_gb <= 0:
            raise ValueError(f"InfoSAMConfig.teacher_store_max_gb must be positive or None, got {self.teacher_store_max_gb}.")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size <= 0):
            raise ValueError(f"InfoSAMConfig.image_size must be a positive number of pixels or None, got {self.image_size!r}.")
        if self.lora_r < 1:
            raise ValueError(f"InfoSAMConfig.lora_r must be at least 1, got {self.lora_r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"InfoSAMConfig.lora_dropout must lie in [0, 1), got {self.lora_dropout}.")
        if self.peft_method not in PEFT_METHODS:
            raise ValueError(
                f"InfoSAMConfig.peft_method={self.peft_method!r} is not supported; use one of {', '.join(PEFT_METHODS)}."
            )
        if not 0.0 < self.adapter_ratio <= 1.0:
            raise ValueError(f"InfoSAMConfig.adapter_ratio must lie in (0, 1], got {self.adapter_ratio}.")
        if self.adapter_placement not in ("sequential", "parallel"):
            raise ValueError(
                f"InfoSAMConfig.adapter_placement must be 'sequential' or 'parallel', got {self.adapter_placement!r}."
            )
        self.adapter_layer_indices()  # fails early on a malformed adapter_layers

    @property
    def uses_distillation(self) -> bool:
        return self.lambda_1 > 0 or self.lambda_2 > 0

    @staticmethod
    def split_names(value: str | list[str] | None) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)

    def adapter_layer_indices(self) -> list[int] | None:
        """`adapter_layers` ('2-11', '0,3,5-7') as a sorted list; None when empty (every block)."""
        indices: set[int] = set()
        for part in self.split_names(self.adapter_layers):
            try:
                low, _, high = part.partition("-")
                first, last = int(low), int(high or low)
            except ValueError:
                raise ValueError(
                    f"InfoSAMConfig.adapter_layers={self.adapter_layers!r}: {part!r} is not an index or a range; "
                    "write e.g. '2-11' or '0,3,5-7'."
                ) from None
            if first < 0 or last < first:
                raise ValueError(f"InfoSAMConfig.adapter_layers={self.adapter_layers!r}: bad range {part!r}.")
            indices.update(range(first, last + 1))
        return sorted(indices) or None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, INFOSAM_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the given dict") -> "InfoSAMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source} has fields InfoSAMConfig does not know: {unknown}. It may come from a newer "
                f"infosam-hf; upgrade the package or remove those fields."
            )
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "InfoSAMConfig":
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); re-save it with InfoSAMConfig.save_pretrained.")
        return cls.from_dict(values, source=str(path))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "InfoSAMConfig":
        path = os.path.join(folder, INFOSAM_CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {INFOSAM_CONFIG_NAME} in {folder}; save one with InfoSAMConfig().save_pretrained({str(folder)!r})."
            )
        return cls.from_json_file(path)
