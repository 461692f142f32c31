"""`InfoSAMTrainingArguments`: `TrainingArguments` plus InfoSAM's run-local settings, as trl's SFTConfig extends them.

What is here belongs to one run on one machine (where the teacher's embeddings are kept, in which precision the
teacher runs, whether relation features are gathered across processes) and is never saved with the adapter; so is
how the run picks its best checkpoint and when it stops for forgetting (`best_model_metric`, `max_retention_drop`,
see `infosam_hf.selection`).
`InfoSAMTrainer` also takes plain `TrainingArguments`: these settings then keep their defaults (`run_setting`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .config import RUN_LOCAL_FIELDS, _auto_or_bool, check_teacher_dtype
from .selection import apply_selection_arguments


@dataclass
class InfoSAMTrainingArguments(TrainingArguments):
    """`TrainingArguments` with where and how this run computes the teacher's side (never saved with the adapter)."""

    gather_across_processes: bool = field(
        default=True,
        metadata={
            "help": "Under DDP, gather relation features from every rank (with gradient) so the B x B Gram "
            "matrices span the global batch instead of each rank's small local batch."
        },
    )
    # Typed `str` for HfArgumentParser ("auto" / "true" / "false"); `__post_init__` stores True, False or "auto".
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
            "help": "Memory bound of the teacher-embedding cache (GB, per process). Default: a quarter of the memory "
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
    best_model_metric: str | None = field(
        default=None,
        metadata={
            "help": "Pick the best checkpoint by an arithmetic expression over evaluation metrics (names without "
            "eval_, numbers, + - * /, parentheses), e.g. \"iou - 0.5*retention_drop\": what the target gained minus "
            "what the retention set lost. Logged as eval_selection_score, which metric_for_best_model then names "
            "(greater is better unless --greater_is_better false); use with --load_best_model_at_end or "
            "--save_strategy best. retention_drop is the zero-shot retention IoU minus the current one."
        },
    )
    max_retention_drop: float | None = field(
        default=None,
        metadata={
            "help": "Stop training (as EarlyStoppingCallback does) at the first evaluation whose retention IoU is "
            "more than this below its zero-shot value (e.g. 0.02). Needs a retention set and --eval_strategy "
            "steps or epoch."
        },
    )

    def __post_init__(self) -> None:
        apply_selection_arguments(self)  # before the stock checks derive greater_is_better from the metric's name
        super().__post_init__()
        for name in ("teacher_cache_max_gb", "teacher_store_max_gb"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"InfoSAMTrainingArguments.{name} must be a finite number, got {value!r}.")
        check_teacher_dtype(self.teacher_dtype, "InfoSAMTrainingArguments")
        self.cache_teacher_embeddings = _auto_or_bool(
            self.cache_teacher_embeddings, "InfoSAMTrainingArguments.cache_teacher_embeddings"
        )
        if self.teacher_cache_dtype not in (None, "bfloat16"):
            raise ValueError(
                f"InfoSAMTrainingArguments.teacher_cache_dtype must be None (the teacher's precision) or 'bfloat16', "
                f"got {self.teacher_cache_dtype!r}."
            )
        if self.teacher_cache_max_gb is not None and not self.teacher_cache_max_gb > 0:
            raise ValueError(
                f"InfoSAMTrainingArguments.teacher_cache_max_gb must be positive or None, got "
                f"{self.teacher_cache_max_gb}; --cache_teacher_embeddings false turns the cache off."
            )
        if self.teacher_store_max_gb is not None and self.teacher_store_max_gb <= 0:
            raise ValueError(
                "InfoSAMTrainingArguments.teacher_store_max_gb must be positive or None, got "
                f"{self.teacher_store_max_gb}."
            )

    def to_dict(self) -> dict[str, Any]:
        """As `TrainingArguments.to_dict` (which training_args.json and pushes use), with the teacher store's path
        redacted the way transformers redacts tokens: it names a folder of the machine that trained."""
        values = super().to_dict()
        if values.get("teacher_store"):
            values["teacher_store"] = "<TEACHER_STORE>"
        return values


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(InfoSAMTrainingArguments) if f.name in RUN_LOCAL_FIELDS}
assert set(_DEFAULTS) == set(RUN_LOCAL_FIELDS), "config.RUN_LOCAL_FIELDS names InfoSAMTrainingArguments' own fields"


def run_setting(args: TrainingArguments, name: str) -> Any:
    """A run-local InfoSAM setting of `args`: its value on `InfoSAMTrainingArguments`, its default on plain
    `TrainingArguments` ("auto" resolved as `InfoSAMTrainingArguments` stores it)."""
    return getattr(args, name, _DEFAULTS[name])
