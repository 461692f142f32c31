"""The method (`InfoSAMConfig`) and the student's PEFT choices (`PeftArguments`), split as trl splits SFTConfig and
ModelConfig.

`InfoSAMConfig` is what a reader of the paper recognises and what travels with the adapter (`infosam_config.json`):
it is needed again at inference and when training continues, so it holds nothing of the machine that trained.
`PeftArguments` become the adapter's own `PeftConfig` (`get_peft_config`), which PEFT saves as `adapter_config.json`.
Run-local settings (teacher store, cache, dtype, gathering) are `infosam_hf.training_args.InfoSAMTrainingArguments`.
All are parsed by one `HfArgumentParser` in `examples/train.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft import PeftConfig

    from .models import SamFamily

logger = logging.getLogger(__name__)

INFOSAM_CONFIG_NAME = "infosam_config.json"
SEGMENTATION_LOSSES = ("structure", "focal_dice_iou")
PEFT_METHODS = ("lora", "adapter")
# `InfoSAMTrainingArguments`' own fields (training_args.py imports transformers; this module stays light).
RUN_LOCAL_FIELDS = (
    "gather_across_processes", "cache_teacher_embeddings", "teacher_cache_max_gb", "teacher_cache_dtype",
    "teacher_dtype", "teacher_store", "teacher_store_max_gb",
)


def _auto_or_bool(value: Any, name: str) -> bool | str:
    """True, False or "auto" from a bool or its command-line spellings (saved configs hold JSON booleans)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none"):
        return False
    raise ValueError(f"{name} must be 'auto', true or false, got {value!r}.")


def check_teacher_dtype(value: str | None, owner: str) -> None:
    """The precisions the frozen teacher may run in under autocast (None: the student's)."""
    if value not in (None, "bfloat16", "float16"):
        raise ValueError(f"{owner}.teacher_dtype must be None, 'bfloat16' or 'float16', got {value!r}.")


def check_finite(obj: Any) -> None:
    """inf / nan (`--lambda_1 inf` parses) would fail at step 0 at best."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{type(obj).__name__}.{f.name} must be a finite number, got {value!r}.")


def split_names(value: str | list[str] | None) -> list[str]:
    """'a, b' (a command-line list) as ['a', 'b']; lists as they are."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def is_local_path(name: str | os.PathLike | None) -> bool:
    """A path on this machine (absolute, relative or existing) rather than a Hub id others can load."""
    if not name:
        return False
    name = os.fspath(name)
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)


@dataclass
class InfoSAMConfig:
    """Hyper-parameters of InfoSAM (Zhang, Yuan et al., ICML 2025, arXiv 2505.21920): what the adapter records.

    Defaults are those of the paper's reference runs: lambda_1 = 1.0 for the relation
    compression term L_r, lambda_2 = 0.5 for the relation distillation term L_d, the
    "structure" segmentation loss, single-mask output, and prompts that are a jittered
    ground-truth box or one foreground point with equal probability. The student's adapter is
    `PeftArguments`; where the teacher's work is kept and in which precision it runs is the run's
    (`InfoSAMTrainingArguments`).
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
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A separate teacher SamModel (e.g. ViT-H teaching ViT-B). Default: the student's own weights "
            "with the adapters disabled, so no second copy of SAM is held in memory. Saved with the adapter only "
            "when it is a Hub id: a local path stays on the machine that trained."
        },
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
        check_finite(self)
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
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size <= 0):
            raise ValueError(f"InfoSAMConfig.image_size must be a positive number of pixels or None, got {self.image_size!r}.")

    @property
    def uses_distillation(self) -> bool:
        return self.lambda_1 > 0 or self.lambda_2 > 0

    @property
    def recorded_teacher(self) -> str | None:
        """The separate teacher as a saved file or card may name it: a Hub id; None for a path on this machine."""
        teacher = self.teacher_model_name_or_path
        return None if is_local_path(teacher) else teacher

    def to_dict(self) -> dict[str, Any]:
        """The fields as saved: nothing machine-local (a teacher given by local path is not recorded)."""
        values = dataclasses.asdict(self)
        values["teacher_model_name_or_path"] = self.recorded_teacher
        return values

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, INFOSAM_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the given dict") -> InfoSAMConfig:
        """Fields of `InfoSAMConfig`; those an older infosam-hf saved here that now live elsewhere (the PEFT choices,
        recorded by the adapter's own adapter_config.json, and run-local settings) are skipped."""
        known = {f.name for f in dataclasses.fields(cls)}
        moved = sorted(set(values) & set(MOVED_FIELDS))
        unknown = sorted(set(values) - known - set(moved))
        if unknown:
            raise ValueError(
                f"{source} has fields InfoSAMConfig does not know: {unknown}. It may come from a newer "
                f"infosam-hf; upgrade the package or remove those fields."
            )
        if moved:
            logger.info("%s: skipping %s, which are no longer InfoSAMConfig's (see MOVED_FIELDS).", source, moved)
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> InfoSAMConfig:
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); re-save it with InfoSAMConfig.save_pretrained.") from err
        return cls.from_dict(values, source=str(path))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> InfoSAMConfig:
        path = os.path.join(folder, INFOSAM_CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {INFOSAM_CONFIG_NAME} in {folder}; save one with InfoSAMConfig().save_pretrained({str(folder)!r})."
            )
        return cls.from_json_file(path)


@dataclass
class PeftArguments:
    """The student's adapter: LoRA (default) or the paper's bottleneck Adapter, with the mask decoder trained in full.

    `get_peft_config` turns them into the `PeftConfig` PEFT saves beside the adapter (`adapter_config.json`), which is
    where a saved adapter keeps these facts.
    """

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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_finite(self)
        if self.lora_r < 1:
            raise ValueError(f"PeftArguments.lora_r must be at least 1, got {self.lora_r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"PeftArguments.lora_dropout must lie in [0, 1), got {self.lora_dropout}.")
        if self.peft_method not in PEFT_METHODS:
            raise ValueError(
                f"PeftArguments.peft_method={self.peft_method!r} is not supported; use one of "
                f"{', '.join(PEFT_METHODS)}."
            )
        if not 0.0 < self.adapter_ratio <= 1.0:
            raise ValueError(f"PeftArguments.adapter_ratio must lie in (0, 1], got {self.adapter_ratio}.")
        if self.adapter_placement not in ("sequential", "parallel"):
            raise ValueError(
                f"PeftArguments.adapter_placement must be 'sequential' or 'parallel', got {self.adapter_placement!r}."
            )
        self.adapter_layer_indices()  # fails early on a malformed adapter_layers

    split_names = staticmethod(split_names)

    def adapter_layer_indices(self) -> list[int] | None:
        """`adapter_layers` ('2-11', '0,3,5-7') as a sorted list; None when empty (every block)."""
        indices: set[int] = set()
        for part in split_names(self.adapter_layers):
            try:
                low, _, high = part.partition("-")
                first, last = int(low), int(high or low)
            except ValueError:
                raise ValueError(
                    f"PeftArguments.adapter_layers={self.adapter_layers!r}: {part!r} is not an index or a range; "
                    "write e.g. '2-11' or '0,3,5-7'."
                ) from None
            if first < 0 or last < first:
                raise ValueError(f"PeftArguments.adapter_layers={self.adapter_layers!r}: bad range {part!r}.")
            indices.update(range(first, last + 1))
        return sorted(indices) or None

    def get_peft_config(self, family: SamFamily | None = None) -> PeftConfig:
        """The student's `PeftConfig` from `peft_method`, with the mask decoder trained in full, as in the paper.

        'lora': LoRA on `lora_target_modules`: a preset resolved in the `family`'s module names (SAM's without one),
        'encoder' (the default: the image encoder's attention projections) or 'decoder' (the mask decoder's), or names.
        'adapter': the bottleneck Adapter on the image encoder's MLP blocks (`infosam_hf.tuners`).
        """
        modules_to_save = split_names(self.modules_to_save) or None
        if self.peft_method == "adapter":
            from .tuners import BottleneckAdapterConfig

            return BottleneckAdapterConfig(
                target_modules=self.adapter_target_modules or None,
                layers_to_transform=self.adapter_layer_indices(),
                ratio=self.adapter_ratio,
                placement=self.adapter_placement,
                scaling=self.adapter_scaling,
                train_layernorms=self.adapter_train_layernorms,
                modules_to_save=modules_to_save,
            )
        from peft import LoraConfig

        from .models import SAM

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=(family or SAM).lora_targets(self.lora_target_modules),
            modules_to_save=modules_to_save,
            bias="none",
        )

    def differences(self, saved: PeftConfig, names, family: SamFamily | None = None) -> dict[str, tuple]:
        """Among the fields `names`, those whose value here gives another adapter than `saved` (a trained adapter's
        `PeftConfig`): {name: (value here, the saved adapter's value)}. What `--resume_adapter` cannot change."""
        wanted = self.get_peft_config(family)
        found = {}
        for name in names:
            if name == "peft_method":
                saved_type = getattr(saved.peft_type, "value", saved.peft_type)
                saved_method = next((m for m, t in _PEFT_TYPES.items() if saved_type == t), saved_type)
                if saved_method != self.peft_method:
                    found[name] = (self.peft_method, saved_method)
                continue
            attribute = _PEFT_CONFIG_ATTRIBUTES.get(self.peft_method, {}).get(name)
            if attribute is None:
                continue  # a field of the other method: it shapes nothing here
            mine, theirs = getattr(wanted, attribute, None), getattr(saved, attribute, None)
            if _comparable(mine) != _comparable(theirs):
                found[name] = (getattr(self, name), theirs)
        return found


# Which `PeftConfig` attribute each field becomes (`PeftArguments.get_peft_config`), per method.
_PEFT_TYPES = {"lora": "LORA", "adapter": "INFOSAM_BOTTLENECK_ADAPTER"}  # PeftType values
_PEFT_CONFIG_ATTRIBUTES = {
    "lora": {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
             "lora_target_modules": "target_modules", "modules_to_save": "modules_to_save"},
    "adapter": {"adapter_ratio": "ratio", "adapter_placement": "placement", "adapter_scaling": "scaling",
                "adapter_layers": "layers_to_transform", "adapter_train_layernorms": "train_layernorms",
                "adapter_target_modules": "target_modules", "modules_to_save": "modules_to_save"},
}


def _comparable(value: Any) -> Any:
    """Lists and sets alike (PEFT turns target lists into sets), None and empty alike."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return sorted(value) or None
    return value


# Fields an older InfoSAMConfig held, and where each lives now.
MOVED_FIELDS = {
    **{f.name: "PeftArguments" for f in dataclasses.fields(PeftArguments)},
    **{name: "InfoSAMTrainingArguments" for name in RUN_LOCAL_FIELDS},
}


def _refuse_moved_fields(init):
    """`InfoSAMConfig(lora_r=8)` as older releases took it: one line naming the field's new home."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        moved = [name for name in kwargs if name in MOVED_FIELDS]
        if moved:
            home = MOVED_FIELDS[moved[0]]
            where = "infosam_hf.config" if home == "PeftArguments" else "infosam_hf.training_args"
            raise TypeError(
                f"InfoSAMConfig({moved[0]}=...): {', '.join(moved)} moved to {home} ({where}); pass "
                f"{home}({moved[0]}=...) instead (examples/train.py takes the same --{moved[0]} flag)."
            )
        init(self, *args, **kwargs)

    return __init__


InfoSAMConfig.__init__ = _refuse_moved_fields(InfoSAMConfig.__init__)
