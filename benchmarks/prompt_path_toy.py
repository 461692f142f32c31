"""Can a freshly initialised built-in SAM learn to use its prompts at all? "The mask is the box", on noise.

A diagnostic for pre-training from scratch (examples/pretrain_builtin_sam*.py): images are
Gaussian noise and the target of each box prompt is the filled box, so the image encoder has
nothing to offer and the only way below the all-background loss (BCE + dice ~1.08) is
through the prompt path (prompt encoder -> two-way transformer -> mask tokens). A model that
stays at IoU 0 here cannot follow prompts on real data either, whatever else is right.
Found with it: the built-in SAM 2 escapes at lr 2e-4 and stays stuck at 8e-4 and 3e-3, the
built-in SAM escapes at 8e-4 (BENCHMARKS.md and docs/history.md, "The built-in tiny SAM 2").

    python benchmarks/prompt_path_toy.py --family sam2 --learning_rate 2e-4 --steps 400
    python benchmarks/prompt_path_toy.py --family sam --learning_rate 8e-4 --steps 400
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from infosam_hf.losses import dice_loss, mask_iou


def fresh_model(family: str):
    """The built-in architecture of `family`, initialised as its pre-training script does."""
    from infosam_hf.builtin.fresh import fresh_builtin_sam, fresh_builtin_sam2

    if family == "sam":
        return fresh_builtin_sam()
    if family == "sam2":
        return fresh_builtin_sam2()
    raise ValueError(f"family must be 'sam' or 'sam2', got {family!r}.")


def box_batch(generator: torch.Generator, batch_size: int, boxes_per_image: int, size: int = 128):
    """Noise images, boxes of 8-40 px, and each box's filled rectangle as its target mask."""
    corner = torch.rand(batch_size, boxes_per_image, 2, generator=generator) * (size - 40)
    extent = 8 + torch.rand(batch_size, boxes_per_image, 2, generator=generator) * 32
    boxes = torch.cat([corner, corner + extent], dim=-1)
    centres = torch.arange(size) + 0.5
    ys, xs = centres.view(1, 1, size, 1), centres.view(1, 1, 1, size)
    b = boxes[..., None, None]
    target = ((xs >= b[:, :, 0]) & (xs <= b[:, :, 2]) & (ys >= b[:, :, 1]) & (ys <= b[:, :, 3])).float()
    return torch.randn(batch_size, 3, size, size, generator=generator), boxes, target


def box_logits(model, pixel_values, boxes, size: int) -> torch.Tensor:
    out = model(pixel_values=pixel_values, input_boxes=boxes, multimask_output=False)
    return F.interpolate(out.pred_masks[:, :, 0].float(), size=(size, size), mode="bilinear", align_corners=False)


def per_mask(masks: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) -> (B * N, 1, H, W): one sample per box, as infosam_hf.losses expects."""
    return masks.flatten(0, 1)[:, None]


def bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(per_mask(logits), per_mask(target))


def mean_iou(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float(mask_iou(per_mask(logits), per_mask(target)).mean())


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["sam", "sam2"], default="sam2")
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--boxes_per_image", type=int, default=4)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = fresh_model(args.family).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    history, start = [], time.time()
    for step in range(args.steps + 1):
        pixel_values, boxes, target = box_batch(generator, args.batch_size, args.boxes_per_image)
        logits = box_logits(model, pixel_values, boxes, target.shape[-1])
        loss = bce_dice(logits, target)
        if step % args.log_every == 0 or step == args.steps:
            history.append({"step": step, "loss": float(loss.detach()), "iou": mean_iou(logits.detach(), target)})
            print(f"{args.family} lr {args.learning_rate:g} step {step}: loss {history[-1]['loss']:.3f} "
                  f"IoU {history[-1]['iou']:.3f} ({time.time() - start:.0f} s)", flush=True)
        if step == args.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


if __name__ == "__main__":
    main()
