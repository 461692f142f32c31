"""InfoSAM's paired effect pooled over every domain x training-set size x seed of `benchmarks/forgetting.py` grids.

One interval per (domain, size) cell is many comparisons: with 20 of them, one excludes 0 by chance alone. This
reads the per-run JSON files of several grids (one `--results` folder per domain and recipe) and prints, for each
InfoSAM variant against its plain partner (LoRA + InfoSAM - LoRA, Adapter + InfoSAM - Adapter) and each metric:

- the pooled effect: the mean over (domain, size) strata of the mean paired difference over seeds (each stratum
  weighs the same, however many seeds it has), with a 95% interval from a stratified paired bootstrap (seeds resampled
  with replacement within each stratum, 10,000 resamples, fixed generator seed: the same files give the same output);
- how many strata's own 95% t-intervals exclude 0, beside how many chance alone would give (5% of the strata).

    python benchmarks/pooled_effect.py outputs/grid-lesions-paper-e20 outputs/grid-camouflage-paper-e20

`--write BENCHMARKS.md --name pooled-sam` replaces the table between `<!-- pooled-sam:begin -->` and its end marker
(appended under a heading if the file has none), so a document's pooled tables are regenerated, never re-typed.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forgetting import (  # noqa: E402  (the grid's own files, statistics and marker writer)
    load_results,
    paired_difference,
    write_between_markers,
)

PAIRS = {"LoRA + InfoSAM": "LoRA", "Adapter + InfoSAM": "Adapter"}
METRICS = [  # (key in a cell's metrics, header, True where higher is better)
    ("spec/box/iou", "target IoU, box", True),
    ("spec/point/iou", "target IoU, 1 point", True),
    ("gen/box/iou", "general IoU, box (retention)", True),
    ("multi/box/iou_per_object", "general IoU per object", True),
    ("multi/box/confusion_rate", "general confusion rate", False),
]


def load_grids(folders: list[str]) -> list[tuple[str, dict]]:
    """(folder, its runs) for each folder as given (a folder given twice stays twice, for `strata` to refuse), read
    once with `forgetting.load_results`; a folder without runs stops with its name."""
    grids = [(folder, load_results(folder)) for folder in folders]
    for folder, cells in grids:
        if not cells:
            raise SystemExit(f"error: {folder} holds no run files (<method>/n<size>-seed<seed>.json): pass a "
                             "benchmarks/forgetting.py --results folder.")
    return grids


def strata(grids: list[tuple[str, dict]], treated: str, partner: str, key: str, min_seeds: int = 1
           ) -> dict[tuple[str, int], np.ndarray]:
    """(domain, size) -> the per-seed differences treated - partner, over the seeds both have, in `grids`
    (`load_grids`); a stratum with fewer than `min_seeds` paired seeds (a grid still running) is left out whole,
    never pooled with some of its seeds."""
    out = {}
    for folder, cells in grids:
        settings = next(iter(cells.values()))["settings"]
        domain, recipe = settings.get("domain", "specialised"), settings.get("recipe", "steps")
        model = settings.get("builtin_model", "sam")  # SAM 2's grid on a domain is its own stratum, never SAM's
        for size in sorted({s for (m, s, _) in cells if m == treated}):
            seeds = sorted(seed for (m, s, seed) in cells if m == treated and s == size
                           and (partner, size, seed) in cells)
            values = [(cells[(treated, size, s)]["metrics"].get(key), cells[(partner, size, s)]["metrics"].get(key))
                      for s in seeds]
            if len(seeds) >= min_seeds and all(a is not None and b is not None for a, b in values):
                label = f"{domain} ({recipe})" if model == "sam" else f"{domain} ({recipe}, {model})"
                if (label, size) in out:
                    raise SystemExit(f"error: two folders hold the {label} grid at {size} images ({folder} is the "
                                     "second): pass each grid once.")
                out[(label, size)] = np.array([a - b for a, b in values])
    return out


def pooled(diffs: dict[tuple[str, int], np.ndarray], resamples: int = 10_000, seed: int = 0) -> dict:
    """Equal-weight mean over strata and its stratified paired-bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    means = np.array([d.mean() for d in diffs.values()])
    boot = np.zeros(resamples)
    for d in diffs.values():
        picks = rng.integers(0, len(d), size=(resamples, len(d)))
        boot += d[picks].mean(axis=1)
    boot /= len(diffs)
    low, high = np.percentile(boot, [2.5, 97.5])
    excluding = sum(paired_difference(list(d), [0.0] * len(d))["excludes_zero"] for d in diffs.values())
    return {"mean": float(means.mean()), "low": float(low), "high": float(high), "strata": len(diffs),
            "seeds": int(sum(len(d) for d in diffs.values())), "excluding_zero": int(excluding)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="benchmarks/forgetting.py --results folders")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--min_seeds", type=int, default=5, help="leave out (domain, size) cells with fewer paired "
                        "seeds (default 5, the grid's count): a cell still running is not pooled")
    parser.add_argument("--write", metavar="FILE", help="also write the table into FILE, between the --name markers")
    parser.add_argument("--name", default="pooled", help="marker name for --write: the block between "
                        "`<!-- NAME:begin -->` and `<!-- NAME:end -->` (default pooled)")
    args = parser.parse_args(argv)
    lines = ["| comparison | metric | strata (domain x size) | seeds | pooled effect [95% bootstrap] | strata whose "
             "interval excludes 0 | by chance alone |", "| --- | --- | --- | --- | --- | --- | --- |"]
    found = {}
    grids = load_grids(args.results)
    for treated, partner in PAIRS.items():
        for key, header, higher_better in METRICS:
            diffs = strata(grids, treated, partner, key, args.min_seeds)
            if not diffs:
                continue
            p = found[(treated, key)] = pooled(diffs, args.resamples)
            text = f"{p['mean']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]"
            bold = p["low"] > 0 or p["high"] < 0
            lines.append(f"| {treated} − {partner} | {header}{'' if higher_better else ' (lower is better)'} | "
                         f"{p['strata']} | {p['seeds']} | {'**' + text + '**' if bold else text} | "
                         f"{p['excluding_zero']} of {p['strata']} | {0.05 * p['strata']:.1f} |")
    if not found:
        raise SystemExit("error: no InfoSAM variant with its plain partner on the same seeds in " + ", ".join(args.results))
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_between_markers(args.write, text, "Pooled: InfoSAM's paired effect", name=args.name)
    return found


if __name__ == "__main__":
    main()
