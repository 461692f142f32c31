"""Compute the frozen teacher's image embeddings once into an on-disk store that later runs reuse.

A hyper-parameter sweep over one data set and one base model pays the teacher's image encoder
in every run; with the store it pays it once. Run this once, then pass the same
`--teacher_store` to `examples/train.py`: the teacher's image encoder then never runs (only its
small mask decoder does). Entries are keyed by the teacher's weights and the preprocessed image
content, so a changed base, teacher, precision or preprocessing never reuses stale entries.

    python examples/precompute_teacher.py --teacher_store stores/polyp --dataset_name /data/polyp \\
        --model_name_or_path facebook/sam-vit-base
    accelerate launch --num_processes 4 examples/precompute_teacher.py ...   # each process its own shard
    python examples/train.py --dataset_name /data/polyp --model_name_or_path facebook/sam-vit-base \\
        --teacher_store stores/polyp ...

With no data arguments it fills the store for the built-in model and data (the main job's run).
Use the precision and input size the training will use (`--bf16` if training with `--bf16`,
`--image_size 512` if training with `--image_size 512`): the store keeps them apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
import torch

logger = logging.getLogger("infosam_hf.precompute_teacher")


def parse_args(argv=None):
    from infosam_hf import InfoSAMConfig
    from infosam_hf.builtin import BUILTIN_MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_store", required=True, help="Folder of the store (created if missing).")
    parser.add_argument("--model_name_or_path", default=BUILTIN_MODEL_PATH, help="The student's base model.")
    parser.add_argument("--teacher_model_name_or_path", default=None, help="A separate teacher, if training uses one.")
    parser.add_argument("--dataset_name", default=None, help="As for train.py (default: the built-in data).")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--mask_column", default="label")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="Embeddings for a run trained with --bf16.")
    parser.add_argument("--fp16", action="store_true", help="Embeddings for a run trained with --fp16.")
    parser.add_argument("--max_gb", type=float, default=None, help="Refuse to start above this estimated size.")
    # train.py's own fields (InfoSAMConfig): the store's keys and fingerprint follow the input size; both must agree.
    for name in ("image_size", "allow_image_upscaling"):
        field = InfoSAMConfig.__dataclass_fields__[name]
        kind = {"type": int} if name == "image_size" else {"action": "store_true"}
        help_text = f"As train.py's: {field.metadata['help']}"
        parser.add_argument(f"--{name}", default=field.default, help=help_text, **kind)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    from accelerate import PartialState

    from infosam_hf.builtin import builtin_dataset_path
    from infosam_hf.data import (
        SamSegmentationPreprocessor,
        load_segmentation_dataset,
        prepare_dataset,
        split_for_process,
    )
    from infosam_hf.features import capture_sam_features
    from infosam_hf.loading import load_processor
    from infosam_hf.models import family_of, load_sam_model
    from infosam_hf.resolution import adapt_model, adapt_processor
    from infosam_hf.teacher_cache import content_key, flatten_entry
    from infosam_hf.teacher_store import TeacherEmbeddingStore, check_store_root, estimate_bytes, format_bytes

    args = parse_args(argv)
    try:  # before any model or data is loaded: filling the store writes to it
        check_store_root(args.teacher_store, write=True)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    state = PartialState()
    teacher = load_sam_model(args.teacher_model_name_or_path or args.model_name_or_path)
    # --image_size: the teacher and the processor adapted as train.py adapts them, so keys and fingerprint match.
    teacher = adapt_model(teacher, args.image_size, allow_upscaling=args.allow_image_upscaling)
    teacher.to(state.device).eval()
    family = family_of(teacher, "teacher")
    # The same processor train.py uses (the base's), so the preprocessed pixels, and thus the keys, match.
    processor = adapt_processor(load_processor(None, args.model_name_or_path, teacher), args.image_size)
    precision = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
    max_bytes = None if args.max_gb is None else int(args.max_gb * 2**30)
    store = TeacherEmbeddingStore.for_teacher(
        args.teacher_store, teacher.vision_encoder, teacher.config, precision=precision, max_bytes=max_bytes
    )

    source = args.dataset_name or builtin_dataset_path("specialised")
    data = load_segmentation_dataset(
        source, split=args.split, streaming=True, image_column=args.image_column, mask_column=args.mask_column
    )
    num_images = _num_examples(data, local=os.path.exists(source))
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision, torch.float32)
    autocast = torch.autocast(state.device.type, dtype=dtype, enabled=precision != "float32")
    size = family.image_size(teacher.config)

    def encode(pixels: torch.Tensor) -> dict:
        """What the family's decoder needs in place of the pixels, per image (the training cache's entries).

        The teacher's forward stops after the two-way transformer; the prompt (a whole-image box) does not
        reach the image encoding."""
        boxes = torch.tensor([[[0.0, 0.0, size, size]]], device=state.device).expand(len(pixels), 1, 4)
        with torch.no_grad(), autocast, capture_sam_features(teacher, stop_after_tokens=True) as feats:
            teacher(pixel_values=pixels.to(state.device), input_boxes=boxes, multimask_output=False)
        batch = family.cache_inputs(feats.decoder_inputs)
        return [flatten_entry(_index(batch, i)) for i in range(len(pixels))]

    probe = encode(torch.zeros(1, 3, size, size))[0]
    per_image = estimate_bytes(1, (sum(t.numel() for t in probe.values()),), dtype)
    if num_images is not None:
        estimate = num_images * per_image
        if state.is_main_process:
            print(f"{num_images} images x {format_bytes(per_image)} ({precision}) -> about {format_bytes(estimate)} "
                  f"in {store.folder}")
        if max_bytes is not None and estimate > max_bytes:
            raise SystemExit(
                f"error: the store needs about {format_bytes(estimate)}, above --max_gb {args.max_gb}; raise --max_gb "
                "or store a subset."
            )
    elif state.is_main_process:
        print(f"unknown number of images; {format_bytes(per_image)} per image in {store.folder}")

    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    data = prepare_dataset(split_for_process(data, state.process_index, state.num_processes), preprocessor)
    computed = 0

    def flush(batch):
        nonlocal computed
        # The same float32 stacking as SamSegmentationCollator, so the content keys match training's.
        pixels = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in batch]))
        keys = [content_key(p) for p in pixels]
        todo = [i for i, key in enumerate(keys) if not store.path_of(key).exists()]
        if not todo:
            return
        for i, entry in zip(todo, encode(pixels[todo])):
            store.put(keys[i], entry)
        computed += len(todo)

    batch = []
    for sample in data:
        if sample.get("pixel_values") is None:
            continue  # corrupt, already named by prepare_dataset
        batch.append(sample["pixel_values"])
        if len(batch) == args.batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    state.wait_for_everyone()
    summary = {"computed": computed, "written": store.writes, "entries": len(store), "bytes": store.disk_bytes(),
               "folder": str(store.folder)}
    if state.is_main_process:
        print(f"teacher store {store.folder}: {summary['entries']} entries, {format_bytes(summary['bytes'])} "
              f"(this run computed {computed} on process 0)")
    if data.corrupt_log.count:  # this process's skips (each was also logged as it happened)
        print(data.corrupt_log.report())
    return summary


def _index(batch, i: int):
    if isinstance(batch, dict):
        return {k: _index(v, i) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [_index(v, i) for v in batch]
    return batch[i]


def _num_examples(data, local: bool) -> int | None:
    """The split's size from its metadata, else (local data only) a pass over the undecoded rows."""
    info = getattr(data, "info", None)
    splits = getattr(info, "splits", None) or {}
    split = getattr(data, "split", None)
    if split is not None and str(split) in splits and splits[str(split)].num_examples:
        return int(splits[str(split)].num_examples)
    if local:
        try:
            return sum(1 for _ in data.decode(False))
        except Exception:  # an unusual source: no estimate rather than a failed precompute
            return None
    return None


if __name__ == "__main__":
    try:
        sys.exit(0 if main() else 1)
    except (ValueError, FileNotFoundError) as error:  # a bad flag (e.g. --image_size not a multiple of the patch)
        raise SystemExit(f"error: {error}") from error
