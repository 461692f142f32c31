"""examples/train.py's model and output flags, and the built-in default run they start from.

With no flag at all the script fine-tunes the tiny built-in SAM on the built-in data (`BUILTIN_DEFAULTS`);
any flag on the command line overrides those defaults. The data flags are in `infosam_hf.data.arguments`,
the method's in `InfoSAMConfig`, the run's in `TrainingArguments`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .builtin import BUILTIN_MODEL_PATH, BUILTIN_MODELS
from .resolution import allow_image_size_change_argument

# The built-in default's run, overridable by any flag on the command line.
BUILTIN_DEFAULTS = [
    "--output_dir", "outputs/infosam-builtin",
    "--max_steps", "300",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "16",
    "--learning_rate", "1e-3",
    "--lr_scheduler_type", "cosine",
    # Fractions of the run (transformers reads values below 1 as ratios), so that a short custom run
    # (--max_steps 4) still warms up to its learning rate and logs its loss: 10 and 25 steps of 300 here.
    "--warmup_steps", "0.0333",
    "--logging_steps", "0.0833",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--report_to", "none",
    "--seed", "0",
]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=BUILTIN_MODEL_PATH,
        metadata={
            "help": "SAM checkpoint (Hub id or folder) of any supported family: SAM, SAM-HQ, SAM 2, SAM 3 tracker, "
            "EdgeTAM. Default: the tiny SAM shipped with infosam-hf."
        },
    )
    resume_adapter: str | None = field(
        default=None, metadata={"help": "Continue training an InfoSAM adapter (folder or Hub id)."}
    )
    allow_image_size_change: bool = allow_image_size_change_argument()
    builtin_model: str = field(
        default="sam",
        metadata={
            "help": "Which built-in model the default run fine-tunes when --model_name_or_path is not given: "
            "'sam' (SamModel) or 'sam2' (Sam2Model, made by examples/pretrain_builtin_sam2.py; its adapter goes to "
            "outputs/infosam-builtin-sam2 unless --output_dir says otherwise).",
            "choices": sorted(BUILTIN_MODELS),
        },
    )


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the run that --output_dir already holds (its adapter, card, checkpoints, overlays). "
            "Without it such a folder is refused, so a short trial run never replaces a real one unseen."
        },
    )


def builtin_defaults(builtin_model: str) -> list[str]:
    """BUILTIN_DEFAULTS with the built-in model's own output folder, so the SAM and SAM 2 adapters never mix."""
    defaults = list(BUILTIN_DEFAULTS)
    defaults[defaults.index("--output_dir") + 1] += f"-{builtin_model}"
    return defaults


def use_builtin_model(model_args: ModelArguments) -> None:
    """--builtin_model sam2: fine-tune that built-in model, which must not be named twice and must exist."""
    if model_args.model_name_or_path != BUILTIN_MODEL_PATH:
        raise SystemExit(
            f"--builtin_model {model_args.builtin_model} and --model_name_or_path {model_args.model_name_or_path} "
            "both name the model to fine-tune; pass one of them."
        )
    model_args.model_name_or_path = BUILTIN_MODELS[model_args.builtin_model]
    if not os.path.isfile(os.path.join(model_args.model_name_or_path, "model.safetensors")):
        raise SystemExit(
            f"The built-in {model_args.builtin_model} model is missing from {model_args.model_name_or_path}; "
            f"make it with examples/pretrain_builtin_{model_args.builtin_model}.py."
        )


def flags_on_command_line(argv: list[str]) -> set[str]:
    """The field names the user wrote (`--lambda_2 0.7`, `--lambda-2=0.7`), as HfArgumentParser spells them."""
    return {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
