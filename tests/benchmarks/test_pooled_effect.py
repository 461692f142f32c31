"""benchmarks/pooled_effect.py: InfoSAM's paired effect pooled over domains x sizes x seeds of forgetting.py grids."""

import os

import pytest
from helpers import ROOT  # tests/ is on sys.path (conftest.py)

from infosam_hf.testing import load_script


def pooled_effect():
    return load_script(os.path.join(ROOT, "benchmarks", "pooled_effect.py"), "pooled_effect_benchmark")


def write_grid(module, folder, domain, effects_by_size, seeds=5):
    """A forgetting.py results folder: LoRA at a per-seed level, LoRA + InfoSAM that level + the size's effect[seed]."""
    f = module.__dict__["load_results"].__globals__  # forgetting.py's namespace, as pooled_effect.py imports it
    settings = {"recipe": "paper", "domain": domain}
    for size, effects in effects_by_size.items():
        for seed in range(seeds):
            level = 0.5 + 0.03 * seed
            for method, value in (("LoRA", level), ("LoRA + InfoSAM", level + effects[seed])):
                metrics = {key: value for key, _, _ in module.METRICS}
                f["write_cell"](f["cell_path"](str(folder), method, size, seed),
                                {"method": method, "size": size, "seed": seed, "settings": settings, "metrics": metrics})
    return str(folder)


def test_a_constant_effect_pools_to_itself_and_every_stratum_excludes_zero(tmp_path):
    m = pooled_effect()
    a = write_grid(m, tmp_path / "a", "lesions v1", {16: [0.01] * 5, 64: [0.01] * 5})
    b = write_grid(m, tmp_path / "b", "roads v2", {16: [0.01] * 5})
    found = m.main([a, b, "--resamples", "500"])
    p = found[("LoRA + InfoSAM", "spec/box/iou")]
    assert (p["strata"], p["seeds"], p["excluding_zero"]) == (3, 15, 3)
    assert (p["mean"], p["low"], p["high"]) == pytest.approx((0.01, 0.01, 0.01), abs=1e-9)
    assert ("Adapter + InfoSAM", "spec/box/iou") not in found  # no Adapter runs: no row


def test_strata_weigh_the_same_and_opposite_effects_pool_to_an_interval_around_zero(tmp_path):
    m = pooled_effect()
    noisy = [0.02, -0.01, 0.03, 0.0, 0.01]  # mean +0.01 over 5 seeds; the other stratum -0.01 over 3 seeds
    a = write_grid(m, tmp_path / "a", "lesions v1", {16: noisy})
    write_grid(m, tmp_path / "a", "lesions v1", {64: [-0.02, 0.0, -0.01]}, seeds=3)
    found = m.main([a, "--resamples", "2000", "--min_seeds", "3"])
    p = found[("LoRA + InfoSAM", "gen/box/iou")]
    assert (p["strata"], p["seeds"]) == (2, 8)
    assert m.main([a, "--resamples", "2000"])[("LoRA + InfoSAM", "gen/box/iou")]["strata"] == 1  # 3 < 5 seeds: out
    assert p["mean"] == pytest.approx(0.0, abs=1e-12)  # weighed by seeds it would be (0.05 - 0.03) / 8 = +0.0025
    assert p["low"] < 0 < p["high"]
    assert m.main([a, "--resamples", "2000", "--min_seeds", "3"])[("LoRA + InfoSAM", "gen/box/iou")] == p  # same


def test_a_folder_without_runs_is_named(tmp_path):
    with pytest.raises(SystemExit, match="empty.*holds no run files"):
        pooled_effect().main([str(tmp_path / "empty")])


def test_sam2_on_a_domain_is_its_own_stratum_and_a_grid_passed_twice_is_refused(tmp_path):
    m = pooled_effect()
    sam = write_grid(m, tmp_path / "sam", "lesions v1", {16: [0.01] * 5})
    sam2 = write_grid(m, tmp_path / "sam2", "lesions v1", {16: [0.03] * 5})
    f = m.__dict__["load_results"].__globals__
    for path in (tmp_path / "sam2").rglob("*.json"):  # the same grid, fine-tuning the built-in SAM 2
        cell = f["read_cell"](str(path), None)
        cell["settings"]["builtin_model"] = "sam2"
        f["write_cell"](str(path), cell)
    p = m.main([sam, sam2, "--resamples", "500"])[("LoRA + InfoSAM", "spec/box/iou")]
    assert p["strata"] == 2 and p["mean"] == pytest.approx(0.02, abs=1e-9)
    with pytest.raises(SystemExit, match="two folders hold the lesions v1 \\(paper\\) grid at 16 images"):
        m.main([sam, sam, "--resamples", "500"])


def test_write_fills_only_its_named_block_and_leaves_the_text_around_it(tmp_path):
    m = pooled_effect()
    a = write_grid(m, tmp_path / "a", "lesions v1", {16: [0.01] * 5})
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# B\n\nintro\n\n<!-- pooled-sam:begin -->\nold\n<!-- pooled-sam:end -->\n\n"
                   "<!-- pooled-all:begin -->\nkeep me\n<!-- pooled-all:end -->\n\nafter\n")
    m.main([a, "--resamples", "200", "--write", str(doc), "--name", "pooled-sam"])
    text = doc.read_text()
    block = text[text.index("<!-- pooled-sam:begin -->"):text.index("<!-- pooled-sam:end -->")]
    assert "old" not in block
    assert "| LoRA + InfoSAM − LoRA | target IoU, box | 1 | 5 | **+0.0100 [+0.0100, +0.0100]** | 1 of 1 |" in block
    assert text.startswith("# B\n\nintro\n\n") and text.endswith("\n\nafter\n")
    assert "<!-- pooled-all:begin -->\nkeep me\n<!-- pooled-all:end -->" in text  # the other block is untouched
