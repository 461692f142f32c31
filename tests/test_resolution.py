"""Training and predicting at another input size than the checkpoint's (infosam_hf.resolution, issue 19)."""

import copy
import json
import logging
import math

import numpy as np
import pytest
import torch
from transformers import SamModel, SamProcessor, TrainingArguments

import infosam_hf
from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer, PeftArguments, build_student
from infosam_hf.builtin import BUILTIN_MODEL_PATH
from infosam_hf.inference import sam_low_res_logits
from infosam_hf.models import load_sam_model
from infosam_hf.resolution import adapt_model, adapt_processor, model_image_size, resize_rel_pos
from infosam_hf.testing import load_script, tiny_family_model, tiny_sam_config, toy_batch, toy_segmentation_dataset


def builtin():
    return load_sam_model(BUILTIN_MODEL_PATH)  # 128 px, patch 8, window 4, one global-attention layer


def args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, learning_rate=1e-3, max_steps=2,
                  save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0)
    values.update(overrides)
    return TrainingArguments(**values)


def batch(size, n=2, seed=3):
    b = toy_batch(n, image_size=size, seed=seed)
    return b["pixel_values"], b["input_boxes"]


def test_adapted_builtin_trains_saves_and_reloads_at_the_recorded_size(tmp_path, caplog):
    processor = adapt_processor(SamProcessor.from_pretrained(BUILTIN_MODEL_PATH), 64)
    config = InfoSAMConfig(image_size=64)
    with caplog.at_level(logging.WARNING, logger="infosam_hf.resolution"):
        trainer = InfoSAMTrainer(model=builtin(), args=args(tmp_path), infosam_config=config,
                                 peft_config=PeftArguments(lora_r=2),
                                 train_dataset=toy_segmentation_dataset(4, image_size=64), processing_class=processor)
    assert "from 128 px to 64 px" in caplog.text
    model = trainer.model
    assert model.teacher is None  # shared weights: the teacher is the adapted base itself
    sam = model.student.get_base_model()
    assert sam.config.vision_config.image_size == sam.config.prompt_encoder_config.image_size == 64
    assert sam.config.prompt_encoder_config.image_embedding_size == 8
    assert sam.vision_encoder.pos_embed.shape == (1, 8, 8, 96)
    pixels, boxes = batch(64)
    out = model(pixel_values=pixels, input_boxes=boxes)
    assert out.student_image_feats.shape == out.teacher_image_feats.shape == (2, 64, 256)  # z_i on the 8x8 grid
    trainer.train()
    assert all(e["loss_d"] != 0 for e in trainer.state.log_history if "loss_d" in e)
    saved = tmp_path / "adapter"
    trainer.save_model(str(saved))
    assert json.loads((saved / "infosam_config.json").read_text())["image_size"] == 64
    assert "| Input resolution | 64 px (base adapted to it" in (saved / "README.md").read_text()

    model.eval()
    expected = sam_low_res_logits(model, pixels, input_boxes=boxes)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infosam_hf.resolution"):
        loaded, loaded_processor = infosam_hf.load(str(saved))
    assert "trained at 64 px" in caplog.text
    assert model_image_size(loaded) == 64
    assert torch.equal(sam_low_res_logits(loaded, pixels, input_boxes=boxes), expected)
    # the processor resizes and pads to 64, and post-processes masks from that frame
    from PIL import Image

    inputs = loaded_processor(images=Image.new("RGB", (100, 50)), input_boxes=[[[10, 10, 40, 30]]], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (64, 64) and inputs["reshaped_input_sizes"].tolist() == [[32, 64]]
    masks = loaded_processor.post_process_masks(torch.zeros(1, 1, 1, 16, 16), inputs["original_sizes"],
                                                inputs["reshaped_input_sizes"])
    assert masks[0].shape[-2:] == (50, 100)
    # continuing training rebuilds the same pair at the recorded size
    again = infosam_hf.load_for_training(str(saved))
    assert again.infosam_config.image_size == 64 and model_image_size(again.student) == 64
    assert torch.equal(sam_low_res_logits(again, pixels, input_boxes=boxes), expected)
    # the merged standalone export records the size in its config.json
    exported = tmp_path / "merged"
    infosam_hf.export(str(saved), str(exported))
    written = json.loads((exported / "config.json").read_text())
    assert written["vision_config"]["image_size"] == written["prompt_encoder_config"]["image_size"] == 64
    assert torch.allclose(sam_low_res_logits(SamModel.from_pretrained(exported), pixels, input_boxes=boxes), expected,
                          atol=1e-4)


def test_adapting_to_the_own_size_changes_nothing(tmp_path):
    base = builtin()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    assert adapt_model(base, 128) is base
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())
    # an explicit image_size equal to the checkpoint's trains exactly like the default
    results = []
    for size in (None, 128):
        trainer = InfoSAMTrainer(model=builtin(), args=args(tmp_path / str(size)), infosam_config=InfoSAMConfig(
            image_size=size), train_dataset=toy_segmentation_dataset(4, image_size=128))
        trainer.train()
        results.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_only_grid_shaped_weights_change_and_relative_positions_match_sams_own_interpolation():
    base = builtin().eval()
    adapted = adapt_model(base, 64)
    before, after = base.state_dict(), adapted.state_dict()
    changed = {k for k in before if before[k].shape != after[k].shape}
    assert changed == {"vision_encoder.pos_embed", "vision_encoder.layers.3.attn.rel_pos_h",
                       "vision_encoder.layers.3.attn.rel_pos_w"}  # layer 3 is the global one; windows keep theirs
    assert all(torch.equal(before[k], after[k]) for k in before if k not in changed)
    assert after["vision_encoder.layers.3.attn.rel_pos_h"].shape[0] == 2 * 8 - 1
    # SAM interpolates a table that does not fit on the fly: the resized table gives the same attention bias
    attn = base.vision_encoder.layers[3].attn
    table = attn.rel_pos_h.detach()
    assert torch.equal(attn.get_rel_pos(8, 8, table), attn.get_rel_pos(8, 8, resize_rel_pos(table, 15)))
    # the base itself is untouched and both still run
    pixels, boxes = batch(64)
    assert adapted(pixel_values=pixels, input_boxes=boxes, multimask_output=False).pred_masks.shape[-1] == 32
    assert model_image_size(base) == 128


def test_rng_is_left_as_it_was():
    base = builtin()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    adapt_model(base, 64)
    assert torch.equal(torch.rand(3), expected)


def test_separate_teacher_gets_the_same_adaptation(tmp_path):
    teacher = builtin()
    trainer = InfoSAMTrainer(model=builtin(), args=args(tmp_path), teacher_model=teacher,
                             infosam_config=InfoSAMConfig(image_size=64), train_dataset=toy_segmentation_dataset(4, 64))
    assert model_image_size(trainer.model.teacher) == 64
    pixels, boxes = batch(64)
    out = trainer.model(pixel_values=pixels, input_boxes=boxes)
    assert out.teacher_image_feats.shape == out.student_image_feats.shape == (2, 64, 256)


@pytest.mark.parametrize(
    "size, message",
    [(60, "not a multiple of 8"), (256, "allow_image_upscaling"), (0, "positive number of pixels")],
)
def test_bad_sizes_are_refused_with_the_fix(size, message):
    with pytest.raises(ValueError, match=message):
        adapt_model(builtin(), size)


def test_dtype_and_device_are_kept():
    adapted = adapt_model(builtin().to(torch.bfloat16), 64)
    assert {p.dtype for p in adapted.parameters()} == {torch.bfloat16}


def test_upscaling_when_allowed():
    adapted = adapt_model(builtin(), 192, allow_upscaling=True)
    assert adapted.vision_encoder.pos_embed.shape == (1, 24, 24, 96)


def test_config_field_and_mismatched_wrappers_are_refused():
    with pytest.raises(ValueError, match="InfoSAMConfig.image_size"):
        InfoSAMConfig(image_size=-64)
    student = build_student(builtin(), InfoSAMConfig())
    with pytest.raises(TypeError, match="before wrapping"):
        adapt_model(student, 64)
    with pytest.raises(ValueError, match="takes 128 px inputs but InfoSAMConfig.image_size is 64"):
        InfoSAMModel(student, InfoSAMConfig(image_size=64))


def test_adapter_loaded_at_another_size_only_when_asked(tmp_path):
    torch.manual_seed(0)
    config = InfoSAMConfig(image_size=32)
    model = InfoSAMModel(build_student(adapt_model(SamModel(tiny_sam_config()), 32), config), config)
    model.save_pretrained(tmp_path / "a32", model_card=False)
    with pytest.raises(ValueError, match=r"trained at 32 px .* image_size=64 was asked.*allow_image_size_change"):
        infosam_hf.load(str(tmp_path / "a32"), base_model=SamModel(tiny_sam_config()), image_size=64)
    loaded, _ = infosam_hf.load(str(tmp_path / "a32"), base_model=SamModel(tiny_sam_config()), image_size=64,
                                allow_image_size_change=True)
    assert model_image_size(loaded) == 64
    # an adapter trained at its base's own size (nothing recorded) is not silently shrunk either
    native = InfoSAMModel(build_student(SamModel(tiny_sam_config()), InfoSAMConfig()))
    native.save_pretrained(tmp_path / "a64", model_card=False)
    with pytest.raises(ValueError, match="its base checkpoint's size"):
        infosam_hf.load(str(tmp_path / "a64"), base_model=SamModel(tiny_sam_config()), image_size=32)


@pytest.mark.parametrize("model_class", ["SamHQModel", "Sam2Model", "Sam3TrackerModel", "EdgeTamModel"])
def test_other_families_adapt_to_half_size(model_class):
    model = tiny_family_model(model_class)
    native = model_image_size(model)
    half = native // 2
    adapted = adapt_model(model, half)
    assert model_image_size(adapted) == half
    boxes = torch.tensor([[[2.0, 2.0, half - 4.0, half - 4.0]]] * 2)
    with torch.no_grad():
        small = adapted(pixel_values=torch.randn(2, 3, half, half), input_boxes=boxes, multimask_output=False)
        full = model(pixel_values=torch.randn(2, 3, native, native), input_boxes=boxes * 2, multimask_output=False)
    assert small.pred_masks.shape[-1] * 2 == full.pred_masks.shape[-1]
    with pytest.raises(ValueError, match="not a multiple of"):
        adapt_model(model, half + 2)
    student = build_student(copy.deepcopy(adapted), InfoSAMConfig(relation_dim=32))
    pair = InfoSAMModel(student, InfoSAMConfig(relation_dim=32, image_size=half))
    out = pair(pixel_values=torch.randn(2, 3, half, half), input_boxes=boxes)
    assert out.teacher_image_feats.shape == out.student_image_feats.shape


@pytest.mark.slow
def test_scripts_train_evaluate_and_predict_at_image_size(tmp_path):
    import os

    import numpy as np
    import PIL.Image

    from infosam_hf.synthetic import write_synthetic_dataset

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def script(name):
        return load_script(os.path.join(root, "examples", f"{name}.py"), f"{name}_script")

    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=8, num_test=4, image_size=128, seed=1)
    out = tmp_path / "run"
    summary = script("train").main(
        ["--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size",
         "2", "--disable_tqdm", "true", "--lora_r", "2", "--eval_overlays", "0", "--image_size", "64"]
    )
    assert json.loads((out / "infosam_config.json").read_text())["image_size"] == 64
    processor_config = json.loads((out / "processor_config.json").read_text())["image_processor"]
    assert processor_config["size"] == {"longest_edge": 64} and processor_config["pad_size"]["height"] == 64
    evaluate = script("evaluate_adapter")
    evaluated = evaluate.main(["--adapter", str(out), "--dataset_name", str(data), "--disable_tqdm", "true"])
    assert summary["iou"] == pytest.approx(evaluated["metrics"]["adapter"]["iou"], abs=1e-6)  # scored at 64 px too
    with pytest.raises(ValueError, match="allow_image_size_change"):
        evaluate.main(["--adapter", str(out), "--dataset_name", str(data), "--image_size", "128"])
    from infosam_hf.synthetic import make_synthetic_sample

    image = tmp_path / "img.png"
    make_synthetic_sample("specialised", 100, np.random.default_rng(0))[0].crop((0, 0, 100, 70)).save(image)
    script("predict").main(["--adapter", str(out), "--images", str(image), "--box", "2", "2", "60", "60",
                            "--output_dir", str(tmp_path / "pred")])
    (mask,) = (tmp_path / "pred").glob("*_mask.png")
    assert PIL.Image.open(mask).size == PIL.Image.open(image).size
    assert set(np.unique(np.asarray(PIL.Image.open(mask)))) <= {0, 255}


# ---------------------------------------------------------------------- the position-embedding resize (issue 32 audit)
def _cubic_weights(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) matrix of PyTorch's bicubic upsampling: Keys' kernel (a = -0.75), half-pixel centres, edge clamp."""
    a = -0.75

    def kernel(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        x = (i + 0.5) * size_in / size_out - 0.5
        x0 = math.floor(x)
        for j in range(x0 - 1, x0 + 3):
            weights[i, min(max(j, 0), size_in - 1)] += kernel(x - j)
    return weights


def test_position_embedding_resize_matches_a_bicubic_oracle_on_a_non_symmetric_grid():
    from infosam_hf.resolution import resize_abs_pos_embed

    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 3, 4, 5, generator=generator, dtype=torch.float64)  # rows != columns, random content
    rows, cols = _cubic_weights(3, 5), _cubic_weights(4, 7)
    expected = np.einsum("hi,wj,ijc->hwc", rows, cols, pos[0].numpy())[None]
    actual = resize_abs_pos_embed(pos, (5, 7))
    assert actual.shape == (1, 5, 7, 5)
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    # shrinking is antialiased (timm's resample_abs_pos_embed): white noise loses most of its variance
    noise = torch.randn(1, 16, 16, 8, generator=generator)
    assert resize_abs_pos_embed(noise, (8, 8)).std() < 0.6 * noise.std()


def test_an_adapted_model_carries_the_resized_position_embedding():
    from infosam_hf.resolution import adapt_model

    torch.manual_seed(0)
    base = SamModel(tiny_sam_config())
    with torch.no_grad():  # a pre-trained embedding's content (SAM initialises it to zeros): not symmetric
        base.vision_encoder.pos_embed.normal_()
    old = base.vision_encoder.pos_embed.detach().clone()
    assert not torch.allclose(old, old.transpose(1, 2))
    grid = old.shape[1]
    adapted = adapt_model(base, 64 * 3 // 2, allow_upscaling=True)  # upscaled by 1.5: the oracle's case
    new = adapted.vision_encoder.pos_embed.detach()
    weights = _cubic_weights(grid, new.shape[1])
    expected = np.einsum("hi,wj,ijc->hwc", weights, weights, old[0].double().numpy())[None]
    np.testing.assert_allclose(new.double().numpy(), expected, rtol=1e-4, atol=1e-5)
