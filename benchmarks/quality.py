"""Does InfoSAM help? Zero-shot vs plain LoRA / Adapter vs InfoSAM on the built-in benchmark, over several seeds.

Every fine-tuning run uses the same built-in tiny SAM, the same PEFT method within a pair
(LoRA, or the paper's bottleneck Adapter with `--peft_method adapter`), the same number
of steps and, for a given seed, the same data order and prompts; only the loss
differs. IoU and Dice (threshold-averaged as in the reference evaluation, box prompts)
are measured on the held-out split of the shifted "specialised" domain.

    python benchmarks/quality.py                          # main comparison, 3 seeds
    python benchmarks/quality.py --ablations              # + without L_r, without L_d, frozen relation, lambda sweep
    python benchmarks/quality.py --write BENCHMARKS.md    # also replace the table in BENCHMARKS.md
    python benchmarks/quality.py --methods Adapter        # only the variants whose name contains "Adapter"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"

MAIN_VARIANTS = {
    "LoRA (no distillation)": ["--lambda_1", "0", "--lambda_2", "0"],
    "InfoSAM (λ1=1, λ2=0.5)": [],
    "Adapter (no distillation)": ["--peft_method", "adapter", "--lambda_1", "0", "--lambda_2", "0"],
    "Adapter + InfoSAM (λ1=1, λ2=0.5)": ["--peft_method", "adapter"],
}
ABLATIONS = {
    "InfoSAM without L_r (λ1=0)": ["--lambda_1", "0"],
    "InfoSAM without L_d (λ2=0)": ["--lambda_2", "0"],
    "InfoSAM, relation module frozen": ["--train_relation_module", "false"],
    "InfoSAM λ1=0.5, λ2=0.25": ["--lambda_1", "0.5", "--lambda_2", "0.25"],
    "InfoSAM λ1=1, λ2=1": ["--lambda_2", "1.0"],
    "InfoSAM λ1=2, λ2=1": ["--lambda_1", "2.0", "--lambda_2", "1.0"],
}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def select_variants(variants: dict[str, list[str]], words: list[str]) -> dict[str, list[str]]:
    """A word that is a whole variant name picks that variant alone ("InfoSAM (λ1=1, λ2=0.5)" without
    "Adapter + InfoSAM (λ1=1, λ2=0.5)"); any other word picks every variant whose name contains it."""
    return {name: flags for name, flags in variants.items()
            if any(word == name or (word not in variants and word in name) for word in words)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--ablation_seeds", type=int, nargs="+", default=None, help="default: --seeds")
    parser.add_argument("--write", metavar="BENCHMARKS_MD", help="replace the quality table in this file")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="run only the variants whose name contains one of these words (e.g. LoRA Adapter), "
                             "or is one of them exactly")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for examples/train.py")
    args = parser.parse_args()

    from train_script import run_train_script  # benchmarks/train_script.py: examples/train.py, one process a run

    variants = dict(MAIN_VARIANTS)
    if args.ablations:
        variants.update(ABLATIONS)
    if args.methods:
        variants = select_variants(variants, args.methods)
    results: dict[str, dict[str, list[float]]] = {"Zero-shot (pre-trained tiny SAM)": {"iou": [], "dice": []}}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in variants.items():
            seeds = args.seeds if name in MAIN_VARIANTS else (args.ablation_seeds or args.seeds)
            results[name] = {"iou": [], "dice": []}
            for seed in seeds:
                out = os.path.join(tmp, f"{len(results)}-{seed}")
                summary = run_train_script(
                    ["--output_dir", out, "--seed", str(seed), "--max_steps", str(args.max_steps),
                     "--disable_tqdm", "true", *flags, *args.extra]
                )
                results[name]["iou"].append(summary["iou"])
                results[name]["dice"].append(summary["dice"])
                if seed == args.seeds[0] and name in MAIN_VARIANTS and not results["Zero-shot (pre-trained tiny SAM)"]["iou"]:
                    results["Zero-shot (pre-trained tiny SAM)"]["iou"].append(summary["zero_shot_iou"])
                    results["Zero-shot (pre-trained tiny SAM)"]["dice"].append(summary["zero_shot_dice"])
                print(f"[{time.time() - start:6.0f}s] {name} seed {seed}: IoU {summary['iou']:.4f}", flush=True)

    command = "python benchmarks/quality.py" + (" --ablations" if args.ablations else "")
    command += f" --methods {' '.join(args.methods)}" if args.methods else ""
    lines = [
        f"Command: `{command}` ({len(args.seeds)} seeds: {args.seeds}, {args.max_steps} steps each, "
        f"{time.time() - start:.0f} s in all on this machine).",
        "",
        "| method | seeds | IoU (mean ± std) | Dice (mean ± std) |",
        "| --- | --- | --- | --- |",
    ]
    for name, values in results.items():
        lines.append(f"| {name} | {len(values['iou'])} | {mean_std(values['iou'])} | {mean_std(values['dice'])} |")
    table = "\n".join(lines)
    print(table)
    print(json.dumps(results))
    if args.write:
        text = open(args.write, encoding="utf-8").read() if os.path.exists(args.write) else ""
        block = f"{BEGIN}\n{table}\n{END}"
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n## Quality\n\n" + block + "\n"
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
