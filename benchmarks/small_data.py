"""Seconds per training step on a 32-image set vs the full built-in set, side by side.

Many epochs over a small set must cost no more per step than one pass over a large one:
no per-epoch pause in the data pipeline, no image decoded twice. Both sets are the
built-in synthetic "specialised" domain (parquet shards, 128 px): the full 2000-image
training set and a 32-image one (4 steps per epoch at batch 8). Each run is
`examples/train.py`'s own data path (`infosam_hf.data.training_data.build_datasets`) and hyper-parameters, in its own
subprocess, without the evaluations; the two sets alternate, `--repeats` times, and the
median is kept.

    python benchmarks/small_data.py                        # --streaming auto (the default)
    python benchmarks/small_data.py --modes auto,true,library

Modes are `examples/train.py --streaming` values (`auto`, `true`, `false`) plus `library`:
the stream shuffled with `datasets`' default `shuffle()` as before the fix (5 s of sleep
per epoch). Time is measured from the end of step `--warmup` to the last step, so every
epoch boundary in between counts; the one-off data preparation (building or opening the
cache) is printed apart. `--concurrent` runs the two sets at the same time and times both over
the seconds they shared, for a machine whose other jobs come and go. The last line is `ratio=<small/full s/step, first mode>` followed
by `<mode>_ratio=` for the other modes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SMALL_SET_SIZE = 32


def dataset_path(which: str) -> str:
    from infosam_hf.builtin import BUILTIN_IMAGE_SIZE, BUILTIN_TEST_SAMPLES, builtin_dataset_path
    from infosam_hf.synthetic import ensure_synthetic_dataset

    if which == "full":
        return builtin_dataset_path("specialised")
    return str(
        ensure_synthetic_dataset(
            "specialised", num_train=SMALL_SET_SIZE, num_test=BUILTIN_TEST_SAMPLES, image_size=BUILTIN_IMAGE_SIZE
        )
    )


def worker(args) -> None:
    import torch
    from transformers import SamModel, SamProcessor, TrainerCallback

    from infosam_hf import InfoSAMConfig, InfoSAMTrainer, InfoSAMTrainingArguments
    from infosam_hf.builtin import BUILTIN_MODEL_PATH
    from infosam_hf.cli import ScriptArgumentParser
    from infosam_hf.data import PromptSampler, SamSegmentationCollator, SamSegmentationPreprocessor, training_data
    from infosam_hf.data.arguments import DataArguments
    from infosam_hf.script_arguments import BUILTIN_DEFAULTS

    torch.set_num_threads(args.threads)
    if args.mode == "library":  # the pre-fix stream: datasets' default shuffle, which sleeps at every epoch's end
        training_data.shuffle_stream = lambda dataset, seed, buffer_size: dataset.shuffle(seed=seed,
                                                                                          buffer_size=buffer_size)
    streaming = "true" if args.mode == "library" else args.mode
    parser = ScriptArgumentParser((DataArguments, InfoSAMConfig, InfoSAMTrainingArguments))
    data_args, infosam_config, training_args = parser.parse_args_into_dataclasses(
        args=BUILTIN_DEFAULTS
        + ["--dataset_name", dataset_path(args.data), "--streaming", streaming, "--max_steps", str(args.steps),
           "--output_dir", args.output_dir, "--disable_tqdm", "true", "--logging_steps", str(10 * args.steps)]
    )
    processor = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    preprocessor = SamSegmentationPreprocessor.from_processor(processor)
    start = time.perf_counter()
    train_dataset, _, _ = training_data.build_datasets(data_args, preprocessor, training_args)
    prepare_s = time.perf_counter() - start

    stamps: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.time())  # wall clock: comparable between the two concurrent processes

    trainer = InfoSAMTrainer(
        model=SamModel.from_pretrained(BUILTIN_MODEL_PATH),
        args=training_args,
        infosam_config=infosam_config,
        train_dataset=train_dataset,
        data_collator=SamSegmentationCollator(PromptSampler(seed=training_args.seed)),
        processing_class=processor,
        callbacks=[StepTimes()],
    )
    if args.barrier:  # start training together with the other set's process
        open(os.path.join(args.barrier, args.data), "w").close()
        deadline = time.time() + 1800
        while len(os.listdir(args.barrier)) < 2 and time.time() < deadline:
            time.sleep(0.05)
    trainer.train()
    if len(stamps) != args.steps:
        raise RuntimeError(f"expected {args.steps} steps, timed {len(stamps)}")
    print(json.dumps({"data": args.data, "mode": args.mode, "stamps": stamps, "prepare_s": prepare_s}))


def worker_command(data: str, mode: str, args, barrier: str | None = None) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", "--data", data, "--mode", mode,
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
            "--output_dir", os.path.join(args.output_dir, f"{data}-{mode}")] + (["--barrier", barrier] if barrier else [])


def finish(process: subprocess.Popen, cmd: list[str]) -> dict:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def step_time(stamps: list[float], start: float, end: float) -> float:
    inside = [t for t in stamps if start <= t <= end]
    if len(inside) < 3:
        raise SystemExit("The two runs overlapped by fewer than 3 steps; raise --steps.")
    return (inside[-1] - inside[0]) / (len(inside) - 1)


def run_pair(mode: str, order: tuple[str, str], args) -> dict[str, dict]:
    """Both sets' runs for one mode: one after the other, or (--concurrent) at once, timed over their common window."""
    results = {}
    if not args.concurrent:
        for data in order:
            cmd = worker_command(data, mode, args)
            result = finish(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), cmd)
            result["step_s"] = step_time(result["stamps"], result["stamps"][args.warmup - 1], result["stamps"][-1])
            results[data] = result
        return results
    with tempfile.TemporaryDirectory() as barrier:
        cmds = {data: worker_command(data, mode, args, barrier) for data in order}
        processes = {data: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for data, cmd in cmds.items()}
        results = {data: finish(processes[data], cmds[data]) for data in order}
    start = max(r["stamps"][args.warmup - 1] for r in results.values())
    end = min(r["stamps"][-1] for r in results.values())
    for result in results.values():
        result["step_s"] = step_time(result["stamps"], start, end)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (batch 8)")
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=2, help="runs per set and mode; the median is kept")
    parser.add_argument("--modes", default="auto", help="comma-separated: auto, true, false, library")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrent", action="store_true",
                        help="run both sets at once and time them over the same seconds (on a machine shared with "
                        "other jobs, both then see the same load); default: one after the other")
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", default=os.path.join("outputs", "benchmark-small-data"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", choices=["small", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must lie between 0 and --steps.")
    if args.worker:
        return worker(args)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"auto", "true", "false", "library"}
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for mode in modes:
            order = ("small", "full") if repeat % 2 == 0 else ("full", "small")
            for data, result in run_pair(mode, order, args).items():
                results.setdefault((data, mode), []).append(result)
                print(f"  {mode:8s} {data:5s} {result['step_s']:.4f} s/step (prepare {result['prepare_s']:.1f} s)",
                      flush=True)

    def median(data, mode, key="step_s"):
        return statistics.median(r[key] for r in results[(data, mode)])

    how = "concurrently, over their common window" if args.concurrent else "one after the other"
    print(f"\n{args.steps} steps, batch 8, timed after step {args.warmup}, {how}, median of {args.repeats}")
    print(f"| mode | {SMALL_SET_SIZE} images (s/step) | 2000 images (s/step) | ratio | prepare small / full (s) |")
    print("| --- | --- | --- | --- | --- |")
    ratios = []
    for mode in modes:
        small, full = median("small", mode), median("full", mode)
        ratios.append(small / full)
        print(f"| {mode} | {small:.4f} | {full:.4f} | {small / full:.3f} | "
              f"{median('small', mode, 'prepare_s'):.1f} / {median('full', mode, 'prepare_s'):.1f} |")
    print(" ".join([f"ratio={ratios[0]:.3f}"] + [f"{m}_ratio={r:.3f}" for m, r in zip(modes[1:], ratios[1:])]))


if __name__ == "__main__":
    main()
