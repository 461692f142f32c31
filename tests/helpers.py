"""Helpers shared by several test files (tests/ is on sys.path, see conftest.py): import them from here, never from
another test file, so that moving or renaming a test file breaks nothing else.

Sections: paths and scripts; tiny models and batches; several objects per image; the DDP harness of
tests/distributed (a worker launched 1x and 2x under accelerate, its per-rank records compared).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import SamImageProcessor, SamModel, SamProcessor, TrainingArguments

from infosam_hf import InfoSAMConfig, InfoSAMModel, PeftArguments, build_student
from infosam_hf.builtin import BUILTIN_MODEL_PATH
from infosam_hf.models import family_of
from infosam_hf.testing import load_script, tiny_sam_config, toy_segmentation_rows

ROOT = Path(__file__).resolve().parents[1]  # the repository


# ---------------------------------------------------------------------------------- paths and scripts
def write_csv_index(path, rows: list[dict]) -> None:
    """A reference-layout split index (`<root>/<split>.csv`, columns image,label) for the given rows."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)


def load_example(name: str):
    """examples/<name>.py as module `<name>_script` (a bare "evaluate" would shadow the `evaluate` library)."""
    return load_script(ROOT / "examples" / f"{name}.py", f"{name}_script")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_target_and_retention(root, num_retention_test: int = 4) -> dict[str, str]:
    """A small target set (the built-in "specialised" domain) and a retention set (the "general" domain the built-in
    SAM was pre-trained on), 128 px: {"target": folder, "retention": folder}."""
    from infosam_hf.synthetic import write_synthetic_dataset

    return {
        "target": str(write_synthetic_dataset(Path(root) / "specialised", "specialised", num_train=8, num_test=4,
                                              image_size=128, seed=1)),
        "retention": str(write_synthetic_dataset(Path(root) / "general", "general", num_train=2,
                                                 num_test=num_retention_test, image_size=128, seed=2)),
    }


# ---------------------------------------------------------------------------------- tiny models and batches
def make_args(tmp_path, args_class=TrainingArguments, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return args_class(**values)


def make_model(config=None, relation_seed=None, *, sam_config=None, peft_args=None, separate_teacher=False,
               teacher_dtype=None):
    """The same 'pre-trained' base every time (as from_pretrained gives): the tests' one way to build an InfoSAMModel.

    `relation_seed`: another relation-module init. `separate_teacher`: the teacher a second SamModel of the same
    weights instead of the student's base with the adapter switched off (the memory-saving default), for the paths
    that must also work with a distinct teacher (cache, store). `peft_args`: a `PeftArguments` (LoRA by default).
    """
    torch.manual_seed(0)
    config = config or InfoSAMConfig()
    sam_config = sam_config or tiny_sam_config()
    model = InfoSAMModel(build_student(SamModel(sam_config), config, peft_args), config, teacher_dtype=teacher_dtype)
    if separate_teacher:
        torch.manual_seed(0)
        model = InfoSAMModel(model.student, config, teacher=SamModel(sam_config), teacher_dtype=teacher_dtype)
    if relation_seed is not None:
        torch.manual_seed(relation_seed)
        for module in model.relation_module.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
    return model


def moved_student_model(config: InfoSAMConfig | None = None, seed: int = 0, scale: float = 0.05):
    """(InfoSAMModel whose student has left the pre-trained weights, a frozen copy of those weights).

    A fresh student has LoRA B = 0 and a decoder copy equal to the base, so it computes exactly what the teacher
    does and any mix-up of teacher and student features goes unseen. Here LoRA B and the trained decoder copy are
    perturbed (seeded), so every student quantity differs from the teacher's.
    """
    config = config or InfoSAMConfig()
    torch.manual_seed(seed)
    base = SamModel(tiny_sam_config()).eval()
    pretrained = copy.deepcopy(base).requires_grad_(False)
    model = InfoSAMModel(build_student(base, config), config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.student.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(scale * torch.randn(param.shape, generator=generator))
    return model, pretrained


def fine_tuned(scale: float = 0.02):
    """The built-in SAM with a LoRA adapter (and trained decoder copy) moved away from their initial values."""
    torch.manual_seed(0)
    config = InfoSAMConfig()
    student = build_student(SamModel.from_pretrained(BUILTIN_MODEL_PATH), config, PeftArguments(lora_r=2))
    model = InfoSAMModel(student, config)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return model.eval()


def tiny_processor(size=64):
    return SamProcessor(
        SamImageProcessor(
            size={"longest_edge": size},
            pad_size={"height": size, "width": size},
            mask_size={"longest_edge": size // 4},
            mask_pad_size={"height": size // 4, "width": size // 4},
        )
    )


def save_adapter(base_dir, folder, processor, perturb=False):
    base = SamModel.from_pretrained(base_dir)  # its name_or_path (base_dir) becomes the adapter's base
    config = InfoSAMConfig()
    student = build_student(base, config, PeftArguments(lora_r=2))
    if perturb:  # a "trained" adapter: LoRA B away from its zero init
        generator = torch.Generator().manual_seed(1)
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.data = 0.5 * torch.randn(param.shape, generator=generator)
    InfoSAMModel(student, config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def family_image_size(model):
    return family_of(model).image_size(model.config)


def family_batch(model, n=2, seed=0):
    rows = toy_segmentation_rows(n, family_image_size(model), seed)
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


# ---------------------------------------------------------------------------------- several objects per image
INSTANCE_SIZE = 64  # the side of instance_row's samples


def instance_row(num_objects: int, seed: int) -> dict:
    """A preprocessed multi-object sample: `gt_masks` (K, S, S), one bright rectangle per object."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_objects, INSTANCE_SIZE, INSTANCE_SIZE), dtype=np.uint8)
    pixels = 0.3 * rng.standard_normal((3, INSTANCE_SIZE, INSTANCE_SIZE)).astype(np.float32)
    for k in range(num_objects):
        y, x = rng.integers(0, INSTANCE_SIZE - 16, 2)
        h, w = rng.integers(6, 16, 2)
        masks[k, y : y + h, x : x + w] = 1
        pixels[k % 3] += masks[k]
    return {
        "pixel_values": pixels,
        "gt_masks": masks,
        "original_sizes": np.array([INSTANCE_SIZE, INSTANCE_SIZE]),
        "reshaped_input_sizes": np.array([INSTANCE_SIZE, INSTANCE_SIZE]),
    }


def pair_outputs(rank: int, seed: int = 0, relations_require_grad: bool = False):
    """Rank 0: 2 images with 3 and 1 valid prompts; rank 1: 3 images with 1, 2, 2 (different M and B per rank).

    `relations_require_grad`: the relations are leaves with gradients (tests of the gather's backward)."""
    from infosam_hf.modeling import InfoSAMModelOutput

    generator = torch.Generator().manual_seed(seed + rank)
    valid = [[True, True, True], [True, False, False]] if rank == 0 else [[True, False], [True, True], [True, True]]
    valid = torch.tensor(valid)
    images, pairs = valid.shape[0], int(valid.sum())
    out = InfoSAMModelOutput(
        pred_masks=torch.randn(pairs, 1, 4, 4, generator=generator),
        iou_scores=torch.rand(pairs, 1, generator=generator),
        teacher_image_feats=torch.randn(images, 16, 8, generator=generator),
        teacher_mask_tokens=torch.randn(pairs, 1, 8, generator=generator),
        relation_teacher=torch.nn.functional.normalize(torch.randn(pairs, 16, generator=generator), dim=1)
        .requires_grad_(relations_require_grad),
        relation_student=torch.nn.functional.normalize(torch.randn(pairs, 16, generator=generator), dim=1)
        .requires_grad_(relations_require_grad),
        image_index=valid.nonzero()[:, 0],
        prompt_mask=valid,
    )
    gt = (torch.rand(images, valid.shape[1], 4, 4, generator=generator) > 0.5).float()
    return out, gt


# ---------------------------------------------------------------------------------- the DDP harness
REPO = ROOT
WORKER = REPO / "tests" / "distributed" / "distributed_worker.py"
CONFIGS = REPO / "examples" / "accelerate_configs"
WORLD_SIZE = 2
PER_DEVICE_BATCH = 2
GLOBAL_BATCH = WORLD_SIZE * PER_DEVICE_BATCH
STEPS = 3
TIMEOUT_S = 600
LOSS_RTOL = 1e-4
# ||w_ddp - w_single|| / ||w_single - w_initial||; measured 2.5e-6 with gathering, 1.16 without
UPDATE_RTOL = 1e-3


def subprocess_env(home: Path, use_cpu_env: bool) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "ACCELERATE_USE_CPU", "ACCELERATE_CONFIG_FILE"):
        env.pop(key, None)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(home),  # an empty HF_HOME: no default accelerate config of this machine is picked up
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    )
    if use_cpu_env:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def run_command(cmd: list[str], env: dict[str, str], what: str) -> None:
    def tail(text, n=6000):
        text = text.decode(errors="replace") if isinstance(text, bytes) else (text or "")
        return text[-n:]

    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{what} timed out after {TIMEOUT_S}s: {' '.join(cmd)}\n"
                    f"--- stdout\n{tail(err.stdout)}\n--- stderr\n{tail(err.stderr)}")
    if proc.returncode != 0:
        pytest.fail(f"{what} exited with {proc.returncode}: {' '.join(cmd)}\n"
                    f"--- stdout\n{tail(proc.stdout)}\n--- stderr\n{tail(proc.stderr)}")


class Run:
    """What the worker's processes recorded, by rank."""

    def __init__(self, output_dir: Path, result_dir: Path, expected_ranks: int):
        self.output_dir = output_dir
        found = sorted(p.name for p in result_dir.glob("rank*.json"))
        assert found == [f"rank{r}.json" for r in range(expected_ranks)], (
            f"expected {expected_ranks} process(es) to report, got {found}")
        self.ranks = [json.loads((result_dir / f"rank{r}.json").read_text()) for r in range(expected_ranks)]
        self.weights = [load_file(result_dir / f"weights_rank{r}.safetensors") for r in range(expected_ranks)]
        self.initial = [load_file(result_dir / f"initial_rank{r}.safetensors") for r in range(expected_ranks)]

    def records(self, rank: int) -> list[dict]:
        records = self.ranks[rank]["records"]
        assert [r["step"] for r in records] == list(range(STEPS)), records
        return records


def launch(root: Path, name: str, *, distributed: bool, gather: bool = True, config_file: Path | None = None) -> Run:
    out, res = root / name / "out", root / name / "res"
    worker_args = [
        str(WORKER), "--output-dir", str(out), "--result-dir", str(res), "--gather" if gather else "--no-gather",
        "--per-device-batch-size", str(PER_DEVICE_BATCH if distributed else GLOBAL_BATCH),
        "--max-steps", str(STEPS),
    ]
    accelerate = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]  # = `accelerate launch`
    if not distributed:
        cmd, env = [sys.executable, *worker_args], subprocess_env(root / "hf_home", use_cpu_env=False)
    elif config_file is None:
        cmd = [*accelerate, "--multi_gpu", "--num_processes", str(WORLD_SIZE),
               "--main_process_port", str(free_port()), *worker_args]
        env = subprocess_env(root / "hf_home", use_cpu_env=True)
    else:
        # No ACCELERATE_USE_CPU: the config file plus the script's TrainingArguments(use_cpu=True) must suffice.
        cmd = [*accelerate, "--config_file", str(config_file), "--main_process_port", str(free_port()), *worker_args]
        env = subprocess_env(root / "hf_home", use_cpu_env=False)
    run_command(cmd, env, f"the {name!r} run")
    return Run(out, res, WORLD_SIZE if distributed else 1)



def update_mismatch(weights: dict, reference: dict, initial: dict) -> float:
    """||w - w_ref|| / ||w_ref - w_initial|| over all trainable tensors."""
    num = sum(((weights[k].double() - reference[k].double()) ** 2).sum() for k in reference)
    den = sum(((reference[k].double() - initial[k].double()) ** 2).sum() for k in reference)
    return float((num / den).sqrt())


def rel_close(a: float, b: float, rtol: float = LOSS_RTOL) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-6)
