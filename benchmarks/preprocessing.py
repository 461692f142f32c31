"""Preprocessing throughput for 1024 px SAM inputs: ours vs `SamProcessor`, side by side, one core.

A data loader worker must keep up with the GPU: this prints samples/s per core for
image + mask preprocessing (resize longest side, pad, normalise; mask nearest-resized
and padded) and the ratio to `SamProcessor`'s own speed on the same images (images
only: the processor has no training-mask path).

    python benchmarks/preprocessing.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_images", type=int, default=24)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import SamImageProcessor, SamProcessor

    from infosam_hf.data import SamSegmentationPreprocessor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)) for _ in range(args.num_images)]
    masks = [Image.fromarray((rng.random((args.height, args.width)) > 0.5).astype(np.uint8) * 255) for _ in range(args.num_images)]
    processor = SamProcessor(image_processor=SamImageProcessor())
    ours = SamSegmentationPreprocessor.from_processor(processor)

    def rate(fn) -> float:
        fn(0)  # warm-up
        start = time.perf_counter()
        for i in range(args.num_images):
            fn(i)
        return args.num_images / (time.perf_counter() - start)

    ours_rate = rate(lambda i: ours(images[i], masks[i]))
    ours_image_only = rate(lambda i: ours(images[i]))
    theirs = rate(lambda i: processor(images=images[i], return_tensors="pt"))
    print(f"{args.num_images} images {args.width}x{args.height} -> 1024 px, 1 thread")
    print(f"ours image+mask: {ours_rate:.1f}/s, ours image only: {ours_image_only:.1f}/s, SamProcessor image only: {theirs:.1f}/s")
    print(f"samples_per_s_per_core={ours_rate:.2f} samproc_samples_per_s={theirs:.2f} ratio={ours_rate / theirs:.2f}")


if __name__ == "__main__":
    main()
