"""The built-in tiny SAM 2 (examples/pretrain_builtin_sam2.py) and `examples/train.py --builtin_model sam2`."""

import json
import os

import pytest
import torch
from helpers import ROOT, load_example
from transformers import Sam2Model

from infosam_hf.builtin import BUILTIN_MODEL_PATH, BUILTIN_SAM2_PATH, builtin_model_path
from infosam_hf.synthetic import write_synthetic_dataset


def grid_and_prompt_encodings(sam: Sam2Model) -> tuple[torch.Tensor, torch.Tensor]:
    """The image-grid positional embedding (C, h, w) and the prompt encoder's encoding of every cell centre."""
    grid = sam.get_image_wide_positional_embeddings()[0]
    h, w = grid.shape[-2:]
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    centres = torch.stack([xs, ys], dim=-1)[None]  # (1, h, w, 2), normalised (x, y) as SAM 2 encodes prompts
    prompts = sam.prompt_encoder.shared_embedding(centres)[0].permute(2, 0, 1)
    return grid, prompts


def test_fresh_builtin_sam2_encodes_a_prompt_like_the_grid_cell_it_points_at(monkeypatch):
    from infosam_hf.builtin.fresh import fresh_builtin_sam2
    from infosam_hf.testing import builtin_sam2_config

    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    assert load_example("pretrain_builtin_sam2").fresh_builtin_sam2 is fresh_builtin_sam2  # what pre-training starts from
    torch.manual_seed(0)
    with torch.no_grad():
        grid, prompts = grid_and_prompt_encodings(fresh_builtin_sam2())
        assert torch.allclose(grid, prompts, atol=1e-5)
        torch.manual_seed(0)
        grid, prompts = grid_and_prompt_encodings(Sam2Model(builtin_sam2_config()))  # transformers' own init
    assert not torch.allclose(grid, prompts, atol=0.1)  # two independent draws: the reason for fresh_builtin_sam2


def test_shipped_builtin_sam2_was_pretrained_from_one_shared_position_matrix():
    sam = Sam2Model.from_pretrained(BUILTIN_SAM2_PATH)
    grid, prompts = grid_and_prompt_encodings(sam)
    assert torch.allclose(grid, prompts, atol=1e-5)
    assert sam.config.mask_decoder_config.dynamic_multimask_via_stability is False


def test_card_of_an_adapter_on_the_builtin_sam2_names_it():
    from infosam_hf.model_card import _base_model_expr, _base_model_md

    assert _base_model_expr(BUILTIN_SAM2_PATH) == "BUILTIN_SAM2_PATH"
    assert _base_model_expr(BUILTIN_MODEL_PATH) == "BUILTIN_MODEL_PATH"
    assert "the tiny SAM 2 built into" in _base_model_md(BUILTIN_SAM2_PATH)
    assert "the tiny SAM built into" in _base_model_md(BUILTIN_MODEL_PATH)


def test_builtin_sam2_recorded_under_another_install_is_this_one():
    elsewhere = os.path.join("/elsewhere", "site-packages", "infosam_hf", "builtin", "sam2-tiny-general")
    assert builtin_model_path(elsewhere) == BUILTIN_SAM2_PATH
    assert builtin_model_path(elsewhere.replace("sam2-", "sam-")) == BUILTIN_MODEL_PATH


def test_train_script_builtin_model_flag(tmp_path, monkeypatch):
    import infosam_hf.builtin

    train = load_example("train")
    from infosam_hf.script_arguments import builtin_defaults

    assert builtin_defaults("sam2")[:2] == ["--output_dir", os.path.join("outputs", "infosam-builtin-sam2")]
    with pytest.raises(SystemExit, match="both name the model"):
        train.main(["--builtin_model", "sam2", "--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path)])
    monkeypatch.setitem(infosam_hf.builtin.BUILTIN_MODELS, "sam2", str(tmp_path / "absent"))
    with pytest.raises(SystemExit, match="pretrain_builtin_sam2.py"):
        train.main(["--builtin_model", "sam2", "--output_dir", str(tmp_path)])


@pytest.mark.slow
def test_train_script_runs_the_builtin_sam2_path(tmp_path):
    """`--builtin_model sam2` end to end on the shipped built-in SAM 2 (README), then loaded back in one call."""
    import infosam_hf

    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=8, num_test=4, image_size=128, seed=1)
    out = tmp_path / "run"
    summary = load_example("train").main(
        ["--builtin_model", "sam2", "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "2",
         "--per_device_train_batch_size", "2", "--eval_overlays", "0", "--disable_tqdm", "true", "--lora_r", "2"]
    )
    # the shipped model follows boxes on the specialised domain too: far above a prompt-blind model (~0.2)
    assert summary["zero_shot_iou"] > 0.5 and 0.0 <= summary["iou"] <= 1.0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == BUILTIN_SAM2_PATH
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 128, "width": 128} and not processor["do_pad"]  # SAM 2's geometry
    card = (out / "README.md").read_text()
    assert "Sam2Model.from_pretrained(" in card and "the tiny SAM 2 built into" in card
    model, _ = infosam_hf.load(str(out))
    assert type(model.get_base_model()).__name__ == "Sam2Model"
