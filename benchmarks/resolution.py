"""What training at a lower resolution buys and costs (`InfoSAMConfig.image_size`, `infosam_hf.resolution`).

Two parts, each printed as a table:

- speed: InfoSAM training (LoRA student, shared-weights teacher) of SAM ViT-B's architecture
  (random weights built at 1024 px, then adapted by `infosam_hf.resolution.adapt_model`, as a
  real checkpoint would be) at each of `--sizes`, each size in its own subprocess so peak
  memory is clean: wall time and CPU time per optimiser step, peak memory, and each as a ratio
  to the largest size. CPU: peak resident set growth after the imports; CUDA:
  `torch.cuda.max_memory_allocated`.
- quality: `examples/train.py` fine-tunes the built-in 128 px model on the built-in data at its
  native size and at `--low_size` for the same budget (`--quality_steps` steps, same seed and
  data); each run's IoU/Dice before and after is measured at each image's original size (what
  train.py and examples/evaluate_adapter.py report), with the model at its own input size.

    python benchmarks/resolution.py                                   # CPU: 512/256/128 px + quality
    python benchmarks/resolution.py --sizes 1024,512,256 --batch_size 4 --skip_quality   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_worker(args: argparse.Namespace) -> dict:
    import torch
    from transformers import SamModel

    from infosam_hf import InfoSAMConfig, InfoSAMTrainer
    from infosam_hf.resolution import adapt_model
    from infosam_hf.testing import toy_batch, vit_b_sam_config

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.worker
    base = adapt_model(SamModel(vit_b_sam_config(1024)), size)
    config = InfoSAMConfig(image_size=size)
    model = InfoSAMTrainer._as_infosam_model(base, config, None, None).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = InfoSAMTrainer.compute_infosam_loss
    batch = toy_batch(args.batch_size, image_size=size, seed=0)
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("pixel_values", "input_boxes")}
    gt = batch["gt_masks"].to(device)

    def step():
        parts = loss_fn(model(**inputs), gt, config)
        parts["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
    return {
        "size": size,
        "step_s": (time.perf_counter() - start) / args.steps,
        "cpu_s": (time.process_time() - cpu_start) / args.steps,
        "peak_mb": peak_mb,
        "tokens": (size // 16) ** 2,
        "device": device.type,
    }


def speed(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        command = [sys.executable, __file__, "--worker", str(size), "--steps", str(args.steps), "--batch_size",
                   str(args.batch_size), "--threads", str(args.threads)] + (["--cpu"] if args.cpu else [])
        out = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {size} px done: {results[-1]}", file=sys.stderr, flush=True)
    ref = results[0]
    print(f"\nInfoSAM training, ViT-B proportions adapted from 1024 px, batch {args.batch_size}, {args.steps} timed "
          f"steps after 1 warm-up, device {ref['device']}, {args.threads} thread(s)")
    print("| image size | tokens | step (s) | CPU s / step | peak MB | time x | CPU time x | memory x |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['size']} | {r['tokens']} | {r['step_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_mb']:.0f} | "
              f"{r['step_s'] / ref['step_s']:.3f} | {r['cpu_s'] / ref['cpu_s']:.3f} | {r['peak_mb'] / ref['peak_mb']:.3f} |")


def quality(args: argparse.Namespace) -> None:
    from train_script import run_train_script  # benchmarks/train_script.py: examples/train.py, one process a run

    rows = {}
    with tempfile.TemporaryDirectory(prefix="infosam-resolution-") as folder:
        for label, extra in (("native 128 px", []), (f"{args.low_size} px", ["--image_size", str(args.low_size)])):
            start = time.perf_counter()
            summary = run_train_script(
                ["--output_dir", os.path.join(folder, label.split()[0]), "--max_steps", str(args.quality_steps),
                 "--per_device_train_batch_size", str(args.quality_batch_size), "--disable_tqdm", "true",
                 "--eval_overlays", "0", "--max_eval_samples", str(args.max_eval_samples)] + extra
            )
            rows[label] = {**summary, "wall_s": time.perf_counter() - start}
    print(f"\nBuilt-in model and data, {args.quality_steps} steps x batch {args.quality_batch_size}, seed 0, "
          f"box prompts, {args.max_eval_samples} test images scored at their original size")
    print("| training size | IoU zero-shot | IoU after | Dice zero-shot | Dice after | wall s (train + 2 evals) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, r in rows.items():
        print(f"| {label} | {r['zero_shot_iou']:.4f} | {r['iou']:.4f} | {r['zero_shot_dice']:.4f} | {r['dice']:.4f} | "
              f"{r['wall_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,256,128", help="Comma-separated sizes, largest first (the reference).")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument("--low_size", type=int, default=64)
    parser.add_argument("--quality_steps", type=int, default=60)
    parser.add_argument("--quality_batch_size", type=int, default=8)
    parser.add_argument("--max_eval_samples", type=int, default=64)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(run_worker(args)))
        return
    if not args.skip_speed:
        speed(args)
    if not args.skip_quality:
        quality(args)


if __name__ == "__main__":
    main()
