"""Several objects per image: N prompts per image vs the same objects as N separate one-prompt samples.

Both arms train the same InfoSAM pair (LoRA student, teacher = adapters off, relation
module) on the same objects with the same prompts, per step: "multi" feeds B images with
N box prompts each (`gt_masks` (B, N, S, S)); "separate" feeds the B*N (image, object)
pairs as B*N one-prompt samples, each image repeated N times. Reported: objects per second
of training (forward + backward + optimizer step) and peak memory, each arm in a fresh
process (CPU: peak RSS growth over the process after its imports, model and data included; CUDA: torch.cuda.max_memory_allocated), alternating arms
over rounds, the median kept.

    python benchmarks/multi_object.py                        # built-in architecture, 128 px, B=4, N=4
    python benchmarks/multi_object.py --images 2 --objects 6 --steps 3 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time


def _batches(images: int, objects: int, size: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(images, 3, size, size, generator=generator)
    masks = torch.zeros(images, objects, size, size)
    boxes = torch.zeros(images, objects, 4)
    for b in range(images):
        for k in range(objects):
            y, x = (int(v) for v in torch.randint(0, size // 2, (2,), generator=generator))
            h, w = (int(v) for v in torch.randint(size // 8, size // 2, (2,), generator=generator))
            masks[b, k, y : y + h, x : x + w] = 1
            boxes[b, k] = torch.tensor([x, y, x + w - 1, y + h - 1])
    multi = {
        "pixel_values": pixels,
        "input_boxes": boxes,
        "gt_masks": masks,
        "prompt_mask": torch.ones(images, objects, dtype=torch.bool),
    }
    separate = {
        "pixel_values": pixels.repeat_interleave(objects, dim=0),
        "input_boxes": boxes.reshape(-1, 1, 4),
        "gt_masks": masks.reshape(-1, 1, size, size),
    }
    return multi, separate


def _arm(arm: str, args: dict, queue) -> None:
    import torch
    from transformers import SamModel

    from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer, build_student
    from infosam_hf.testing import builtin_sam_config, tiny_sam_config

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the imports, before the model
    torch.manual_seed(0)
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    sam_config = builtin_sam_config() if args["model"] == "builtin" else tiny_sam_config(image_size=args["size"])
    config = InfoSAMConfig()
    model = InfoSAMModel(build_student(SamModel(sam_config), config), config).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    size = sam_config.vision_config.image_size
    multi, separate = _batches(args["images"], args["objects"], size, seed=0)
    batch = {k: v.to(device) for k, v in (multi if arm == "multi" else separate).items()}

    def step():
        outputs = model(**batch)
        loss = InfoSAMTrainer.compute_infosam_loss(outputs, batch["gt_masks"], config)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, lazy init)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args["steps"]):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024  # Linux: KiB
    elapsed = time.perf_counter() - start
    queue.put({"objects_per_s": args["images"] * args["objects"] * args["steps"] / elapsed, "peak_mb": peak_mb})


def run_arm(arm: str, args: dict) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_arm, args=(arm, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["builtin", "tiny"], default="builtin")
    parser.add_argument("--size", type=int, default=64, help="image size of --model tiny")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = vars(parser.parse_args(argv))
    results = {"multi": [], "separate": []}
    for _ in range(args["rounds"]):
        for arm in ("multi", "separate"):
            results[arm].append(run_arm(arm, args))
    summary = {
        arm: {key: statistics.median(r[key] for r in runs) for key in ("objects_per_s", "peak_mb")}
        for arm, runs in results.items()
    }
    speedup = summary["multi"]["objects_per_s"] / summary["separate"]["objects_per_s"]
    memory = summary["multi"]["peak_mb"] / summary["separate"]["peak_mb"]
    print("command: python benchmarks/multi_object.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"{'arm':<34} {'objects/s':>10} {'peak MB':>9}")
    labels = {
        "multi": f"{args['images']} images x {args['objects']} prompts",
        "separate": f"{args['images'] * args['objects']} one-prompt samples",
    }
    for arm, label in labels.items():
        print(f"{label:<34} {summary[arm]['objects_per_s']:>10.2f} {summary[arm]['peak_mb']:>9.0f}")
    print(f"speedup (objects/s) {speedup:.2f}x, peak memory ratio {memory:.2f}")
    out = {"args": args, "summary": summary, "speedup": speedup, "memory_ratio": memory}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
