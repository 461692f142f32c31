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
metrics at the original image size run `examples/evaluate.py` on the saved adapter.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    args, extra = parser.parse_known_args()
    for split in ("train", "test"):
        if not os.path.isfile(os.path.join(args.data_root, f"{split}.csv")):
            raise SystemExit(f"{args.data_root} has no {split}.csv: point --data_root at a reference benchmark folder.")
    import torch

    run = ("lora" if args.baseline else "infosam") if args.peft == "lora" else ("adapter" if args.baseline else "adapter-infosam")
    output_dir = args.output_dir or f"outputs/paper-{args.dataset}-{run}"
    train_args = recipe_args(args.dataset, args.data_root, args.model, output_dir, args.baseline,
                             bf16=torch.cuda.is_available() and not args.no_bf16, peft=args.peft) + extra
    print("examples/train.py " + " ".join(train_args), flush=True)
    if args.print_only:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("train", os.path.join(here, "..", "examples", "train.py"))
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train  # dataclasses resolve their module by name
    spec.loader.exec_module(train)
    train.main(train_args)


if __name__ == "__main__":
    sys.exit(main())
