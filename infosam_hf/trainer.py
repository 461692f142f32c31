"""`InfoSAMTrainer`: a `transformers.Trainer` that adds InfoSAM's relation distillation to the loss.

(~720 lines: the loss and the stock-Trainer hooks it needs (evaluation gather, the retention pass, teacher
cache/store wiring, the data-parallel checks), each an override of one Trainer method; no other logic lives here.)

Everything else (optimisers, schedulers, mixed precision, gradient accumulation,
DDP through accelerate, checkpoints, logging, Hub pushes) is the stock Trainer's.
The loss itself is a static function, `InfoSAMTrainer.compute_infosam_loss`, so tests
and custom loops can call it alone (as TRL does for its distillation trainers).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import torch
import torch.distributed as dist
from peft import PeftConfig, PeftModel
from safetensors.torch import load_file
from torch import nn
from transformers import SamModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: F401  (re-exported for users' scripts)
from transformers.utils import logging

from .config import InfoSAMConfig, PeftArguments
from .data.collator import ORIGINAL_MASKS_KEY
from .inference import original_size_predictions
from .losses import InfoSAMLoss, segmentation_loss
from .modeling import (
    ADAPTER_WEIGHTS_NAME,
    RELATION_WEIGHTS_NAME,
    InfoSAMModel,
    InfoSAMModelOutput,
    build_student,
    upsample_masks,
)
from .models import load_sam_model
from .packing import pack_maps, pack_maps_per_image, unpack_maps
from .selection import ModelSelection
from .tracking import TrackerLinkMixin
from .training_args import InfoSAMTrainingArguments, run_setting
from .training_state import SafetensorsTrainingStateMixin

logger = logging.get_logger(__name__)

TRAINING_ARGS_JSON = "training_args.json"
LOSS_PARTS = ("loss_seg", "loss_r", "loss_d")
# What `Accelerator.prepare_model(evaluation_mode=True)` sets on the model itself (mixed-precision forward, the
# "already prepared" mark): undone after an evaluation that ran before training, see `evaluation_loop`.
_EVAL_PREPARATION_ATTRIBUTES = ("forward", "_original_forward", "_is_accelerate_prepared")


def _gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along the batch, keeping the autograd graph (the local slice gets its gradient back).

    Ranks may hold different batch sizes (the last batch of an epoch), so sizes are
    exchanged first and every slice is padded to the largest.
    """
    world = dist.get_world_size()
    local = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    sizes = [int(s.item()) for s in sizes]
    biggest = max(sizes)
    if tensor.shape[0] < biggest:
        pad = tensor.new_zeros((biggest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    parts = _AllGatherWithGrad.apply(tensor)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """(W, *shape): every rank's tensor; backward sums each slice's gradient over the ranks.

    The same gradient as `torch.distributed.nn.functional.all_gather`, which torch deprecates
    (FutureWarning) for functional collectives that gloo does not fully support.
    """

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def seed_model_building(args: TrainingArguments) -> None:
    """Seed as `Trainer.__init__` does, but before InfoSAM builds its random parts (LoRA A, relation module).

    The stock Trainer seeds only once the model exists, so without this two runs with the same
    `--seed` start from different adapters and relation modules.
    """
    from transformers.trainer_utils import enable_full_determinism, set_seed

    enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)


def check_process_group(args: TrainingArguments) -> None:
    """Refuse a process group the Trainer does not use: each process would train alone into one folder."""
    world = args.world_size  # sets up the device (and, under a launcher, the process group) first
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and world == 1:
        raise RuntimeError(
            f"A torch.distributed process group of {dist.get_world_size()} processes is initialised, but the "
            "Trainer is not distributed (TrainingArguments.world_size == 1), so every process would run its own "
            "training into the same output_dir. On a machine without GPUs pass --use_cpu (TrainingArguments("
            "use_cpu=True)) or set ACCELERATE_USE_CPU=true; examples/train.py does this by itself."
        )


def check_batch_of_one(args: TrainingArguments, config: InfoSAMConfig) -> None:
    """InfoSAM's relation terms compare the images of a batch: with one image they are exactly 0."""
    if not config.uses_distillation:
        return
    gathered = run_setting(args, "gather_across_processes") and args.world_size > 1
    if args.per_device_train_batch_size < 2 and not gathered:
        raise ValueError(
            f"per_device_train_batch_size={args.per_device_train_batch_size} with InfoSAM's relation terms on "
            f"(lambda_1={config.lambda_1}, lambda_2={config.lambda_2}): L_r and L_d compare the images of a batch "
            "and are exactly 0 for a single image, so only the segmentation loss would train. Use a per-device "
            "batch of at least 2 (--per_device_train_batch_size 2), gather across processes "
            "(gather_across_processes=True under DDP), or set --lambda_1 0 --lambda_2 0 to train without them."
        )


def apply_teacher_dtype(model: InfoSAMModel, teacher_dtype: str | None) -> None:
    """`InfoSAMTrainingArguments.teacher_dtype` onto the model, whose forward runs the teacher; a model built with
    another `teacher_dtype` is refused rather than silently changed."""
    if teacher_dtype is None:
        return
    if model.teacher_dtype not in (None, teacher_dtype):
        raise ValueError(
            f"The InfoSAMModel was built with teacher_dtype={model.teacher_dtype!r} but the training arguments ask "
            f"for --teacher_dtype {teacher_dtype}; set it in one place."
        )
    model.teacher_dtype = teacher_dtype


def _gather_image_index(image_index: torch.Tensor, num_images: int) -> torch.Tensor:
    """Pair -> image index over the gathered batch: each rank's indices shifted past the images of lower ranks.

    Ranks may hold different numbers of images and of valid pairs; `_gather_with_grad` pads and trims both.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    local = torch.tensor([num_images], device=image_index.device)
    counts = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(counts, local)
    offset = int(sum(int(c.item()) for c in counts[:rank]))
    # float round trip is exact below 2**24 images
    return _gather_with_grad((image_index + offset).float()).round().long()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def select_best_mask(outputs: InfoSAMModelOutput, gt_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """With multimask output, train the mask closest to the ground truth (SAM's own rule); else the only one."""
    logits = upsample_masks(outputs.pred_masks, gt_masks.shape[-2:])
    iou_scores = outputs.iou_scores
    if logits.shape[1] == 1:
        return logits, iou_scores
    with torch.no_grad():
        pred = (logits > 0).float()
        inter = (pred * gt_masks).sum(dim=(2, 3))
        union = pred.sum(dim=(2, 3)) + gt_masks.sum(dim=(2, 3)) - inter
        best = (inter / union.clamp_min(1)).argmax(dim=1)
    index = torch.arange(logits.shape[0], device=logits.device)
    return logits[index, best].unsqueeze(1), iou_scores[index, best].unsqueeze(1)


class _InfoSAMStepCounter(TrainerCallback):
    """Counts the optimiser steps in which InfoSAM's relation terms were computed on more than one image."""

    def __init__(self, trainer: InfoSAMTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.infosam_active_steps += int(self.trainer._infosam_active_now)
        self.trainer._infosam_active_now = False


class InfoSAMTrainer(SafetensorsTrainingStateMixin, TrackerLinkMixin, Trainer):
    """Fine-tune SAM with a PEFT adapter and InfoSAM's relation distillation.

    Args:
        model: an `InfoSAMModel`, a `PeftModel` over a `SamModel`, a `SamModel`, or a
            model id/path (the student's base; the default teacher is the same weights
            with the adapters disabled). Any family in `infosam_hf.models` (SAM-HQ,
            SAM 2, SAM 3 tracker, EdgeTAM) goes wherever `SamModel` is named here.
        args: `InfoSAMTrainingArguments` (the run-local teacher store, cache, dtype and gathering; the choice of
            checkpoint by gain and forgetting, `best_model_metric`, and the stop, `max_retention_drop`), or plain
            `TrainingArguments`, which leave those at their defaults. `remove_unused_columns` is forced off (the
            batch carries prompts and `gt_masks`), `label_names` defaults to `["gt_masks"]`.
        infosam_config: the method's knobs; defaults to `InfoSAMConfig()`.
        peft_config: a `PeftConfig` or `PeftArguments`, used when `model` is a bare `SamModel` or id (default:
            `PeftArguments()`, LoRA on `qkv`, or the family's image-encoder projections where it has no `qkv`).
        teacher_model: optional separate teacher, a `SamModel` or id.
        eval_data_collator: a collator for evaluation (e.g. fixed box prompts), where
            `data_collator` samples training prompts at random.
        retention_dataset: a prepared evaluation dataset (like `eval_dataset`), or a list of them, of what the base
            already segmented well, e.g. its pre-training domain: scored beside the target set at every `evaluate()`
            and logged as `eval_retention_iou`, `eval_retention_dice`, ... (`<metric_key_prefix>_retention_<metric>`),
            so a run shows what fine-tuning cost. A set prepared by `prepare_instance_dataset` (with
            `keep_original_mask=True`) is scored per object and adds prompt following, `eval_retention_object_iou`
            and `eval_retention_confusion` (see `infosam_hf.retention`). It draws no training randomness: a run with
            it trains the same adapter.
        drop_last_batch_of_one: skip training batches of a single image (the last partial
            batch of an epoch, or what is left after skipped corrupt samples) when the
            InfoSAM terms are on and nothing is gathered across processes: L_r and L_d are 0
            for one image. `infosam_active_steps` counts the optimiser steps they were active.
    """

    _tag_names = ["infosam", "sam", "segment-anything", "peft", "mask-generation"]  # + the PEFT type, from the card

    def __init__(
        self,
        model: InfoSAMModel | PeftModel | SamModel | str | None = None,
        args: TrainingArguments | None = None,
        infosam_config: InfoSAMConfig | None = None,
        peft_config: PeftConfig | PeftArguments | None = None,
        teacher_model: nn.Module | str | None = None,
        eval_data_collator=None,
        drop_last_batch_of_one: bool = True,
        retention_dataset=None,
        **kwargs,
    ):
        if model is None:
            raise ValueError("InfoSAMTrainer needs a model: an InfoSAMModel, a PeftModel/SamModel, or a model id.")
        args = args or InfoSAMTrainingArguments(output_dir="infosam-output")
        seed_model_building(args)  # the LoRA matrices and the relation module are drawn under args.seed
        model = self._as_infosam_model(model, infosam_config, peft_config, teacher_model)
        apply_teacher_dtype(model, run_setting(args, "teacher_dtype"))
        self.infosam_config = model.infosam_config
        check_process_group(args)
        if kwargs.get("train_dataset") is not None:  # an evaluation-only Trainer trains no batch
            check_batch_of_one(args, self.infosam_config)
        if args.remove_unused_columns:
            args.remove_unused_columns = False  # the collator's keys are exactly what the model needs
        if not args.label_names:
            args.label_names = ["gt_masks"]
        if args.dataloader_pin_memory and args.device.type == "cpu":
            args.dataloader_pin_memory = False  # nothing to pin for: torch warns at every data loader otherwise
        self.drop_last_batch_of_one = drop_last_batch_of_one
        self.infosam_active_steps = 0  # optimiser steps whose batch gave L_r / L_d something to compare
        self.dropped_batches_of_one = 0
        self.data_parallel: dict | None = None  # set by train() under several processes
        self._train_batches_consumed = 0
        self._infosam_active_now = False
        super().__init__(model=model, args=args, **kwargs)
        self.add_callback(_InfoSAMStepCounter(self))
        self.eval_data_collator = eval_data_collator
        self.retention_dataset = retention_dataset
        self._retention_prefix: str | None = None  # set while evaluate() scores the target set
        self._eval_log_prefix = "eval"  # the metric_key_prefix of the evaluation being logged
        # --best_model_metric / --max_retention_drop, checked here against what the evaluations log (selection.py)
        self.model_selection = ModelSelection.for_trainer(self, loss_names=("loss", *LOSS_PARTS))
        # The loss is a per-batch mean that the Trainer divides for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.infosam_loss = InfoSAMLoss(self.infosam_config)
        self._loss_parts: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._nan_steps = 0
        from .teacher_cache import decide_teacher_cache  # "auto": on when the data comes back and fits in memory

        self.teacher_cache_decision = decide_teacher_cache(model, self.args, self.train_dataset, self.data_collator)
        if self.teacher_cache_decision.enabled:
            model.teacher_cache = self.teacher_cache_decision.make_cache(model, disk_store=self._teacher_store(model))

    def _teacher_store(self, model: InfoSAMModel):
        """The on-disk teacher store of `InfoSAMTrainingArguments.teacher_store`, fingerprinted with this run's
        precision."""
        store = run_setting(self.args, "teacher_store")
        if not store:
            return None
        from .teacher_store import TeacherEmbeddingStore

        precision = model.teacher_dtype or (
            "bfloat16" if self.args.bf16 else "float16" if self.args.fp16 else "float32"
        )
        max_gb = run_setting(self.args, "teacher_store_max_gb")
        return TeacherEmbeddingStore.for_teacher(
            store,
            model.teacher_image_encoder,
            model.sam_config if model.teacher is None else model.teacher.config,
            precision=precision,
            max_bytes=None if max_gb is None else int(max_gb * 2**30),
        )

    @staticmethod
    def _as_infosam_model(model, infosam_config, peft_config, teacher_model) -> InfoSAMModel:
        if isinstance(model, InfoSAMModel):
            if infosam_config is not None and infosam_config != model.infosam_config:
                raise ValueError(
                    "Both an InfoSAMModel and a different infosam_config were given; set the config on the model."
                )
            return model
        config = infosam_config or InfoSAMConfig()
        if isinstance(model, str):
            model = load_sam_model(model)
        if config.image_size is not None and not isinstance(model, PeftModel):
            from .resolution import adapt_model

            model = adapt_model(model, config.image_size, allow_upscaling=config.allow_image_upscaling)
        student = build_student(model, config, peft_config)
        teacher_model = teacher_model or config.teacher_model_name_or_path
        if isinstance(teacher_model, str):
            teacher_model = load_sam_model(teacher_model)
        return InfoSAMModel(student, config, teacher=teacher_model)

    # ------------------------------------------------------------------ the loss
    @staticmethod
    def compute_infosam_loss(
        outputs: InfoSAMModelOutput,
        gt_masks: torch.Tensor,
        config: InfoSAMConfig,
        infosam_loss: InfoSAMLoss | None = None,
        gather: bool = False,
    ) -> dict[str, torch.Tensor]:
        """L = L_seg + lambda_1 * L_r + lambda_2 * L_d, with each part returned for logging.

        `gather=True` (under DDP) all-gathers the teacher features and both relations
        with gradient, so the Gram matrices span the global batch.
        """
        if gt_masks is None:
            raise ValueError("The batch has no 'gt_masks'; the InfoSAM collator puts the ground truth there.")
        if outputs.prompt_mask is not None:  # several prompts per image: one sample per valid (image, prompt) pair
            gt_masks = gt_masks[outputs.prompt_mask.to(gt_masks.device)].unsqueeze(1)
        logits, iou_scores = select_best_mask(outputs, gt_masks)
        loss_seg = segmentation_loss(config, logits, gt_masks.to(logits.dtype), iou_scores)
        zero = loss_seg.new_zeros(())
        parts = {"loss_seg": loss_seg, "loss_r": zero, "loss_d": zero}
        if outputs.relation_student is not None:
            tensors = (
                outputs.teacher_image_feats,
                outputs.teacher_mask_tokens,
                outputs.relation_teacher,
                outputs.relation_student,
            )
            image_index = outputs.image_index
            if gather:
                if image_index is None:  # every rank must take the same path (N differs between ranks)
                    image_index = torch.arange(outputs.relation_student.shape[0], device=loss_seg.device)
                if image_index is not None:
                    image_index = _gather_image_index(image_index, outputs.teacher_image_feats.shape[0])
                tensors = tuple(_gather_with_grad(t) for t in tensors)
            distill = (infosam_loss or InfoSAMLoss(config)).from_relations(*tensors, image_index=image_index)
            parts["loss_r"], parts["loss_d"] = distill.loss_r, distill.loss_d
            parts["loss"] = loss_seg + distill.loss
        else:
            parts["loss"] = loss_seg
        return parts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        gather = run_setting(self.args, "gather_across_processes") and _distributed()
        parts = self.compute_infosam_loss(
            outputs, inputs.get("gt_masks"), self.infosam_config, self.infosam_loss, gather=gather
        )
        loss = parts["loss"]
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            raise FloatingPointError(
                f"The InfoSAM loss is not finite at step {self.state.global_step} ({detail}). Lower the learning "
                "rate, prefer bf16 to fp16, or set max_grad_norm."
            )
        mode = "train" if model.training else "eval"
        if mode == "train" and outputs.relation_student is not None:
            if gather or outputs.relation_student.shape[0] > 1:
                self._infosam_active_now = True
        for name in LOSS_PARTS:
            self._loss_parts[mode][name].append(parts[name].detach().float().item())
        return (loss, outputs) if return_outputs else loss

    def _is_lone_image_batch(self, inputs) -> bool:
        pixels = inputs.get("pixel_values") if isinstance(inputs, dict) else None
        return (
            self.drop_last_batch_of_one
            and pixels is not None
            and pixels.shape[0] == 1
            and self.infosam_config.uses_distillation
            and self.args.world_size == 1  # under DDP every rank must take part in the backward
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._train_batches_consumed += 1  # checkpoints save the collator's state as of this batch
        if self._is_lone_image_batch(inputs):
            self.dropped_batches_of_one += 1
            logger.warning_once(
                "Skipping a training batch of one image: InfoSAM's L_r and L_d compare the images of a batch and are "
                "0 for one (InfoSAMTrainer(drop_last_batch_of_one=False) trains it on the segmentation loss alone)."
            )
            return torch.zeros((), device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def get_train_dataloader(self):
        """Drops a last partial batch of one image when the dataset's length says there will be one."""
        dataset, drop_last = self.train_dataset, self.args.dataloader_drop_last
        if self.drop_last_batch_of_one and not drop_last and self.infosam_config.uses_distillation:
            try:
                length = len(dataset)
            except TypeError:
                length = None  # a stream: training_step skips a lone image instead
            world_batch = self.args.per_device_train_batch_size * self.args.world_size
            if length is not None and length % world_batch == 1 and self.args.world_size == 1:
                self.args.dataloader_drop_last = True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = drop_last

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def evaluation_loop(self, *args, **kwargs):
        """The set asked for; during `evaluate()` of the trainer's own set, the retention set right after it."""
        if self._retention_prefix is not None:  # the target set first, then the retention set beside it
            output = self._evaluation_loop(*args, **kwargs)
            return self._evaluate_retention(output, kwargs.get("ignore_keys"))
        return self._evaluation_loop(*args, **kwargs)

    def _evaluation_loop(self, *args, **kwargs):
        """An evaluation before `train()` (train.py's zero-shot row) leaves the model as it found it.

        The stock loop prepares an unwrapped model with `accelerator.prepare_model(..., evaluation_mode=True)`,
        which marks it as prepared without wrapping it in DistributedDataParallel; `train()` then sees the mark,
        skips the wrapping, and every rank trains its own copy on its share of the data (issue 27). Undoing the
        evaluation-only preparation lets `train()` prepare the model for training as if no evaluation had run.
        """
        model = self.model
        if self.model_wrapped is not model or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super().evaluation_loop(*args, **kwargs)  # already prepared for training, or prepared in full
        before = {name: model.__dict__[name] for name in _EVAL_PREPARATION_ATTRIBUTES if name in model.__dict__}
        prepared_models = list(self.accelerator._models)
        try:
            return super().evaluation_loop(*args, **kwargs)
        finally:
            for name in _EVAL_PREPARATION_ATTRIBUTES:
                model.__dict__.pop(name, None)
            model.__dict__.update(before)
            self.accelerator._models[:] = prepared_models
            self.model_wrapped = model

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Returns the student's mask logits at the label size, so `compute_metrics` sees masks, not features."""
        originals = inputs.pop(ORIGINAL_MASKS_KEY, None) if isinstance(inputs, dict) else None
        inputs = self._prepare_inputs(inputs)
        gt_masks = inputs.get("gt_masks")
        with torch.no_grad(), self.compute_loss_context_manager():
            if gt_masks is None:
                outputs = model(**inputs, with_teacher=False)
                return None, outputs.pred_masks.detach(), None
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        if outputs.prompt_mask is not None:  # one row per valid (image, prompt) pair: metrics average over objects
            gt_masks = gt_masks[outputs.prompt_mask.to(gt_masks.device)].unsqueeze(1)
        logits, _ = select_best_mask(outputs, gt_masks)
        if originals is not None:  # score where the labels live: padding cropped, at the image's own size
            packed_logits, packed_masks = original_size_predictions(
                logits, originals, inputs["original_sizes"], inputs["reshaped_input_sizes"], outputs.prompt_mask
            )
        elif outputs.prompt_mask is not None:
            packed_logits, packed_masks = pack_maps(logits[:, 0].float().cpu()), pack_maps(gt_masks[:, 0].cpu())
        else:
            return loss.detach(), logits.detach(), gt_masks.detach()
        if outputs.prompt_mask is not None:  # one row per image, as the Trainer gathers and trims across processes
            counts = outputs.prompt_mask.sum(dim=1).tolist()
            packed_logits = pack_maps_per_image(unpack_maps(packed_logits), counts)
            packed_masks = pack_maps_per_image(unpack_maps(packed_masks), counts)
        return loss.detach(), packed_logits.to(logits.device), packed_masks.to(logits.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of each loss part since the last log (`loss_seg`, `loss_r`, `loss_d`, eval_ prefixed).

        Under several processes each part is the mean over the ranks of their local means, as the Trainer logs
        `loss`, so the parts add up to the logged loss instead of being rank 0's share of it.
        """
        self.model_selection.add_metrics(logs, self.state.global_step)  # eval_retention_drop, eval_selection_score
        # An evaluation logs `<metric_key_prefix>_loss` (`eval_loss`, `zero_shot_loss`, ...): its parts go beside it and
        # are cleared, so a zero-shot evaluation's parts never leak into the next evaluation's means.
        eval_prefix = self._eval_log_prefix
        mode = "train" if "loss" in logs else "eval" if f"{eval_prefix}_loss" in logs else None
        if mode is not None:
            prefix = "" if mode == "train" else f"{eval_prefix}_"
            for name, value in self._mean_loss_parts(mode).items():
                logs[f"{prefix}{name}"] = value
            self._loss_parts[mode].clear()
        super().log(logs, start_time)

    def _mean_loss_parts(self, mode: str) -> dict[str, float]:
        recorded = self._loss_parts[mode]
        # (sum of local means, number of ranks that have one) per part; every rank joins the collective
        local = torch.tensor(
            [[sum(recorded[n]) / len(recorded[n]), 1.0] if recorded.get(n) else [0.0, 0.0] for n in LOSS_PARTS],
            dtype=torch.float64,
        )
        if _distributed() and self.args.world_size > 1:
            device = self.args.device if dist.get_backend() != "gloo" else torch.device("cpu")
            local = local.to(device)
            dist.all_reduce(local)
        return {n: float(total / count) for n, (total, count) in zip(LOSS_PARTS, local.cpu().tolist()) if count}

    def train(self, *args, **kwargs):
        """The stock training, then a check that several processes really trained one model (`data_parallel`), and
        the summary of samples skipped as corrupt. The zero-shot retention IoU is measured first when a selection
        flag needs it and no `zero_shot` evaluation gave it (`ModelSelection.before_training`)."""
        self.model_selection.before_training(self)
        output = super().train(*args, **kwargs)
        self.data_parallel = self._check_data_parallel()
        self._report_corrupt_samples()
        return output

    def retention_sets(self) -> list:
        """`retention_dataset` as a list of sets (None: none), as the retention pass and model selection read it."""
        from .retention import retention_sets

        return retention_sets(self.retention_dataset)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The stock evaluation (with the retention set's metrics when the trainer's own eval set is scored), then
        the summary of samples skipped as corrupt that no report has named yet."""
        retention = self.retention_sets()
        alongside = eval_dataset is None and bool(retention) and not isinstance(self.eval_dataset, dict)
        self._retention_prefix = f"{metric_key_prefix}_retention" if alongside else None
        outer_prefix, self._eval_log_prefix = self._eval_log_prefix, metric_key_prefix
        try:
            metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._retention_prefix, self._eval_log_prefix = None, outer_prefix
        self._report_corrupt_samples(eval_dataset, *retention)
        return metrics

    def _evaluate_retention(self, output, ignore_keys=None):
        """Adds the retention sets' metrics to the target evaluation's, before the Trainer logs them as one entry
        (one `on_evaluate`, so callbacks that read the target's metrics see them as before).

        Each set is prompted alike at every evaluation (`infosam_hf.retention.retention_collator`); on instance data
        every object is prompted and prompt following (`<prefix>_retention_object_iou`, `..._confusion`) is added.
        Where two sets give one metric, the first set's value is kept (`merge_retention_metrics`).

        The retention pass leaves every random state as it found it (a DataLoader draws its base seed from torch's
        generator; a prompt sampler advances): the target's metrics and the trained adapter do not
        depend on whether a retention set is scored. Its loss parts stay out of the target's `eval_loss_*`."""
        import dataclasses
        import random

        import numpy as np

        from .prompt_following import WithPromptFollowing
        from .retention import is_instance_set, merge_retention_metrics, retention_collator

        prefix, self._retention_prefix = self._retention_prefix, None
        parts, self._loss_parts["eval"] = self._loss_parts["eval"], defaultdict(list)
        collator, compute_metrics = self.eval_data_collator, self.compute_metrics
        # The student alone: what the adapter kept is its masks, and the teacher's forward would double the cost
        # (`<prefix>_retention_loss` is the segmentation loss).
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        config = model.infosam_config
        model.infosam_config = dataclasses.replace(config, lambda_1=0.0, lambda_2=0.0)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        metrics = {}
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=devices):
                for dataset in self.retention_sets():
                    # without an evaluation collator the Trainer evaluates with training's: its state stays training's
                    self.eval_data_collator = retention_collator(collator if collator is not None
                                                                 else self.data_collator, dataset)
                    if compute_metrics is not None and is_instance_set(dataset):
                        self.compute_metrics = WithPromptFollowing(compute_metrics)
                    retention = self.evaluation_loop(
                        self.get_eval_dataloader(dataset),
                        description="Retention evaluation",
                        prediction_loss_only=True if compute_metrics is None else None,
                        ignore_keys=ignore_keys,
                        metric_key_prefix=prefix,
                    )
                    self.compute_metrics = compute_metrics
                    merge_retention_metrics(metrics, retention.metrics)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            self.eval_data_collator, self.compute_metrics = collator, compute_metrics
            self._loss_parts["eval"] = parts
            model.infosam_config = config
        # what the retention sets cost each evaluation (`<prefix>_runtime` covers the target set and them)
        metrics[f"{prefix}_runtime"] = round(time.perf_counter() - start, 4)
        output.metrics.update(metrics)
        return output

    def _report_corrupt_samples(self, *more_datasets) -> None:
        """Lists the samples skipped from this trainer's data sets and overlays (their `corrupt_log`) since the
        last report, once each: the end-of-run summary, printed here because importing infosam_hf installs no
        exit hook; a log whose maker prints the summary itself (`summary_by_caller`, examples/train.py) is left
        to it."""
        evaluation = self.eval_dataset.values() if isinstance(self.eval_dataset, dict) else [self.eval_dataset]
        holders = [self.train_dataset, *evaluation, *more_datasets, *self.callback_handler.callbacks]
        logs = {id(log): log for log in (getattr(h, "corrupt_log", None) for h in holders) if log is not None}
        for log in logs.values():
            if log.unreported() and not getattr(log, "summary_by_caller", False):
                logger.warning(log.report())

    def _check_data_parallel(self) -> dict | None:
        """Under several processes: the wrapper that synchronised the gradients and whether every rank ends with the
        same trainable weights (compared by exact float64 sums, one all-gather). None for one process.

        A rank that trained its own copy (no gradient all-reduce) ends with other weights, and only rank 0's are
        saved: such a run is reported as an error here, on the card and in train.py's summary.
        """
        if not (_distributed() and self.args.world_size > 1):
            return None
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        trainable = [p.detach() for p in model.parameters() if p.requires_grad]
        device = self.args.device if dist.get_backend() != "gloo" else torch.device("cpu")
        fingerprint = torch.stack(
            [torch.stack((p.double().sum(), p.double().square().sum())) for p in trainable]
        ).flatten().to(device)
        every_rank = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
        dist.all_gather(every_rank, fingerprint)
        identical = all(torch.equal(every_rank[0], other) for other in every_rank[1:])
        wrapper = type(self.model_wrapped).__name__
        if not identical:
            logger.error(
                f"The {self.args.world_size} processes ended training with different weights (the model was trained "
                f"as {wrapper}, gradients not synchronised): only rank 0's copy is saved. Please report this."
            )
        return {"processes": self.args.world_size, "wrapper": wrapper, "weights_identical_on_all_ranks": identical}

    def data_parallel_summary(self) -> str | None:
        """One line for the end of a run and the card: how many processes trained, and whether as one model."""
        check = getattr(self, "data_parallel", None)
        if not check:
            return None
        if check["weights_identical_on_all_ranks"]:
            return (
                f"{check['processes']} processes trained one model ({check['wrapper']}: gradients synchronised "
                "every step; trainable weights identical on every rank after training, checked)"
            )
        return (
            f"{check['processes']} processes did NOT train one model ({check['wrapper']}): their weights differ "
            "after training; only rank 0's copy was saved"
        )

    # ------------------------------------------------------------------ saving and resuming
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Adapter + relation module + infosam_config.json + processor, safetensors and JSON only."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        with open(os.path.join(output_dir, TRAINING_ARGS_JSON), "w", encoding="utf-8") as f:
            f.write(self.args.to_json_string())  # to_json_string redacts hub_token & co.
        # The files only (any InfoSAMModel); the card is the run's, below.
        InfoSAMModel.save_pretrained(model, output_dir, processor=self.processing_class, model_card=False)
        self.create_model_card(output_dir=output_dir)  # the card with the run's values

    def _load_infosam_weights(self, folder: str) -> None:
        from peft import set_peft_model_state_dict

        adapter_file = os.path.join(folder, ADAPTER_WEIGHTS_NAME)
        relation_file = os.path.join(folder, RELATION_WEIGHTS_NAME)
        for path, what in ((adapter_file, "adapter weights"), (relation_file, "relation module")):
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Cannot resume from {folder}: {os.path.basename(path)} ({what}) is missing. Resume from a "
                    "checkpoint folder written by InfoSAMTrainer."
                )
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        result = set_peft_model_state_dict(model.student, load_file(adapter_file))
        if result.unexpected_keys:
            raise ValueError(f"{adapter_file} does not fit this student: unexpected keys {result.unexpected_keys[:5]}")
        model.relation_module.load_state_dict(load_file(relation_file))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        self._load_infosam_weights(resume_from_checkpoint)
        self._load_collator_state(resume_from_checkpoint)  # before the resumed run draws its first prompts

    def _load_best_model(self) -> None:
        self._load_infosam_weights(self.state.best_model_checkpoint)

    # ------------------------------------------------------------------ model card
    def create_model_card(self, **kwargs) -> None:
        """The InfoSAM card (model_cards/) with the run's real values; see `infosam_hf.model_card.write_model_card`.

        What a call says about the card (dataset, license, baseline metrics, ...) is kept for
        the cards later saves write, so a checkpoint or `save_model` does not drop it.
        """
        if not self.is_world_process_zero():
            return
        from .model_card import write_model_card

        remembered = getattr(self, "_model_card_kwargs", {})
        if "output_dir" not in kwargs:  # a call of the user's (or push_to_hub's), not one of our saves
            remembered = self._model_card_kwargs = {**remembered, **kwargs}
        write_model_card(self, **{**remembered, **kwargs})

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """hub_strategy every_save/checkpoint/all_checkpoints without the stock pickles (see `hub.push_checkpoint`)."""
        from .hub import push_checkpoint

        push_checkpoint(self, checkpoint_folder)
