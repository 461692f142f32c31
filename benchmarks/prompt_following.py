"""Does the built-in SAM follow its prompts? Per-object IoU and confusion rate, box and 1-point prompts.

On multi-object test images of the synthetic domains, every object is prompted (a tight box,
one foreground point drawn uniformly, or one point at the object's centre as in the SAM paper's
1-point evaluation) and scored against its own mask: IoU per object (mean over objects,
and over images of their objects' mean) and the *confusion rate*, the share of prompts whose
mask covers more of another object than of the prompted one (see
`infosam_hf.prompt_following`). Goals for the built-in model on the "general" domain: IoU
per object >= 0.90 and confusion <= 5%; zero-shot on "specialised" must stay clearly below.
A second table splits both by object size, next to the IoU a perfect mask at the model's
low resolution would reach (`mask_resolution_ceiling`).

    python benchmarks/prompt_following.py
    python benchmarks/prompt_following.py --model /tmp/sam-tiny --images 64
    python benchmarks/prompt_following.py --model infosam_hf/builtin/sam2-tiny-general   # any supported family
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from infosam_hf.builtin import BUILTIN_MODEL_PATH, builtin_dataset_path
from infosam_hf.data import SamSegmentationPreprocessor, load_segmentation_dataset, prepare_instance_dataset
from infosam_hf.models import load_sam_model
from infosam_hf.prompt_following import PROMPTS, evaluate_prompt_following, mask_resolution_ceiling, prompt_logits
from infosam_hf.synthetic import MAX_OBJECTS


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=BUILTIN_MODEL_PATH)
    parser.add_argument("--images", type=int, default=100, help="test images per domain")
    parser.add_argument("--domains", nargs="+", default=["general", "specialised"])
    args = parser.parse_args(argv)
    model = load_sam_model(args.model).eval()
    preprocessor = SamSegmentationPreprocessor.for_model(model)  # the family's geometry (SAM 2: square)
    results, mask_size = {}, None
    print("| domain | prompt | images | objects | IoU per object | IoU per image | confusion rate |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for domain in args.domains:
        raw = load_segmentation_dataset(builtin_dataset_path(domain, max_objects=MAX_OBJECTS), split="test", streaming=False)
        prepared = prepare_instance_dataset(raw.select(range(min(args.images, len(raw)))), preprocessor, "ids")
        rows = [r for r in (prepared[i] for i in range(len(prepared))) if r.get("pixel_values") is not None]
        for prompt in PROMPTS:
            m = evaluate_prompt_following(model, rows, prompt=prompt)
            results[f"{domain}/{prompt}"] = m
            print(f"| {domain} | {prompt.replace('_', ' ')} | {m['images']} | {m['objects']} | {m['iou_per_object']:.4f} | "
                  f"{m['iou_per_image']:.4f} | {m['confusion_rate']:.4f} |", flush=True)
        mask_size = mask_size or low_resolution_mask_size(model, rows[0])
        results[f"{domain}/ceiling"] = mask_resolution_ceiling(rows, mask_size)
    print_by_size(results, args.domains)
    print(json.dumps({"model": args.model, "results": results}))
    return results


def low_resolution_mask_size(model, row: dict) -> int:
    """The side of the model's low-resolution masks (SAM: 4x its embedding grid), from one forward."""
    pixel_values = torch.as_tensor(np.asarray(row["pixel_values"]))[None]
    return prompt_logits(model, pixel_values, input_boxes=torch.tensor([[[0.0, 0.0, 8.0, 8.0]]])).shape[-1]


def print_by_size(results: dict, domains: list[str]) -> None:
    """Where the errors sit: IoU per object and confusion by object size, next to what the mask resolution allows."""
    print("\n| domain | prompt | object size | objects | IoU per object | confusion rate | mask-resolution ceiling |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for domain in domains:
        ceiling = results[f"{domain}/ceiling"]
        for prompt in PROMPTS:
            for size, m in results[f"{domain}/{prompt}"]["by_size"].items():
                print(f"| {domain} | {prompt.replace('_', ' ')} | {size} | {m['objects']} | {m['iou_per_object']:.4f} | "
                      f"{m['confusion_rate']:.4f} | {ceiling['by_size'][size]:.4f} |")
        print(f"| {domain} | any | all | {ceiling['objects']} | | | {ceiling['iou_per_object']:.4f} |")


if __name__ == "__main__":
    main()
