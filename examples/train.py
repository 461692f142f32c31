"""Fine-tune SAM with a PEFT adapter and InfoSAM relation distillation.

With no arguments it runs the built-in default: the tiny SAM shipped with the package
(pre-trained on the synthetic "general" domain by examples/pretrain_builtin_sam.py)
is fine-tuned on the shifted "specialised" synthetic domain, read from parquet shards
(decoded once into a cache, see --streaming), and its IoU on held-out images is printed
before and after.

    python examples/train.py
    python examples/train.py --builtin_model sam2   # the same run on the built-in tiny SAM 2
    accelerate launch examples/train.py --max_steps 400
    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/train.py  # 2 CPU processes
    accelerate launch examples/train.py --model_name_or_path facebook/sam-vit-base \\
        --dataset_name /data/polyp --output_dir sam-vit-base-polyp-infosam --num_train_epochs 10 \\
        --per_device_train_batch_size 4 --learning_rate 2e-4 --lr_scheduler_type cosine_with_min_lr \\
        --lr_scheduler_kwargs '{"min_lr_rate": 0.1}' --bf16 --push_to_hub

Every `TrainingArguments` flag works; `InfoSAMConfig` flags (`--lambda_1`, `--lambda_2`,
`--lora_r`, `--seg_loss`, ...) set the method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from functools import partial

import transformers
from transformers import TrainingArguments, set_seed

from infosam_hf import InfoSAMConfig, InfoSAMTrainer
from infosam_hf.builtin import BUILTIN_MODEL_PATH, BUILTIN_MODELS, builtin_dataset_path
from infosam_hf.callbacks import EvalOverlayCallback
from infosam_hf.cli import ScriptArgumentParser
from infosam_hf.data import (
    CorruptSampleLog,
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    check_masks_not_empty,
    choose_data_mode,
    find_bad_samples,
    load_segmentation_dataset,
    prepare_cached_dataset,
    prepare_dataset,
    prepare_instance_dataset,
    shuffle_stream,
)
from infosam_hf.data.instances import INSTANCE_FORMATS
from infosam_hf.data.sources import check_local_path
from infosam_hf.hub_ids import check_hub_source
from infosam_hf.metrics import build_compute_metrics
from infosam_hf.resolution import adapt_model, adapt_processor, allow_image_size_change_argument

logger = logging.getLogger("infosam_hf.train")
DEBUG_ENV = "INFOSAM_DEBUG"

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


# What a finished or interrupted run leaves in its output_dir (a folder holding none of these is free to use).
RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "infosam_config.json", "iou_before_after.json",
             "trainer_state.json", "training_args.json")
RUN_FOLDERS = ("eval_overlays",)


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


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local folder (imagefolder/parquet/webdataset) or a reference CSV-layout root "
            "(<root>/train.csv, <root>/test.csv). Default: the built-in synthetic 'specialised' domain."
        },
    )
    train_split: str = field(default="train")
    eval_split: str = field(default="test")
    image_column: str = field(default="image")
    mask_column: str = field(default="label")
    streaming: str = field(
        default="auto",
        metadata={
            "help": "auto: local data that fits under --preprocess_cache_max_gb is decoded and resized once into a "
            "cache reused by every epoch and run, anything else is streamed (the run prints which and why); "
            "true: stream; false: preprocess once into the cache at any size."
        },
    )
    preprocess_cache_max_gb: float = field(
        default=4.0, metadata={"help": "--streaming auto caches local data up to this preprocessed size."}
    )
    max_eval_samples: int | None = field(default=64, metadata={"help": "Evaluate on at most this many images."})
    eval_prompt: str = field(default="box", metadata={"help": "Prompt for evaluation: box or points."})
    eval_num_points: int = field(default=1, metadata={"help": "Foreground points per evaluation point prompt."})
    structure_measures: bool = field(
        default=False, metadata={"help": "Also report S-measure, E-measure and weighted F (polyp, camouflage)."}
    )
    validate_data: bool = field(
        default=False,
        metadata={
            "help": "Scan the train and eval splits before training: report every sample training would skip "
            "(undecodable image or mask, mask not at its image's size) and exit non-zero if there is any."
        },
    )
    instance_format: str | None = field(
        default=None,
        metadata={
            "help": "Several objects per image in the mask column: 'ids' (instance-id PNG, 0 = background, k = "
            "object k), 'masks' (a list of binary masks), 'coco' (COCO polygons / RLE). Default: 'ids' for the "
            "one binary mask per image (all objects together)."
        },
    )
    max_objects_per_image: int = field(
        default=2,  # each prompt costs a mask-decoder pass
        metadata={"help": "Instance data: prompts (objects) per image per training step, a random subset if more."},
    )
    min_object_area: int = field(
        default=4, metadata={"help": "Instance data: objects smaller than this (pixels) are skipped and counted."}
    )
    allow_empty_masks: bool = field(
        default=False,
        metadata={"help": "Train even when (nearly) every mask of the first 64 rows of a split is empty, which "
                  "otherwise stops the run as the sign of a broken mask export."},
    )
    eval_overlays: int = field(
        default=4,
        metadata={
            "help": "Save overlays of this many evaluation images (same prompts each time) under "
            "<output_dir>/eval_overlays/step-<N>/ at every evaluation; 0 to turn off."
        },
    )


def build_datasets(data_args, preprocessor, training_args, corrupt_log=None):
    source = data_args.dataset_name or builtin_dataset_path("specialised")
    kwargs = dict(image_column=data_args.image_column, mask_column=data_args.mask_column)
    mode = choose_data_mode(source, data_args.streaming, split=data_args.train_split, image_size=preprocessor.image_size,
                            max_cache_gb=data_args.preprocess_cache_max_gb, instance_format=instance_format(data_args))
    if training_args.process_index == 0:
        print(mode, flush=True)
    if training_args.max_steps <= 0 and mode.streaming:
        raise SystemExit("A streamed dataset has no length: pass --max_steps (or --streaming false with epochs).")
    if not mode.streaming:
        with training_args.main_process_first(desc="preprocessing the training data once"):
            train = prepare_cached_dataset(source, preprocessor, split=data_args.train_split, corrupt_log=corrupt_log,
                                           **kwargs)
    else:
        train = load_segmentation_dataset(source, split=data_args.train_split, streaming=True, **kwargs)
    if training_args.world_size > 1 and mode.streaming:
        # Each rank reads its own shards (or its slice of each global batch). accelerate's default for iterable data
        # (rank 0 reads and dispatches) would concatenate box- and point-prompted batches, which cannot be merged.
        training_args.accelerator_config.dispatch_batches = False
    instances = instance_format(data_args)
    if instances:  # several objects per image: prepared per step from the stream (the preprocessed cache holds one mask)
        prepare = partial(prepare_instance_dataset, instance_format=instances, min_object_area=data_args.min_object_area)
    else:
        prepare = partial(prepare_dataset, corrupt_log=corrupt_log)
    if mode.streaming:  # shuffle file references, not preprocessed tensors (4 GB per 256 at 1024 px)
        train = prepare(shuffle_stream(train, seed=training_args.seed, buffer_size=256), preprocessor)
    raw_evaluation = load_segmentation_dataset(source, split=data_args.eval_split, streaming=False, **kwargs)
    if data_args.max_eval_samples is not None:
        raw_evaluation = raw_evaluation.select(range(min(data_args.max_eval_samples, len(raw_evaluation))))
    if instances:  # per object, each scored at its image's own size, as examples/evaluate.py scores
        return train, prepare(raw_evaluation, preprocessor, keep_original_mask=True), raw_evaluation
    # Scored at each image's own size (padding cropped), exactly as examples/evaluate.py scores.
    evaluation = prepare_dataset(raw_evaluation, preprocessor, corrupt_log=corrupt_log, keep_original_mask=True)
    return train, evaluation, raw_evaluation


def validate_data(data_args) -> None:
    """--validate_data: decode every sample of both splits once and list what training would skip."""
    source = data_args.dataset_name or builtin_dataset_path("specialised")
    kwargs = dict(image_column=data_args.image_column, mask_column=data_args.mask_column, streaming=True)
    problems = []
    for split in dict.fromkeys((data_args.train_split, data_args.eval_split)):
        found = find_bad_samples(load_segmentation_dataset(source, split=split, **kwargs))
        problems += [f"[{split}] {p}" for p in found]
        print(f"--validate_data: split {split!r} of {source}: {len(found)} bad sample(s)")
    if problems:
        print("\n".join(problems))
        raise SystemExit(f"error: {len(problems)} bad sample(s) in {source}; fix or remove them (training would "
                         "skip them).")


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
    if training_args.process_index != 0:
        warnings.simplefilter("ignore")
        logging.getLogger("infosam_hf").setLevel(logging.ERROR)
        transformers.logging.set_verbosity_error()


def describe_schedule(trainer, data_args) -> str:
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


def builtin_defaults(builtin_model: str) -> list[str]:
    """BUILTIN_DEFAULTS with the built-in model's own output folder, so the SAM and SAM 2 adapters never mix."""
    defaults = list(BUILTIN_DEFAULTS)
    defaults[defaults.index("--output_dir") + 1] += f"-{builtin_model}"
    return defaults


def use_builtin_model(model_args) -> None:
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


def instance_format(data_args) -> str | None:
    """The instance layout of the mask column, or None for one binary mask per image."""
    if data_args.instance_format in (None, "") or data_args.instance_format.lower() == "none":
        return None
    if data_args.instance_format not in INSTANCE_FORMATS:
        raise SystemExit(f"--instance_format must be one of {INSTANCE_FORMATS} or 'none', got {data_args.instance_format!r}.")
    return data_args.instance_format


# What a trained adapter's weights are built from: fixed once trained, so --resume_adapter refuses another value.
ADAPTER_ARCHITECTURE_FIELDS = (
    "relation_dim", "train_relation_module", "peft_method", "lora_r", "lora_alpha", "lora_dropout",
    "lora_target_modules", "modules_to_save", "adapter_ratio", "adapter_placement", "adapter_scaling",
    "adapter_layers", "adapter_train_layernorms", "adapter_target_modules",
)


def flags_on_command_line(argv: list[str]) -> set[str]:
    """The field names the user wrote (`--lambda_2 0.7`, `--lambda-2=0.7`), as HfArgumentParser spells them."""
    return {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}


def apply_resume_overrides(model, adapter: str, parsed: InfoSAMConfig, explicit: set[str]) -> None:
    """--resume_adapter: the adapter's saved InfoSAMConfig, with the method flags the user passed on top.

    Run-time settings (lambdas, losses, prompts, teacher store/cache/dtype) follow the command line, and each
    replaced value is printed; flags that shape the saved weights cannot change and fail with the saved value.
    `--image_size` goes through `load_for_training` (and --allow_image_size_change).
    """
    saved = model.infosam_config
    names = {f.name for f in dataclasses.fields(InfoSAMConfig)} & explicit - {"image_size", "allow_image_upscaling"}
    changed = {n: getattr(parsed, n) for n in sorted(names) if getattr(parsed, n) != getattr(saved, n)}
    fixed = [n for n in changed if n in ADAPTER_ARCHITECTURE_FIELDS]
    if fixed:
        detail = ", ".join(f"--{n} {changed[n]!r} (the adapter has {getattr(saved, n)!r})" for n in fixed)
        raise ValueError(
            f"--resume_adapter {adapter}: {detail}. These shape the adapter's saved weights and cannot change when "
            "training continues; drop the flag(s), or start a new adapter without --resume_adapter."
        )
    if changed:
        model.infosam_config = dataclasses.replace(saved, **changed)  # validated as any InfoSAMConfig
        replaced = ", ".join(f"--{n} {getattr(saved, n)!r} -> {v!r}" for n, v in changed.items())
        logger.info(f"--resume_adapter {adapter}: the command line replaces the adapter's saved {replaced}.")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    use_cpu_under_a_launcher_without_gpu()
    parser = ScriptArgumentParser((ModelArguments, DataArguments, InfoSAMConfig, OutputArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, infosam_config, output_args, training_args = parser.parse_json_file(
            os.path.abspath(argv[0])
        )
    else:
        model_args, data_args, infosam_config, output_args, training_args = parser.parse_args_into_dataclasses(
            args=BUILTIN_DEFAULTS + argv
        )
        if model_args.builtin_model != "sam":
            model_args, data_args, infosam_config, output_args, training_args = parser.parse_args_into_dataclasses(
                args=builtin_defaults(model_args.builtin_model) + argv
            )
    if model_args.builtin_model != "sam":
        use_builtin_model(model_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.logging.set_verbosity_warning()
    quiet_replicas(training_args)
    sources = [(model_args.model_name_or_path, "--model_name_or_path", "model"),
               (model_args.resume_adapter, "--resume_adapter", "model"),
               (infosam_config.teacher_model_name_or_path, "--teacher_model_name_or_path", "model"),
               (data_args.dataset_name, "--dataset_name", "dataset")]
    for name, flag, repo_type in sources:  # one line at once, before anything loads, for a path or id we cannot use
        if name:
            check_local_path(name, flag)
            check_hub_source(name, flag, repo_type, token=training_args.hub_token)
    if infosam_config.teacher_store:  # a store that can be neither written nor read: said before anything loads
        from infosam_hf.teacher_store import check_store_root

        check_store_root(infosam_config.teacher_store)
    if data_args.validate_data:
        validate_data(data_args)
    claim_output_dir(training_args, output_args.overwrite_output_dir)
    # Everything random InfoSAM builds (LoRA matrices, relation module) is drawn under --seed.
    set_seed(training_args.seed)

    if model_args.resume_adapter:
        from infosam_hf.loading import base_model_id_of, load_for_training, load_processor, resolve_folder

        # The adapter names its base; only an explicit --model_name_or_path overrides it.
        adapter_folder = resolve_folder(model_args.resume_adapter)
        explicit_base = None if model_args.model_name_or_path == BUILTIN_MODEL_PATH else model_args.model_name_or_path
        explicit = flags_on_command_line(argv)
        model = load_for_training(adapter_folder, base_model=explicit_base, seed=training_args.seed,
                                  teacher=infosam_config.teacher_model_name_or_path
                                  if "teacher_model_name_or_path" in explicit else None,
                                  image_size=infosam_config.image_size,
                                  allow_image_size_change=model_args.allow_image_size_change)
        apply_resume_overrides(model, model_args.resume_adapter, infosam_config, explicit)
        processor = load_processor(adapter_folder, explicit_base or base_model_id_of(adapter_folder), model.student)
        processor = adapt_processor(processor, model.infosam_config.image_size)
    else:
        from infosam_hf.loading import load_processor
        from infosam_hf.models import load_sam_model

        # Any supported family (SamModel, SamHQModel, Sam2Model, Sam3TrackerModel, EdgeTamModel).
        model = load_sam_model(model_args.model_name_or_path)
        processor = load_processor(None, model_args.model_name_or_path, model)
        # --image_size: the base (and processor) at another resolution, adapted once here (infosam_hf.resolution).
        model = adapt_model(model, infosam_config.image_size, allow_upscaling=infosam_config.allow_image_upscaling)
        processor = adapt_processor(processor, infosam_config.image_size)
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    corrupt_log = CorruptSampleLog()  # one count of skipped samples for training, evaluation and overlays
    train_dataset, eval_dataset, raw_eval_dataset = build_datasets(data_args, preprocessor, training_args, corrupt_log)
    if not (data_args.allow_empty_masks or instance_format(data_args)):  # instance data drops images without objects
        check_masks_not_empty(train_dataset, "training")
        check_masks_not_empty(eval_dataset, "evaluation")

    train_sampler = PromptSampler(
        box_probability=infosam_config.box_prompt_probability,
        num_points=infosam_config.num_points,
        box_noise=infosam_config.box_noise,
        max_box_noise=infosam_config.max_box_noise,
        box_jitter=infosam_config.box_jitter,
        seed=training_args.seed,
    )
    eval_sampler = PromptSampler(box_probability=1.0 if data_args.eval_prompt == "box" else 0.0, box_noise=0.0,
                                 num_points=data_args.eval_num_points, seed=0)
    objects = instance_format(data_args) is not None
    train_collator = SamSegmentationCollator(
        train_sampler, max_objects_per_image=data_args.max_objects_per_image if objects else None
    )
    # evaluation prompts every object of an image (metrics are then per object)
    eval_collator = SamSegmentationCollator(
        eval_sampler, prompt_type=data_args.eval_prompt, max_objects_per_image=255 if objects else None
    )

    trainer = InfoSAMTrainer(
        model=model,
        args=training_args,
        infosam_config=None if model_args.resume_adapter else infosam_config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        processing_class=processor,
        compute_metrics=build_compute_metrics(structure_measures=data_args.structure_measures),
    )
    if data_args.eval_overlays > 0:
        trainer.add_callback(
            EvalOverlayCallback(
                raw_eval_dataset,
                num_samples=data_args.eval_overlays,
                prompt_type="box" if data_args.eval_prompt == "box" else "points",
                num_points=data_args.eval_num_points,
                preprocessor=preprocessor,
                corrupt_log=corrupt_log,
                instance_format=instance_format(data_args),
                min_object_area=data_args.min_object_area,
            )
        )
    if trainer.is_world_process_zero():
        print(describe_schedule(trainer, data_args))
        print(trainer.teacher_cache_decision)  # --cache_teacher_embeddings auto: on or off, and why
    before = trainer.evaluate(metric_key_prefix="zero_shot")
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    after = trainer.evaluate()
    trainer.save_model()
    summary = {
        "zero_shot_iou": before.get("zero_shot_iou"),
        "zero_shot_dice": before.get("zero_shot_dice"),
        "iou": after.get("eval_iou"),
        "dice": after.get("eval_dice"),
        "metrics_per": "object" if objects else "image",
        "processes": training_args.world_size,
        "data_parallel": trainer.data_parallel_summary(),
    }
    if trainer.is_world_process_zero():
        print(
            f"{'Per-object ' if objects else ''}IoU before {summary['zero_shot_iou']:.4f} -> after {summary['iou']:.4f} "
            f"(Dice {summary['zero_shot_dice']:.4f} -> {summary['dice']:.4f}); adapter saved to {training_args.output_dir}"
        )
        with open(os.path.join(training_args.output_dir, "iou_before_after.json"), "w") as f:
            json.dump(summary, f, indent=2)
        if summary["data_parallel"]:
            print(summary["data_parallel"][0].upper() + summary["data_parallel"][1:] + ".")
        print(corrupt_log.report())
        if trainer.dropped_batches_of_one:
            print(f"Skipped {trainer.dropped_batches_of_one} training batch(es) of a single image (L_r, L_d need 2+).")
    card = {**card_kwargs(data_args), "baseline_metrics": before}
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return summary


def card_kwargs(data_args) -> dict:
    """What the model card says about the data: Hub ids become `datasets:` metadata, local folders only a name."""
    source = data_args.dataset_name
    split = f"split {data_args.eval_split}" + (
        f", at most {data_args.max_eval_samples} images" if data_args.max_eval_samples is not None else ""
    )
    if instance_format(data_args):
        split += ", one prompt per object, metrics averaged over objects"
    if source is None:
        return {"dataset": "the built-in synthetic 'specialised' domain", "dataset_args": split}
    if os.path.exists(source):
        return {"dataset": f"local data `{os.path.basename(os.path.normpath(source))}`", "dataset_args": split}
    return {"dataset": source, "dataset_tags": source, "dataset_args": split}


def run(argv: list[str] | None = None) -> dict:
    """main() with configuration errors as one `error:` line; the traceback with a bare `--debug` or INFOSAM_DEBUG=1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    for i, arg in enumerate(argv):  # a bare --debug is ours; `--debug underflow_overflow` is TrainingArguments'
        if arg == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            debug = True
            del argv[i]
            break
    try:
        return main(argv)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, ConnectionError, TypeError,
            RuntimeError) as error:
        if debug:
            raise
        raise SystemExit(f"error: {error} (run with --debug for the traceback)") from error


if __name__ == "__main__":
    run()
