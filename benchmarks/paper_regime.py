"""The selection criteria of the paper-regime domains that need no training, measured on their test splits.

For each synthetic domain: the built-in SAM's zero-shot IoU (box of the whole ground-truth mask,
and one point; IoU averaged over logit thresholds at each image's own size, as
`benchmarks/forgetting.py` scores), the mask-resolution ceiling (the IoU of a perfect
low-resolution mask after the upsampling, `infosam_hf.prompt_following.mask_resolution_ceiling`:
what no fine-tuning of this model can beat), and mean mask area / box area (how little the box
says). What the zero-shot model segments instead: its mask's area / box area (at logit 0) and the
share of the ground-truth mask it covers (lesions: most of the box, hardly any of the spots: the
leaf). A domain qualifies when zero-shot box IoU <= 0.50 and plain LoRA at 256 images (paper
recipe, `benchmarks/forgetting.py --recipe paper`) reaches >= 0.70, or >= zero-shot + 0.30 where
the ceiling is low. Never tune a generator on InfoSAM's numbers.

    python benchmarks/paper_regime.py                      # lesions, roads, camouflage (+ specialised for scale)
    python benchmarks/paper_regime.py --domains roads --images 50
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from infosam_hf.testing import load_script

HERE = os.path.dirname(os.path.abspath(__file__))


def mask_statistics(rows: list[dict], mask_size: int) -> dict:
    """Mean mask area / area of its box, and the mask-resolution ceiling, over single-mask rows."""
    from infosam_hf.prompt_following import mask_resolution_ceiling

    ratios = []
    for row in rows:
        mask = np.asarray(row["gt_masks"])[0] > 0.5
        ys, xs = np.nonzero(mask)
        ratios.append(mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
    return {"mask_over_box": float(np.mean(ratios)),
            "ceiling": mask_resolution_ceiling(rows, mask_size)["iou_per_object"]}


def zero_shot_footprint(rows, predictor) -> dict:
    """What `predictor` answers the box of the whole mask with, over `rows` (`image`, `mask`): its mask's area / box
    area, and the share of the ground-truth mask it covers (means; masks at the predictor's threshold, as a user
    sees them)."""
    over_box, covered = [], []
    for row in rows:
        truth = np.asarray(row["mask"]) > 0
        ys, xs = np.nonzero(truth)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
        predictor.set_image(row["image"].convert("RGB"))
        mask = predictor.predict(boxes=box).masks[0]
        over_box.append(mask.sum() / ((box[2] - box[0]) * (box[3] - box[1])))
        covered.append((mask & truth).sum() / truth.sum())
    return {"predicted_over_box": float(np.mean(over_box)), "truth_covered": float(np.mean(covered))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=["specialised", "lesions", "roads", "camouflage"])
    parser.add_argument("--images", type=int, default=200, help="test images per domain (the test split has 200)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    from infosam_hf.builtin import BUILTIN_MODEL_PATH, builtin_dataset_path
    from infosam_hf.data import SamSegmentationPreprocessor, load_segmentation_dataset
    from infosam_hf.inference import Predictor
    from infosam_hf.loading import load_processor
    from infosam_hf.models import load_sam_model

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    forgetting = load_script(os.path.join(HERE, "forgetting.py"), "forgetting_benchmark")
    processor = load_processor(None, BUILTIN_MODEL_PATH, load_sam_model(BUILTIN_MODEL_PATH))
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    predictor = Predictor.from_pretrained(BUILTIN_MODEL_PATH)
    settings = {"steps": 1}
    results = {}
    print("| domain | test images | zero-shot IoU, box | zero-shot IoU, 1 point | mask-resolution ceiling | "
          "mask area / box area | zero-shot mask area / box area | share of the mask zero-shot covers | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for domain in args.domains:
        start = time.perf_counter()
        data = forgetting.Data(preprocessor, args.images, 1, domain=domain)
        zero = forgetting.run_cell(data, processor, None, 0, 0, settings)["metrics"]
        rows = [data.spec[i] for i in range(len(data.spec))]
        stats = mask_statistics(rows, low_resolution_mask_size())
        split = load_segmentation_dataset(builtin_dataset_path(domain), split="test", streaming=False)
        stats |= zero_shot_footprint((split[i] for i in range(min(args.images, len(split)))), predictor)
        results[domain] = {"zero_shot_box_iou": zero["spec/box/iou"], "zero_shot_point_iou": zero["spec/point/iou"],
                           **stats, "images": len(rows)}
        print(f"| {domain} | {len(rows)} | {zero['spec/box/iou']:.3f} | {zero['spec/point/iou']:.3f} | "
              f"{stats['ceiling']:.3f} | {stats['mask_over_box']:.3f} | {stats['predicted_over_box']:.3f} | "
              f"{stats['truth_covered']:.3f} | {time.perf_counter() - start:.0f} |", flush=True)
    return results


def low_resolution_mask_size() -> int:
    """The side of the built-in SAM's low-resolution masks: 4x its image-embedding grid."""
    from transformers import SamConfig

    from infosam_hf.builtin import BUILTIN_MODEL_PATH

    config = SamConfig.from_pretrained(BUILTIN_MODEL_PATH)
    return 4 * config.vision_config.image_size // config.vision_config.patch_size


if __name__ == "__main__":
    main()
