"""Fine-tune SAM with a PEFT adapter and InfoSAM relation distillation.

With no arguments it runs the built-in default: the tiny SAM shipped with the package
(pre-trained on the synthetic "general" domain by examples/pretrain_builtin_sam.py)
is fine-tuned on the shifted "specialised" synthetic domain, read from parquet shards
(decoded once into a cache, see --streaming), and its IoU on held-out images is printed
before and after, with the IoU on the "general" domain it was pre-trained on and how well it still follows prompts
on that domain's multi-object images (what fine-tuning cost: --retention_dataset names another set, `none` turns
it off; see docs/first-hour.md).

    python examples/train.py
    python examples/train.py --builtin_model sam2   # the same run on the built-in tiny SAM 2
    accelerate launch examples/train.py --max_steps 400
    accelerate launch --config_file examples/accelerate_configs/cpu.yaml examples/train.py  # 2 CPU processes
    accelerate launch examples/train.py --model_name_or_path facebook/sam-vit-base \\
        --dataset_name /data/polyp --output_dir sam-vit-base-polyp-infosam --num_train_epochs 10 \\
        --per_device_train_batch_size 4 --learning_rate 2e-4 --lr_scheduler_type cosine_with_min_lr \\
        --lr_scheduler_kwargs '{"min_lr_rate": 0.1}' --bf16 --push_to_hub

Every `TrainingArguments` flag works; `InfoSAMConfig` flags (`--lambda_1`, `--lambda_2`, `--seg_loss`, ...) set
the method, `PeftArguments` flags (`--peft_method`, `--lora_r`, ...) the adapter, and `InfoSAMTrainingArguments`
flags (`--teacher_store`, `--teacher_dtype`, ...) where and how this run computes the teacher's side, and which
checkpoint it keeps and when it stops for forgetting (`--best_model_metric "iou - 0.5*retention_drop"`,
`--max_retention_drop 0.02`, see docs/first-hour.md).
"""

from __future__ import annotations

import logging
import os
import sys

import transformers
from transformers import set_seed

from infosam_hf import InfoSAMConfig, InfoSAMTrainer, InfoSAMTrainingArguments, PeftArguments
from infosam_hf.cli import ScriptArgumentParser, run_with_error_line
from infosam_hf.data import CorruptSampleLog, SamSegmentationPreprocessor, check_masks_not_empty
from infosam_hf.data.arguments import DataArguments
from infosam_hf.data.training_data import build_collators, build_datasets, build_retention_dataset, validate_data
from infosam_hf.metrics import build_compute_metrics
from infosam_hf.run_setup import (
    card_kwargs,
    check_sources,
    claim_output_dir,
    describe_schedule,
    load_model_and_processor,
    overlay_callbacks,
    quiet_replicas,
    report_run,
    retention_name,
    retention_per_object,
    use_cpu_under_a_launcher_without_gpu,
)
from infosam_hf.script_arguments import (
    BUILTIN_DEFAULTS,
    ModelArguments,
    OutputArguments,
    builtin_defaults,
    flags_on_command_line,
    use_builtin_model,
)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    use_cpu_under_a_launcher_without_gpu()
    # ---------------------------------------------------------------------------------------------- parse
    parser = ScriptArgumentParser(
        (ModelArguments, DataArguments, InfoSAMConfig, PeftArguments, OutputArguments, InfoSAMTrainingArguments)
    )
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, infosam_config, peft_args, output_args, training_args = parser.parse_json_file(
            os.path.abspath(argv[0])
        )
    else:
        model_args, data_args, infosam_config, peft_args, output_args, training_args = (
            parser.parse_args_into_dataclasses(args=BUILTIN_DEFAULTS + argv)
        )
        if model_args.builtin_model != "sam":
            model_args, data_args, infosam_config, peft_args, output_args, training_args = (
                parser.parse_args_into_dataclasses(args=builtin_defaults(model_args.builtin_model) + argv)
            )
    if model_args.builtin_model != "sam":
        use_builtin_model(model_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.logging.set_verbosity_warning()
    quiet_replicas(training_args)
    check_sources(model_args, data_args.dataset_name, infosam_config.teacher_model_name_or_path,
                  training_args.teacher_store, token=training_args.hub_token,
                  retention_dataset=None if data_args.retention_off else data_args.retention_dataset)
    if data_args.validate_data:
        validate_data(data_args)
    claim_output_dir(training_args, output_args.overwrite_output_dir)
    # Everything random InfoSAM builds (LoRA matrices, relation module) is drawn under --seed.
    set_seed(training_args.seed)

    # ---------------------------------------------------------------------------------------------- model and data
    model, processor = load_model_and_processor(model_args, infosam_config, training_args.seed,
                                                flags_on_command_line(argv), peft_args)
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    # one count of skipped samples for training, evaluation, retention and overlays, listed once at the end
    corrupt_log = CorruptSampleLog(summary_by_caller=True)
    train_dataset, eval_dataset, raw_eval_dataset = build_datasets(data_args, preprocessor, training_args, corrupt_log)
    retention_dataset = build_retention_dataset(data_args, preprocessor, corrupt_log)  # what it must not forget (list)
    objects = data_args.instance_format is not None  # metrics per object
    if not (data_args.allow_empty_masks or objects):  # instance data drops images without objects
        check_masks_not_empty(train_dataset, "training")
        check_masks_not_empty(eval_dataset, "evaluation")
    train_collator, eval_collator = build_collators(infosam_config, data_args, training_args.seed)

    # ---------------------------------------------------------------------------------------------- trainer
    trainer = InfoSAMTrainer(
        model=model,
        args=training_args,
        infosam_config=None if model_args.resume_adapter else infosam_config,
        peft_config=None if model_args.resume_adapter else peft_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        retention_dataset=retention_dataset,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        processing_class=processor,
        compute_metrics=build_compute_metrics(structure_measures=data_args.structure_measures),
    )
    for callback in overlay_callbacks(data_args, raw_eval_dataset, preprocessor, corrupt_log):
        trainer.add_callback(callback)  # the evaluation set's and the retention set's, logged to --report_to too
    if trainer.is_world_process_zero():
        print(describe_schedule(trainer))
        print(trainer.teacher_cache_decision)  # --cache_teacher_embeddings auto: on or off, and why

    # ---------------------------------------------------------------------------------------------- train and save
    before = trainer.evaluate(metric_key_prefix="zero_shot")
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    after = trainer.evaluate()
    trainer.save_model()
    summary = report_run(trainer, before, after, corrupt_log, per_object=objects,
                         retention_name=retention_name(data_args), retention_per_object=retention_per_object(data_args))

    # ---------------------------------------------------------------------------------------------- card or push
    card = {**card_kwargs(data_args), "baseline_metrics": before}
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return summary


def run(argv: list[str] | None = None) -> dict:
    """main() with configuration errors as one `error:` line; the traceback with a bare --debug or INFOSAM_DEBUG=1."""
    return run_with_error_line(main, argv)


if __name__ == "__main__":
    run()
