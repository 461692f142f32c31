"""One-call loading of a saved InfoSAM adapter from a local folder (the Hub path is the same after download)."""

import pytest
import torch
from peft import PeftModel
from transformers import SamImageProcessor, SamModel, SamProcessor

import infosam_hf
from infosam_hf import InfoSAMConfig, InfoSAMModel, PeftArguments, build_student
from infosam_hf.loading import load_for_training
from infosam_hf.testing import tiny_sam_config, toy_batch


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    SamModel(tiny_sam_config()).save_pretrained(base_dir)
    base = SamModel.from_pretrained(base_dir)
    config = InfoSAMConfig()
    model = InfoSAMModel(build_student(base, config, PeftArguments(lora_r=2)), config)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))  # a "trained" adapter that differs from the base
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)
    SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})).save_pretrained(adapter_dir)
    return model, base_dir, adapter_dir


def predict(model, batch):
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False).pred_masks


def test_load_gives_identical_predictions_and_merge_gives_the_same_masks(saved):
    model, base_dir, adapter_dir = saved
    batch = toy_batch(2)
    model.eval()
    expected = predict(model.student, batch)
    loaded, processor = infosam_hf.load(str(adapter_dir))
    assert processor.image_processor.size["longest_edge"] == 64 and not loaded.training
    torch.testing.assert_close(predict(loaded, batch), expected)
    merged, _ = infosam_hf.load(str(adapter_dir), merge=True)
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(predict(merged, batch), expected, rtol=1e-4, atol=1e-4)
    plain = PeftModel.from_pretrained(SamModel.from_pretrained(base_dir), str(adapter_dir))
    torch.testing.assert_close(predict(plain.eval(), batch), expected)


def test_continued_training_restores_the_relation_module_bit_for_bit(saved):
    model, _, adapter_dir = saved
    again = load_for_training(str(adapter_dir))
    for key, value in model.relation_module.state_dict().items():
        assert torch.equal(value, again.relation_module.state_dict()[key])
    (adapter_dir / "relation_module.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="relation_module.safetensors"):
        load_for_training(str(adapter_dir))


def test_bad_sources_say_what_is_missing(saved, tmp_path, monkeypatch):
    _, _, adapter_dir = saved
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        infosam_hf.load(str(tmp_path / "empty"))
    other_base = SamModel(tiny_sam_config(vision_hidden_size=48))
    with pytest.raises(ValueError, match="does not fit this base model"):
        infosam_hf.load(str(adapter_dir), base_model=other_base)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(FileNotFoundError, match=r"Could not download 'nobody/does-not-exist'.*HF_HUB_OFFLINE is set.*no "
                                                r"copy is cached"):
        infosam_hf.load("nobody/does-not-exist")
