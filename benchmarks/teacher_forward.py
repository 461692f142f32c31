"""The teacher's forward with and without the early stop after the two-way transformer, side by side.

InfoSAM reads only z_i and the mask token from the teacher, so `InfoSAMModel` ends the
teacher's forward right after the decoder's two-way transformer (no mask upscaling,
hypernetworks or IoU head). This measures what that saves, for a full teacher pass and
for a cached one (image embeddings given, decoder only), in alternating rounds.

    python benchmarks/teacher_forward.py                         # built-in tiny SAM, CPU
    python benchmarks/teacher_forward.py --model vit-b --image_size 256 --batch_size 2 --repeats 2   # CPU
    python benchmarks/teacher_forward.py --model vit-b --bf16    # on a GPU (1024 px)

The last line printed is `full_ratio=<stopped/whole> cached_ratio=<stopped/whole>`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import SamModel

from infosam_hf.features import capture_sam_features
from infosam_hf.testing import builtin_sam_config, toy_batch, vit_b_sam_config


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["builtin", "vit-b"], default="builtin")
    parser.add_argument("--image_size", type=int, default=1024, help="--model vit-b only")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20, help="forwards per timing")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = vit_b_sam_config(args.image_size) if args.model == "vit-b" else builtin_sam_config()
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = SamModel(config).to(device, dtype).eval()
    batch = toy_batch(args.batch_size, image_size=config.vision_config.image_size)
    pixels, boxes = batch["pixel_values"].to(device, dtype), batch["input_boxes"].to(device)
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixels)

    def teacher(stop: bool, cached: bool):
        def run():
            with torch.no_grad(), capture_sam_features(model, stop_after_tokens=stop):
                if cached:
                    model(image_embeddings=embeddings, input_boxes=boxes, multimask_output=False)
                else:
                    model(pixel_values=pixels, input_boxes=boxes, multimask_output=False)

        return run

    times: dict[tuple[bool, bool], list[float]] = {(s, c): [] for s in (False, True) for c in (False, True)}
    for round_ in range(args.rounds):
        order = list(times) if round_ % 2 == 0 else list(reversed(times))
        for stop, cached in order:
            times[(stop, cached)].append(timed(teacher(stop, cached), device, args.repeats))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"device: {device}  model: {args.model}  batch: {args.batch_size}  bf16: {args.bf16}")
    for cached in (False, True):
        what = "decoder only (cached embeddings)" if cached else "encoder + decoder"
        print(f"{what:<34} whole {median[(False, cached)]:.4f}s  stopped {median[(True, cached)]:.4f}s")
    full = median[(True, False)] / median[(False, False)]
    cached = median[(True, True)] / median[(False, True)]
    print(f"full_ratio={full:.3f} cached_ratio={cached:.3f}")


if __name__ == "__main__":
    main()
