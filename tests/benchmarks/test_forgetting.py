"""benchmarks/forgetting.py: paired statistics, one JSON file per run, resuming, the report and its plots."""

import glob
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import pytest
from helpers import ROOT  # tests/ is on sys.path (conftest.py)

from infosam_hf.testing import load_script


def forgetting():
    return load_script(os.path.join(ROOT, "benchmarks", "forgetting.py"), "forgetting_benchmark")


def test_paired_difference_is_a_t_interval_over_the_per_seed_differences():
    f = forgetting()
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2 df) = 4.302653: the interval reaches below 0
    d = f.paired_difference([11.0, 22.0, 33.0], [10.0, 20.0, 30.0])
    assert d["mean"] == pytest.approx(2.0)
    assert (d["low"], d["high"]) == pytest.approx((2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5), abs=1e-5)
    assert not d["excludes_zero"] and d["n"] == 3
    # differences 1.9, 2, 2.1: sd 0.1, the interval 2 +- 0.248 excludes 0
    d = f.paired_difference([11.9, 22.0, 32.1], [10.0, 20.0, 30.0])
    assert d["high"] - d["low"] == pytest.approx(2 * 4.302653 * 0.1 / 3**0.5, abs=1e-5)
    assert d["excludes_zero"]
    # the same values unpaired would overlap heavily; paired, a constant shift is certain, a mixed one is not
    assert not f.paired_difference([1.0, 2.0, 3.0], [2.0, 1.0, 3.5])["excludes_zero"]
    assert f.paired_difference([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])["low"] == pytest.approx(0.5)


def fake_cell(f, method, size, seed, iou, settings):
    metrics = {key: iou for key, _ in f.MAIN_METRICS}
    return {"method": method, "size": size, "seed": seed, "settings": settings, "commit": "abc", "train_seconds": 1.0,
            "eval_seconds": 1.0, "metrics": metrics}


def test_report_pairs_each_infosam_run_with_its_partner_of_the_same_seed(tmp_path):
    f = forgetting()
    settings = {"steps": 1, "eval_images": 1, "multi_images": 1, "model_sha256": "0" * 64, "domain": "camouflage v1"}
    lora = {0: 0.50, 1: 0.60, 2: 0.70}
    infosam = {0: 0.52, 1: 0.61, 2: 0.73}  # +0.02, +0.01, +0.03 seed by seed
    for seed in lora:
        f.write_cell(f.cell_path(str(tmp_path), "LoRA", 16, seed), fake_cell(f, "LoRA", 16, seed, lora[seed], settings))
        f.write_cell(f.cell_path(str(tmp_path), "LoRA + InfoSAM", 16, seed),
                     fake_cell(f, "LoRA + InfoSAM", 16, seed, infosam[seed], settings))
    f.write_cell(f.cell_path(str(tmp_path), "LoRA + InfoSAM", 16, 3), fake_cell(f, "LoRA + InfoSAM", 16, 3, 0.0, settings))
    text, table = f.report(f.load_results(str(tmp_path)))
    d = table["differences"][("LoRA + InfoSAM", 16, "spec/box/iou")]
    assert d["n"] == 3  # seed 3 has no LoRA partner: left out of the difference, not paired with another seed
    assert d["mean"] == pytest.approx(0.02)
    assert "| 16 | LoRA + InfoSAM | 4 |" in text and "| 16 | LoRA + InfoSAM − LoRA | 3 |" in text
    assert table["methods"]["LoRA"][16]["spec/box/iou"] == [0.50, 0.60, 0.70]
    assert f"model_sha256 {'0' * 12}, domain camouflage v1." in text  # the hash shortened, the domain whole

    other = dict(settings, steps=2)
    f.write_cell(str(tmp_path / "adapter" / "n16-seed0.json"), fake_cell(f, "Adapter", 16, 0, 0.5, other))
    with pytest.raises(SystemExit, match="other settings"):
        f.load_results(str(tmp_path))


@pytest.mark.slow
def test_quick_grid_writes_one_file_per_run_resumes_and_writes_the_report(tmp_path):
    results, md = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nkept text\n")

    def run(*args):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "forgetting.py"), "--quick",
                              "--results", str(results), *args], capture_output=True, text=True, cwd=ROOT, timeout=900)
        return out

    first = run("--write", str(md))
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted(glob.glob(str(results / "**" / "*.json"), recursive=True))
    assert len(files) == 1 + 2 * 2  # zero-shot + (LoRA, LoRA + InfoSAM) x seeds 0, 1 at 16 images
    cells = {(c["method"], c["seed"]): c for c in (json.load(open(p)) for p in files)}
    for seed in (0, 1):
        plain, infosam = cells[("LoRA", seed)], cells[("LoRA + InfoSAM", seed)]
        assert plain["subset"] == infosam["subset"]  # paired: the same images for both methods of a seed
        assert plain["train_loss"] != infosam["train_loss"]  # ... but not the same method
        assert set(plain["metrics"]) == set(cells[("Zero-shot", 0)]["metrics"])
        assert all(0.0 <= v <= 1.0 for v in plain["metrics"].values())
    assert cells[("LoRA", 0)]["subset"] != cells[("LoRA", 1)]["subset"]

    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nkept text\n") and text.count("<!-- forgetting:begin -->") == 1
    zero = cells[("Zero-shot", 0)]["metrics"]["spec/box/iou"]
    assert f"| 0 | Zero-shot (pre-trained) | - | {zero:.3f} |" in text
    plain = [cells[("LoRA", s)]["metrics"]["spec/box/iou"] for s in (0, 1)]
    assert f"| 16 | LoRA | 2 | {statistics.mean(plain):.3f} ± {statistics.stdev(plain):.3f} |" in text
    if importlib.util.find_spec("matplotlib"):
        for name in ("forgetting-iou-vs-size.png", "forgetting-tradeoff.png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in text

    stamps = {p: os.path.getmtime(p) for p in files}
    second = run("--write", str(md))  # everything done: nothing retrained, the block replaced, not appended
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 run(s) to do" in second.stdout
    assert {p: os.path.getmtime(p) for p in files} == stamps
    assert md.read_text().count("<!-- forgetting:begin -->") == 1

    changed = run("--steps", "1", "--seeds", "0")  # other settings into the same folder: refused, files kept
    assert changed.returncode != 0 and "other settings" in changed.stderr
    assert {p: os.path.getmtime(p) for p in files} == stamps


def _csv_layout(root, domain, counts, seed):
    import numpy as np

    from infosam_hf.synthetic import make_synthetic_sample

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    for split, count in counts.items():
        lines = ["image,label"]
        for i in range(count):
            image, mask = make_synthetic_sample(domain, 64, rng)
            image.save(root / "images" / f"{split}{i}.png")
            mask.save(root / "images" / f"{split}{i}_mask.png")
            lines.append(f"images/{split}{i}.png,images/{split}{i}_mask.png")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_paper_grid_writes_runs_that_the_forgetting_report_reads(tmp_path):
    from infosam_hf.builtin import BUILTIN_MODEL_PATH

    _csv_layout(tmp_path / "special", "specialised", {"train": 6, "test": 2}, seed=0)
    _csv_layout(tmp_path / "general", "general", {"test": 2}, seed=1)
    results = tmp_path / "results"
    for method in (["--baseline"], []):
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", "paper.py"), "--dataset", "leaf", "--model", BUILTIN_MODEL_PATH,
             "--data_root", str(tmp_path / "special"), *method, "--train_images", "4", "--seeds", "0", "--epochs", "1",
             "--retention_root", str(tmp_path / "general"), "--results", str(results), "--report_to", "none"],
            capture_output=True, text=True, cwd=ROOT, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
    subset = (results / "runs" / "lora-n4-seed0" / "data" / "train.csv").read_text().splitlines()
    assert len(subset) == 1 + 4 and all(os.path.isabs(line.split(",")[0]) for line in subset[1:])
    assert subset == (results / "runs" / "lora-infosam-n4-seed0" / "data" / "train.csv").read_text().splitlines()
    f = forgetting()
    cells = f.load_results(str(results))
    assert set(cells) == {("Zero-shot", 0, 0), ("LoRA", 4, 0), ("LoRA + InfoSAM", 4, 0)}
    for cell in cells.values():
        assert {"spec/box/iou", "spec/point/iou", "gen/box/iou", "gen/point/dice"} <= set(cell["metrics"])
    text, table = f.report(cells)
    assert "| 4 | LoRA + InfoSAM − LoRA | 1 |" in text
    assert "| 4 | LoRA | 1 |" in text and text.count(" - |") >= 2  # no multi-object retention set: "-", not 0


def test_domain_and_recipe_name_the_settings_folder_and_markers_without_touching_the_first_edition(tmp_path):
    f = forgetting()

    def args(**kw):
        import argparse

        base = dict(steps=50, eval_images=24, multi_images=16, domain="specialised", recipe="steps", epochs=None,
                    validation=False, builtin_model="sam")
        return argparse.Namespace(**{**base, **kw})

    # the first edition's grid keeps its settings keys, so its results folders stay readable
    assert f.run_settings(args(), "sha") == {"steps": 50, "eval_images": 24, "multi_images": 16, "model_sha256": "sha"}
    assert f.grid_name("specialised", "steps", None, False) == "forgetting"
    paper = f.run_settings(args(domain="roads", recipe="paper", epochs=10, validation=True), "sha")
    assert paper["recipe"] == "paper" and paper["epochs"] == 10 and "steps" not in paper
    assert paper["domain"].startswith("roads v") and paper["validation"].startswith("seed-1")
    assert f.recipe_flags(paper) == ["--max_steps", "-1", "--num_train_epochs", "10", "--per_device_train_batch_size",
                                     "4", "--learning_rate", "0.0002"]
    assert f.recipe_flags({"steps": 50}) == ["--max_steps", "50"]
    assert f.grid_name("roads", "paper", 10, True) == "forgetting-roads-paper-e10-validation"
    sam2 = f.run_settings(args(domain="lesions", recipe="paper", epochs=20, builtin_model="sam2"), "sha2")
    assert sam2["builtin_model"] == "sam2" and "builtin_model" not in paper  # SAM's folders keep their settings
    assert f.grid_name("lesions", "paper", 20, False, "sam2") == "forgetting-sam2-lesions-paper-e20"

    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# B\n\n<!-- forgetting:begin -->\nfirst edition\n<!-- forgetting:end -->\n")
    f.write_between_markers(str(md), "roads table", "Roads", name="forgetting-roads-paper-e10")
    f.write_between_markers(str(md), "roads table 2", "Roads", name="forgetting-roads-paper-e10")
    text = md.read_text()
    assert "first edition" in text and text.count("roads table") == 1 and "roads table 2" in text


@pytest.mark.parametrize("flags", [["--domain", "medical"], ["--epochs", "3"], ["--recipe", "paper", "--epochs", "0"]])
def test_bad_domain_or_recipe_flags_stop_with_one_line(flags, capsys):
    with pytest.raises(SystemExit):
        forgetting().main(flags)
    assert any(word in capsys.readouterr().err for word in ("--domain", "--epochs"))


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["lesions", "roads", "camouflage"])
def test_quick_paper_recipe_runs_on_each_paper_regime_domain(domain, tmp_path):
    # LoRA only: the paper-regime domains are chosen blind to InfoSAM (issue 33), so CI never trains InfoSAM on them
    results = tmp_path / "results"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "forgetting.py"), "--quick", "--domain", domain,
               "--recipe", "paper", "--methods", "LoRA", "--seeds", "0", "--validation", "--threads", "1",
               "--results", str(results)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    cells = forgetting().load_results(str(results))
    assert set(cells) == {("Zero-shot", 0, 0), ("LoRA", 16, 0)}
    lora = cells[("LoRA", 16, 0)]
    assert lora["settings"]["domain"].startswith(f"{domain} v") and lora["settings"]["recipe"] == "paper"
    assert lora["optimizer_steps"] == 16 // 4 and lora["epochs"] == 1  # one pass over 16 images at batch 4
    validation, test = lora["metrics"]["val/box/iou"], lora["metrics"]["spec/box/iou"]
    assert 0 <= validation <= 1 and validation != test  # other images than the test split
    assert "| 16 | LoRA | 1 |" in out.stdout and f"{domain} IoU, box" in out.stdout
    assert f"{domain} validation IoU" in out.stdout


@pytest.mark.slow
def test_builtin_sam2_grid_fine_tunes_and_scores_sam2_not_sam(tmp_path):
    from infosam_hf.builtin import BUILTIN_MODEL_PATH, BUILTIN_SAM2_PATH

    f = forgetting()
    zero_shot = {}
    for model in ("sam", "sam2"):
        results = tmp_path / model
        command = [sys.executable, os.path.join(ROOT, "benchmarks", "forgetting.py"), "--quick", "--domain", "lesions",
                   "--recipe", "paper", "--methods", "LoRA", "--seeds", "0", "--threads", "1",
                   "--builtin_model", model, "--results", str(results)]
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        cells = f.load_results(str(results))
        assert set(cells) == {("Zero-shot", 0, 0), ("LoRA", 16, 0)}
        settings = cells[("LoRA", 16, 0)]["settings"]
        path = BUILTIN_SAM2_PATH if model == "sam2" else BUILTIN_MODEL_PATH
        assert settings["model_sha256"] == f.file_sha256(os.path.join(path, "model.safetensors"))
        assert settings.get("builtin_model", "sam") == model
        zero_shot[model] = cells[("Zero-shot", 0, 0)]["metrics"]
    # the same images and prompts, another pre-trained model: another zero-shot score
    assert zero_shot["sam"]["spec/box/iou"] != zero_shot["sam2"]["spec/box/iou"]
    assert zero_shot["sam"]["gen/box/iou"] != zero_shot["sam2"]["gen/box/iou"]
