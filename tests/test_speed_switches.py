"""Speed switches users expect: a half-precision teacher beside a float32 student, and SDPA attention."""

import pytest
import torch
from transformers import SamModel

from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer, InfoSAMTrainingArguments, build_student
from infosam_hf.testing import tiny_sam_config, toy_batch


def make_model(teacher_dtype=None, **config_kwargs):
    config = InfoSAMConfig(**config_kwargs)
    torch.manual_seed(0)
    return InfoSAMModel(build_student(SamModel(tiny_sam_config()), config), config, teacher_dtype=teacher_dtype)


def loss_parts(model, batch):
    outputs = model(**batch)
    parts = InfoSAMTrainer.compute_infosam_loss(outputs, batch["gt_masks"], model.infosam_config)
    return outputs, parts


def test_bf16_teacher_runs_in_bf16_and_keeps_the_loss_parts_close_to_float32():
    batch = toy_batch(4)
    reference, reference_parts = loss_parts(make_model(), batch)
    model = make_model(teacher_dtype="bfloat16")
    dtypes = []
    model.student.get_base_model().vision_encoder.register_forward_hook(
        lambda _m, _i, out: dtypes.append(out.last_hidden_state.dtype)
    )
    outputs, parts = loss_parts(model, batch)
    assert dtypes == [torch.float32, torch.bfloat16], "student in float32, then the teacher in bf16"
    assert outputs.teacher_image_feats.dtype == torch.float32  # handed to the relation module in float32
    assert not torch.equal(outputs.teacher_image_feats, reference.teacher_image_feats), "bf16 must round"
    torch.testing.assert_close(outputs.student_image_feats, reference.student_image_feats, rtol=0, atol=0)
    # Measured here: loss_d -1.8663 -> -1.8624, loss 0.4551 -> 0.4527, loss_r -0.0682 -> -0.0726. L_r is a
    # difference of two nearly equal entropies, so bf16's rounding of z_i shows most there (absolute 4e-3).
    torch.testing.assert_close(parts["loss_seg"], reference_parts["loss_seg"], rtol=0, atol=0)  # no teacher in it
    torch.testing.assert_close(parts["loss_d"], reference_parts["loss_d"], rtol=1e-2, atol=0)
    torch.testing.assert_close(parts["loss"], reference_parts["loss"], rtol=2e-2, atol=0)
    torch.testing.assert_close(parts["loss_r"], reference_parts["loss_r"], rtol=0, atol=1e-2)
    parts["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_teacher_dtype_is_validated(tmp_path):
    with pytest.raises(ValueError, match="InfoSAMTrainingArguments.teacher_dtype must be None, 'bfloat16'"):
        InfoSAMTrainingArguments(output_dir=str(tmp_path), report_to=[], teacher_dtype="half")
    with pytest.raises(ValueError, match="InfoSAMModel.teacher_dtype must be None, 'bfloat16'"):
        make_model(teacher_dtype="half")


def test_sam_attention_is_sdpa_by_default_for_student_and_teacher():
    model = make_model()
    separate = InfoSAMModel(model.student, model.infosam_config, teacher=SamModel(tiny_sam_config()))
    for sam in (model.student.get_base_model(), separate.teacher):
        config = sam.config
        assert config._attn_implementation == "sdpa"
        assert config.vision_config._attn_implementation == "sdpa"
        assert config.mask_decoder_config._attn_implementation == "sdpa"
