"""Fine-tune SAM with a PEFT adapter and InfoSAM relation distillation.

With no arguments it runs the built-in default: the tiny SAM shipped with the package
(pre-trained on the synthetic "general" domain by examples/pretrain_builtin_sam.py)
is fine-tuned on the shifted "specialised" synthetic domain, streamed from parquet
shards, and its IoU on held-out images is printed before and after.

    python examples/train.py
    accelerate launch examples/train.py --max_steps 400
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 examples/train.py
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
import os
import sys
from dataclasses import dataclass, field
from functools import partial

import transformers
from transformers import HfArgumentParser, SamModel, SamProcessor, TrainingArguments

from infosam_hf import InfoSAMConfig, InfoSAMTrainer
from infosam_hf.builtin import BUILTIN_MODEL_PATH, builtin_dataset_path
from infosam_hf.callbacks import EvalOverlayCallback
from infosam_hf.data import (
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    load_segmentation_dataset,
    prepare_dataset,
    prepare_instance_dataset,
)
from infosam_hf.data.instances import INSTANCE_FORMATS
from infosam_hf.metrics import build_compute_metrics

logger = logging.getLogger("infosam_hf.train")

# The built-in default's run, overridable by any flag on the command line.
BUILTIN_DEFAULTS = [
    "--output_dir", "outputs/infosam-builtin",
    "--max_steps", "300",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "16",
    "--learning_rate", "1e-3",
    "--lr_scheduler_type", "cosine",
    "--warmup_steps", "10",
    "--logging_steps", "25",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--report_to", "none",
    "--seed", "0",
]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=BUILTIN_MODEL_PATH,
        metadata={"help": "SAM checkpoint (Hub id or folder). Default: the tiny SAM shipped with infosam-hf."},
    )
    resume_adapter: str | None = field(
        default=None, metadata={"help": "Continue training an InfoSAM adapter (folder or Hub id)."}
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
    streaming: bool = field(default=True, metadata={"help": "Stream the data instead of loading it in memory."})
    max_eval_samples: int | None = field(default=64, metadata={"help": "Evaluate on at most this many images."})
    eval_prompt: str = field(default="box", metadata={"help": "Prompt for evaluation: box or points."})
    eval_num_points: int = field(default=1, metadata={"help": "Foreground points per evaluation point prompt."})
    structure_measures: bool = field(
        default=False, metadata={"help": "Also report S-measure, E-measure and weighted F (polyp, camouflage)."}
    )
    instance_format: str | None = field(
        default=None,
        metadata={
            "help": "Several objects per image in the mask column: 'ids' (instance-id PNG, 0 = background, k = "
            "object k), 'masks' (a list of binary masks), 'coco' (COCO polygons / RLE). Default: 'ids' for the "
            "built-in data, else one binary mask per image. 'none' forces one binary mask per image."
        },
    )
    max_objects_per_image: int = field(
        default=2,  # each prompt costs a mask-decoder pass: 2 keeps the built-in main job at a few minutes
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


def build_datasets(data_args, preprocessor, training_args):
    source = data_args.dataset_name or builtin_dataset_path("specialised")
    kwargs = dict(image_column=data_args.image_column, mask_column=data_args.mask_column)
    train = load_segmentation_dataset(source, split=data_args.train_split, streaming=data_args.streaming, **kwargs)
    if training_args.world_size > 1 and data_args.streaming:
        # Each rank reads its own shards (or its slice of each global batch). accelerate's default for iterable data
        # (rank 0 reads and dispatches) would concatenate box- and point-prompted batches, which cannot be merged.
        training_args.accelerator_config.dispatch_batches = False
    if data_args.streaming:  # shuffle file references, not preprocessed tensors (4 GB per 256 at 1024 px)
        train = train.shuffle(seed=training_args.seed, buffer_size=256)
    instances = instance_format(data_args)
    if instances:
        prepare = partial(prepare_instance_dataset, instance_format=instances, min_object_area=data_args.min_object_area)
    else:
        prepare = prepare_dataset
    train = prepare(train, preprocessor)
    raw_evaluation = load_segmentation_dataset(source, split=data_args.eval_split, streaming=False, **kwargs)
    if data_args.max_eval_samples is not None:
        raw_evaluation = raw_evaluation.select(range(min(data_args.max_eval_samples, len(raw_evaluation))))
    return train, prepare(raw_evaluation, preprocessor), raw_evaluation


def instance_format(data_args) -> str | None:
    """The instance layout of the mask column, or None for one binary mask per image."""
    if data_args.instance_format in (None, ""):
        return "ids" if data_args.dataset_name is None else None  # the built-in data is multi-object
    if data_args.instance_format.lower() == "none":
        return None
    if data_args.instance_format not in INSTANCE_FORMATS:
        raise SystemExit(f"--instance_format must be one of {INSTANCE_FORMATS} or 'none', got {data_args.instance_format!r}.")
    return data_args.instance_format


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, InfoSAMConfig, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, infosam_config, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        model_args, data_args, infosam_config, training_args = parser.parse_args_into_dataclasses(
            args=BUILTIN_DEFAULTS + argv
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.logging.set_verbosity_warning()
    if training_args.max_steps <= 0 and data_args.streaming:
        raise SystemExit("A streamed dataset has no length: pass --max_steps (or --streaming false with epochs).")

    if model_args.resume_adapter:
        from infosam_hf.hub import load_for_training, load_processor, resolve_folder
        from infosam_hf.modeling import base_model_id_of

        # The adapter names its base; only an explicit --model_name_or_path overrides it.
        adapter_folder = resolve_folder(model_args.resume_adapter)
        explicit_base = None if model_args.model_name_or_path == BUILTIN_MODEL_PATH else model_args.model_name_or_path
        model = load_for_training(adapter_folder, base_model=explicit_base)
        processor = load_processor(adapter_folder, explicit_base or base_model_id_of(adapter_folder), model.student)
    else:
        model = SamModel.from_pretrained(model_args.model_name_or_path)
        processor = SamProcessor.from_pretrained(model_args.model_name_or_path)
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    train_dataset, eval_dataset, raw_eval_dataset = build_datasets(data_args, preprocessor, training_args)

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
            )
        )
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


if __name__ == "__main__":
    main()
