"""Synthetic-sample generation speed, against SAM preprocessing of the same samples, side by side.

The built-in data sets are generated on first use, so generation should cost no more
than the preprocessing every sample goes through anyway. This prints samples/s for
`make_synthetic_sample` and for `SamSegmentationPreprocessor` on the very samples it
generated (same size, same run, one thread), and their time ratio (generation /
preprocessing). It replaces a wall-clock threshold that used to sit in the unit tests.

    python benchmarks/synthetic_speed.py [--num_samples 100] [--size 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import numpy as np
import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from infosam_hf.data import SamSegmentationPreprocessor
    from infosam_hf.synthetic import make_synthetic_sample

    domains = ("general", "specialised")  # the pair the recorded rates were measured on

    preprocess = SamSegmentationPreprocessor(args.size)
    generate_s, preprocess_s = [], []
    for round_index in range(args.rounds):
        rng = np.random.default_rng(round_index)
        start = time.perf_counter()
        samples = [make_synthetic_sample(domains[i % 2], args.size, rng) for i in range(args.num_samples)]
        generate_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for image, mask in samples:
            preprocess(image, mask)
        preprocess_s.append(time.perf_counter() - start)
    generate, prep = statistics.median(generate_s), statistics.median(preprocess_s)
    print(f"command: python benchmarks/synthetic_speed.py {shlex.join(sys.argv[1:] if argv is None else argv)}")
    print(f"generation: {args.num_samples / generate:.0f} samples/s; preprocessing: {args.num_samples / prep:.0f} "
          f"samples/s ({args.size} px, median of {args.rounds} rounds, one thread)")
    print(f"time_ratio={generate / prep:.3f}")


if __name__ == "__main__":
    main()
