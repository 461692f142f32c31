"""What examples/train.py does around the Trainer: the launcher, the output folder, the model to start from, the
printed schedule and summary, the card's data lines.

Each step is its own function so that the script reads as trl's scripts do (parse, data, trainer, train, save,
push), and so that each can be tested on its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import warnings

from .config import InfoSAMConfig, PeftArguments
from .script_arguments import ModelArguments

logger = logging.getLogger("infosam_hf.train")

# What a finished or interrupted run leaves in its output_dir (a folder holding none of these is free to use).
RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "infosam_config.json", "iou_before_after.json",
             "trainer_state.json", "training_args.json")
RUN_FOLDERS = ("eval_overlays",)

# What a trained adapter's weights are built from: fixed once trained, so --resume_adapter refuses another value
# (with every PeftArguments field, checked against the adapter's own PEFT config).
ADAPTER_ARCHITECTURE_FIELDS = ("relation_dim", "train_relation_module")


# ---------------------------------------------------------------------------------------------- processes
def use_cpu_under_a_launcher_without_gpu() -> None:
    """`accelerate launch --config_file examples/accelerate_configs/cpu.yaml` starts the processes through torchrun
    but does not pass its `use_cpu` on: without a GPU they would form a process group the Trainer ignores and
    run one training each into the same folder. Ask accelerate for CPU DDP instead."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def quiet_replicas(training_args) -> None:
    """Warnings every rank would print once are printed once per run: by the main process."""
    import transformers

    if training_args.process_index != 0:
        warnings.simplefilter("ignore")
        logging.getLogger("infosam_hf").setLevel(logging.ERROR)
        transformers.logging.set_verbosity_error()


# ---------------------------------------------------------------------------------------------- inputs and outputs
def check_sources(model_args: ModelArguments, dataset_name: str | None, teacher: str | None,
                  teacher_store: str | None, token=None, retention_dataset: str | None = None) -> None:
    """One line at once, before anything loads, for a path or Hub id the run cannot use (and a teacher store that
    can be neither written nor read)."""
    from .data.sources import check_local_path
    from .hub_ids import check_hub_source

    sources = [(model_args.model_name_or_path, "--model_name_or_path", "model"),
               (model_args.resume_adapter, "--resume_adapter", "model"),
               (teacher, "--teacher_model_name_or_path", "model"),
               (dataset_name, "--dataset_name", "dataset"),
               (retention_dataset, "--retention_dataset", "dataset")]
    for name, flag, repo_type in sources:
        if name:
            check_local_path(name, flag)
            check_hub_source(name, flag, repo_type, token=token)
    if teacher_store:
        from .teacher_store import check_store_root

        check_store_root(teacher_store)


def claim_output_dir(training_args, overwrite: bool) -> None:
    """Refuse an output_dir that holds another run unless --overwrite_output_dir; with it, remove that run's
    overlays and checkpoints, which the new run would otherwise leave mixed with its own."""
    folder = training_args.output_dir
    if not os.path.isdir(folder) or training_args.resume_from_checkpoint:
        return  # resuming continues the run that is there
    entries = sorted(os.listdir(folder))
    found = [e for e in entries if e in RUN_FILES or e in RUN_FOLDERS or e.startswith("checkpoint-")]
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise FileExistsError(
            f"--output_dir {folder} already holds a run ({shown}). Pass --overwrite_output_dir to replace it, or "
            "choose another --output_dir (--resume_from_checkpoint continues it). Nothing was changed."
        )
    if training_args.process_index == 0:
        for entry in found:
            if entry in RUN_FOLDERS or entry.startswith("checkpoint-"):
                shutil.rmtree(os.path.join(folder, entry))
        print(f"--overwrite_output_dir: replacing the run in {folder}.", flush=True)


# ---------------------------------------------------------------------------------------------- the model
def load_model_and_processor(model_args: ModelArguments, infosam_config: InfoSAMConfig, seed: int,
                             explicit: set[str], peft_args: PeftArguments | None = None):
    """(model, processor) to train: a new adapter on --model_name_or_path, or --resume_adapter's adapter (its saved
    InfoSAMConfig with the method flags of the command line, `explicit`, on top); both at --image_size."""
    from .loading import load_processor
    from .resolution import adapt_model, adapt_processor

    if not model_args.resume_adapter:
        from .models import load_sam_model

        # Any supported family (SamModel, SamHQModel, Sam2Model, Sam3TrackerModel, EdgeTamModel).
        model = load_sam_model(model_args.model_name_or_path)
        processor = load_processor(None, model_args.model_name_or_path, model)
        # --image_size: the base (and processor) at another resolution, adapted once here (infosam_hf.resolution).
        model = adapt_model(model, infosam_config.image_size, allow_upscaling=infosam_config.allow_image_upscaling)
        return model, adapt_processor(processor, infosam_config.image_size)

    from .builtin import BUILTIN_MODEL_PATH
    from .loading import base_model_id_of, load_for_training, resolve_folder

    # The adapter names its base; only an explicit --model_name_or_path overrides it.
    adapter_folder = resolve_folder(model_args.resume_adapter)
    explicit_base = None if model_args.model_name_or_path == BUILTIN_MODEL_PATH else model_args.model_name_or_path
    model = load_for_training(adapter_folder, base_model=explicit_base, seed=seed,
                              teacher=infosam_config.teacher_model_name_or_path
                              if "teacher_model_name_or_path" in explicit else None,
                              image_size=infosam_config.image_size,
                              allow_image_size_change=model_args.allow_image_size_change)
    apply_resume_overrides(model, model_args.resume_adapter, infosam_config, explicit, peft_args)
    processor = load_processor(adapter_folder, explicit_base or base_model_id_of(adapter_folder), model.student)
    return model, adapt_processor(processor, model.infosam_config.image_size)


def apply_resume_overrides(model, adapter: str, parsed: InfoSAMConfig, explicit: set[str],
                           peft_args: PeftArguments | None = None) -> None:
    """--resume_adapter: the adapter's saved InfoSAMConfig, with the method flags the user passed on top.

    Run-time settings (lambdas, losses, prompts) follow the command line, and each replaced value is printed; flags
    that shape the saved weights (the relation module's, every PeftArguments flag) cannot change and fail with the
    saved value. `--image_size` goes through `load_for_training` (and --allow_image_size_change).
    """
    from .models import family_of

    saved = model.infosam_config
    names = {f.name for f in dataclasses.fields(InfoSAMConfig)} & explicit - {"image_size", "allow_image_upscaling"}
    changed = {n: getattr(parsed, n) for n in sorted(names) if getattr(parsed, n) != getattr(saved, n)}
    fixed = {n: (changed[n], getattr(saved, n)) for n in changed if n in ADAPTER_ARCHITECTURE_FIELDS}
    if peft_args is not None:
        peft_names = sorted({f.name for f in dataclasses.fields(PeftArguments)} & explicit)
        student = model.student
        fixed.update(peft_args.differences(student.peft_config[student.active_adapter], peft_names,
                                           family_of(student)))
    if fixed:
        detail = ", ".join(f"--{n} {value!r} (the adapter has {had!r})" for n, (value, had) in fixed.items())
        raise ValueError(
            f"--resume_adapter {adapter}: {detail}. These shape the adapter's saved weights and cannot change when "
            "training continues; drop the flag(s), or start a new adapter without --resume_adapter."
        )
    if changed:
        model.infosam_config = dataclasses.replace(saved, **changed)  # validated as any InfoSAMConfig
        replaced = ", ".join(f"--{n} {getattr(saved, n)!r} -> {v!r}" for n, v in changed.items())
        logger.info(f"--resume_adapter {adapter}: the command line replaces the adapter's saved {replaced}.")


# ---------------------------------------------------------------------------------------------- overlays
def overlay_callbacks(data_args, raw_eval_dataset, preprocessor, corrupt_log) -> list:
    """--eval_overlays: the evaluation set's overlay callback and, when the run scores a retention set, the
    retention set's (the first --eval_overlays rows of its split): both drawn at every evaluation and logged to
    the --report_to tracker (infosam_hf.tracking)."""
    from .callbacks import EvalOverlayCallback, RetentionOverlayCallback

    if data_args.eval_overlays <= 0:
        return []
    common = dict(num_samples=data_args.eval_overlays, prompt_type="box" if data_args.eval_prompt == "box" else
                  "points", num_points=data_args.eval_num_points, preprocessor=preprocessor, corrupt_log=corrupt_log,
                  instance_format=data_args.instance_format, min_object_area=data_args.min_object_area)
    callbacks = [EvalOverlayCallback(raw_eval_dataset, **common)]
    if data_args.retention_source is not None:
        from .data import load_segmentation_dataset

        rows = load_segmentation_dataset(data_args.retention_source, split=data_args.retention_split,
                                         streaming=False, image_column=data_args.image_column,
                                         mask_column=data_args.mask_column)
        callbacks.append(RetentionOverlayCallback(rows, **common))
    return callbacks


# ---------------------------------------------------------------------------------------------- what is printed
def describe_schedule(trainer, data_args=None) -> str:
    """The effective schedule, so that defaults meant for another run cannot apply unseen."""
    args = trainer.args
    world_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if args.max_steps > 0:
        steps = args.max_steps
    else:
        steps = math.ceil(len(trainer.train_dataset) / world_batch) * math.ceil(args.num_train_epochs)
    logging_steps = math.ceil(steps * args.logging_steps) if args.logging_steps < 1 else int(args.logging_steps)
    evaluation = (
        "evaluation before and after training"
        if args.eval_strategy == "no"
        else f"evaluation every {args.eval_steps or logging_steps} steps"
    )
    return (
        f"Schedule: {steps} optimiser steps x {world_batch} images ({args.world_size} process(es) x "
        f"{args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} accumulation), "
        f"learning rate {args.learning_rate:g} ({getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}, "
        f"{args.get_warmup_steps(steps)} warm-up steps), loss logged every {logging_steps} steps, {evaluation}, "
        f"seed {args.seed}."
    )


def report_run(trainer, before: dict, after: dict, corrupt_log, per_object: bool,
               retention_name: str | None = None, retention_per_object: bool = False) -> dict:
    """The run's summary (IoU and Dice before and after, on the retention sets too when the run has them, with their
    prompt following on instance data, processes), printed and written to <output_dir>/iou_before_after.json by the
    main process; returned by every process. The samples skipped as corrupt are listed here, once: the run's
    `corrupt_log` says `summary_by_caller`, so the trainer leaves that list to this report."""
    from .retention import retention_lines, retention_summary

    args = trainer.args
    summary = {
        "zero_shot_iou": before.get("zero_shot_iou"),
        "zero_shot_dice": before.get("zero_shot_dice"),
        "iou": after.get("eval_iou"),
        "dice": after.get("eval_dice"),
        "metrics_per": "object" if per_object else "image",
        **retention_summary(before, after),
        "processes": args.world_size,
        "data_parallel": trainer.data_parallel_summary(),
        "stopped_early": _stop_reason(trainer),
    }
    if trainer.is_world_process_zero():
        print(
            f"{'Per-object ' if per_object else ''}IoU before {summary['zero_shot_iou']:.4f} -> after "
            f"{summary['iou']:.4f} (Dice {summary['zero_shot_dice']:.4f} -> {summary['dice']:.4f}); adapter saved to "
            f"{args.output_dir}"
        )
        for line in retention_lines(summary, retention_name, retention_per_object):
            print(line)
        with open(os.path.join(args.output_dir, "iou_before_after.json"), "w") as f:
            json.dump(summary, f, indent=2)
        if summary["data_parallel"]:
            print(summary["data_parallel"][0].upper() + summary["data_parallel"][1:] + ".")
        if summary["stopped_early"]:
            print(summary["stopped_early"])
        print(corrupt_log.report())
        if trainer.dropped_batches_of_one:
            print(f"Skipped {trainer.dropped_batches_of_one} training batch(es) of a single image (L_r, L_d need 2+).")
    return summary


def _stop_reason(trainer) -> str | None:
    """Why training ended before its schedule (`--max_retention_drop`), or None: the summary says so, not only a log."""
    from .selection import RetentionDropCallback

    reasons = [cb.stop_reason for cb in trainer.callback_handler.callbacks
               if isinstance(cb, RetentionDropCallback) and cb.stop_reason]
    return reasons[0] if reasons else None


def retention_name(data_args) -> str | None:
    """What the summary line and the card call the retention set: 'general' for the built-in default."""
    source = data_args.retention_source
    if source is None:
        return None
    if data_args.retention_dataset is None:
        return "general"
    return os.path.basename(os.path.normpath(source)) if os.path.exists(source) else source


def retention_per_object(data_args) -> bool:
    """Whether the retention IoU and Dice are per object: the first retention set holds several objects per image."""
    specs = data_args.retention_specs(data_args.dataset_name)
    return bool(specs) and specs[0].instance_format is not None


def _describe_retention_set(spec, index: int, count: int) -> str:
    text = f"split {spec.split}" + (f", at most {spec.max_samples} images" if spec.max_samples is not None else "")
    if spec.instance_format is None:
        return text
    scored = "one prompt per object, metrics averaged over objects, with prompt following (object_iou, confusion)"
    if index and count > 1:  # the built-in run: the general domain's multi-object variant
        scored = "prompt following (object_iou, confusion), one prompt per object"
        return f"its multi-object variant, {text}: {scored}"
    return f"{text}, {scored}"


def card_kwargs(data_args) -> dict:
    """What the model card says about the data: Hub ids become `datasets:` metadata, local folders only a name."""
    source = data_args.dataset_name
    split = f"split {data_args.eval_split}" + (
        f", at most {data_args.max_eval_samples} images" if data_args.max_eval_samples is not None else ""
    )
    if data_args.instance_format:
        split += ", one prompt per object, metrics averaged over objects"
    retention = {}
    specs = data_args.retention_specs(data_args.dataset_name)
    if specs:
        retention_split = "; ".join(_describe_retention_set(spec, i, len(specs)) for i, spec in enumerate(specs))
        name = retention_name(data_args)
        builtin = data_args.retention_dataset is None
        retention = {"retention_dataset": "the built-in synthetic 'general' domain" if builtin else
                     f"local data `{name}`" if os.path.exists(data_args.retention_source) else name,
                     "retention_dataset_args": retention_split}
    if source is None:
        return {"dataset": "the built-in synthetic 'specialised' domain", "dataset_args": split, **retention}
    if os.path.exists(source):
        return {"dataset": f"local data `{os.path.basename(os.path.normpath(source))}`", "dataset_args": split,
                **retention}
    return {"dataset": source, "dataset_tags": source, "dataset_args": split, **retention}
