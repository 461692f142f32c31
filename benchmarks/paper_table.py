"""The paper-regime grids in the InfoSAM paper's layout: methods as rows, domains as columns, zero-shot first.

The paper (Table 1) gives one number per (method, data set); `benchmarks/forgetting.py` gives one table per domain with
every size, seed and metric. This reads several of its `--results` folders (one per domain) and prints, at the
largest training-set size that every folder holds complete (all four methods, at least `--min_seeds` paired seeds;
`--sizes` for others):

- per domain, the target task's box IoU (mean over seeds; the paper's metric differs per data set: IoU for leaf
  disease and roads, S-alpha for CAMO and Kvasir, Jaccard for ISIC: here it is IoU everywhere) and, beside it, the
  general domain's box IoU (retention), which the paper does not report;
- InfoSAM's pooled paired effect on both (`benchmarks/pooled_effect.py`), over every folder and every size with
  `--min_seeds` paired seeds, the table's or not: the headline is the whole grid, not one slice of it.

`--write README.md` replaces the block between `<!-- paper-table:begin -->` and `<!-- paper-table:end -->`, so the
README's table is regenerated from the committed result files, never typed.

    python benchmarks/paper_table.py benchmarks/results/paper-regime/{lesions,camouflage}-paper-e20 \\
        benchmarks/results/paper-regime/roads-paper-e40
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forgetting import ZERO_SHOT, write_between_markers  # noqa: E402
from pooled_effect import PAIRS, load_grids, pooled, strata  # noqa: E402

METHODS = ["LoRA", "LoRA + InfoSAM", "Adapter", "Adapter + InfoSAM"]
# What each synthetic domain stands for in the paper's Table 1.
STANDS_FOR = {"lesions": "leaf disease", "roads": "remote-sensing roads", "camouflage": "CAMO / Kvasir",
              "specialised": "-"}
TABLES = [("spec/box/iou", "target"), ("gen/box/iou", "kept")]  # (metric, the column's word)
NAME = "paper-table"


def grid(folder: str, cells: dict, min_seeds: int) -> dict:
    """One folder's domain, model, zero-shot metrics and the sizes at which all four methods have `min_seeds` seeds."""
    settings = next(iter(cells.values()))["settings"]
    zero = next((c["metrics"] for (m, _, _), c in cells.items() if m == ZERO_SHOT), None)
    if zero is None:
        raise SystemExit(f"error: {folder} has no zero-shot run ({ZERO_SHOT.lower()}.json); run the grid again "
                         "with benchmarks/forgetting.py --results on that folder to add it.")
    complete = {}
    for size in sorted({s for (m, s, _) in cells if m != ZERO_SHOT}):
        seeds = set.intersection(*({seed for (m, s, seed) in cells if m == method and s == size}
                                   for method in METHODS))
        if len(seeds) >= min_seeds:
            complete[size] = sorted(seeds)
    return {"folder": folder, "cells": cells, "zero": zero, "complete": complete,
            "domain": settings.get("domain", "specialised").split()[0],
            "model": settings.get("builtin_model", "sam"), "recipe": settings.get("recipe", "steps"),
            "epochs": settings.get("epochs")}


def table(grids: list[dict], size: int) -> list[str]:
    """Markdown rows: methods x (domain target, domain kept) at one size, zero-shot first, the means over domains
    last; a line under it names each domain's recipe."""
    names = [g["domain"] + ("" if g["model"] == "sam" else f" ({g['model']})") for g in grids]
    counts = [len(g["complete"][size]) for g in grids]
    # a grid that has grown to more seeds in one domain says so, rather than the caption naming one count for all
    seeds = (f"{counts[0]} paired seeds" if len(set(counts)) == 1 else "each domain's paired seeds ("
             + ", ".join(f"{name} {n}" for name, n in zip(names, counts)) + ")")
    header = [f"{name}: {word}" for name in [*names, "mean"] for _, word in TABLES]
    lines = [f"**Box IoU at {size} training images**, mean over {seeds}. *target*: the domain's test "
             "split; *kept*: the general domain the base was pre-trained on (retention).", "",
             "| method | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(header)]
    for method in ["Zero-shot", *METHODS]:
        values = []
        for g in grids:
            for key, _ in TABLES:
                if method == "Zero-shot":
                    values.append(g["zero"].get(key))
                else:
                    values.append(statistics.mean(g["cells"][(method, size, s)]["metrics"][key]
                                                  for s in g["complete"][size]))
        for i, _ in enumerate(TABLES):
            column = values[i::len(TABLES)]
            values.append(statistics.mean(column) if all(v is not None for v in column) else None)
        lines.append(f"| {method} | " + " | ".join(f"{v:.3f}" if v is not None else "-" for v in values) + " |")
    recipes = [f"{g['domain']} {g['epochs']:g} epochs" if g["recipe"] == "paper" else f"{g['domain']} steps recipe"
               for g in grids]
    lines += ["", "Stands for: " + ", ".join(f"{g['domain']} = {STANDS_FOR.get(g['domain'], '-')}" for g in grids)
              + "; recipe: " + ", ".join(recipes) + "."]
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="benchmarks/forgetting.py --results folders, one per domain")
    parser.add_argument("--sizes", type=int, nargs="+", help="training-set sizes of the tables (default: the largest "
                        "complete in all folders)")
    parser.add_argument("--min_seeds", type=int, default=5, help="paired seeds a size needs, per method and folder, "
                        "to count as complete (default 5)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the pooled effect")
    parser.add_argument("--write", metavar="FILE", help=f"replace the block between the {NAME} markers of FILE")
    args = parser.parse_args(argv)
    runs = load_grids(args.results)
    grids = [grid(folder, cells, args.min_seeds) for folder, cells in runs]
    common = sorted(set.intersection(*(set(g["complete"]) for g in grids)))
    sizes = args.sizes or common[-1:]
    missing = {g["folder"]: size for size in sizes for g in grids if size not in g["complete"]}
    if not sizes or missing:
        raise SystemExit("error: no training-set size is complete in every folder (all four methods, "
                         f"{args.min_seeds} seeds): " + (", ".join(f"{f} lacks {s}" for f, s in missing.items())
                                                          or "pass --min_seeds lower or run the grids further."))
    lines = []
    for size in sizes:
        lines += table(grids, size) + [""]
    lines += [f"InfoSAM minus its plain partner, pooled over every domain x size with {args.min_seeds}+ paired seeds "
              "(`benchmarks/pooled_effect.py`: equal weight per stratum, 95% stratified paired bootstrap):", ""]
    for key, word in TABLES:
        for treated, partner in PAIRS.items():
            diffs = strata(runs, treated, partner, key, args.min_seeds)
            if not diffs:
                continue
            p = pooled(diffs, args.resamples)
            verdict = ("InfoSAM higher" if p["low"] > 0 else "InfoSAM lower" if p["high"] < 0
                       else "no difference distinguishable from 0")
            lines.append(f"- {word}, {treated} − {partner}: **{p['mean']:+.4f}** [{p['low']:+.4f}, {p['high']:+.4f}], "
                         f"{p['seeds']} seeds: {verdict}; {p['excluding_zero']} of {p['strata']} strata exclude 0 "
                         f"alone (chance: {0.05 * p['strata']:.1f}).")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_between_markers(args.write, text, "What InfoSAM buys you", name=NAME)
    return text


if __name__ == "__main__":
    main()
