"""The datasets of a training run from its data flags (`DataArguments`): what examples/train.py trains and scores on.

Training data is cached (decoded and resized once) or streamed as `choose_data_mode` decides; the
evaluation split is scored at each image's own size, exactly as `infosam_hf.evaluation` scores.
"""

from __future__ import annotations

from functools import partial

from .arguments import DataArguments
from .cache import choose_data_mode, prepare_cached_dataset
from .collator import SamSegmentationCollator
from .instances import prepare_instance_dataset
from .prompts import PromptSampler
from .sources import find_bad_samples, load_segmentation_dataset, prepare_dataset, shuffle_stream


def build_datasets(data_args: DataArguments, preprocessor, training_args, corrupt_log=None):
    """(train, evaluation, raw evaluation rows): train cached or streamed, evaluation with the original masks."""
    source = data_args.source
    kwargs = dict(image_column=data_args.image_column, mask_column=data_args.mask_column)
    instances = data_args.instance_format
    mode = choose_data_mode(source, data_args.streaming, split=data_args.train_split,
                            image_size=preprocessor.image_size, max_cache_gb=data_args.preprocess_cache_max_gb,
                            instance_format=instances)
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
    if instances:  # several objects per image: prepared per step from the stream (the cache holds one mask per image)
        prepare = partial(prepare_instance_dataset, instance_format=instances,
                          min_object_area=data_args.min_object_area, corrupt_log=corrupt_log)
    else:
        prepare = partial(prepare_dataset, corrupt_log=corrupt_log)
    if mode.streaming:  # shuffle file references, not preprocessed tensors (4 GB per 256 at 1024 px)
        train = prepare(shuffle_stream(train, seed=training_args.seed, buffer_size=256), preprocessor)
    raw_evaluation = load_segmentation_dataset(source, split=data_args.eval_split, streaming=False, **kwargs)
    if data_args.max_eval_samples is not None:
        raw_evaluation = raw_evaluation.select(range(min(data_args.max_eval_samples, len(raw_evaluation))))
    if instances:  # per object, each scored at its image's own size, as examples/evaluate_adapter.py scores
        return train, prepare(raw_evaluation, preprocessor, keep_original_mask=True), raw_evaluation
    # Scored at each image's own size (padding cropped), exactly as examples/evaluate_adapter.py scores.
    evaluation = prepare_dataset(raw_evaluation, preprocessor, corrupt_log=corrupt_log, keep_original_mask=True)
    return train, evaluation, raw_evaluation


def build_retention_dataset(data_args: DataArguments, preprocessor, corrupt_log=None):
    """The retention sets (`DataArguments.retention_specs`), each prepared and scored exactly as an evaluation split
    of its layout: a list for `InfoSAMTrainer(retention_dataset=...)`, None without any. Instance data is prepared
    with `prepare_instance_dataset` (every object prompted, prompt following measured)."""
    sets = [prepare_retention_set(spec, preprocessor, data_args, corrupt_log)
            for spec in data_args.retention_specs(data_args.dataset_name)]
    return sets or None


def prepare_retention_set(spec, preprocessor, data_args, corrupt_log=None):
    """One `RetentionSpec`'s rows, prepared with the original masks kept (scored at each image's own size)."""
    raw = load_segmentation_dataset(spec.source, split=spec.split, streaming=False,
                                    image_column=data_args.image_column, mask_column=data_args.mask_column)
    if spec.max_samples is not None:
        raw = raw.select(range(min(spec.max_samples, len(raw))))
    if spec.instance_format:
        return prepare_instance_dataset(raw, preprocessor, instance_format=spec.instance_format,
                                        min_object_area=data_args.min_object_area, corrupt_log=corrupt_log,
                                        keep_original_mask=True)
    return prepare_dataset(raw, preprocessor, corrupt_log=corrupt_log, keep_original_mask=True)


def build_collators(prompt_config, data_args: DataArguments, seed: int):
    """(train, evaluation) collators: training draws the method's prompts under `seed`; evaluation always the same
    prompts (--eval_prompt), every object of an image with instance data (metrics are then per object).

    `prompt_config`: the prompt fields of `InfoSAMConfig` (box_prompt_probability, num_points, box_noise, ...)."""
    train_sampler = PromptSampler(
        box_probability=prompt_config.box_prompt_probability,
        num_points=prompt_config.num_points,
        box_noise=prompt_config.box_noise,
        max_box_noise=prompt_config.max_box_noise,
        box_jitter=prompt_config.box_jitter,
        seed=seed,
    )
    eval_sampler = PromptSampler(box_probability=1.0 if data_args.eval_prompt == "box" else 0.0, box_noise=0.0,
                                 num_points=data_args.eval_num_points, seed=0)
    objects = data_args.instance_format is not None
    train_collator = SamSegmentationCollator(
        train_sampler, max_objects_per_image=data_args.max_objects_per_image if objects else None
    )
    eval_collator = SamSegmentationCollator(
        eval_sampler, prompt_type=data_args.eval_prompt, max_objects_per_image=255 if objects else None
    )
    return train_collator, eval_collator


def validate_data(data_args: DataArguments) -> None:
    """--validate_data: decode every sample of both splits once and list what training would skip."""
    source = data_args.source
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
