"""Reproduce the built-in tiny SAM (`infosam_hf/builtin/sam-tiny-general`).

It stands in for `facebook/sam-vit-base` where real weights cannot be downloaded: a
small SAM (architecture `infosam_hf.testing.builtin_sam_config`) trained from scratch,
all weights, with SAM's own loss (focal + dice + IoU) on the synthetic "general"
domain, prompted by jittered boxes and single foreground points like the fine-tuning
recipe. The result segments the general domain well from box prompts and transfers
imperfectly to the "specialised" domain, which is what fine-tuning then fixes.

    python examples/pretrain_builtin_sam.py                 # ~15 min on 2 CPU cores
    python examples/pretrain_builtin_sam.py --output_dir /tmp/sam-tiny --max_steps 200
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from transformers import SamImageProcessor, SamModel, SamProcessor, Trainer, TrainingArguments

from infosam_hf.builtin import BUILTIN_IMAGE_SIZE, BUILTIN_MODEL_PATH, builtin_dataset_path
from infosam_hf.data import (
    PromptSampler,
    SamSegmentationCollator,
    SamSegmentationPreprocessor,
    load_segmentation_dataset,
    prepare_dataset,
)
from infosam_hf.losses import focal_dice_iou_loss
from infosam_hf.metrics import build_compute_metrics
from infosam_hf.modeling import upsample_masks
from infosam_hf.testing import builtin_sam_config


class SamWithLoss(nn.Module):
    """Adds SAM's training loss to a SamModel forward, so the stock Trainer can train it in full."""

    def __init__(self, sam: SamModel):
        super().__init__()
        self.sam = sam

    def forward(self, pixel_values, gt_masks, input_boxes=None, input_points=None, input_labels=None, **_):
        out = self.sam(pixel_values=pixel_values, input_boxes=input_boxes, input_points=input_points,
                       input_labels=input_labels, multimask_output=False)
        logits = upsample_masks(out.pred_masks[:, 0], gt_masks.shape[-2:])
        loss = focal_dice_iou_loss(logits, gt_masks, out.iou_scores[:, 0])
        return {"loss": loss, "logits": logits}


def builtin_processor() -> SamProcessor:
    return SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": BUILTIN_IMAGE_SIZE},
            pad_size={"height": BUILTIN_IMAGE_SIZE, "width": BUILTIN_IMAGE_SIZE},
            mask_size={"longest_edge": BUILTIN_IMAGE_SIZE // 4},
            mask_pad_size={"height": BUILTIN_IMAGE_SIZE // 4, "width": BUILTIN_IMAGE_SIZE // 4},
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=BUILTIN_MODEL_PATH)
    parser.add_argument("--max_steps", type=int, default=2500)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=8e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model in --output_dir")
    args = parser.parse_args()
    if os.path.exists(os.path.join(args.output_dir, "model.safetensors")) and not args.overwrite:
        raise SystemExit(f"{args.output_dir} already holds a model; pass --overwrite to replace it.")

    torch.manual_seed(args.seed)
    processor = builtin_processor()
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    source = builtin_dataset_path("general", seed=args.seed)
    train = prepare_dataset(load_segmentation_dataset(source, split="train", streaming=True), preprocessor)
    train = train.shuffle(seed=args.seed, buffer_size=512)
    test = load_segmentation_dataset(source, split="test", streaming=False)
    test = prepare_dataset(test.select(range(min(64, len(test)))), preprocessor)

    model = SamWithLoss(SamModel(builtin_sam_config()))
    training_args = TrainingArguments(
        output_dir=os.path.join(args.output_dir, "_run"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=32,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=100,
        weight_decay=0.01,
        logging_steps=100,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        remove_unused_columns=False,
        label_names=["gt_masks"],
        batch_eval_metrics=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=test,
        data_collator=SamSegmentationCollator(PromptSampler(box_probability=0.7, seed=args.seed)),
        compute_metrics=build_compute_metrics(),
    )
    trainer.train()
    trainer.data_collator = SamSegmentationCollator(PromptSampler(box_probability=1.0, box_noise=0.0), prompt_type="box")
    metrics = trainer.evaluate()
    print("general-domain test metrics (box prompts):", metrics)
    model.sam.config.name_or_path = "infosam-hf/sam-tiny-general"
    model.sam.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
