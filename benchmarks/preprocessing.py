"""Preprocessing throughput: `SamSegmentationPreprocessor` vs `SamProcessor`, side by side, one CPU core.

The data loader has to keep a GPU busy, so what matters is samples/s per loader core.
This prints samples/s per core for decoded 1024 px-class images with masks, for our
preprocessor and for `SamProcessor` (image + segmentation map) on the very same
images in the same run, and their ratio.

    python benchmarks/preprocessing.py [--num_images 32] [--rounds 3]

Decoding (PNG/JPEG -> PIL) is excluded from both: it is the same cost for either.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import numpy as np
import torch

# Irregular shapes as in the benchmark data sets (landscape, portrait, 3:2, 16:9).
SIZES = [(960, 1280), (1280, 960), (1000, 1500), (720, 1280)]


def make_images(num_images: int, seed: int):
    """Synthetic photos and masks at irregular sizes (the generator draws squares: crop them)."""
    from infosam_hf.synthetic import make_synthetic_sample

    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(num_images):
        height, width = SIZES[index % len(SIZES)]
        domain = ("general", "specialised")[index % 2]
        image, mask = make_synthetic_sample(domain, max(height, width), rng)
        pairs.append((image.crop((0, 0, width, height)), mask.crop((0, 0, width, height))))
    return pairs


def time_pass(fn, pairs) -> float:
    start = time.perf_counter()
    for image, mask in pairs:
        fn(image, mask)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per method, interleaved; median kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    import transformers
    from transformers import SamProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "no torchvision, using the PIL backend" notice
    from transformers import SamImageProcessor

    from infosam_hf.data import SamSegmentationPreprocessor

    size = args.image_size
    sam_processor = SamProcessor(
        image_processor=SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size})
    )
    ours = SamSegmentationPreprocessor.from_processor(sam_processor)
    pairs = make_images(args.num_images, args.seed)

    def run_ours(image, mask):
        return ours(image, mask)

    def run_samprocessor(image, mask):
        return sam_processor(images=image, segmentation_maps=mask, return_tensors="pt")

    def run_ours_image(image, mask):
        return ours(image)

    def run_samprocessor_image(image, mask):
        return sam_processor(images=image, return_tensors="pt")

    methods = {
        "ours": run_ours,
        "samproc": run_samprocessor,
        "ours_image_only": run_ours_image,
        "samproc_image_only": run_samprocessor_image,
    }
    for fn in methods.values():  # warm-up: allocator, PIL codecs, imports
        time_pass(fn, pairs[:4])
    times = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            times[name].append(time_pass(fn, pairs))
    rate = {name: len(pairs) / statistics.median(t) for name, t in times.items()}

    backend = type(sam_processor.image_processor).__name__
    print(
        f"# command: python {shlex.join(sys.argv)} | torch threads=1 | {len(pairs)} images "
        f"{sorted(set(f'{w}x{h}' for h, w in SIZES))} -> {size}px, with masks | "
        f"transformers {transformers.__version__} ({backend})"
    )
    print(
        f"image_only: ours_samples_per_s={rate['ours_image_only']:.1f} "
        f"samproc_samples_per_s={rate['samproc_image_only']:.1f} "
        f"ratio={rate['ours_image_only'] / rate['samproc_image_only']:.2f}"
    )
    print(
        f"samples_per_s_per_core={rate['ours']:.1f} samproc_samples_per_s={rate['samproc']:.1f} "
        f"ratio={rate['ours'] / rate['samproc']:.2f}"
    )


if __name__ == "__main__":
    main()
