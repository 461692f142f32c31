"""The built-in tiny SAM 2 (examples/pretrain_builtin_sam2.py): its prompt encoding, card and recorded path.

`examples/train.py --builtin_model sam2` is tested in tests/scripts/test_train_script.py."""

import os

import torch
from helpers import ROOT, load_example
from transformers import Sam2Model

from infosam_hf.builtin import BUILTIN_MODEL_PATH, BUILTIN_SAM2_PATH, builtin_model_path


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
