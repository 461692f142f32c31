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

import json
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from functools import partial

import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from infosam_hf import InfoSAMConfig, InfoSAMTrainer
from infosam_hf.builtin import BUILTIN_MODEL_PATH, BUILTIN_MODELS, builtin_dataset_path
from infosam_hf.callbacks import EvalOverlayCallback
from infosam_hf.data import (
    CorruptSampleLog,
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
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
from infosam_hf.metrics import build_compute_metrics
from infosam_hf.resolution import adapt_model, adapt_processor

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
    streaming = "true" if instance_format(data_args) else data_args.streaming
    mode = choose_data_mode(source, streaming, split=data_args.train_split,
                            image_size=preprocessor.image_size, max_cache_gb=data_args.preprocess_cache_max_gb)
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
    if instances:  # per object, in the model frame
        return train, prepare(raw_evaluation, preprocessor), raw_evaluation
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


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    use_cpu_under_a_launcher_without_gpu()
    parser = HfArgumentParser((ModelArguments, DataArguments, InfoSAMConfig, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, infosam_config, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        model_args, data_args, infosam_config, training_args = parser.parse_args_into_dataclasses(
            args=BUILTIN_DEFAULTS + argv
        )
        if model_args.builtin_model != "sam":
            model_args, data_args, infosam_config, training_args = parser.parse_args_into_dataclasses(
                args=builtin_defaults(model_args.builtin_model) + argv
            )
    if model_args.builtin_model != "sam":
        use_builtin_model(model_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.logging.set_verbosity_warning()
    quiet_replicas(training_args)
    check_local_path(model_args.model_name_or_path, "--model_name_or_path")
    if model_args.resume_adapter:
        check_local_path(model_args.resume_adapter, "--resume_adapter")
    if data_args.dataset_name:
        check_local_path(data_args.dataset_name, "--dataset_name")
    if data_args.validate_data:
        validate_data(data_args)
    # Everything random InfoSAM builds (LoRA matrices, relation module) is drawn under --seed.
    set_seed(training_args.seed)

    if model_args.resume_adapter:
        from infosam_hf.hub import load_for_training, load_processor, resolve_folder
        from infosam_hf.modeling import base_model_id_of

        # The adapter names its base; only an explicit --model_name_or_path overrides it.
        adapter_folder = resolve_folder(model_args.resume_adapter)
        explicit_base = None if model_args.model_name_or_path == BUILTIN_MODEL_PATH else model_args.model_name_or_path
        model = load_for_training(adapter_folder, base_model=explicit_base, seed=training_args.seed,
                                  image_size=infosam_config.image_size)
        processor = load_processor(adapter_folder, explicit_base or base_model_id_of(adapter_folder), model.student)
        processor = adapt_processor(processor, model.infosam_config.image_size)
    else:
        from infosam_hf.hub import load_processor
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
    if data_args.eval_overlays > 0:  # with instance data these draw one box around all objects of an image
        trainer.add_callback(
            EvalOverlayCallback(
                raw_eval_dataset,
                num_samples=data_args.eval_overlays,
                prompt_type="box" if data_args.eval_prompt == "box" else "points",
                num_points=data_args.eval_num_points,
                preprocessor=preprocessor,
                corrupt_log=corrupt_log,
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
    }
    if trainer.is_world_process_zero():
        print(
            f"{'Per-object ' if objects else ''}IoU before {summary['zero_shot_iou']:.4f} -> after {summary['iou']:.4f} "
            f"(Dice {summary['zero_shot_dice']:.4f} -> {summary['dice']:.4f}); adapter saved to {training_args.output_dir}"
        )
        with open(os.path.join(training_args.output_dir, "iou_before_after.json"), "w") as f:
            json.dump(summary, f, indent=2)
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
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, RuntimeError) as error:
        if debug:
            raise
        raise SystemExit(f"error: {error} (run with --debug for the traceback)") from error


if __name__ == "__main__":
    run()
