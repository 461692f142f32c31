"""benchmarks/paper_table.py: the paper-regime grids as the paper's Table 1 (methods x domains, zero-shot first)."""

import os

import pytest
from helpers import ROOT  # tests/ is on sys.path (conftest.py)

from infosam_hf.testing import load_script

METHODS = {"LoRA": 0.0, "LoRA + InfoSAM": 0.01, "Adapter": 0.02, "Adapter + InfoSAM": 0.03}


def paper_table():
    return load_script(os.path.join(ROOT, "benchmarks", "paper_table.py"), "paper_table_benchmark")


def write_grid(module, folder, domain, level, sizes, seeds=5, zero_shot=True, skip=()):
    """A forgetting.py results folder: target IoU = level + the method's offset + 0.001 * seed, retention 0.5 + that."""
    f = module.__dict__["write_between_markers"].__globals__  # forgetting.py's namespace
    settings = {"recipe": "paper", "epochs": 20, "domain": f"{domain} v1"}
    if zero_shot:
        f["write_cell"](f["cell_path"](str(folder), "Zero-shot", 0, 0),
                        {"method": "Zero-shot", "size": 0, "seed": 0, "settings": settings,
                         "metrics": {"spec/box/iou": 0.1, "gen/box/iou": 0.9}})
    for size in sizes:
        for seed in range(seeds):
            for method, offset in METHODS.items():
                if (method, size, seed) in skip:
                    continue
                value = level + offset + 0.001 * seed + 0.1 * (size == 64)
                f["write_cell"](f["cell_path"](str(folder), method, size, seed),
                                {"method": method, "size": size, "seed": seed, "settings": settings,
                                 "metrics": {"spec/box/iou": value, "gen/box/iou": 0.5 + value}})
    return str(folder)


def test_methods_are_rows_domains_columns_at_the_largest_size_every_folder_completes(tmp_path):
    m = paper_table()
    a = write_grid(m, tmp_path / "a", "lesions", 0.5, [16, 64])
    b = write_grid(m, tmp_path / "b", "roads", 0.3, [16, 64], skip={("Adapter", 64, 4)})  # 64 incomplete here
    text = m.main([a, b, "--resamples", "200"])
    assert "at 16 training images" in text and "at 64 training images" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| method", "| Zero-shot", "| LoRA", "| LoRA + InfoSAM", "| Adapter",
                                                 "| Adapter + InfoSAM"]
    assert rows[0] == ("| method | lesions: target | lesions: kept | roads: target | roads: kept | mean: target | "
                       "mean: kept |")
    assert rows[1] == "| Zero-shot | 0.100 | 0.900 | 0.100 | 0.900 | 0.100 | 0.900 |"
    # mean over seeds 0..4 of level + 0.01 + 0.001*seed; kept = 0.5 + that
    assert rows[3] == "| LoRA + InfoSAM | 0.512 | 1.012 | 0.312 | 0.812 | 0.412 | 0.912 |"
    assert "lesions = leaf disease, roads = remote-sensing roads; recipe: lesions 20 epochs, roads 20 epochs" in text
    # pooled over every stratum where the pair has 5 seeds (the Adapter pair lacks roads at 64), +0.01 in each
    assert ("target, LoRA + InfoSAM − LoRA: **+0.0100** [+0.0100, +0.0100], 20 seeds: InfoSAM higher; 4 of 4 strata "
            "exclude 0 alone (chance: 0.2)") in text
    assert ("kept, Adapter + InfoSAM − Adapter: **+0.0100** [+0.0100, +0.0100], 15 seeds: InfoSAM higher; 3 of 3 "
            "strata exclude 0 alone (chance: 0.2)") in text  # 0.05 x 3 = 0.15000000000000002
    assert "at 64 training images" in m.main([a, "--resamples", "200"])  # one folder: its largest complete size
    assert "at 16 training images**, mean over 5 paired seeds." in text


def test_the_caption_names_each_domains_seed_count_when_they_differ(tmp_path):
    m = paper_table()
    a = write_grid(m, tmp_path / "a", "lesions", 0.5, [16], seeds=10)
    b = write_grid(m, tmp_path / "b", "roads", 0.3, [16])
    text = m.main([a, b, "--resamples", "200"])
    assert "at 16 training images**, mean over each domain's paired seeds (lesions 10, roads 5)." in text
    rows = [line for line in text.splitlines() if line.startswith("| LoRA |")]
    # lesions: the mean over seeds 0..9 (0.5045); over the 5 seeds roads has it would be 0.502
    assert rows == ["| LoRA | 0.504 | 1.004 | 0.302 | 0.802 | 0.403 | 0.903 |"]


def test_write_replaces_only_the_marked_block_and_bad_folders_are_named(tmp_path):
    m = paper_table()
    a = write_grid(m, tmp_path / "a", "camouflage", 0.7, [16])
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n\n<!-- paper-table:begin -->\nold table\n<!-- paper-table:end -->\n\nafter\n")
    m.main([a, "--resamples", "200", "--write", str(readme)])
    m.main([a, "--resamples", "200", "--write", str(readme)])
    text = readme.read_text()
    # written twice, there once, the text around the markers kept
    assert "old table" not in text and text.count("| Zero-shot |") == 1 and "before" in text and "after" in text
    assert text.index("before") < text.index("| Zero-shot |") < text.index("after")
    with pytest.raises(SystemExit, match="no zero-shot run"):
        m.main([write_grid(m, tmp_path / "z", "lesions", 0.5, [16], zero_shot=False)])
    with pytest.raises(SystemExit, match="empty holds no run files"):
        m.main([str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="lacks 64"):
        m.main([a, "--sizes", "64"])
