"""Reproduce the InfoSAM paper's protocol on the reference benchmark folders, one command per dataset.

The folders are those of the InfoSAM / Conv-LoRA releases (`<root>/train.csv`,
`<root>/test.csv` with `image,label` columns). Recipe (paper, ViT-B teacher and
student, 1024 px): Adam, lr 2e-4, cosine decay to lr/10, batch 4, 10 epochs (road: 20),
training prompts a jittered box or one foreground point (50/50), single-mask output,
mask decoder trained in full, LoRA in the image encoder (`--peft adapter`: the paper's best
rows, a bottleneck Adapter of ratio 0.25 on the MLP of blocks 3-12 of ViT-B, i.e. 0-based
`2-11`, with the encoder's LayerNorms trained). Evaluation: box prompts
(road: 5 points), IoU and Dice averaged over thresholds (0.1, 0.3, 0.5, 0.7, 0.9);
polyp and camouflage add S-measure, E-measure and weighted F.

    python benchmarks/paper.py --dataset polyp --data_root /data/polyp
    python benchmarks/paper.py --dataset road --data_root /data/road_segmentation --baseline   # plain LoRA
    python benchmarks/paper.py --dataset camo --data_root /data/camo_sem_seg --peft adapter   # Adapter + InfoSAM
    accelerate launch benchmarks/paper.py --dataset camo --data_root /data/camo_sem_seg

Prints the command it runs; results land in `<output_dir>/iou_before_after.json` and the
Trainer's `all_results.json`. Evaluation here is at the model's input resolution; for
metrics at the original image size run `examples/evaluate_adapter.py` on the saved adapter.

Where forgetting happens (the comparison of `benchmarks/forgetting.py` on real data, GPU):
training-set sizes x paired seeds for one dataset and one method per command, each run
scored at the original image size on the dataset's test split (box and 1-point prompts) and,
with `--retention_root`, on a general-domain set in the same CSV layout (e.g. a few hundred
COCO or SA-1B images with one mask each: what the base could do before, zero-shot row
included). For a seed every method trains on the same subset (the first N rows of one
permutation of train.csv) in the same order; each run is one JSON file in `--results`
(finished runs are skipped), in forgetting.py's format, so that

    for method in "--baseline" "" "--peft adapter --baseline" "--peft adapter"; do
      python benchmarks/paper.py --dataset polyp --data_root /data/polyp $method \
          --train_images 16 64 256 0 --seeds 0 1 2 3 4 --epochs 50 --retention_root /data/coco-sam-500
    done
    python benchmarks/forgetting.py --report --results outputs/paper-polyp-grid --plots outputs/paper-polyp-grid

gives the regime table, the paired differences and the two plots (`--train_images 0`: the
whole training split; `--epochs` replaces the recipe's 10-20 epochs at every size).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

RECIPES = {
    "leaf": dict(epochs=10, eval_prompt="box", structure=False),
    "road": dict(epochs=20, eval_prompt="points", eval_num_points=5, structure=False),
    "polyp": dict(epochs=10, eval_prompt="box", structure=True),
    "isic2017": dict(epochs=10, eval_prompt="box", structure=False),
    "camo": dict(epochs=10, eval_prompt="box", structure=True),
    "sbu": dict(epochs=10, eval_prompt="box", structure=False),
}

# The paper's Adapter (its best rows): ratio 0.25 on the MLP of every ViT-B block but the first two, GELU,
# encoder LayerNorms trained, mask decoder in full. 0-based block indices of the 12-block ViT-B.
ADAPTER_RECIPE = [
    "--peft_method", "adapter", "--adapter_ratio", "0.25", "--adapter_layers", "2-11",
    "--adapter_placement", "sequential", "--adapter_train_layernorms", "true", "--modules_to_save", "mask_decoder",
]


def recipe_args(
    dataset: str, data_root: str, model: str, output_dir: str, baseline: bool, bf16: bool, peft: str = "lora"
) -> list[str]:
    recipe = RECIPES[dataset]
    args = [
        "--model_name_or_path", model,
        "--dataset_name", data_root,
        "--train_split", "train", "--eval_split", "test",
        "--streaming", "false", "--max_steps", "-1",
        "--num_train_epochs", str(recipe["epochs"]),
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--learning_rate", "2e-4", "--optim", "adamw_torch", "--weight_decay", "0",
        "--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}',
        "--warmup_steps", "0",
        "--box_prompt_probability", "0.5", "--num_points", "1",
        "--eval_prompt", recipe["eval_prompt"], "--eval_num_points", str(recipe.get("eval_num_points", 1)),
        "--structure_measures", str(recipe["structure"]).lower(),
        "--max_eval_samples", "100000",
        "--output_dir", output_dir,
        "--save_strategy", "epoch", "--save_total_limit", "2",
        "--logging_steps", "50", "--report_to", "none",
    ]
    if peft == "adapter":
        args += ADAPTER_RECIPE
    if baseline:
        args += ["--lambda_1", "0", "--lambda_2", "0"]
    if bf16:
        args += ["--bf16", "true"]
    return args


HERE = os.path.dirname(os.path.abspath(__file__))


def write_subset(data_root: str, size: int, seed: int, folder: str) -> str:
    """`folder` with train.csv = the first `size` rows of seed's permutation (0: all) and test.csv, absolute paths."""
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    for split in ("train", "test"):
        with open(os.path.join(data_root, f"{split}.csv"), newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        if split == "train" and size:
            if size > len(rows):
                raise SystemExit(f"error: --train_images {size} exceeds the {len(rows)} rows of {data_root}/train.csv.")
            order = np.random.default_rng(seed).permutation(len(rows))
            rows = [rows[i] for i in sorted(int(i) for i in order[:size])]
        for row in rows:
            for column in ("image", "label"):
                row[column] = os.path.normpath(os.path.join(os.path.abspath(data_root), row[column]))
        with open(os.path.join(folder, f"{split}.csv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return folder


def run_grid(args, extra: list[str], bf16: bool) -> None:
    """--train_images / --seeds / --retention_root: one JSON file per run in benchmarks/forgetting.py's format."""
    import torch
    from train_script import run_train_script  # benchmarks/train_script.py: examples/train.py, one process a run

    from infosam_hf.data import load_segmentation_dataset
    from infosam_hf.evaluation import evaluate_segmentation
    from infosam_hf.loading import load_model_or_base
    from infosam_hf.testing import load_script

    forgetting = load_script(os.path.join(HERE, "forgetting.py"), "forgetting_benchmark")
    method = {("lora", True): "LoRA", ("lora", False): "LoRA + InfoSAM", ("adapter", True): "Adapter",
              ("adapter", False): "Adapter + InfoSAM"}[(args.peft, args.baseline)]
    results = args.results or f"outputs/paper-{args.dataset}-grid"
    settings = {"dataset": args.dataset, "model": args.model, "epochs": args.epochs or RECIPES[args.dataset]["epochs"],
                "retention": os.path.basename(os.path.normpath(args.retention_root or "")) or None}

    def scores(adapter: str, data: str, prefix: str, rows: dict) -> None:
        """The adapter and its base at the original image size (examples/evaluate_adapter.py's protocol)."""
        model, processor = load_model_or_base(adapter, device="cuda" if torch.cuda.is_available() else "cpu")
        dataset = load_segmentation_dataset(data, split="test", streaming=False)
        for prompt, kind in (("box", "box"), ("point", "points")):
            out = evaluate_segmentation(model, processor, dataset, prompt=kind, num_points=1, batch_size=8,
                                        disable_tqdm=True)
            for row, values in out["metrics"].items():  # "zero_shot" and "adapter"
                rows.setdefault(row, {}).update({f"{prefix}/{prompt}/{k}": values[k] for k in ("iou", "dice")})

    with open(os.path.join(args.data_root, "train.csv"), newline="", encoding="utf-8-sig") as f:
        total = sum(1 for _ in csv.DictReader(f))
    for seed in args.seeds:
        for size in [n or total for n in args.train_images]:  # 0: the whole split, recorded as its size
            path = forgetting.cell_path(results, method, size, seed)
            if forgetting.read_cell(path, settings) is not None:
                print(f"done already: {path}")
                continue
            run_dir = os.path.join(results, "runs", f"{forgetting.slug(method)}-n{size}-seed{seed}")
            data = write_subset(args.data_root, size, seed, os.path.join(run_dir, "data"))
            train_args = recipe_args(args.dataset, data, args.model, os.path.join(run_dir, "adapter"), args.baseline,
                                     bf16=bf16, peft=args.peft) + ["--seed", str(seed), "--eval_strategy", "no",
                                                                   "--save_strategy", "no"]
            if args.epochs:
                train_args += ["--num_train_epochs", str(args.epochs)]
            print("examples/train.py " + " ".join(train_args + extra), flush=True)
            run_train_script(train_args + extra)
            rows: dict = {}
            scores(os.path.join(run_dir, "adapter"), data, "spec", rows)
            if args.retention_root:
                scores(os.path.join(run_dir, "adapter"), args.retention_root, "gen", rows)
            common = {"settings": settings, "commit": forgetting.git_commit(), "train_seconds": 0.0, "eval_seconds": 0.0}
            if forgetting.read_cell(forgetting.cell_path(results, forgetting.ZERO_SHOT, 0, 0), settings) is None:
                forgetting.write_cell(forgetting.cell_path(results, forgetting.ZERO_SHOT, 0, 0),
                                      {"method": forgetting.ZERO_SHOT, "size": 0, "seed": 0, "metrics": rows["zero_shot"],
                                       **common})
            forgetting.write_cell(path, {"method": method, "size": size, "seed": seed, "metrics": rows["adapter"],
                                         **common})
    print(f"python benchmarks/forgetting.py --report --results {results} --plots {results}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(RECIPES), required=True)
    parser.add_argument("--data_root", required=True, help="folder with train.csv and test.csv")
    parser.add_argument("--model", default="facebook/sam-vit-base")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--baseline", action="store_true", help="plain PEFT (LoRA or Adapter), no InfoSAM terms")
    parser.add_argument("--peft", choices=["lora", "adapter"], default="lora",
                        help="the student's adapter: LoRA, or the paper's bottleneck Adapter (its best rows)")
    parser.add_argument("--no_bf16", action="store_true")
    parser.add_argument("--print_only", action="store_true", help="print the train.py command and stop")
    grid = parser.add_argument_group("where forgetting happens (benchmarks/forgetting.py's comparison)")
    grid.add_argument("--train_images", type=int, nargs="+", default=None,
                      help="training-set sizes, one run each (a seeded subset of train.csv; 0 = all of it)")
    grid.add_argument("--seeds", type=int, nargs="+", default=None, help="paired seeds (default 0)")
    grid.add_argument("--epochs", type=int, default=None, help="epochs at every size instead of the recipe's")
    grid.add_argument("--retention_root", default=None,
                      help="general-domain set (CSV layout with test.csv) scored after training: retention")
    grid.add_argument("--results", default=None, help="per-run JSON files (default outputs/paper-<dataset>-grid)")
    args, extra = parser.parse_known_args()
    for split in ("train", "test"):
        if not os.path.isfile(os.path.join(args.data_root, f"{split}.csv")):
            raise SystemExit(f"{args.data_root} has no {split}.csv: point --data_root at a reference benchmark folder.")
    import torch

    if args.train_images or args.seeds or args.retention_root:
        args.train_images, args.seeds = args.train_images or [0], args.seeds or [0]
        if args.retention_root and not os.path.isfile(os.path.join(args.retention_root, "test.csv")):
            raise SystemExit(f"{args.retention_root} has no test.csv: --retention_root takes a CSV-layout folder.")
        return run_grid(args, extra, bf16=torch.cuda.is_available() and not args.no_bf16)
    run = ("lora" if args.baseline else "infosam") if args.peft == "lora" else ("adapter" if args.baseline else "adapter-infosam")
    output_dir = args.output_dir or f"outputs/paper-{args.dataset}-{run}"
    train_args = recipe_args(args.dataset, args.data_root, args.model, output_dir, args.baseline,
                             bf16=torch.cuda.is_available() and not args.no_bf16, peft=args.peft) + extra
    print("examples/train.py " + " ".join(train_args), flush=True)
    if args.print_only:
        return
    from train_script import run_train_script  # benchmarks/train_script.py: examples/train.py, one process a run

    run_train_script(train_args)


if __name__ == "__main__":
    sys.exit(main())
