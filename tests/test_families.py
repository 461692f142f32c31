"""Every SAM family in `infosam_hf.models` as student, teacher and base: features, training, save/load, cards."""

import copy
import math

import numpy as np
import pytest
import torch
from helpers import family_batch, family_image_size
from transformers import SamModel, TrainingArguments

import infosam_hf
from infosam_hf import InfoSAMConfig, InfoSAMModel, InfoSAMTrainer, PeftArguments, build_student, capture_sam_features
from infosam_hf.data.preprocessing import SamSegmentationPreprocessor
from infosam_hf.models import SQUARE, family_of
from infosam_hf.teacher_cache import TeacherEmbeddingCache
from infosam_hf.testing import tiny_family_model, tiny_sam_config, toy_segmentation_dataset

# EdgeTAM runs with a stand-in for its timm RepViT encoder (timm needs torchvision): see tiny_edgetam_config.
FAMILIES = ["SamModel", "SamHQModel", "Sam2Model", "Sam3TrackerModel", "EdgeTamModel"]
CONFIG = dict(relation_dim=32)
PEFT = PeftArguments(lora_r=2)


@pytest.mark.parametrize("model_class", FAMILIES)
def test_the_predictors_image_encoding_decodes_as_the_whole_forward(model_class):
    """`encode_image` (what `Predictor.set_image` keeps) must hold everything the family's decoder reads from the image:
    SAM-HQ's early ViT features, SAM 2's feature levels. A missing part changes or breaks the masks."""
    from infosam_hf.inference import encode_image

    model = tiny_family_model(model_class).eval()
    batch = family_batch(model)
    with torch.no_grad():
        whole = model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
        encoding = encode_image(model, batch["pixel_values"])
        again = model(**encoding, input_boxes=batch["input_boxes"], multimask_output=False)
    assert "pixel_values" not in encoding
    torch.testing.assert_close(again.pred_masks, whole.pred_masks)


@pytest.mark.parametrize("model_class", FAMILIES)
def test_z_m_is_the_token_the_decoder_feeds_its_first_mask_hypernetwork(model_class):
    model = tiny_family_model(model_class)
    batch = family_batch(model)
    fed = {}
    hyper = model.mask_decoder.output_hypernetworks_mlps[0]
    handle = hyper.register_forward_pre_hook(lambda _m, args: fed.setdefault("token", args[0]))
    try:
        with torch.no_grad(), capture_sam_features(model) as feats:
            outputs = model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    finally:
        handle.remove()
    # the first mask hypernetwork maps mask token 0 to its mask: (B, point_batch, C)
    torch.testing.assert_close(feats.mask_token, fed["token"], rtol=0, atol=0)
    z_i = feats.image_embeddings
    channels = family_of(model).channels(model.config)
    assert z_i.shape[:2] == (2, channels) and feats.image_feats.shape == (2, z_i.shape[2] * z_i.shape[3], channels)
    if isinstance(getattr(outputs, "image_embeddings", None), (list, tuple)):
        # SAM 2 family: z_i is the stride-16 level with the no-memory embedding, not a higher-resolution level
        torch.testing.assert_close(z_i, outputs.image_embeddings[-1], rtol=0, atol=0)
    else:
        with torch.no_grad():
            encoded = model.vision_encoder(batch["pixel_values"])[0]
        torch.testing.assert_close(z_i, encoded, rtol=0, atol=0)


@pytest.mark.parametrize("model_class", FAMILIES)
def test_teacher_cache_replays_the_family_encoding_exactly(model_class):
    torch.manual_seed(0)
    config = InfoSAMConfig(**CONFIG)
    model = InfoSAMModel(build_student(tiny_family_model(model_class), config, PEFT), config)
    model.eval()
    batch = family_batch(model.student.get_base_model(), n=3)
    prompts = {"input_boxes": batch["input_boxes"]}
    expected = model._run_teacher(batch["pixel_values"], prompts, False)
    model.teacher_cache = TeacherEmbeddingCache()
    miss = model._run_teacher(batch["pixel_values"], prompts, False)
    hit = model._run_teacher(batch["pixel_values"], prompts, False)
    assert model.teacher_cache.hits == 1 and model.teacher_cache.misses == 1
    for got in (miss, hit):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, learning_rate=1e-3, max_steps=2,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


@pytest.mark.parametrize("model_class", FAMILIES)
def test_the_distillation_terms_are_live_on_every_tiny_family(model_class):
    """Non-degenerate tiny models: the image features are not ~0 (SAM-HQ's random neck once came out 1e-10 wide,
    features 1e-22, L_d exactly 0), L_r and L_d are non-zero and finite, L_d moves with the student and sends it a
    gradient, and L_r (the teacher's relation, by the method's design) moves with the relation module."""
    from infosam_hf.losses import InfoSAMLoss

    torch.manual_seed(0)
    config = InfoSAMConfig(**CONFIG)
    model = InfoSAMModel(build_student(tiny_family_model(model_class), config, PEFT), config).eval()
    batch = family_batch(model.student.get_base_model(), n=4)

    def losses():
        out = model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"])
        parts = InfoSAMLoss(config)(out.teacher_image_feats, out.teacher_mask_tokens, out.student_image_feats,
                                    out.student_mask_tokens, model.relation_module)
        return out, parts.loss_r, parts.loss_d

    out, loss_r, loss_d = losses()
    assert out.teacher_image_feats.abs().mean() > 1e-6, "the image features are ~0: a degenerate tiny model"
    values = float(loss_r.detach()), float(loss_d.detach())
    assert all(math.isfinite(v) and v != 0 for v in values), values
    loss_d.backward()
    adapter = [p for n, p in model.student.named_parameters() if p.requires_grad and "lora_" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter), "L_d gives the adapter no gradient"
    with torch.no_grad():
        for param in model.student.parameters():  # the student moves (adapter, decoder copy); the teacher does not
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
        assert float(losses()[2]) != values[1]
        for param in model.relation_module.parameters():
            param.add_(0.05 * torch.randn_like(param))
        assert float(losses()[1]) != values[0]


@pytest.mark.parametrize("model_class", FAMILIES)
def test_lora_presets_name_each_familys_modules_and_stay_in_their_part(model_class):
    """'decoder': every attention projection of the two-way transformer (SAM: out_proj, SAM 2 family: o_proj), nothing
    of the image encoder (the SAM 3 tracker's ViT shares the names); 'encoder' (the default): only the image
    encoder."""
    attention = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj")
    base = tiny_family_model(model_class)
    expected = {name for name, module in base.named_modules()
                if name.startswith("mask_decoder.transformer.") and name.endswith(attention)
                and isinstance(module, torch.nn.Linear)}
    decoder_only = PeftArguments(lora_r=2, lora_target_modules="decoder", modules_to_save="")
    decoder = build_student(base, peft_config=decoder_only)
    adapted = {name.removeprefix("base_model.model.").removesuffix(".lora_A")
               for name, _ in decoder.named_modules() if name.endswith(".lora_A")}
    assert adapted == expected and len(expected) >= 12
    encoder = build_student(tiny_family_model(model_class), peft_config=PEFT)
    parts = {name.split(".")[2] for name, _ in encoder.named_modules() if name.endswith(".lora_A")}
    assert parts == {"vision_encoder"}


def test_lora_targets_that_match_nothing_or_several_parts_are_reported(caplog):
    """The README's old decoder recipe on SAM 2 (`out_proj` is `o_proj` there) and on the SAM 3 tracker (its ViT also
    has q_proj/k_proj/v_proj)."""
    recipe = dict(lora_r=2, lora_target_modules="q_proj,k_proj,v_proj,out_proj", modules_to_save="")
    with pytest.raises(ValueError, match=r"'out_proj' match\(es\) no module of this SAM 2 model.*'decoder'.*o_proj"):
        build_student(tiny_family_model("Sam2Model"), peft_config=PeftArguments(**recipe))
    with caplog.at_level("WARNING", logger="infosam_hf.modeling"):
        build_student(tiny_family_model("Sam3TrackerModel"),
                      peft_config=PeftArguments(**dict(recipe, lora_target_modules="q_proj,k_proj,v_proj")))
    assert "6 in the image encoder, 21 in the mask decoder" in caplog.text and "decoder" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="infosam_hf.modeling"):  # one part: nothing to report
        build_student(tiny_family_model("SamModel"), peft_config=PeftArguments(**recipe))
    assert "more than one part" not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("separate_teacher", [False, True], ids=["shared-teacher", "separate-teacher"])
@pytest.mark.parametrize("model_class", FAMILIES)
def test_trains_saves_and_loads_with_identical_predictions(model_class, separate_teacher, tmp_path):
    config = InfoSAMConfig(**CONFIG)
    teacher = tiny_family_model(model_class, seed=1) if separate_teacher else None
    base = tiny_family_model(model_class)
    trainer = InfoSAMTrainer(
        model=base, infosam_config=config, peft_config=PEFT, teacher_model=teacher, args=_args(tmp_path),
        train_dataset=toy_segmentation_dataset(4, family_image_size(base)),
        processing_class=SamSegmentationPreprocessor.for_model(base),  # what load reads the geometry back from
    )
    model = trainer.model
    lora = [n for n, p in model.student.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and all("vision_encoder" in n for n in lora)  # the family's default targets: its image encoder
    before = {n: p.detach().clone() for n, p in model.student.named_parameters() if "lora_B" in n}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2
    for entry in logs:
        assert all(math.isfinite(entry[k]) for k in ("loss", "loss_seg", "loss_r", "loss_d"))
        assert entry["loss_r"] != 0  # the distillation ran (loss_d may be 0: a random tiny model's relations
        # can be near-identical across images, which makes every Gram matrix rank one)
    assert any(not torch.equal(p, dict(model.student.named_parameters())[n]) for n, p in before.items())

    folder = tmp_path / "adapter"
    trainer.save_model(str(folder))
    batch = family_batch(base, n=2, seed=3)
    model.eval()
    with torch.no_grad():
        expected = model.student(
            pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False
        ).pred_masks
    # the base as a checkpoint on disk (what the adapter's base_model_name_or_path would name)
    base_dir = tmp_path / "base"
    tiny_family_model(model_class).save_pretrained(base_dir)
    loaded, processor = infosam_hf.load(str(folder), base_model=str(base_dir))
    with torch.no_grad():
        got = loaded(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    torch.testing.assert_close(got.pred_masks, expected, rtol=0, atol=0)
    assert type(loaded.get_base_model()).__name__ == model_class
    geometry = SamSegmentationPreprocessor.from_processor(processor)
    assert (geometry.geometry, geometry.image_size) == (family_of(base).geometry, family_image_size(base))
    card = (folder / "README.md").read_text()
    family = family_of(base)
    assert f"| Model family | {family.name} (`{model_class}`) |" in card
    assert f"base = {model_class}.from_pretrained(" in card


@pytest.mark.parametrize("model_class", ["Sam2Model", "Sam3TrackerModel"])
def test_sam2_family_gradient_checkpointing_gives_the_same_gradients(model_class):
    """Sam2Model / Sam3TrackerModel say supports_gradient_checkpointing=False; InfoSAM opts the instance in."""
    config = InfoSAMConfig(**CONFIG)
    grads = []
    for checkpointing in (False, True):
        model = InfoSAMModel(build_student(tiny_family_model(model_class), config, PEFT), config)
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        batch = family_batch(model.student.get_base_model())
        out = model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"])
        loss = InfoSAMTrainer.compute_infosam_loss(out, batch["gt_masks"], config)["loss"]
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert type(model.student.get_base_model()).supports_gradient_checkpointing is False  # the class is untouched
    assert grads[0].keys() == grads[1].keys() and any("lora_" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_square_geometry_resizes_without_padding():

    image = (np.arange(30 * 60 * 3) % 251).reshape(30, 60, 3).astype(np.uint8)
    mask = np.zeros((30, 60), dtype=np.uint8)
    mask[:, 30:] = 255
    model = tiny_family_model("Sam2Model")
    pre = SamSegmentationPreprocessor.for_model(model)
    assert pre.geometry == SQUARE == family_of(model).geometry and pre.image_size == 64
    out = pre(image, mask)
    assert tuple(out["reshaped_input_sizes"]) == (64, 64) and tuple(out["original_sizes"]) == (30, 60)
    assert out["gt_masks"][0, :, 32:].all() and not out["gt_masks"][0, :, :32].any()  # stretched, not padded
    assert (out["pixel_values"][:, 40:, :] != 0).any()  # SAM would pad rows 32..63 with zeros
    padded = SamSegmentationPreprocessor.for_model(tiny_family_model("SamModel"))(image, mask)
    assert tuple(padded["reshaped_input_sizes"]) == (32, 64) and not padded["pixel_values"][:, 40:, :].any()
    # a SAM 2 processor config (size height/width, no longest_edge) reads as the square geometry
    from_config = SamSegmentationPreprocessor.from_processor({"size": {"height": 64, "width": 64},
                                                               "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert from_config.geometry == SQUARE and from_config.image_size == 64


def test_a_teacher_that_reads_images_differently_is_refused():
    config = InfoSAMConfig(**CONFIG)
    student = build_student(tiny_family_model("SamModel"), config, PEFT)
    with pytest.raises(ValueError, match="teacher \\(SAM 2\\) takes 64 px inputs in the square geometry"):
        InfoSAMModel(student, config, teacher=tiny_family_model("Sam2Model"))
    InfoSAMModel(student, config, teacher=tiny_family_model("SamHQModel"))  # same geometry and size: allowed


def test_unsupported_models_are_refused_with_the_supported_list():
    with pytest.raises(TypeError, match="Sam2Model.*Video models and Sam3Model are not supported"):
        family_of(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_train_script_takes_a_sam2_checkpoint(tmp_path):
    """examples/train.py --model_name_or_path <a SAM 2 folder>: trains, evaluates, saves a SAM 2 adapter that loads."""
    from helpers import load_example

    from infosam_hf.synthetic import write_synthetic_dataset

    base_dir = tmp_path / "sam2"
    base = tiny_family_model("Sam2Model")
    base.save_pretrained(base_dir)
    SamSegmentationPreprocessor.for_model(base).save_pretrained(base_dir)  # as Sam2Processor writes it
    data = write_synthetic_dataset(tmp_path / "data", "specialised", num_train=4, num_test=2, image_size=80, seed=1)
    out = tmp_path / "run"
    summary = load_example("train").main(
        ["--model_name_or_path", str(base_dir), "--dataset_name", str(data), "--output_dir", str(out),
         "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--disable_tqdm", "true",
         "--lora_r", "2", "--relation_dim", "32", "--max_eval_samples", "2", "--eval_overlays", "0"]
    )
    assert 0.0 <= summary["iou"] <= 1.0
    assert "| Model family | SAM 2 (`Sam2Model`) |" in (out / "README.md").read_text()
    loaded, processor = infosam_hf.load(str(out))
    assert type(loaded.get_base_model()).__name__ == "Sam2Model"
    assert SamSegmentationPreprocessor.from_processor(processor).geometry == SQUARE


def test_a_family_registered_in_one_place_gives_both_its_lora_preset_and_its_adapter_targets(monkeypatch):
    """The spec is the one place a family is written: LoRA presets and the Adapter's defaults both read it."""
    import dataclasses

    from transformers import SamConfig
    from transformers.models.sam.modeling_sam import SamMaskDecoder

    from infosam_hf import models
    from infosam_hf.tuners.bottleneck_adapter import DEFAULT_TARGETS

    class FakeSamConfig(SamConfig):
        model_type = "infosam_fake_sam"

    fake_decoder = type("FakeMaskDecoder", (SamMaskDecoder,), {})
    fake = dataclasses.replace(
        models.SAM, name="Fake SAM", model_class="FakeSamModel", model_type="infosam_fake_sam",
        mask_decoder_class="FakeMaskDecoder", lora_target_modules=r".*vision_encoder\.layers\.0\.attn\.proj",
        adapter_targets=(r"(?:.*\.)?vision_encoder\.layers\.1\.mlp", r".*vision_encoder\.layers\.1\.layer_norm1"),
    )

    def base():
        torch.manual_seed(0)
        model = SamModel(FakeSamConfig(**tiny_sam_config(output_channels=32).to_dict()))
        model.mask_decoder.__class__ = fake_decoder  # what `find_family` recognises the family by
        return model

    def wrapped(student, marker):
        return sorted({name.split(f".{marker}")[0] for name, _ in student.named_parameters() if f".{marker}" in name})

    monkeypatch.setattr(models, "FAMILIES", models.FAMILIES)  # monkeypatch puts the registry back: the teardown
    models.register_family(fake)
    assert family_of(base()) is fake and DEFAULT_TARGETS["infosam_fake_sam"] == fake.adapter_targets
    lora = build_student(base(), InfoSAMConfig(), PeftArguments(peft_method="lora", lora_r=2))
    assert wrapped(lora, "lora_A") == ["base_model.model.vision_encoder.layers.0.attn.proj"]
    adapter = build_student(base(), InfoSAMConfig(), PeftArguments(peft_method="adapter", adapter_train_layernorms=True))
    assert wrapped(adapter, "bottleneck_") == [
        "base_model.model.vision_encoder.layers.1.layer_norm1", "base_model.model.vision_encoder.layers.1.mlp"
    ]
    with pytest.raises(ValueError, match="'Twin': its model_class 'FakeSamModel' is already the Fake SAM's"):
        models.register_family(dataclasses.replace(fake, name="Twin"))

    monkeypatch.undo()
    assert "infosam_fake_sam" not in DEFAULT_TARGETS and models.find_family(base()) is None
    with pytest.raises(TypeError, match="must be one of transformers' image SAM models"):
        build_student(base(), InfoSAMConfig(), PeftArguments(peft_method="lora"))


# ---------------------------------------------------------------- family geometry between valid sizes (issue 32 audit)
def test_every_sam2_size_the_check_accepts_runs_and_every_size_it_refuses_fails():
    """Sizes that are multiples of 16 but not of 32 (the tiny SAM 2's coarsest stride is 16, with one more pooling
    stage above it) pass a too-loose check and then fail inside the model: the check must be the model's truth."""
    from infosam_hf.models import family_of
    from infosam_hf.resolution import check_image_size
    from infosam_hf.testing import tiny_family_model

    model = tiny_family_model("Sam2Model")
    family = family_of(model)
    verdicts = {}
    for size in (16, 32, 48, 80, 96):
        try:
            check_image_size(model, size, allow_upscaling=True)
            accepted = True
        except ValueError:
            accepted = False
        config = copy.deepcopy(model.config)
        family.set_image_size(config, size)
        torch.manual_seed(0)
        sized = type(model)(config).eval()
        try:
            with torch.no_grad():
                sized(pixel_values=torch.randn(1, 3, size, size),
                      input_boxes=torch.tensor([[[1.0, 1.0, size - 2.0, size - 2.0]]]), multimask_output=False)
            runs = True
        except (RuntimeError, ValueError):
            runs = False
        verdicts[size] = (accepted, runs)
    assert verdicts == {16: (False, False), 32: (True, True), 48: (False, False), 80: (False, False),
                        96: (True, True)}
