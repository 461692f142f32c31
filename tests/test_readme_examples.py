"""README's Python runs as written: its blocks (the built-in data, then train, load, predict) executed in order on the built-in
tiny SAM and data, with only the names of things that cannot exist here (a Hub checkpoint, a data folder, an image
file, 5000 steps) replaced. A README edit that breaks the API shown there fails this test."""

import os
import re

import numpy as np
from PIL import Image

from infosam_hf.builtin import BUILTIN_MODEL_PATH, builtin_dataset_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def substituted(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        code = code.replace(old, new)
    return code


def test_the_readme_python_api_trains_saves_loads_and_predicts(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert len(blocks) == 4, "README shows four Python blocks: the built-in data, train, load, predict"
    image_path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(image_path)
    run = str(tmp_path / "sam-polyp-infosam")
    replacements = {
        '"facebook/sam-vit-base"': repr(BUILTIN_MODEL_PATH),
        '"/data/polyp"': repr(builtin_dataset_path()),
        "max_steps=5000": "max_steps=2",
        '"sam-polyp-infosam"': repr(run),
        '"you/sam-polyp-infosam"': repr(run),
        '"image.png"': repr(str(image_path)),
    }
    joined = "\n".join(blocks)
    missing = [old for old in replacements if old not in joined]
    assert not missing, f"README no longer shows {missing}: update this test's replacements with it"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(substituted(block, replacements), "README.md", "exec"), namespace)  # noqa: S102

    assert namespace["trainer"].state.global_step == 2
    assert {"adapter_config.json", "infosam_config.json", "README.md"} <= set(os.listdir(run))
    prediction = namespace["prediction"]
    assert prediction.masks.shape == (1, 72, 96) and prediction.masks.dtype == bool
    assert prediction.scores.shape == (1,)
