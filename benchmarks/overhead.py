"""InfoSAM's cost over plain PEFT fine-tuning, measured side by side in one run.

Every mode trains the same model (same LoRA, same data, same batch) for the same
number of optimiser steps, each in its own subprocess so peak memory is measured
cleanly:

- peft:        plain LoRA fine-tuning, segmentation loss only, no teacher;
- infosam:     InfoSAM with the shared-weights teacher (adapters disabled), our default;
- cached:      InfoSAM with the teacher-embedding cache, timed after one pass over the data;
- two_copies:  InfoSAM with a separate teacher SamModel, as the reference implementation holds it;
- stored:      InfoSAM reading the teacher's image embeddings from the on-disk teacher store
               (`InfoSAMTrainingArguments.teacher_store`, filled in the warm-up, memory cache empty): what a
               second run of a sweep pays;
- teacher_bf16: InfoSAM with the teacher under bf16 autocast (`teacher_dtype="bfloat16"`);
- teacher:     the teacher's forward alone (no gradient, stopped after the two-way transformer), to
               split InfoSAM's extra time into the teacher's own forward and everything else:
               `teacher_overhead = (infosam - peft) / teacher`, 1.0 when InfoSAM costs nothing
               beyond the teacher's forward (relation module, losses, hooks);
- adapter:     plain fine-tuning with the paper's bottleneck Adapter (ratio 0.25, every block) instead of LoRA;
- adapter_infosam: InfoSAM with the bottleneck Adapter, shared-weights teacher.

The adapter modes run when named (`--modes peft,infosam,adapter,adapter_infosam`); a line
`adapter_vs_lora ...` then compares them with `peft` and `infosam` (wall time, CPU time of the
process, which a busy shared machine disturbs less, memory, trained parameters).
The last line printed is `time_ratio=<infosam/peft> memory_ratio=<infosam/peft>`.

`--model vit-b` is SAM ViT-B's architecture with random weights at `--image_size` (positional
embeddings sized to the image): at 256 px a CPU runs it in minutes and the encoder/decoder cost
split is ViT-B's, which the tiny built-in model's is not (its decoder costs as much as its encoder).

Memory: on CUDA, `torch.cuda.max_memory_allocated`; on the CPU, the peak resident set
size of the worker minus its size after importing the libraries (weights, optimiser
state and activations, the same for every mode).

    python benchmarks/overhead.py                      # tiny CPU configuration
    python benchmarks/overhead.py --model vit-b --image_size 256 --batch_size 4 --steps 4   # ViT-B on 2 CPU cores
    python benchmarks/overhead.py --model vit-b --image_size 1024 --batch_size 4 --bf16   # on a GPU

Beside each ratio the table prints the mode's floor (`floor x`: 1 + teacher forward / LoRA step
while the teacher runs, 1.0 where its embeddings are read back) and its efficiency
(`extra/teacher` = (mode - LoRA) / teacher forward), so it says how far each mode is from its limit.

`--epochs N` times whole default runs instead of steps: `InfoSAMTrainer` with its defaults (so
InfoSAM's teacher cache is what `cache_teacher_embeddings="auto"` decides) against the same run with
lambda_1 = lambda_2 = 0 (plain LoRA), over N epochs of `--num_images` toy images; wall time from
building the trainer to the end of training, each epoch's time and peak memory:

    python benchmarks/overhead.py --model vit-b --image_size 256 --batch_size 4 --epochs 3 --num_images 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("peft", "infosam", "cached", "stored", "two_copies", "teacher_bf16", "teacher")
ADAPTER_MODES = ("adapter", "adapter_infosam")  # run with --modes peft,infosam,adapter,adapter_infosam


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(args: argparse.Namespace) -> dict:
    import torch
    from transformers import SamModel

    from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer, PeftArguments, build_student
    from infosam_hf.teacher_cache import TeacherEmbeddingCache
    from infosam_hf.testing import builtin_sam_config, toy_batch, vit_b_sam_config

    baseline_mb = rss_mb()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam_config = vit_b_sam_config(args.image_size) if args.model == "vit-b" else builtin_sam_config()
    image_size = sam_config.vision_config.image_size
    mode = args.worker
    peft_args = PeftArguments(peft_method="adapter" if mode.startswith("adapter") else "lora")
    plain = mode in ("peft", "adapter")
    config = InfoSAMConfig(lambda_1=0.0, lambda_2=0.0) if plain else InfoSAMConfig()
    teacher_dtype = "bfloat16" if mode == "teacher_bf16" else None
    if args.attn_implementation:
        sam_config._attn_implementation = args.attn_implementation
    teacher = SamModel(sam_config) if mode == "two_copies" else None
    model = InfoSAMModel(
        build_student(SamModel(sam_config), config, peft_args), config, teacher=teacher, teacher_dtype=teacher_dtype
    ).to(device)
    if args.compile:
        for sam in (model.student.get_base_model(), teacher):
            if sam is not None:
                sam.vision_encoder.compile()
                sam.mask_decoder.compile()
    store_dir = None
    if mode == "cached":
        model.teacher_cache = TeacherEmbeddingCache.for_model(model, storage_device=device)
    elif mode == "stored":
        import tempfile

        from infosam_hf.teacher_store import TeacherEmbeddingStore

        store_dir = tempfile.mkdtemp(prefix="infosam-store-")
        store = TeacherEmbeddingStore.for_teacher(store_dir, model.teacher_image_encoder, model.sam_config)
        model.teacher_cache = TeacherEmbeddingCache.for_model(model, storage_device=device, disk_store=store)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = [
        {k: v.to(device) for k, v in toy_batch(args.batch_size, image_size, seed=i).items()}
        for i in range(args.distinct_batches)
    ]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step(batch):
        if mode == "teacher":
            with autocast:
                model._run_teacher(batch["pixel_values"], model._prompts(batch), config.multimask_output)
            return
        with autocast:
            outputs = model(**batch)
            loss = InfoSAMTrainer.compute_infosam_loss(outputs, batch["gt_masks"], config)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches:  # warm-up; fills the cache in "cached" mode (the first epoch)
        step(batch)
    if mode == "stored":  # a new run: nothing in memory, every embedding read from disk
        model.teacher_cache = TeacherEmbeddingCache.for_model(model, storage_device=device, max_items=0,
                                                              disk_store=model.teacher_cache.disk_store)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for i in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step(batches[i % len(batches)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if device.type == "cuda":
        memory_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_mb
    return {
        "mode": mode,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{args.threads} threads",
        "step_s": statistics.median(times),
        "images_per_s": args.batch_size / statistics.median(times),
        "memory_mb": memory_mb,
        "cache_hits": model.teacher_cache.hits if model.teacher_cache is not None else None,
        "store_bytes_per_image": (model.teacher_cache.disk_store.disk_bytes() / len(model.teacher_cache.disk_store)
                                  if mode == "stored" else None),
        "cpu_step_s": statistics.median(cpu_times),
        "trainable": sum(p.numel() for p in model.student.parameters() if p.requires_grad),
    }


WHOLE_RUN_MODES = ("lora", "infosam")  # --epochs N: InfoSAMTrainer's default run, with and without the teacher


def run_whole_worker(args: argparse.Namespace) -> dict:
    """One default `InfoSAMTrainer` run over `--epochs` epochs of a `--num_images` set: wall time from building
    the trainer (InfoSAM decides on its teacher cache there) to the end of training, each epoch's time, peak memory."""
    import tempfile

    import torch
    from transformers import SamModel, TrainerCallback, TrainingArguments

    from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer, build_student
    from infosam_hf.testing import builtin_sam_config, toy_segmentation_dataset, vit_b_sam_config

    baseline_mb = rss_mb()
    torch.set_num_threads(args.threads)
    sam_config = vit_b_sam_config(args.image_size) if args.model == "vit-b" else builtin_sam_config()
    config = InfoSAMConfig() if args.whole_run_worker == "infosam" else InfoSAMConfig(lambda_1=0.0, lambda_2=0.0)
    torch.manual_seed(0)
    model = InfoSAMModel(build_student(SamModel(sam_config), config), config)
    dataset = toy_segmentation_dataset(args.num_images, sam_config.vision_config.image_size)
    epoch_ends = []

    class EpochTimes(TrainerCallback):
        def on_epoch_end(self, *_, **__):
            epoch_ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
            save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True, seed=0,
            use_cpu=args.cpu or not torch.cuda.is_available(), bf16=args.bf16, dataloader_num_workers=0,
        )
        start = time.perf_counter()
        trainer = InfoSAMTrainer(model=model, args=training_args, train_dataset=dataset, callbacks=[EpochTimes()])
        trainer.train()
        wall = time.perf_counter() - start
    if torch.cuda.is_available() and not args.cpu:
        memory_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_mb
    cache = model.teacher_cache
    return {
        "mode": args.whole_run_worker,
        "wall_s": wall,
        "epoch_s": [b - a for a, b in zip([start, *epoch_ends], epoch_ends)],
        "memory_mb": memory_mb,
        "decision": str(trainer.teacher_cache_decision),
        "cache_mb": cache.nbytes() / 2**20 if cache is not None else 0.0,
    }


def whole_run(args: argparse.Namespace) -> None:
    """`--epochs N`: the default InfoSAM run against the default LoRA run, alternating, `--repeats` times."""
    passthrough = [f"--{name}={getattr(args, name)}" for name in
                   ("model", "image_size", "batch_size", "threads", "epochs", "num_images")]
    passthrough += [f"--{flag}" for flag in ("bf16", "cpu") if getattr(args, flag)]
    results: dict[str, list[dict]] = {m: [] for m in WHOLE_RUN_MODES}
    for repeat in range(args.repeats):
        for mode in WHOLE_RUN_MODES if repeat % 2 == 0 else reversed(WHOLE_RUN_MODES):
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
            out = subprocess.run([sys.executable, __file__, *passthrough, "--whole_run_worker", mode],
                                 capture_output=True, text=True, env=env, check=False)
            if out.returncode != 0:
                raise SystemExit(f"whole-run worker {mode} failed:\n{out.stderr[-4000:]}")
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            run = results[mode][-1]
            print(f"  repeat {repeat} {mode}: {run['wall_s']:.1f} s, epochs " + ", ".join(f"{t:.1f}" for t in
                  run["epoch_s"]) + f", peak {run['memory_mb']:.1f} MB, cache {run['cache_mb']:.1f} MB", flush=True)
    print(results["infosam"][0]["decision"])
    print(f"{args.epochs} epochs x {args.num_images} images, batch {args.batch_size}, model {args.model} at "
          f"{args.image_size} px, {args.repeats} alternating repeats (best of each)")
    print(f"{'run':<10}{'wall (s)':>10}{'peak MB':>10}{'cache MB':>10}  epochs (s, of the fastest run)")
    best = {m: min(results[m], key=lambda r: r["wall_s"]) for m in WHOLE_RUN_MODES}
    for mode in WHOLE_RUN_MODES:
        run = best[mode]
        memory = min(r["memory_mb"] for r in results[mode])
        print(f"{mode:<10}{run['wall_s']:>10.1f}{memory:>10.1f}{run['cache_mb']:>10.1f}  "
              + " ".join(f"{t:.1f}" for t in run["epoch_s"]))
    epochs = [i / l for i, l in zip(best["infosam"]["epoch_s"], best["lora"]["epoch_s"])]
    memory_ratio = min(r["memory_mb"] for r in results["infosam"]) / min(r["memory_mb"] for r in results["lora"])
    print("epoch_ratios " + " ".join(f"epoch{i + 1}={r:.3f}" for i, r in enumerate(epochs)))
    print(f"whole_run_time_ratio={best['infosam']['wall_s'] / best['lora']['wall_s']:.3f} "
          f"whole_run_memory_ratio={memory_ratio:.3f}")


# The plain run each mode adds InfoSAM to, and whether its teacher forward runs (False: read back).
BASELINES = {"infosam": ("peft", True), "two_copies": ("peft", True), "cached": ("peft", False),
             "stored": ("peft", False), "adapter_infosam": ("adapter", True)}


def floor_and_efficiency(mode, best, results) -> tuple[float | None, float | None]:
    """(floor, efficiency) of one mode: the least it can cost relative to plain LoRA, and its extra time in units
    of the teacher's forward. None where a mode has no such floor (the plain modes, teacher_bf16's own forward
    is not measured) or the `teacher` mode was not run."""
    if mode not in BASELINES or "teacher" not in results or BASELINES[mode][0] not in results:
        return None, None
    baseline, teacher_runs = BASELINES[mode]
    plain, teacher, peft = best(baseline, "step_s"), best("teacher", "step_s"), best("peft", "step_s")
    floor = (plain + (teacher if teacher_runs else 0.0)) / peft
    return floor, (best(mode, "step_s") - plain) / teacher


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"  # blank: the row keeps only its numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["builtin", "vit-b"], default="builtin")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--distinct_batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders and decoders")
    parser.add_argument("--attn_implementation", default=None, help="e.g. eager, to compare with SAM's sdpa")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--epochs", type=int, default=0,
                        help="> 0: whole default runs (InfoSAMTrainer, lora vs infosam) of this many epochs instead")
    parser.add_argument("--num_images", type=int, default=64, help="--epochs: size of the training set")
    parser.add_argument("--worker", choices=MODES + ADAPTER_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--whole_run_worker", choices=WHOLE_RUN_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    if args.whole_run_worker:
        print(json.dumps(run_whole_worker(args)))
        return
    if args.epochs > 0:
        whole_run(args)
        return

    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    # The worker gets the parsed settings (not sys.argv, where "--repeats 3" would leave a stray "3").
    passthrough = [f"--{name}={getattr(args, name)}" for name in
                   ("model", "image_size", "batch_size", "steps", "distinct_batches", "threads", "modes")]
    passthrough += [f"--{flag}" for flag in ("bf16", "cpu", "compile") if getattr(args, flag)]
    if args.attn_implementation:
        passthrough.append(f"--attn_implementation={args.attn_implementation}")
    for repeat in range(args.repeats):
        for mode in modes if repeat % 2 == 0 else reversed(modes):
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
            out = subprocess.run(
                [sys.executable, __file__, *passthrough, "--worker", mode],
                capture_output=True, text=True, env=env, check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"worker {mode} failed:\n{out.stderr[-4000:]}")
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def best(mode, key):
        return min(r[key] for r in results[mode])

    print(f"device: {results[modes[0]][0]['device']}  model: {args.model}  batch: {args.batch_size}  bf16: {args.bf16}")
    print(f"{'mode':<16}{'step (s)':>10}{'images/s':>10}{'peak MB':>10}{'time x':>9}{'mem x':>8}{'floor x':>9}"
          f"{'extra/teacher':>15}")
    for mode in modes:
        step_s, mem = best(mode, "step_s"), best(mode, "memory_mb")
        floor, efficiency = floor_and_efficiency(mode, best, results)
        print(
            f"{mode:<16}{step_s:>10.4f}{args.batch_size / step_s:>10.1f}{mem:>10.1f}"
            f"{step_s / best('peft', 'step_s'):>9.3f}{mem / best('peft', 'memory_mb'):>8.3f}"
            f"{_fmt(floor):>9}{_fmt(efficiency):>15}".rstrip()
        )
    if "teacher" in results:
        print("floor x: the least a mode can cost (1 + teacher forward / plain step where the teacher runs, 1.0 where "
              "its embeddings are read back); extra/teacher: (mode - plain) / teacher forward, 1.0 for an uncached "
              "teacher that costs exactly its forward, 0.0 for a cache that costs nothing.")
    time_ratio = best("infosam", "step_s") / best("peft", "step_s")
    memory_ratio = best("infosam", "memory_mb") / best("peft", "memory_mb")
    if "adapter" in results and "adapter_infosam" in results:
        pairs = (("plain", "adapter", "peft"), ("infosam", "adapter_infosam", "infosam"))
        print("adapter_vs_lora " + " ".join(
            f"{label}_{name}={best(adapter, key) / best(lora, key):.3f}"
            for label, adapter, lora in pairs
            for name, key in (("time", "step_s"), ("cpu_time", "cpu_step_s"), ("memory", "memory_mb"))
        ) + f" trained_params={results['adapter'][0]['trainable']}/{results['peft'][0]['trainable']}")
    for extra in ("cached", "stored", "teacher_bf16", "two_copies"):
        if extra in results:
            print(f"{extra}_time_ratio={best(extra, 'step_s') / best('peft', 'step_s'):.3f}")
    if "stored" in results:
        print(f"store_bytes_per_image={results['stored'][0]['store_bytes_per_image']:.0f}")
    if "teacher" in results:
        overhead = (best("infosam", "step_s") - best("peft", "step_s")) / best("teacher", "step_s")
        floor, _ = floor_and_efficiency("infosam", best, results)
        print(f"teacher_overhead={overhead:.3f} infosam_floor={floor:.3f}  (InfoSAM's extra time / the teacher's "
              "forward alone; the least an uncached teacher can cost, relative to plain LoRA)")
    print(f"time_ratio={time_ratio:.3f} memory_ratio={memory_ratio:.3f}")


if __name__ == "__main__":
    main()
