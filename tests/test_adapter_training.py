"""The bottleneck adapter end to end: InfoSAMTrainer steps, save, load in a fresh process, Hub round trip."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import HfApi
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import SamModel, TrainingArguments

import infosam_hf
from infosam_hf import InfoSAMConfig, InfoSAMTrainer, PeftArguments
from infosam_hf.testing import tiny_sam_config, toy_batch, toy_segmentation_dataset
from infosam_hf.tuners.bottleneck_adapter import PEFT_TYPE

pytestmark = pytest.mark.slow


def predict(model, batch):
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False).pred_masks


@pytest.fixture
def base_folder(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "base"
    SamModel(tiny_sam_config()).save_pretrained(folder)
    return folder


@pytest.fixture
def trained(base_folder, tmp_path):
    """3 InfoSAM steps with the adapter (LayerNorm copies on), shared-weights teacher; the trainer after saving."""
    peft_args = PeftArguments(peft_method="adapter", adapter_layers="1", adapter_train_layernorms=True)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    trainer = InfoSAMTrainer(
        model=SamModel.from_pretrained(base_folder), args=args, infosam_config=InfoSAMConfig(), peft_config=peft_args,
        train_dataset=toy_segmentation_dataset(8),
    )
    trainer.train()
    trainer.save_model()
    return trainer


def test_three_steps_save_and_identical_outputs_in_a_fresh_process(trained, base_folder, tmp_path):
    logs = [e for e in trained.state.log_history if "loss" in e]
    assert len(logs) == 3 and all({"loss_seg", "loss_r", "loss_d"} <= set(e) for e in logs)
    assert all(e["loss_r"] != 0 and e["loss_d"] != 0 for e in logs)  # the shared-weights teacher took part

    model = trained.model.eval()
    student = model.student
    base = SamModel.from_pretrained(base_folder)
    # training moved the adapter, the LayerNorm copies and the decoder copy, never the frozen base (the teacher)
    for name, p in student.get_base_model().named_parameters():
        clean = name.replace(".base_layer", "").replace(".original_module", "")
        if ".bottleneck_" not in name and ".modules_to_save." not in name:
            assert torch.equal(p, base.get_parameter(clean)), name
    assert any("bottleneck_norm" in n and not torch.equal(p, torch.ones_like(p)) for n, p in student.named_parameters()
               if n.endswith("bottleneck_norm.default.weight"))

    batch = toy_batch(2, seed=3)
    expected = predict(student, batch)
    with student.disable_adapter():
        torch.testing.assert_close(predict(student, batch), predict(base, batch), rtol=0, atol=0)
    assert not torch.allclose(expected, predict(base, batch))

    out = tmp_path / "run"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPE
    assert {"adapter_model.safetensors", "relation_module.safetensors", "infosam_config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    card = (out / "README.md").read_text()
    assert "| PEFT method | Bottleneck Adapter |" in card and "| Adapted blocks | 1 |" in card
    tags = card.split("---")[1]
    assert "- infosam_bottleneck_adapter" in tags and "- lora" not in tags
    save_file(dict(batch), str(tmp_path / "batch.safetensors"))
    code = textwrap.dedent(f"""
        import torch
        from safetensors.torch import load_file, save_file
        import infosam_hf  # registers the bottleneck adapter with PEFT
        from peft import PeftModel
        from transformers import SamModel
        batch = load_file({str(tmp_path / "batch.safetensors")!r})
        model = PeftModel.from_pretrained(SamModel.from_pretrained({str(base_folder)!r}), {str(out)!r}).eval()
        with torch.no_grad():
            masks = model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"],
                          multimask_output=False).pred_masks
        save_file({{"masks": masks.contiguous()}}, {str(tmp_path / "masks.safetensors")!r})
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(load_file(tmp_path / "masks.safetensors")["masks"], expected, rtol=0, atol=0)

    # the InfoSAM loaders: inference and continued training
    loaded, _ = infosam_hf.load(out, base_model=str(base_folder))
    torch.testing.assert_close(predict(loaded, batch), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="merge=True cannot be used.*nonlinear"):
        infosam_hf.load(out, base_model=str(base_folder), merge=True)
    again = infosam_hf.load_for_training(out, base_model=str(base_folder))
    assert torch.equal(again.relation_module.query_proj.weight, model.relation_module.query_proj.weight)
    torch.testing.assert_close(predict(again.student.eval(), batch), expected, rtol=0, atol=0)


def test_push_and_load_from_the_hub(fake_hub, base_folder, tmp_path):
    api = HfApi()
    api.create_repo("tiny/sam-base")
    api.upload_folder(repo_id="tiny/sam-base", folder_path=base_folder)
    config = InfoSAMConfig()
    model = infosam_hf.InfoSAMModel(
        infosam_hf.build_student(
            SamModel.from_pretrained("tiny/sam-base"), config, PeftArguments(peft_method="adapter")
        ),
        config,
    ).eval()
    with torch.no_grad():
        for _, p in model.student.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = toy_batch(2)
    expected = predict(model.student, batch)
    model.push_to_hub("tiny/infosam-adapter")
    files = fake_hub.files("tiny/infosam-adapter")
    assert json.loads(files["adapter_config.json"])["peft_type"] == PEFT_TYPE
    assert "import infosam_hf  # noqa: F401  registers the Bottleneck Adapter" in files["README.md"].decode()
    loaded, _ = infosam_hf.load("tiny/infosam-adapter")
    torch.testing.assert_close(predict(loaded, batch), expected, rtol=0, atol=0)
    plain = PeftModel.from_pretrained(SamModel.from_pretrained("tiny/sam-base"), "tiny/infosam-adapter").eval()
    torch.testing.assert_close(predict(plain, batch), expected, rtol=0, atol=0)


def test_overhead_benchmark_puts_the_adapter_beside_lora():
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "overhead.py"), "--steps", "1", "--repeats", "1",
         "--distinct_batches", "1", "--batch_size", "2", "--threads", "1", "--modes", "peft,infosam,adapter,adapter_infosam"],
        capture_output=True, text=True, check=False, cwd=root, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("adapter_vs_lora "))
    values = dict(re.findall(r"(\w+)=([0-9.]+)", line))
    assert {"plain_time", "plain_cpu_time", "plain_memory", "infosam_time", "infosam_cpu_time", "infosam_memory"} <= set(values)
    adapter, lora = (int(v) for v in re.search(r"trained_params=(\d+)/(\d+)", line).groups())
    assert adapter != lora and out.stdout.strip().splitlines()[-1].startswith("time_ratio=")
