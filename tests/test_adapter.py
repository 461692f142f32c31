"""The bottleneck Adapter (infosam_hf.tuners): placement, exactness, saving, merging, config, card, and how it is
registered with PEFT."""


import json
import subprocess
import sys

import peft
import pytest
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import HfArgumentParser, SamModel

import infosam_hf
from infosam_hf import InfoSAMConfig, InfoSAMModel, PeftArguments, build_student, default_peft_config
from infosam_hf.model_card import model_card_info, render_model_card
from infosam_hf.testing import tiny_sam_config, toy_batch
from infosam_hf.tuners.bottleneck_adapter import (
    PEFT_TYPE,
    PREFIX,
    BottleneckAdaptedLayerNorm,
    BottleneckAdapterConfig,
    BottleneckAdapterMLP,
    BottleneckAdapterModel,
    register_bottleneck_adapter,
)


def base_model():
    torch.manual_seed(0)
    return SamModel(tiny_sam_config()).eval()


def predict(model, batch):
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False).pred_masks


def perturb_adapter(model, scale=0.05):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "modules_to_save" not in name:
                p.add_(scale * torch.randn_like(p))


def adapter_student(**config):
    return build_student(base_model(), peft_config=PeftArguments(peft_method="adapter", **config))


def test_starts_equal_to_the_base_and_disable_adapter_is_exact():
    batch = toy_batch(2)
    expected = predict(base_model(), batch)
    student = adapter_student(adapter_train_layernorms=True).eval()
    torch.testing.assert_close(predict(student, batch), expected, rtol=0, atol=0)  # up-projection starts at zero
    perturb_adapter(student)
    assert not torch.allclose(predict(student, batch), expected)
    with student.disable_adapter():
        torch.testing.assert_close(predict(student, batch), expected, rtol=0, atol=0)
    # the base LayerNorms are untouched: training acts on copies
    base_norm = student.get_base_model().vision_encoder.layers[0].layer_norm1
    assert isinstance(base_norm, BottleneckAdaptedLayerNorm)
    assert torch.equal(base_norm.base_layer.weight, base_model().vision_encoder.layers[0].layer_norm1.weight)
    assert not base_norm.base_layer.weight.requires_grad and base_norm.bottleneck_norm["default"].weight.requires_grad


def test_only_adapters_layernorm_copies_and_decoder_train():
    student = adapter_student(adapter_train_layernorms=True)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(".bottleneck_" in n or ".modules_to_save." in n for n in trainable)
    assert any(".modules_to_save.default." in n for n in trainable)
    assert any(".neck.layer_norm1.bottleneck_norm." in n for n in trainable)
    plain = adapter_student()
    assert not any("bottleneck_norm" in n for n, _ in plain.named_parameters())


@pytest.mark.parametrize("placement", ["sequential", "parallel"])
def test_the_adapter_is_the_papers_bottleneck(placement):
    student = adapter_student(adapter_layers="1", adapter_placement=placement, adapter_scaling=0.5)
    layers = student.get_base_model().vision_encoder.layers
    assert not isinstance(layers[0].mlp, BottleneckAdapterMLP)  # only the chosen block
    mlp = layers[1].mlp
    assert isinstance(mlp, BottleneckAdapterMLP)
    down, up = mlp.bottleneck_down["default"], mlp.bottleneck_up["default"]
    assert (down.in_features, down.out_features, up.out_features) == (32, 8, 32)  # ratio 0.25 of hidden 32
    assert torch.count_nonzero(up.weight) == 0 and torch.count_nonzero(up.bias) == 0
    perturb_adapter(student)
    x = torch.randn(2, 4, 4, 32)
    with torch.no_grad():
        h = mlp.base_layer(x)
        source = h if placement == "sequential" else x
        expected = h + 0.5 * up(nn.functional.gelu(down(source)))
        torch.testing.assert_close(mlp(x), expected, rtol=0, atol=0)


def test_save_load_round_trip_merge_refused_and_unload_gives_the_base(tmp_path):
    batch = toy_batch(2)
    expected_base = predict(base_model(), batch)
    student = adapter_student(adapter_train_layernorms=True).eval()
    perturb_adapter(student)
    expected = predict(student, batch)
    student.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == PEFT_TYPE and saved["ratio"] == 0.25 and saved["modules_to_save"] == ["mask_decoder"]
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert any(k.endswith("mlp.bottleneck_down.weight") for k in keys)
    assert any(k.endswith("layer_norm1.bottleneck_norm.weight") for k in keys)
    assert not any(".base_layer." in k for k in keys)  # the frozen base is not saved

    loaded = PeftModel.from_pretrained(base_model(), tmp_path).eval()
    assert isinstance(loaded.peft_config["default"], BottleneckAdapterConfig)
    torch.testing.assert_close(predict(loaded, batch), expected, rtol=0, atol=0)
    for merge in (loaded.merge_and_unload, loaded.merge_adapter):
        with pytest.raises(ValueError, match="cannot be merged.*nonlinear"):
            merge()
    torch.testing.assert_close(predict(loaded, batch), expected, rtol=0, atol=0)  # the refusal changed nothing
    with pytest.raises(ValueError, match="merge=True cannot be used.*cannot be merged"):
        infosam_hf.load(tmp_path, base_model=base_model(), merge=True)
    model, _ = infosam_hf.load(tmp_path, base_model=base_model())
    torch.testing.assert_close(predict(model, batch), expected, rtol=0, atol=0)

    unloaded = loaded.unload()
    assert type(unloaded) is SamModel
    assert not any("bottleneck" in n or "base_layer" in n for n, _ in unloaded.named_modules())
    torch.testing.assert_close(predict(unloaded, batch), expected_base, rtol=0, atol=0)


def test_infosam_model_with_the_adapter_uses_the_base_as_teacher():
    model = InfoSAMModel(adapter_student(), InfoSAMConfig())
    perturb_adapter(model.student)
    batch = toy_batch(2)
    out = model(**batch)
    base = base_model()
    from infosam_hf.features import capture_sam_features

    with torch.no_grad(), capture_sam_features(base) as feats:
        base(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    torch.testing.assert_close(out.teacher_image_feats, feats.image_feats, rtol=0, atol=0)
    assert not torch.allclose(out.student_image_feats, out.teacher_image_feats)


def test_train_script_flags_reach_the_config():
    (config,) = HfArgumentParser(PeftArguments).parse_args_into_dataclasses(
        ["--peft_method", "adapter", "--adapter_ratio", "0.5", "--adapter_placement", "parallel", "--adapter_layers",
         "2-4,7", "--adapter_train_layernorms", "--adapter_scaling", "0.1"]
    )
    peft_config = default_peft_config(config)
    assert isinstance(peft_config, BottleneckAdapterConfig)
    assert peft_config.layers_to_transform == [2, 3, 4, 7] and peft_config.ratio == 0.5
    assert peft_config.placement == "parallel" and peft_config.train_layernorms and peft_config.scaling == 0.1
    assert PeftArguments().adapter_layer_indices() is None
    with pytest.raises(ValueError, match=r"adapter_layers='2-x'.*'2-x' is not an index or a range"):
        PeftArguments(adapter_layers="2-x")
    with pytest.raises(ValueError, match="peft_method='prefix'.*lora, adapter"):
        PeftArguments(peft_method="prefix")
    with pytest.raises(ValueError, match="placement must be one of"):
        BottleneckAdapterConfig(placement="inside")


def test_lora_on_the_decoder_attention_and_the_clear_conflict_error():
    # the frequent request: LoRA on the mask decoder's attention, encoder frozen
    decoder_only = PeftArguments(lora_target_modules="q_proj,v_proj", modules_to_save="")
    student = build_student(base_model(), peft_config=decoder_only)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("mask_decoder" in n and "lora_" in n for n in trainable)
    # the same targets with the decoder trained in full: a module cannot be both
    with pytest.raises(ValueError, match=r"mask_decoder\..*q_proj is both an adapter target.*inside modules_to_save"):
        build_student(base_model(), peft_config=PeftArguments(lora_target_modules="q_proj"))
    with pytest.raises(ValueError, match="both an adapter target"):
        build_student(base_model(),
                      peft_config=PeftArguments(peft_method="adapter", adapter_target_modules=r".*\.mlp"))


def test_a_family_supplies_its_own_module_pattern_and_convolutions_are_refused():
    class FeedForward(nn.Module):  # SAM 2's layout: the output projection is registered before hidden layers
        def __init__(self):
            super().__init__()
            self.proj_in, self.proj_out = nn.Linear(8, 16), nn.Linear(16, 8)
            self.layers = nn.ModuleList([nn.Linear(16, 16)])

        def forward(self, x):
            return self.proj_out(self.layers[0](self.proj_in(x)).relu())

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn = FeedForward()

        def forward(self, x):
            return x + self.ffn(x)

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block() for _ in range(3)])
            self.stem = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    with pytest.raises(ValueError, match=r"no default target_modules for model_type .custom.*--adapter_target_modules.*in Python target_modules="):
        get_peft_model(Trunk(), BottleneckAdapterConfig())
    for pattern in ("blocks", None):
        config = BottleneckAdapterConfig(target_modules=r"blocks\.\d+\.ffn", layers_pattern=pattern,
                                         layers_to_transform=[0, 2])
        model = get_peft_model(Trunk(), config)
        blocks = model.base_model.model.blocks
        assert [i for i, block in enumerate(blocks) if isinstance(block.ffn, BottleneckAdapterMLP)] == [0, 2]
        assert blocks[0].ffn.bottleneck_up["default"].out_features == 8  # proj_out's width, not the hidden layer's
        assert model(torch.randn(2, 8)).shape == (2, 8)
    with pytest.raises(ValueError, match="convolution-only block cannot take it"):
        get_peft_model(Trunk(), BottleneckAdapterConfig(target_modules="stem"))


def test_the_model_card_shows_the_adapter(tmp_path):
    model = InfoSAMModel(adapter_student(adapter_layers="1"), InfoSAMConfig())
    info = model_card_info(model)
    peft = info["peft"]
    assert peft["method"] == "Bottleneck Adapter" and not peft["mergeable"] and peft["needs_import"]
    details = dict(peft["details"])
    assert details["Bottleneck width"] == "0.25 x hidden size" and details["Adapted blocks"] == "1"
    assert details["Placement"].startswith("sequential, scaling 1")
    # parameter share: adapter + decoder copy over the base without either (the LoRA-only count missed them)
    adapter = sum(p.numel() for n, p in model.student.named_parameters() if p.requires_grad)
    assert peft["adapter_params"].startswith(f"{adapter:,} (")
    text = render_model_card(info)
    assert "| PEFT method | Bottleneck Adapter |" in text and "| Adapted blocks | 1 |" in text
    assert "import infosam_hf  # noqa: F401  registers the Bottleneck Adapter with PEFT" in text
    assert "merge=True folds LoRA" not in text and "it cannot be merged" in text
    lora_text = render_model_card(model_card_info(InfoSAMModel(build_student(base_model(), InfoSAMConfig()))))
    assert "merge=True folds LoRA" in lora_text and "registers the" not in lora_text


def test_paper_script_prints_the_adapter_recipe(tmp_path, capsys, monkeypatch):
    import importlib.util
    import os
    import sys

    (tmp_path / "train.csv").write_text("image,label\n")
    (tmp_path / "test.csv").write_text("image,label\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("paper", os.path.join(root, "benchmarks", "paper.py"))
    paper = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = paper
    spec.loader.exec_module(paper)
    monkeypatch.setattr(sys, "argv", ["paper.py", "--dataset", "camo", "--data_root", str(tmp_path), "--peft", "adapter",
                                      "--print_only"])
    paper.main()
    command = capsys.readouterr().out
    assert "--peft_method adapter --adapter_ratio 0.25 --adapter_layers 2-11" in command
    assert "--adapter_train_layernorms true --modules_to_save mask_decoder" in command
    assert "--output_dir outputs/paper-camo-adapter-infosam" in command and "--lambda_1 0" not in command
    # the recipe's flags parse into the config the student is built from
    from infosam_hf.tuners import BottleneckAdapterConfig

    flags = paper.ADAPTER_RECIPE
    (config,) = HfArgumentParser(PeftArguments).parse_args_into_dataclasses(flags)
    peft_config = default_peft_config(config)
    assert isinstance(peft_config, BottleneckAdapterConfig) and peft_config.layers_to_transform == list(range(2, 12))
    assert peft_config.train_layernorms and peft_config.modules_to_save == ["mask_decoder"]


def test_an_adapter_for_another_sam_size_is_named_before_peft_fails(tmp_path):
    adapter_student().save_pretrained(tmp_path / "mlp")
    adapter_student(adapter_train_layernorms=True).save_pretrained(tmp_path / "norms")
    torch.manual_seed(0)
    wider = SamModel(tiny_sam_config(vision_hidden_size=48))
    with pytest.raises(ValueError, match=r"does not fit this base model: .*mlp has 48 output features in the base, "
                                         r"32 in the adapter"):
        infosam_hf.load(tmp_path / "mlp", base_model=wider)
    with pytest.raises(ValueError, match=r"does not fit this base model: .*layer_norm1\.(weight|bias) is \(32,\)"):
        infosam_hf.load(tmp_path / "norms", base_model=wider)


@pytest.mark.parametrize("model_class,blocks", [("Sam2Model", "blocks"), ("Sam3TrackerModel", "layers")])
def test_the_adapter_finds_the_mlps_of_sam2_and_the_sam3_tracker_by_default(model_class, blocks):
    from infosam_hf.models import family_of
    from infosam_hf.testing import tiny_family_model

    base = tiny_family_model(model_class)
    size = family_of(base).image_size(base.config)
    torch.manual_seed(0)
    pixels, boxes = torch.randn(2, 3, size, size), torch.tensor([[[4.0, 6.0, size / 2, size - 8.0]]] * 2)

    def predict_family(model):
        with torch.no_grad():
            return model(pixel_values=pixels, input_boxes=boxes, multimask_output=False).pred_masks

    def encoder_blocks(student):
        return getattr(student.get_base_model().vision_encoder.backbone, blocks)

    expected = predict_family(base)
    student = build_student(tiny_family_model(model_class), peft_config=PeftArguments(peft_method="adapter",
                                                                          adapter_train_layernorms=True)).eval()
    assert all(isinstance(block.mlp, BottleneckAdapterMLP) for block in encoder_blocks(student))
    assert isinstance(encoder_blocks(student)[0].layer_norm2, BottleneckAdaptedLayerNorm)
    assert not any(isinstance(m, BottleneckAdapterMLP) for m in student.get_base_model().mask_decoder.modules())
    torch.testing.assert_close(predict_family(student), expected, rtol=0, atol=0)
    perturb_adapter(student)
    assert not torch.allclose(predict_family(student), expected)
    with student.disable_adapter():
        torch.testing.assert_close(predict_family(student), expected, rtol=0, atol=0)

    only_second = build_student(tiny_family_model(model_class),
                                peft_config=PeftArguments(peft_method="adapter", adapter_layers="1"))
    assert [i for i, block in enumerate(encoder_blocks(only_second)) if isinstance(block.mlp, BottleneckAdapterMLP)] == [1]


def test_edgetam_has_no_default_adapter_targets_and_says_so():
    from infosam_hf.testing import tiny_family_model

    with pytest.raises(ValueError, match=r"cannot adapt EdgeTAM.*use LoRA instead \(--peft_method lora"):
        build_student(tiny_family_model("EdgeTamModel"), peft_config=PeftArguments(peft_method="adapter"))


# ------------------------------------------------------------------------- the Adapter's dropout path (issue 32 audit)
def test_adapter_dropout_acts_on_the_adapter_input_in_training_only_and_trains():
    from infosam_hf.tuners import BottleneckAdapterConfig
    from infosam_hf.tuners.bottleneck_adapter import BottleneckAdapterMLP

    torch.manual_seed(0)
    config = BottleneckAdapterConfig(adapter_dropout=0.5, scaling=0.7)
    student = build_student(SamModel(tiny_sam_config()), InfoSAMConfig(), config)
    layer = next(m for m in student.modules() if isinstance(m, BottleneckAdapterMLP))
    with torch.no_grad():
        layer.bottleneck_up["default"].weight.normal_(0, 0.1)  # a trained adapter: its output is not zero
    down, up, act = layer.bottleneck_down["default"], layer.bottleneck_up["default"], layer.bottleneck_act["default"]
    x = torch.randn(2, 5, layer.in_features)

    def reference(training):
        mlp = layer.base_layer(x)
        return mlp + 0.7 * up(act(down(F.dropout(mlp, 0.5, training=training))))

    layer.train()
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    expected = reference(True)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, reference(False))  # the dropout did drop something
    # the gradient through the dropped input reaches the adapter, as the reference's does
    (grad,) = torch.autograd.grad(out.square().sum(), down.weight)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), down.weight)
    torch.testing.assert_close(grad, expected_grad)
    assert grad.abs().max() > 0
    layer.eval()
    torch.testing.assert_close(layer(x), reference(False), rtol=0, atol=0)


# -------------------------------------------------------------------------------- registration with PEFT
# Guard for how the bottleneck adapter is registered with PEFT (infosam_hf/tuners/bottleneck_adapter/register.py).
#
# PEFT 0.21 refuses `register_peft_method` for names outside its `PeftType` enum, so the
# method is entered in PEFT's exported type->config/tuner/prefix dicts under a string type.
# If a PEFT upgrade moves or renames those dicts, or stops resolving a string type when
# saving or loading, these tests fail and say so.
UPGRADE_HINT = (
    f"PEFT {peft.__version__} no longer takes the bottleneck adapter the way register.py enters it; see "
    "infosam_hf/tuners/bottleneck_adapter/register.py (use register_peft_method if it accepts the name now)."
)


def test_peft_maps_the_string_type_to_our_classes():
    from peft import mapping

    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE) is BottleneckAdapterConfig, UPGRADE_HINT
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(PEFT_TYPE) is BottleneckAdapterModel, UPGRADE_HINT
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING.get(PEFT_TYPE) == PREFIX, UPGRADE_HINT
    # peft's own modules read these very dicts (not copies taken at import)
    from peft import peft_model
    from peft.utils import save_and_load

    assert peft_model.PEFT_TYPE_TO_TUNER_MAPPING is mapping.PEFT_TYPE_TO_TUNER_MAPPING, UPGRADE_HINT
    assert save_and_load.PEFT_TYPE_TO_TUNER_MAPPING is mapping.PEFT_TYPE_TO_TUNER_MAPPING, UPGRADE_HINT
    register_bottleneck_adapter()  # idempotent
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE) is BottleneckAdapterConfig


def test_the_public_registration_still_refuses_the_name():
    # Documents why register.py fills the dicts itself. When this starts failing, PEFT accepts custom names:
    # register.py then takes the public route on its own (it tries register_peft_method first) -- delete this test.
    from peft.utils import register_peft_method

    with pytest.raises(ValueError, match="Unknown PEFT type"):
        register_peft_method(name="infosam_other_adapter", config_cls=BottleneckAdapterConfig, model_cls=BottleneckAdapterModel)


def test_the_string_type_round_trips_through_adapter_config_json(tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(SamModel(tiny_sam_config()), BottleneckAdapterConfig(modules_to_save=["mask_decoder"]))
    assert type(model.base_model) is BottleneckAdapterModel
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPE, UPGRADE_HINT
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, BottleneckAdapterConfig) and config.peft_type == PEFT_TYPE, UPGRADE_HINT
    loaded = PeftModel.from_pretrained(SamModel(tiny_sam_config()), tmp_path)
    assert type(loaded.base_model) is BottleneckAdapterModel, UPGRADE_HINT


@pytest.mark.slow
def test_without_import_infosam_hf_peft_names_what_is_missing(tmp_path):
    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(tmp_path / "base")
    model = get_peft_model(SamModel.from_pretrained(tmp_path / "base"), BottleneckAdapterConfig())
    model.save_pretrained(tmp_path / "adapter")
    code = (
        "from peft import PeftModel; from transformers import SamModel; "
        f"PeftModel.from_pretrained(SamModel.from_pretrained({str(tmp_path / 'base')!r}), {str(tmp_path / 'adapter')!r})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "KeyError: 'INFOSAM_BOTTLENECK_ADAPTER'" in result.stderr, result.stderr[-2000:]
