"""Reproduce the built-in tiny SAM 2 (`infosam_hf/builtin/sam2-tiny-general`).

The SAM 2 counterpart of examples/pretrain_builtin_sam.py (same data, prompts, loss, schedule
and Trainer): a small Sam2Model (architecture `infosam_hf.builtin.builtin_sam2_config`, 128 px,
a 6-block Hiera) trained from scratch on the synthetic "general" domain, so that
`python examples/train.py --builtin_model sam2` runs the SAM 2 path offline. Images go
through SAM 2's geometry (resize to a square, no padding) with infosam_hf's own
preprocessing: SAM 2's transformers processor needs torchvision.

    python examples/pretrain_builtin_sam2.py
    python examples/pretrain_builtin_sam2.py --output_dir /tmp/sam2-tiny --max_steps 50
"""

from __future__ import annotations

import os

import torch
from pretrain_builtin_sam import (  # same directory: run as a script
    SamWithLoss,
    pretraining_data,
    pretraining_parser,
    train_and_check,
)

from infosam_hf.builtin import BUILTIN_IMAGE_SIZE, BUILTIN_SAM2_PATH
from infosam_hf.builtin.fresh import fresh_builtin_sam2
from infosam_hf.data import SamSegmentationPreprocessor


def builtin_sam2_preprocessor() -> SamSegmentationPreprocessor:
    return SamSegmentationPreprocessor(image_size=BUILTIN_IMAGE_SIZE, geometry="square")


def main() -> None:
    # the built-in SAM's first stage (examples/pretrain_builtin_sam.py), lr 2e-4: at 8e-4 SAM 2 stayed
    # prompt-blind (BENCHMARKS.md)
    parser = pretraining_parser(__doc__, BUILTIN_SAM2_PATH, max_steps=2500, batch_size=16, learning_rate=2e-4,
                                max_objects_per_image=6, warmup_steps=100)
    args = parser.parse_args()
    if os.path.exists(os.path.join(args.output_dir, "model.safetensors")) and not args.overwrite:
        raise SystemExit(f"{args.output_dir} already holds a model; pass --overwrite to replace it.")

    torch.manual_seed(args.seed)
    preprocessor = builtin_sam2_preprocessor()
    train, rows = pretraining_data(preprocessor, args)

    model = SamWithLoss(fresh_builtin_sam2())
    train_and_check(model, train, rows, args, logging_steps=max(1, min(100, args.max_steps // 10)))
    model.sam.config.name_or_path = "infosam-hf/sam2-tiny-general"
    model.sam.save_pretrained(args.output_dir)
    preprocessor.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
