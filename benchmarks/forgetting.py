"""Does InfoSAM help where forgetting happens? Training-set size x method x paired seeds, with retention.

The built-in tiny SAM (pre-trained on the synthetic "general" domain) is fine-tuned on
subsets of the shifted "specialised" domain of 16 to 2000 images, for the same number of
optimiser steps at every size (so the small sets are seen for many epochs: 50 epochs of
16 images at the default 100 steps of batch 8, where plain fine-tuning over-fits, down
to less than one pass over 2000 images, the old short regime). Each run is scored on

- the specialised test split (IoU and Dice averaged over logit thresholds, as the
  reference evaluation; box and 1-point prompts), what fine-tuning is for;
- **retention**: the same metrics on the general domain's test split, what the base could
  do before, and prompt following on the general domain's multi-object images (IoU per
  object and the confusion rate of `infosam_hf.prompt_following`).

Seeds are paired: for a seed, every method trains on the same subset (the first `size`
images of one permutation of the 2000, so the subsets are nested), in the same order, with
the same prompts; the methods differ only in the PEFT method and the loss. Each run
(method, size, seed) is written as one JSON file under `--results`, and a cell whose file
exists is skipped: an interrupted grid resumes, and a grid can be split over several
invocations (`--sizes`, `--methods`, `--seeds`). `--report` only reads the files.

    python benchmarks/forgetting.py                                   # the grid (see BENCHMARKS.md for its minutes)
    # the same grid on 2 cores in about half the time: two invocations, one thread each, one folder
    python benchmarks/forgetting.py --threads 1 --methods LoRA "LoRA + InfoSAM" &
    python benchmarks/forgetting.py --threads 1 --methods Adapter "Adapter + InfoSAM"; wait
    python benchmarks/forgetting.py --ablations --sizes 16            # InfoSAM's ablations at one size
    python benchmarks/forgetting.py --report --write BENCHMARKS.md    # tables + plots from the JSON files
    python benchmarks/forgetting.py --quick                           # smoke run (CI)

The fine-tuning domain is `--domain` (default "specialised"; the paper-regime domains "lesions",
"roads", "camouflage" of `infosam_hf.synthetic` are where the base fails zero-shot), and the
recipe `--recipe`: "steps" (the default above: batch 8, lr 1e-3, `--steps` optimiser steps at
every size) or "paper" (the InfoSAM authors' batch 4, lr 2e-4, `--epochs` passes over the subset,
cosine). `--validation` also scores each run on the domain's validation split (the test split of
its seed-1 data set: same generator, other images; metrics `val/box/iou`, `val/point/iou`), to
pick `--epochs` on it, blind to the test split:

    python benchmarks/forgetting.py --domain lesions --recipe paper --epochs 10 --sizes 256 --methods LoRA \
        --validation --results outputs/select-lesions-e10
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEGIN, END = "<!-- forgetting:begin -->", "<!-- forgetting:end -->"
ZERO_SHOT = "Zero-shot"

# Method name -> examples/train.py flags. A name's InfoSAM partner is compared with it seed by seed.
METHODS = {
    "LoRA": ["--lambda_1", "0", "--lambda_2", "0"],
    "LoRA + InfoSAM": [],
    "Adapter": ["--peft_method", "adapter", "--lambda_1", "0", "--lambda_2", "0"],
    "Adapter + InfoSAM": ["--peft_method", "adapter"],
}
ABLATIONS = {  # LoRA + InfoSAM with one thing changed; each is compared with plain LoRA
    "InfoSAM without L_r (λ1=0)": ["--lambda_1", "0"],
    "InfoSAM without L_d (λ2=0)": ["--lambda_2", "0"],
    "InfoSAM, relation module frozen": ["--train_relation_module", "false"],
    "InfoSAM λ1=0.5, λ2=0.25": ["--lambda_1", "0.5", "--lambda_2", "0.25"],
    "InfoSAM λ1=2, λ2=1": ["--lambda_1", "2.0", "--lambda_2", "1.0"],
    "InfoSAM λ1=4, λ2=2": ["--lambda_1", "4.0", "--lambda_2", "2.0"],
}
PARTNER = {"LoRA + InfoSAM": "LoRA", "Adapter + InfoSAM": "Adapter", **{name: "LoRA" for name in ABLATIONS}}

FULL = dict(sizes=[16, 64, 256], seeds=[0, 1, 2, 3, 4], steps=100, eval_images=32, multi_images=24)
QUICK = dict(sizes=[16], seeds=[0, 1], steps=2, eval_images=4, multi_images=3, methods=["LoRA", "LoRA + InfoSAM"])
DEFAULT_DOMAIN = "specialised"
# The paper's recipe (batch 4, lr 2e-4, epochs over the training subset, cosine), scaled to the CPU by the subset.
PAPER_RECIPE = dict(batch_size=4, learning_rate=2e-4, epochs=10)
VALIDATION_SEED, VALIDATION_IMAGES = 1, 200  # the validation split: the test split of the seed-1 data set

# Columns of the regime table: (metric key, header). "spec" = specialised test split, "gen" = general domain.
MAIN_METRICS = [
    ("spec/box/iou", "specialised IoU, box"),
    ("spec/point/iou", "specialised IoU, 1 point"),
    ("spec/box/dice", "specialised Dice, box"),
    ("gen/box/iou", "general IoU, box (retention)"),
    ("gen/point/iou", "general IoU, 1 point (retention)"),
    ("multi/box/iou_per_object", "general IoU per object, box (multi-object)"),
    ("multi/box/confusion_rate", "general confusion rate, box"),
]
DIFF_METRICS = ["spec/box/iou", "spec/point/iou", "gen/box/iou", "multi/box/iou_per_object", "multi/box/confusion_rate"]


# ---------------------------------------------------------------------------------------------------- statistics
def t_quantile_975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_difference(treated: list[float], partner: list[float]) -> dict[str, float]:
    """Mean of the per-seed differences and its 95% t-interval (n - 1 degrees of freedom)."""
    diffs = [a - b for a, b in zip(treated, partner)]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": len(diffs), "excludes_zero": False}
    half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(diffs),
            "excludes_zero": bool(mean - half > 0 or mean + half < 0)}


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"  # not measured (e.g. no multi-object retention set on a paper data set)
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


# ---------------------------------------------------------------------------------------------------- results files
def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cell_path(results: str, method: str, size: int, seed: int) -> str:
    if method == ZERO_SHOT:
        return os.path.join(results, "zero-shot.json")
    return os.path.join(results, slug(method), f"n{size}-seed{seed}.json")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def read_cell(path: str, settings: dict | None) -> dict | None:
    """The stored run, None if there is none; a run made with other settings is refused, never overwritten."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        cell = json.load(f)
    if settings is not None and cell.get("settings") != settings:
        differs = sorted(k for k in set(settings) | set(cell.get("settings", {}))
                         if settings.get(k) != cell.get("settings", {}).get(k))
        raise SystemExit(f"error: {path} was made with other settings ({', '.join(differs)}); pass another "
                         "--results folder, or delete that folder to redo the grid.")
    return cell


def write_cell(path: str, cell: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # two invocations sharing a folder may both write the zero-shot run
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(cell, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)  # a run killed while writing leaves no half file behind


def load_results(results: str) -> dict[tuple[str, int, int], dict]:
    """Every stored cell, keyed (method, size, seed); all of them must share one set of settings."""
    cells, settings = {}, None
    paths = glob.glob(os.path.join(results, "zero-shot.json")) + glob.glob(os.path.join(results, "*", "n*-seed*.json"))
    for path in sorted(paths):  # only cell files: paper.py keeps its runs' own JSON files under <results>/runs
        with open(path, encoding="utf-8") as f:
            cell = json.load(f)
        if settings is not None and cell["settings"] != settings:
            raise SystemExit(f"error: {path} was made with other settings than the rest of {results}.")
        settings = cell["settings"]
        cells[(cell["method"], cell["size"], cell["seed"])] = cell
    return cells


# ---------------------------------------------------------------------------------------------------- one run
def recipe_flags(settings: dict) -> list[str]:
    """examples/train.py flags of the run's recipe, over its built-in defaults (batch 8, lr 1e-3, cosine)."""
    if settings.get("recipe", "steps") == "steps":
        return ["--max_steps", str(max(settings["steps"], 1))]
    return ["--max_steps", "-1", "--num_train_epochs", str(settings["epochs"]),
            "--per_device_train_batch_size", str(settings["batch_size"]),
            "--learning_rate", str(settings["learning_rate"])]


def validation_dataset_path(domain: str) -> str:
    """The domain's validation images: the test split of its seed-`VALIDATION_SEED` data set, never trained on."""
    from infosam_hf.builtin import BUILTIN_IMAGE_SIZE
    from infosam_hf.synthetic import ensure_synthetic_dataset

    return str(ensure_synthetic_dataset(domain, num_train=0, num_test=VALIDATION_IMAGES,
                                        image_size=BUILTIN_IMAGE_SIZE, seed=VALIDATION_SEED))


class Data:
    """The data every run shares, prepared once: the domain's training set and the three test sets.

    `validation`: the domain's validation split too (for choosing a recipe), else `val` is None."""

    def __init__(self, preprocessor, eval_images: int, multi_images: int, domain: str = DEFAULT_DOMAIN,
                 validation: bool = False):
        from infosam_hf.builtin import builtin_dataset_path
        from infosam_hf.data import (
            load_segmentation_dataset,
            prepare_cached_dataset,
            prepare_dataset,
            prepare_instance_dataset,
        )
        from infosam_hf.synthetic import MAX_OBJECTS

        def test_split(domain: str, count: int, max_objects: int = 1, path: str | None = None):
            raw = load_segmentation_dataset(path or builtin_dataset_path(domain, max_objects=max_objects),
                                            split="test", streaming=False)
            return raw.select(range(min(count, len(raw))))

        self._train, self._load_train = None, lambda: prepare_cached_dataset(builtin_dataset_path(domain),
                                                                            preprocessor, split="train")
        # scored at each image's own size, as examples/train.py and examples/evaluate_adapter.py score
        self.spec = prepare_dataset(test_split(domain, eval_images), preprocessor, keep_original_mask=True)
        self.val = None
        if validation:
            own = test_split(domain, eval_images, path=validation_dataset_path(domain))
            self.val = prepare_dataset(own, preprocessor, keep_original_mask=True)
        self.gen = prepare_dataset(test_split("general", eval_images), preprocessor, keep_original_mask=True)
        multi = prepare_instance_dataset(test_split("general", multi_images, MAX_OBJECTS), preprocessor, "ids")
        self.multi = [row for row in (multi[i] for i in range(len(multi))) if row.get("pixel_values") is not None]

    @property
    def train(self):
        """The training set, prepared on first use (a zero-shot run never needs it)."""
        if self._train is None:
            self._train = self._load_train()
        return self._train

    def subset(self, size: int, seed: int):
        """The first `size` images of seed's permutation: the same subset for every method, nested over sizes."""
        if size > len(self.train):
            raise SystemExit(f"error: --sizes {size} exceeds the {len(self.train)} training images.")
        return self.train.select(self.subset_indices(size, seed))

    def subset_indices(self, size: int, seed: int) -> list[int]:
        import numpy as np

        order = np.random.default_rng(seed).permutation(len(self.train))
        return sorted(int(i) for i in order[:size])

    def subset_fingerprint(self, size: int, seed: int) -> str:
        """Recorded with each run, so that the pairing of methods over a seed can be checked from the files."""
        return hashlib.sha256(json.dumps(self.subset_indices(size, seed)).encode()).hexdigest()[:16]


def evaluate_run(trainer, data: Data) -> dict[str, float]:
    from infosam_hf.data import PromptSampler, SamSegmentationCollator
    from infosam_hf.prompt_following import evaluate_prompt_following

    metrics = {}
    for prompt, kind in (("box", "box"), ("point", "points")):
        sampler = PromptSampler(box_probability=1.0 if prompt == "box" else 0.0, box_noise=0.0, num_points=1, seed=0)
        trainer.eval_data_collator = SamSegmentationCollator(sampler, prompt_type=kind)
        for domain, dataset in (("spec", data.spec), ("gen", data.gen), ("val", data.val)):
            if dataset is None:
                continue
            result = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="m")
            metrics[f"{domain}/{prompt}/iou"] = result["m_iou"]
            metrics[f"{domain}/{prompt}/dice"] = result["m_dice"]
        following = evaluate_prompt_following(trainer.model, data.multi, prompt=prompt)
        metrics[f"multi/{prompt}/iou_per_object"] = following["iou_per_object"]
        metrics[f"multi/{prompt}/confusion_rate"] = following["confusion_rate"]
    return metrics


def run_cell(data: Data, processor, method_flags: list[str] | None, size: int, seed: int, settings: dict) -> dict:
    """Train one (method, size, seed) cell, or only evaluate the base (`method_flags=None`), and score it."""
    from transformers import HfArgumentParser, PrinterCallback

    from infosam_hf import InfoSAMConfig, InfoSAMTrainer, InfoSAMTrainingArguments, PeftArguments
    from infosam_hf.builtin import BUILTIN_MODELS
    from infosam_hf.data import PromptSampler, SamSegmentationCollator
    from infosam_hf.metrics import build_compute_metrics
    from infosam_hf.models import load_sam_model
    from infosam_hf.script_arguments import BUILTIN_DEFAULTS

    with tempfile.TemporaryDirectory() as out:
        parser = HfArgumentParser((InfoSAMConfig, PeftArguments, InfoSAMTrainingArguments))
        infosam_config, peft_args, args = parser.parse_args_into_dataclasses(
            args=BUILTIN_DEFAULTS + [
                "--output_dir", out, "--seed", str(seed), *recipe_flags(settings),
                "--disable_tqdm", "true", "--per_device_eval_batch_size", "16",
                *(METHODS["LoRA"] if method_flags is None else method_flags),  # the base alone: LoRA, untrained
            ]
        )
        sampler = PromptSampler(
            box_probability=infosam_config.box_prompt_probability, num_points=infosam_config.num_points,
            box_noise=infosam_config.box_noise, max_box_noise=infosam_config.max_box_noise,
            box_jitter=infosam_config.box_jitter, seed=seed,
        )
        subset = data.subset(size, seed) if method_flags is not None else None
        trainer = InfoSAMTrainer(
            model=load_sam_model(BUILTIN_MODELS[settings.get("builtin_model", "sam")]), args=args,
            infosam_config=infosam_config, peft_config=peft_args,
            train_dataset=subset,
            data_collator=SamSegmentationCollator(sampler), processing_class=processor,
            compute_metrics=build_compute_metrics(),
        )
        trainer.remove_callback(PrinterCallback)  # one line per run is printed instead of every evaluation's dict
        start, cpu_start = time.perf_counter(), time.process_time()
        train_loss = None
        if method_flags is not None:
            train_loss = trainer.train().training_loss
        trained = time.perf_counter()
        metrics = evaluate_run(trainer, data)
        return {"metrics": metrics, "train_loss": train_loss, "optimizer_steps": trainer.state.global_step,
                "train_seconds": trained - start,
                "eval_seconds": time.perf_counter() - trained, "cpu_seconds": time.process_time() - cpu_start,
                "subset": data.subset_fingerprint(size, seed) if subset is not None else None}


# ---------------------------------------------------------------------------------------------------- the report
def shown_settings(settings: dict) -> list[tuple[str, str]]:
    """The settings as the report prints them: only the weights' hash is shortened (a domain such as
    "camouflage v1" must stay whole)."""
    return [(k, str(v)[:12] if k.endswith("sha256") else str(v)) for k, v in settings.items()]


def report(cells: dict[tuple[str, int, int], dict], command: str | None = None) -> tuple[str, dict]:
    """The regime table and the paired differences (markdown), and the aggregated numbers the plots use."""
    zero = next((c for (m, _, _), c in cells.items() if m == ZERO_SHOT), None)
    methods = [m for m in [*METHODS, *ABLATIONS] if any(key[0] == m for key in cells)]
    sizes = sorted({size for (m, size, _) in cells if m != ZERO_SHOT})
    settings = next(iter(cells.values()))["settings"]
    domain = settings.get("domain", DEFAULT_DOMAIN).split()[0]
    columns = list(MAIN_METRICS)
    if any("val/box/iou" in c["metrics"] for c in cells.values()):  # --validation: what --epochs is chosen on
        columns.append(("val/box/iou", "specialised validation IoU, box"))
    headers = {k: h.replace("specialised", domain) for k, h in columns}
    lines = []
    if command:
        lines += [f"Command: `{command}`", ""]
    commits = sorted({c["commit"] for c in cells.values()})
    minutes = sum(c["train_seconds"] + c["eval_seconds"] for c in cells.values()) / 60
    lines += [
        f"{len(cells)} runs, {minutes:.1f} min of run time in all (sum over runs), commit(s) {', '.join(commits)}; "
        f"settings: {', '.join(f'{k} {shown}' for k, shown in shown_settings(settings))}.",
        "",
        "| train images | method | seeds | " + " | ".join(headers[k] for k, _ in columns) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    table: dict = {"sizes": sizes, "zero_shot": zero["metrics"] if zero else None, "methods": {}, "domain": domain,
                   "recipe": settings.get("recipe", "steps")}
    if zero:
        lines.append("| 0 | Zero-shot (pre-trained) | - | " +
                     " | ".join(mean_std([zero["metrics"].get(k)]) for k, _ in columns) + " |")
    for size in sizes:
        for method in methods:
            runs = sorted((seed, c) for (m, s, seed), c in cells.items() if m == method and s == size)
            if not runs:
                continue
            values = {k: [c["metrics"].get(k) for _, c in runs] for k, _ in columns}
            table["methods"].setdefault(method, {})[size] = values
            lines.append(f"| {size} | {method} | {len(runs)} | " +
                         " | ".join(mean_std(values[k]) for k, _ in columns) + " |")
    lines += [
        "",
        "Paired differences, InfoSAM variant minus its plain partner over the same seeds: mean [95% t-interval]; "
        "**bold** where the interval excludes 0. For the confusion rate lower is better.",
        "",
        "| train images | comparison | seeds | " + " | ".join(f"Δ {headers[k]}" for k in DIFF_METRICS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in DIFF_METRICS) + " |",
    ]
    table["differences"] = {}
    for size in sizes:
        for method in methods:
            partner = PARTNER.get(method)
            if partner is None:
                continue
            seeds = sorted(seed for (m, s, seed) in cells if m == method and s == size and (partner, s, seed) in cells)
            if not seeds:
                continue
            row = []
            for key in DIFF_METRICS:
                if any(cells[(m, size, s)]["metrics"].get(key) is None for m in (method, partner) for s in seeds):
                    row.append("-")
                    continue
                d = paired_difference([cells[(method, size, s)]["metrics"][key] for s in seeds],
                                      [cells[(partner, size, s)]["metrics"][key] for s in seeds])
                table["differences"][(method, size, key)] = d
                text = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                row.append(f"**{text}**" if d["excludes_zero"] else text)
            lines.append(f"| {size} | {method} − {partner} | {len(seeds)} | " + " | ".join(row) + " |")
    return "\n".join(lines), table


def plot(table: dict, folder: str, prefix: str = "forgetting") -> list[str]:
    """IoU vs training-set size per method, and retention vs specialised IoU; PNG files, their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return math.nan, 0.0  # not measured: matplotlib leaves the point out
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    os.makedirs(folder, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    domain = table.get("domain", DEFAULT_DOMAIN)
    for ax, key, title in ((axes[0], "spec/box/iou", f"{domain} test, box prompts"),
                           (axes[1], "gen/box/iou", "general domain (retention), box prompts")):
        for i, (method, per_size) in enumerate(table["methods"].items()):
            sizes = sorted(per_size)
            means, stds = zip(*(stats(per_size[s][key]) for s in sizes))
            shift = 1.04 ** (i - (len(table["methods"]) - 1) / 2)  # side by side, so the error bars stay apart
            ax.errorbar([s * shift for s in sizes], means, yerr=stds, marker="o", capsize=3, label=method)
        if table["zero_shot"] and table["zero_shot"].get(key) is not None:
            ax.axhline(table["zero_shot"][key], color="grey", linestyle="--", label="zero-shot")
        ax.set_xscale("log")
        ax.set_xticks(table["sizes"], [str(s) for s in table["sizes"]])
        ax.set_xticks([], minor=True)  # the log axis' own minor labels (2x10^1, ...) overprint ours
        ax.set_xlabel("training images (" + ("same number of epochs" if table.get("recipe") == "paper"
                                             else "same number of steps") + " at every size)")
        ax.set_ylabel("IoU (mean ± std over seeds)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(folder, f"{prefix}-iou-vs-size.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for method, per_size in table["methods"].items():
        sizes = sorted(per_size)
        xs, xe = zip(*(stats(per_size[s]["spec/box/iou"]) for s in sizes))
        ys, ye = zip(*(stats(per_size[s]["gen/box/iou"]) for s in sizes))
        line = ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker="o", capsize=2, label=method)
        for x, y, s in zip(xs, ys, sizes):
            ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line[0].get_color())
    if table["zero_shot"] and table["zero_shot"].get("gen/box/iou") is not None:
        ax.plot(table["zero_shot"]["spec/box/iou"], table["zero_shot"]["gen/box/iou"], "k*", markersize=12,
                label="zero-shot")
    ax.set_xlabel(f"{domain} IoU, box (what fine-tuning is for)")
    ax.set_ylabel("general IoU, box (retention)")
    ax.set_title("Trade-off (labels: training images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(folder, f"{prefix}-tradeoff.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_between_markers(path: str, block: str, heading: str, name: str = "forgetting") -> None:
    """Replace the block between `<!-- name:begin -->` and its end marker, or append it under `heading`."""
    begin, end = (BEGIN, END) if name == "forgetting" else (f"<!-- {name}:begin -->", f"<!-- {name}:end -->")
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    block = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help=f"training-set sizes (default {FULL['sizes']})")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"paired seeds (default {FULL['seeds']})")
    parser.add_argument("--steps", type=int, help=f"optimiser steps per run, batch 8 (default {FULL['steps']})")
    parser.add_argument("--eval_images", type=int, help="single-object test images per domain "
                        f"(default {FULL['eval_images']})")
    parser.add_argument("--multi_images", type=int, help="multi-object general test images for prompt following "
                        f"(default {FULL['multi_images']})")
    parser.add_argument("--methods", nargs="+", help="run only these methods (names as in the table, e.g. 'LoRA')")
    parser.add_argument("--ablations", action="store_true", help="run InfoSAM's ablations instead of the main methods")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}, unless set explicitly")
    parser.add_argument("--results", help="folder of the per-run JSON files (default outputs/forgetting[-quick])")
    parser.add_argument("--report", action="store_true", help="run nothing: tables (and plots) from --results")
    parser.add_argument("--write", metavar="BENCHMARKS_MD", help="replace the table between the forgetting markers")
    parser.add_argument("--plots", metavar="FOLDER", help="write the PNG plots here (default: beside --write)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN, help="the synthetic domain to fine-tune on and score "
                        f"(default {DEFAULT_DOMAIN}; paper regime: lesions, roads, camouflage)")
    parser.add_argument("--recipe", choices=["steps", "paper"], default="steps",
                        help="steps: batch 8, lr 1e-3, --steps steps at every size; paper: batch "
                        f"{PAPER_RECIPE['batch_size']}, lr {PAPER_RECIPE['learning_rate']}, --epochs epochs")
    parser.add_argument("--epochs", type=float, help="passes over the training subset with --recipe paper "
                        f"(default {PAPER_RECIPE['epochs']})")
    parser.add_argument("--validation", action="store_true",
                        help="also score on the domain's validation split (val/* metrics, to pick --epochs)")
    parser.add_argument("--builtin_model", choices=["sam", "sam2"], default="sam",
                        help="the built-in model to fine-tune, as examples/train.py --builtin_model (default sam)")
    args = parser.parse_args(argv)
    from infosam_hf.synthetic import DOMAINS, _canonical_domain

    try:
        args.domain = _canonical_domain(args.domain)
    except ValueError:
        parser.error(f"--domain {args.domain!r} is not a synthetic domain; use one of {', '.join(DOMAINS)}.")
    if args.epochs is not None and args.recipe != "paper":
        parser.error("--epochs belongs to --recipe paper (the steps recipe counts --steps).")
    if args.epochs is not None and args.epochs <= 0:
        parser.error(f"--epochs must be positive, got {args.epochs}.")
    grid = QUICK if args.quick else FULL
    for key, value in grid.items():  # an explicit flag wins over --quick
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.recipe == "paper" and args.epochs is None:
        args.epochs = 1 if args.quick else PAPER_RECIPE["epochs"]
    name = grid_name(args.domain, args.recipe, args.epochs, args.validation, args.builtin_model)
    results = args.results or os.path.join("outputs", name + ("-quick" if args.quick else ""))

    if not args.report:
        run_grid(args, results)
    cells = load_results(results)
    if not cells:
        raise SystemExit(f"error: no results in {results}.")
    command = "python benchmarks/forgetting.py" + (" --quick" if args.quick else "")
    text, table = report(cells, command=None)
    print(text, flush=True)
    settings = next(iter(cells.values()))["settings"]  # the markers and plots are named by what the cells hold
    name = grid_name(settings.get("domain", DEFAULT_DOMAIN).split()[0], settings.get("recipe", "steps"),
                     settings.get("epochs"), "validation" in settings, settings.get("builtin_model", "sam"))
    plots = []
    folder = args.plots or (os.path.dirname(os.path.abspath(args.write)) if args.write else None)
    if folder:
        try:
            plots = plot(table, folder, prefix=name)
        except ImportError:
            print("matplotlib is not installed (pip install 'infosam-hf[bench]'): no plots.", flush=True)
    if args.write:
        block = text + "".join(f"\n\n![{os.path.basename(p)}]({os.path.relpath(p, os.path.dirname(os.path.abspath(args.write)))})"
                               for p in plots)
        heading = "Where forgetting happens (`benchmarks/forgetting.py`)" if name == "forgetting" else (
            f"Forgetting grid: {name} (`benchmarks/forgetting.py`)")
        write_between_markers(args.write, block, heading, name=name)
    print(f"plots: {' '.join(plots) or 'none'}; results: {results} ({len(cells)} runs); {command}", flush=True)
    return {"cells": cells, "table": table, "plots": plots, "text": text}


def grid_name(domain: str, recipe: str, epochs: float | None, validation: bool, builtin_model: str = "sam") -> str:
    """"forgetting" for the first edition's grid, else e.g. "forgetting-lesions-paper-e10": folder, markers, plots."""
    return ("forgetting" + ("" if builtin_model == "sam" else f"-{builtin_model}")
            + ("" if domain == DEFAULT_DOMAIN else f"-{domain}")
            + ("" if recipe == "steps" else f"-paper-e{epochs:g}") + ("-validation" if validation else ""))


def run_settings(args, model_sha256: str) -> dict:
    """What a run's numbers depend on besides (method, size, seed); cells of other settings never mix.

    The default domain and recipe keep the keys of the first edition, so its results folders stay readable."""
    settings = {"eval_images": args.eval_images, "multi_images": args.multi_images, "model_sha256": model_sha256}
    if args.recipe == "steps":
        settings = {"steps": args.steps, **settings}
    else:
        settings = {"recipe": "paper", "epochs": args.epochs, "batch_size": PAPER_RECIPE["batch_size"],
                    "learning_rate": PAPER_RECIPE["learning_rate"], **settings}
    if args.domain != DEFAULT_DOMAIN:
        from infosam_hf.synthetic import DOMAIN_VERSIONS

        settings["domain"] = f"{args.domain} v{DOMAIN_VERSIONS.get(args.domain, 0)}"
    if args.validation:
        settings["validation"] = f"seed-{VALIDATION_SEED} test split"
    if args.builtin_model != "sam":  # absent for SAM, so the folders of the SAM grids stay readable
        settings["builtin_model"] = args.builtin_model
    return settings


def run_grid(args, results: str) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    from infosam_hf.builtin import BUILTIN_MODELS
    from infosam_hf.loading import load_processor
    from infosam_hf.models import load_sam_model

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    methods = dict(ABLATIONS if args.ablations else METHODS)
    if args.methods:
        unknown = [m for m in args.methods if m not in {**METHODS, **ABLATIONS}]
        if unknown:
            raise SystemExit(f"error: unknown --methods {unknown}; choose from {list({**METHODS, **ABLATIONS})}.")
        methods = {m: {**METHODS, **ABLATIONS}[m] for m in args.methods}
    model_path = BUILTIN_MODELS[args.builtin_model]
    settings = run_settings(args, file_sha256(os.path.join(model_path, "model.safetensors")))
    # seed by seed: a grid stopped early still holds complete pairs of every size for the seeds it finished
    todo = [(ZERO_SHOT, 0, 0)] + [(m, size, seed) for seed in args.seeds for size in args.sizes for m in methods]
    todo = [cell for cell in todo if read_cell(cell_path(results, *cell), settings) is None]
    print(f"{len(todo)} run(s) to do in {results} (finished ones are kept and skipped)", flush=True)
    if not todo:
        return
    processor = load_processor(None, model_path, load_sam_model(model_path))
    from infosam_hf.data import SamSegmentationPreprocessor

    data = Data(SamSegmentationPreprocessor.from_processor(processor), args.eval_images, args.multi_images,
                domain=args.domain, validation=args.validation)
    start = time.time()
    for i, (method, size, seed) in enumerate(todo):
        flags = None if method == ZERO_SHOT else methods[method]
        result = run_cell(data, processor, flags, size, seed, settings)
        epochs = args.epochs if args.recipe == "paper" else args.steps * 8 / size if size else 0
        cell = {"method": method, "size": size, "seed": seed, "flags": flags, "settings": settings,
                "epochs": epochs if flags is not None else 0, "commit": git_commit(), **result}
        write_cell(cell_path(results, method, size, seed), cell)
        m = result["metrics"]
        print(f"[{time.time() - start:6.0f}s {i + 1}/{len(todo)}] {method} n={size} seed={seed}: "
              f"spec IoU {m['spec/box/iou']:.3f}, general IoU {m['gen/box/iou']:.3f}, "
              + (f"validation IoU {m['val/box/iou']:.3f}, " if "val/box/iou" in m else "") +
              f"confusion {m['multi/box/confusion_rate']:.3f} ({result['train_seconds']:.0f}+"
              f"{result['eval_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
