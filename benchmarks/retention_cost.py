"""What the retention evaluation adds to a run: `examples/train.py` with its default retention set against the same
run with `--retention_dataset none`, alternating, `--repeats` times (issue 30: at most +10% on the built-in run).

Each run is its own `python examples/train.py` process, timed from start to exit, so the retention set's
preparation (generating and decoding the built-in general domain, cached on disk after the first run) and both of
its evaluations (zero-shot and final) are counted. A first, untimed run of each fills the data caches, so no timed
run pays the one-off generation of a domain's images.

    python benchmarks/retention_cost.py --repeats 3
    python benchmarks/retention_cost.py --repeats 1 -- --max_steps 4     # anything after -- goes to train.py

Prints one line per run and `wall_ratio=` (best with retention / best without) last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "train.py")
MODES = {"retention": [], "none": ["--retention_dataset", "none"]}


def run_once(mode: str, extra: list[str], threads: int | None) -> tuple[float, dict]:
    """Wall seconds of one train.py process and the summary it wrote."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="retention-cost-") as output_dir:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, TRAIN_SCRIPT, "--output_dir", output_dir, *MODES[mode], *extra],
                             capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"train.py ({mode}) failed:\n{out.stderr[-4000:]}")
        with open(os.path.join(output_dir, "iou_before_after.json"), encoding="utf-8") as f:
            return wall, json.load(f)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run (default: torch's)")
    parser.add_argument("--no_warmup", action="store_true", help="skip the untimed first run of each mode")
    args = parser.parse_args(own)
    if not args.no_warmup:
        for mode in MODES:
            run_once(mode, extra, args.threads)
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    summary = {}
    for repeat in range(args.repeats):
        for mode in MODES if repeat % 2 == 0 else reversed(list(MODES)):
            wall, summary[mode] = run_once(mode, extra, args.threads)
            walls[mode].append(wall)
            print(f"repeat {repeat} {mode:<9} {wall:8.2f} s", flush=True)
    retained = {k: v for k, v in summary["retention"].items() if "retention" in k or "confusion" in k}
    print("retention metrics of the last run:", json.dumps(retained))
    best = {mode: min(values) for mode, values in walls.items()}
    ratio = best["retention"] / best["none"]
    print(f"best of {args.repeats}: with retention {best['retention']:.2f} s, without {best['none']:.2f} s")
    print(f"wall_ratio={ratio:.3f}")
    return {"walls": walls, "wall_ratio": ratio}


if __name__ == "__main__":
    main()
