"""Feature capture and the student/teacher pair on a tiny SamModel: a student that has moved, a bf16 teacher, SDPA."""


from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import instance_row, make_model, moved_student_model
from transformers import SamModel

from infosam_hf import (
    InfoSAMConfig,
    InfoSAMModel,
    InfoSAMTrainer,
    InfoSAMTrainingArguments,
    build_student,
    capture_sam_features,
)
from infosam_hf.data import PromptSampler, SamSegmentationCollator
from infosam_hf.features import flatten_image_embeddings
from infosam_hf.losses import relation_distillation_loss
from infosam_hf.modeling import upsample_masks
from infosam_hf.testing import tiny_sam_config, toy_batch


@pytest.fixture
def base():
    torch.manual_seed(0)
    return SamModel(tiny_sam_config()).eval()


def reference_features(model, batch):
    """z_i and z_m computed by calling the submodules by hand, to check the hooks against.

    z_i is flattened here without `flatten_image_embeddings` (the function under test): position-major,
    channels last. z_m is the output token at the index the decoder gives its first mask token (after the
    IoU token(s) it puts first).
    """
    emb = model.vision_encoder(batch["pixel_values"]).last_hidden_state
    sparse, dense = model.prompt_encoder(input_points=None, input_labels=None, input_boxes=batch["input_boxes"], input_masks=None)
    dec = model.mask_decoder
    tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight]).repeat(emb.shape[0], 1, 1, 1)
    tokens = torch.cat([tokens, sparse], dim=2)
    pos = model.get_image_wide_positional_embeddings().repeat(emb.shape[0], 1, 1, 1)
    queries, _ = dec.transformer(tokens, emb + dense, pos, None)
    first_mask_token = dec.iou_token.weight.shape[0]
    return emb.flatten(2).transpose(1, 2), queries[:, 0, first_mask_token : first_mask_token + 1]


def test_capture_on_plain_sam_matches_manual_computation(base):
    batch = toy_batch(2)
    with capture_sam_features(base) as feats:
        base(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    z_i, z_m = reference_features(base, batch)
    assert feats.image_feats.shape == (2, 64, 256) and feats.mask_token.shape == (2, 1, 256)
    torch.testing.assert_close(feats.image_feats, z_i)
    torch.testing.assert_close(feats.mask_token, z_m)
    # hooks are gone after the block
    assert all(not m._forward_hooks for m in base.modules())


def test_stop_after_tokens_skips_the_mask_upscaling_and_captures_the_same(base):
    batch = toy_batch(2)
    upscaled = []
    hook = base.mask_decoder.upscale_conv1.register_forward_hook(lambda *_: upscaled.append(1))
    with torch.no_grad(), capture_sam_features(base, stop_after_tokens=True) as feats:
        result = base(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
        pytest.fail("the forward should have ended at the two-way transformer")  # pragma: no cover
    assert not upscaled and "result" not in locals()
    z_i, z_m = reference_features(base, batch)
    torch.testing.assert_close(feats.image_feats, z_i)
    torch.testing.assert_close(feats.mask_token, z_m)
    with torch.no_grad(), capture_sam_features(base):  # without the flag the forward runs whole
        base(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    assert upscaled
    hook.remove()
    assert all(not m._forward_hooks for m in base.modules())


def test_capture_inside_peft_with_modules_to_save_follows_adapter_state(base):
    batch = toy_batch(2)
    reference = SamModel(tiny_sam_config()).eval()
    reference.load_state_dict(base.state_dict())
    student = build_student(base, InfoSAMConfig())
    # make the trainable decoder copy and the LoRA deltas non-zero so the two paths are distinguishable
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "modules_to_save" in name or "lora_B" in name:
                p.add_(0.05)
    with capture_sam_features(student) as feats:
        student(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    adapted_tok, adapted_img = feats.mask_token.clone(), feats.image_feats.clone()
    with student.disable_adapter(), capture_sam_features(student) as feats:
        student(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    z_i, z_m = reference_features(reference, batch)
    # adapters off: the original decoder copy ran and reproduces the pre-trained model
    torch.testing.assert_close(feats.image_feats, z_i)
    torch.testing.assert_close(feats.mask_token, z_m)
    # adapters on: the trainable copy ran
    assert not torch.allclose(adapted_tok, z_m) and not torch.allclose(adapted_img, z_i)


def test_shared_teacher_equals_frozen_pretrained_model(base):
    batch = toy_batch(3)
    reference = SamModel(tiny_sam_config())
    reference.load_state_dict(base.state_dict())
    model = InfoSAMModel(build_student(base, InfoSAMConfig()), InfoSAMConfig())
    with torch.no_grad():
        for _, p in model.student.named_parameters():
            if p.requires_grad:
                p.add_(0.05)  # the student has moved away from the pre-trained weights
    out = model(**batch)
    z_i, z_m = reference_features(reference, batch)
    torch.testing.assert_close(out.teacher_image_feats, z_i)
    torch.testing.assert_close(out.teacher_mask_tokens, z_m)
    assert not out.teacher_image_feats.requires_grad and not out.teacher_mask_tokens.requires_grad
    assert out.student_image_feats.requires_grad
    # adapters are active again after the teacher pass
    assert all(p.requires_grad for n, p in model.student.named_parameters() if "lora_" in n)


def test_separate_teacher_gets_no_gradient(base):
    teacher = SamModel(tiny_sam_config())
    model = InfoSAMModel(build_student(base, InfoSAMConfig()), InfoSAMConfig(), teacher=teacher)
    out = model(**toy_batch(2))
    (out.relation_student.sum() + out.relation_teacher.sum() + out.pred_masks.sum()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(p.grad is not None for p in model.relation_module.parameters())
    model.train()
    assert not teacher.training and model.student.training


def test_frozen_batchnorm_keeps_its_running_statistics_in_training(base):
    """EdgeTAM's RepViT has BatchNorm: frozen, it must not learn statistics the adapter does not save."""
    frozen, trainable = torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    base.vision_encoder.add_module("frozen_norm", frozen)  # frozen with the encoder by build_student
    model = InfoSAMModel(build_student(base, InfoSAMConfig()), InfoSAMConfig())
    base.vision_encoder.add_module("trained_norm", trainable)
    trainable.requires_grad_(True)
    model.train()
    assert model.student.training and not frozen.training and trainable.training
    before = frozen.running_mean.clone()
    frozen(torch.randn(8, 4) + 3.0)
    assert torch.equal(frozen.running_mean, before)
    model.eval()
    model.train(False)
    assert not trainable.training


def test_any_peft_config_is_accepted(base):
    from peft import IA3Config

    student = build_student(base, InfoSAMConfig(), IA3Config(target_modules=["qkv", "proj"], feedforward_modules=["proj"]))
    model = InfoSAMModel(student, InfoSAMConfig())
    out = model(**toy_batch(2))
    assert out.relation_student.shape == (2, 64)


@pytest.mark.parametrize("multimask", [False, True])
def test_z_m_is_the_token_the_decoder_turns_into_its_first_mask(base, multimask):
    # The decoder's own layout, not an index copied from it: the first hypernetwork MLP reads the first
    # mask token (mask i = hypernetwork i applied to mask token i), whether or not multimask output is on.
    config = InfoSAMConfig(multimask_output=multimask)
    model = InfoSAMModel(build_student(base, config), config)
    read = []
    mlps = [m for n, m in model.named_modules() if n.endswith("output_hypernetworks_mlps.0")]
    handles = [m.register_forward_hook(lambda _m, inputs, _out: read.append(inputs[0])) for m in mlps]
    out = model(**toy_batch(2))
    for handle in handles:
        handle.remove()
    assert out.pred_masks.shape[1] == (3 if multimask else 1) and out.student_mask_tokens.shape == (2, 1, 256)
    assert len(read) == 1  # the student's decoder; the teacher stops before the hypernetworks
    torch.testing.assert_close(out.student_mask_tokens, read[0], rtol=0, atol=0)


def test_flatten_puts_positions_first_and_channels_last():
    emb = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # (B, C, h, w)
    flat = flatten_image_embeddings(emb)
    assert flat.shape == (2, 4 * 5, 3)
    for b in range(2):
        for y in range(4):
            for x in range(5):
                assert flat[b, y * 5 + x].tolist() == emb[b, :, y, x].tolist()


def bilinear_half_pixel(values: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), written out: output pixel i samples
    the input at (i + 0.5) * n_in / n_out - 0.5, clamped to the border."""

    def weights(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            lo = min(int(np.floor(src)), n_in - 1)
            hi = min(lo + 1, n_in - 1)
            w[i, lo] += 1 - (src - lo)
            w[i, hi] += src - lo
        return w

    return weights(values.shape[0], out_h) @ values @ weights(values.shape[1], out_w).T


def test_upsample_masks_is_bilinear_with_half_pixel_centres_as_sam_postprocesses():
    low_res = torch.randn(2, 1, 16, 12, generator=torch.Generator().manual_seed(0))
    up = upsample_masks(low_res, (64, 40))
    assert up.shape == (2, 1, 64, 40) and up.dtype == torch.float32
    for b in range(2):
        expected = torch.from_numpy(bilinear_half_pixel(low_res[b, 0].double().numpy(), 64, 40)).float()
        torch.testing.assert_close(up[b, 0], expected, rtol=1e-5, atol=1e-5)


def test_the_distillation_term_reaches_the_student_through_the_model(base):
    # InfoSAMLoss's own test covers the loss alone; this checks the model does not cut the graph before it.
    model = InfoSAMModel(build_student(base, InfoSAMConfig()), InfoSAMConfig())
    out = model(**toy_batch(3))
    loss_d = relation_distillation_loss(out.relation_teacher, out.relation_student)
    grads = torch.autograd.grad(loss_d, [out.student_image_feats, out.student_mask_tokens], allow_unused=True,
                                retain_graph=True)
    for name, grad in zip(("z_i", "z_m"), grads):
        assert grad is not None and grad.abs().sum() > 0, f"L_d does not reach the student's {name}"
    loss_d.backward()
    for kind in ("lora_B", "modules_to_save"):
        got = [p.grad for n, p in model.student.named_parameters() if kind in n and p.requires_grad]
        assert got and any(g is not None and g.abs().sum() > 0 for g in got), kind


def test_bad_inputs_have_clear_errors(base):
    with pytest.raises(TypeError, match="SamModel"):
        build_student(torch.nn.Linear(3, 3), InfoSAMConfig())
    with pytest.raises(TypeError, match="PeftModel"):
        InfoSAMModel(base, InfoSAMConfig())
    model = InfoSAMModel(build_student(base, InfoSAMConfig()), InfoSAMConfig())
    batch = toy_batch(2)
    with pytest.raises(ValueError, match="no prompt"):
        model(pixel_values=batch["pixel_values"], gt_masks=batch["gt_masks"])
    with pytest.raises(ValueError, match="relation_dim"):
        InfoSAMModel(build_student(SamModel(tiny_sam_config()), InfoSAMConfig()), InfoSAMConfig(relation_dim=128))
    # several prompts per image are supported (issue 12); a validity mask that does not fit them is refused
    with pytest.raises(ValueError, match="prompt_mask"):
        model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"].repeat(1, 2, 1),
              prompt_mask=torch.ones(2, 3, dtype=torch.bool))


def test_config_validation_and_json_round_trip(tmp_path):
    config = InfoSAMConfig(lambda_1=0.3, seg_loss="focal_dice_iou", num_points=3)
    config.save_pretrained(tmp_path)
    assert InfoSAMConfig.from_pretrained(tmp_path) == config
    for bad, match in [
        (dict(lambda_1=-1.0), "lambda_1"),
        (dict(lambda_2=float("nan")), "lambda_2"),
        (dict(lambda_1=float("inf")), "lambda_1 must be a finite number"),
        (dict(box_noise=float("inf")), "box_noise must be a finite number"),
        (dict(seg_loss="dice"), "seg_loss.*structure"),
        (dict(box_prompt_probability=1.5), "box_prompt_probability"),
        (dict(num_points=0), "num_points"),
        (dict(max_box_noise=-1.0), "max_box_noise"),
        (dict(box_jitter="gaussian"), "box_jitter.*shift.*corners"),
    ]:
        with pytest.raises(ValueError, match=match):
            InfoSAMConfig(**bad)
    (tmp_path / "infosam_config.json").write_text('{"lambda_3": 1}')
    with pytest.raises(ValueError, match="lambda_3"):
        InfoSAMConfig.from_pretrained(tmp_path)


def test_config_from_hf_argument_parser():
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(InfoSAMConfig).parse_args_into_dataclasses(
        ["--lambda_1", "0.25", "--seg_loss", "focal_dice_iou", "--train_relation_module", "false"]
    )
    assert config.lambda_1 == 0.25 and config.seg_loss == "focal_dice_iou" and config.train_relation_module is False
    (sam_recipe,) = HfArgumentParser(InfoSAMConfig).parse_args_into_dataclasses(
        ["--max_box_noise", "20", "--box_jitter", "corners"]
    )
    assert sam_recipe.max_box_noise == 20.0 and sam_recipe.box_jitter == "corners"
    with pytest.raises(SystemExit):
        HfArgumentParser(InfoSAMConfig).parse_args_into_dataclasses(["--seg_loss", "nope"])


@pytest.mark.slow
def test_torch_compile_keeps_capture(base):
    batch = toy_batch(2)
    with capture_sam_features(base) as eager:
        base(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    compiled = torch.compile(base)
    with capture_sam_features(base) as feats:
        compiled(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    torch.testing.assert_close(feats.mask_token, eager.mask_token, atol=1e-4, rtol=1e-4)


def test_there_is_one_infosam_model_class_with_save_load_and_push():
    """One class named InfoSAMModel in the whole package (no Hub subclass), and every public path leads to it."""
    import ast
    import importlib

    import infosam_hf
    import infosam_hf.modeling

    package = Path(infosam_hf.__file__).parent  # every module, found on disk
    defined = [
        path.relative_to(package.parent).with_suffix("").as_posix().replace("/", ".")
        for path in sorted(package.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.name == "InfoSAMModel"
    ]
    assert defined == ["infosam_hf.modeling"]
    assert InfoSAMModel is infosam_hf.InfoSAMModel is infosam_hf.modeling.InfoSAMModel
    for name in ("infosam_hf.hub", "infosam_hf.loading", "infosam_hf.model_card", "infosam_hf.trainer"):
        assert importlib.import_module(name).InfoSAMModel is InfoSAMModel, name
    assert {"forward", "save_pretrained", "from_pretrained", "push_to_hub"} <= set(vars(InfoSAMModel))


# --------------------------------------------------------------------------- a student that has moved (issue 32 audit)
def _features(sam, batch, prompts):
    with torch.no_grad(), capture_sam_features(sam) as feats:
        sam(pixel_values=batch["pixel_values"], multimask_output=False, **prompts)
    return feats


def test_moved_student_one_prompt_relations_use_each_sides_own_features():
    model, pretrained = moved_student_model()
    batch = toy_batch(3)
    out = model(**batch)
    prompts = {"input_boxes": batch["input_boxes"]}
    teacher, student = _features(pretrained, batch, prompts), _features(model.student, batch, prompts)
    relation = model.relation_module
    with torch.no_grad():
        torch.testing.assert_close(out.relation_teacher, relation(teacher.image_feats, teacher.mask_token))
        torch.testing.assert_close(out.relation_student, relation(student.image_feats, student.mask_token))
    # the fixture is what makes the two checks above able to fail
    assert (teacher.image_feats - student.image_feats).abs().max() > 1e-3
    assert (teacher.mask_token - student.mask_token).abs().max() > 1e-3
    assert (out.relation_teacher - out.relation_student).abs().max() > 1e-4


def test_moved_student_several_prompts_relations_use_each_sides_own_features():
    model, pretrained = moved_student_model()
    batch = SamSegmentationCollator(PromptSampler(box_noise=0.0), "box", max_objects_per_image=3)(
        [instance_row(3, 0), instance_row(1, 1), instance_row(2, 2)]
    )
    out = model(**batch)
    valid = batch["prompt_mask"]
    prompts = {"input_boxes": batch["input_boxes"]}
    teacher, student = _features(pretrained, batch, prompts), _features(model.student, batch, prompts)
    relation = model.relation_module
    with torch.no_grad():
        expected_teacher = relation.forward_prompts(teacher.image_feats, teacher.prompt_mask_tokens)[valid]
        expected_student = relation.forward_prompts(student.image_feats, student.prompt_mask_tokens)[valid]
    torch.testing.assert_close(out.relation_teacher, expected_teacher)
    torch.testing.assert_close(out.relation_student, expected_student)
    torch.testing.assert_close(out.teacher_image_feats, teacher.image_feats)
    torch.testing.assert_close(out.teacher_mask_tokens, teacher.prompt_mask_tokens[valid].unsqueeze(1))
    assert (out.relation_teacher - out.relation_student).abs().max() > 1e-4


# ---------------------------------------- speed switches: a half-precision teacher beside a float32 student, SDPA attention
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
    assert dtypes == [torch.bfloat16, torch.float32], "the teacher first, in bf16, then the student in float32"
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
