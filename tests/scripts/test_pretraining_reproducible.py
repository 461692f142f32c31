"""The built-in models' pre-training scripts: the same flags and seed give the same weights file."""

import hashlib
import os
import subprocess
import sys

import pytest
from helpers import ROOT  # tests/ is on sys.path (conftest.py)


def pretrain(script: str, output_dir) -> str:
    """sha256 of the model.safetensors one fresh process writes (2 steps of 2 images, 2 test images)."""
    cmd = [sys.executable, os.path.join(ROOT, "examples", script), "--output_dir", str(output_dir),
           "--max_steps", "2", "--batch_size", "2", "--warmup_steps", "0", "--eval_images", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "general-domain test, box prompts" in proc.stdout
    return hashlib.sha256((output_dir / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["pretrain_builtin_sam.py", "pretrain_builtin_sam2.py"])
def test_same_flags_and_seed_give_the_same_weights_file(script, tmp_path):
    first = pretrain(script, tmp_path / "first")
    assert pretrain(script, tmp_path / "second") == first


@pytest.mark.parametrize("which", ["sam", "sam2"])
def test_the_builtin_configs_are_the_architectures_of_the_shipped_models(which):
    """`infosam_hf.builtin.configs` is what built the committed weights: same config, field by field."""
    from transformers import AutoConfig

    from infosam_hf.builtin import BUILTIN_MODELS, builtin_sam2_config, builtin_sam_config

    def fields(config, prefix=""):
        out = {}
        for key, value in config.items():
            if key in ("_name_or_path", "architectures", "dtype", "transformers_version"):  # written at saving
                continue
            out.update(fields(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    built = {"sam": builtin_sam_config, "sam2": builtin_sam2_config}[which]().to_dict()
    shipped = AutoConfig.from_pretrained(BUILTIN_MODELS[which]).to_dict()
    assert fields(built) == fields(shipped)
