"""Standalone export: merged folder loads with transformers alone, same masks as the adapter, pipeline works."""


import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import fine_tuned
from peft import PeftModel
from peft.tuners.lora import LoraLayer, LoraModel
from safetensors.torch import load_file, save_file
from transformers import SamModel, SamProcessor

from infosam_hf import InfoSAMConfig, InfoSAMModel, PeftArguments, build_student
from infosam_hf.builtin import BUILTIN_MODEL_PATH
from infosam_hf.export import CannotMergeError, batched_nms, export, mask_generation_pipeline
from infosam_hf.synthetic import make_synthetic_sample
from infosam_hf.testing import tiny_sam_config

EXPORTED_FILES = {"config.json", "model.safetensors", "processor_config.json", "README.md"}
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


def inputs():
    generator = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(2, 3, 128, 128, generator=generator),
        "input_boxes": torch.tensor([[[10.0, 12.0, 90.0, 100.0]], [[30.0, 20.0, 70.0, 60.0]]]),
    }


def assert_same_masks(actual, expected):
    """Equal to 1e-5 of the logits' range: merged W + BA and unmerged xW + xAB differ only by float32 rounding."""
    tolerance = 1e-5 * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance)
    decided = expected.abs() > tolerance
    assert torch.equal((actual > 0)[decided], (expected > 0)[decided])


def predict(model, batch):
    with torch.no_grad():
        return model(**batch, multimask_output=False).pred_masks


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    fine_tuned().save_pretrained(folder, processor=SamProcessor.from_pretrained(BUILTIN_MODEL_PATH))
    return str(folder)


@pytest.fixture(scope="module")
def exported(adapter_dir, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("exported") / "merged")
    export(adapter_dir, folder)
    return folder


# Only transformers: peft and infosam_hf are made unimportable before anything else is imported.
STANDALONE = textwrap.dedent(
    """
    import sys
    sys.modules["peft"] = None
    sys.modules["infosam_hf"] = None
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import SamModel, SamProcessor
    folder, inputs, out = sys.argv[1:4]
    model = SamModel.from_pretrained(folder).eval()
    processor = SamProcessor.from_pretrained(folder)
    assert processor.image_processor.size["longest_edge"] == 128
    with torch.no_grad():
        masks = model(**load_file(inputs), multimask_output=False).pred_masks
    save_file({"masks": masks.contiguous()}, out)
    loaded = sorted(name for name in sys.modules if name and sys.modules[name] is not None
                    and name.split(".")[0] in ("peft", "infosam_hf"))
    print("LOADED", loaded)
    """
)


def test_exported_folder_loads_with_transformers_alone_and_predicts_like_the_adapter(adapter_dir, exported, tmp_path):
    assert set(os.listdir(exported)) == EXPORTED_FILES
    with open(os.path.join(exported, "config.json")) as f:
        assert json.load(f)["architectures"] == ["SamModel"]
    batch = inputs()
    save_file(batch, str(tmp_path / "inputs.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", STANDALONE, exported, str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LOADED []" in run.stdout
    standalone = load_file(str(tmp_path / "out.safetensors"))["masks"]

    from infosam_hf import load

    adapter, _ = load(adapter_dir)
    expected = predict(adapter, batch)
    assert_same_masks(standalone, expected)
    base = predict(SamModel.from_pretrained(BUILTIN_MODEL_PATH).eval(), batch)
    assert (base - expected).abs().max() > 1e-2  # the adapter really changes the masks, so equality means it was merged


def test_refuses_a_non_empty_folder_unless_asked(adapter_dir, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(adapter_dir, target)
    assert os.listdir(target) == ["notes.txt"]
    export(adapter_dir, target, overwrite=True)
    assert set(os.listdir(target)) == EXPORTED_FILES | {"notes.txt"}
    assert (target / "notes.txt").read_text() == "mine"


def test_an_in_memory_model_keeps_its_adapter(tmp_path):
    model = fine_tuned()
    batch = inputs()
    before = predict(model.student, batch)
    merged = export(model, tmp_path / "merged", processor=SamProcessor.from_pretrained(BUILTIN_MODEL_PATH))
    assert isinstance(model.student, PeftModel)
    assert any(isinstance(m, LoraLayer) for m in model.student.modules())
    torch.testing.assert_close(predict(model.student, batch), before, rtol=0, atol=0)
    assert_same_masks(predict(merged, batch), before)
    reloaded = SamModel.from_pretrained(tmp_path / "merged").eval()
    assert_same_masks(predict(reloaded, batch), before)


class Bottleneck(torch.nn.Module):
    """Stands in for an adapter that adds layers (input-dependent update): nothing to fold into a weight."""

    def __init__(self, inner, dim):
        super().__init__()
        self.inner = inner
        self.down = torch.nn.Linear(dim, 4)
        self.up = torch.nn.Linear(4, dim)

    def forward(self, x):
        y = self.inner(x)
        return y + self.up(torch.relu(self.down(y)))


def test_adapters_that_cannot_merge_are_refused_with_the_unmerged_path(tmp_path, monkeypatch):
    model = fine_tuned()
    mlp = model.student.get_base_model().mask_decoder.transformer.layers[0]
    mlp.mlp = Bottleneck(mlp.mlp, 256)
    with pytest.raises(CannotMergeError, match=r"adds layers.*Bottleneck.*infosam_hf\.load"):
        export(model, tmp_path / "a", processor=SamProcessor.from_pretrained(BUILTIN_MODEL_PATH))
    assert not (tmp_path / "a").exists()

    def refuse(self, *args, **kwargs):
        raise NotImplementedError("this method does not support merging")

    monkeypatch.setattr(LoraModel, "merge_and_unload", refuse)  # as peft does for methods it cannot merge
    with pytest.raises(CannotMergeError, match=r"\(LORA\) cannot be merged.*does not support merging.*PeftModel"):
        export(fine_tuned(), tmp_path / "b", processor=SamProcessor.from_pretrained(BUILTIN_MODEL_PATH))


def test_push_to_hub_uploads_the_standalone_folder(fake_hub, adapter_dir, tmp_path):
    export(adapter_dir, tmp_path / "merged", push_to_hub=True, repo_id="tiny/sam-merged")
    assert set(fake_hub.files("tiny/sam-merged")) == EXPORTED_FILES
    assert "SamModel.from_pretrained('tiny/sam-merged')" in fake_hub.files("tiny/sam-merged")["README.md"].decode()
    from_hub = SamModel.from_pretrained("tiny/sam-merged").eval()
    local = SamModel.from_pretrained(tmp_path / "merged").eval()
    batch = inputs()
    torch.testing.assert_close(predict(from_hub, batch), predict(local, batch), rtol=0, atol=0)
    with pytest.raises(ValueError, match="repo_id"):
        export(adapter_dir, tmp_path / "other", push_to_hub=True)


def test_mask_generation_pipeline_on_the_exported_model(exported):
    image, _ = make_synthetic_sample("specialised", 128, np.random.default_rng(0))
    generator = mask_generation_pipeline(exported, device="cpu")
    # The built-in tiny SAM learnt from boxes: its IoU predictions for single points stay under the 0.88 default.
    out = generator(image, points_per_batch=64, points_per_crop=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert len(out["masks"]) >= 1 and len(out["masks"]) == len(out["scores"])
    assert out["masks"][0].shape == (128, 128) and out["masks"][0].dtype == bool
    assert 0 < out["masks"][0].sum() < 128 * 128


def test_torch_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.3, 0.8])
    # IoU(0,1)=0.81, IoU(0,3)=0.5, IoU(1,3)=0.4, box 2 overlaps nothing
    assert batched_nms(boxes, scores, 0.7).tolist() == [1, 3, 2]
    assert batched_nms(boxes, scores, 0.45).tolist() == [1, 3, 2]
    assert batched_nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert batched_nms(boxes, scores, 0.9).tolist() == [1, 3, 0, 2]
    assert batched_nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_export_script_refuses_and_writes(adapter_dir, tmp_path, capsys):
    sys.path.insert(0, EXAMPLES)
    try:
        import export as script
    finally:
        sys.path.remove(EXAMPLES)
    out = tmp_path / "merged"
    import infosam_hf

    assert infosam_hf.export is export and infosam_hf.mask_generation_pipeline is mask_generation_pipeline
    assert script.main(["--adapter", adapter_dir, "--output_dir", str(out)]) == str(out)
    assert set(os.listdir(out)) == EXPORTED_FILES
    with pytest.raises(FileExistsError, match="--overwrite"):
        script.main(["--adapter", adapter_dir, "--output_dir", str(out)])


@pytest.mark.slow
@pytest.mark.extras
def test_onnx_encoder_and_decoder_match_pytorch(exported, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason='pip install -e ".[onnx]"')
    from infosam_hf.export import ONNX_DECODER_NAME, ONNX_ENCODER_NAME, export_onnx

    report = export_onnx(exported, tmp_path / "onnx")
    assert set(report) == {"image_embeddings", "pred_masks", "iou_scores"}
    # Independently of export_onnx's own check: a real image and box through both graphs vs the merged model.
    model = SamModel.from_pretrained(exported).eval()
    processor = SamProcessor.from_pretrained(exported)
    image, mask = make_synthetic_sample("specialised", 128, np.random.default_rng(3))
    ys, xs = np.nonzero(np.asarray(mask))
    box = [[[float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]]]
    batch = processor(images=image, input_boxes=box, return_tensors="pt")
    with torch.no_grad():
        expected = model(pixel_values=batch["pixel_values"], input_boxes=batch["input_boxes"], multimask_output=False)
    embeddings = onnxruntime.InferenceSession(str(tmp_path / "onnx" / ONNX_ENCODER_NAME)).run(
        None, {"pixel_values": batch["pixel_values"].numpy()})[0]
    masks, scores = onnxruntime.InferenceSession(str(tmp_path / "onnx" / ONNX_DECODER_NAME)).run(
        None, {"image_embeddings": embeddings, "input_boxes": batch["input_boxes"].numpy().astype(np.float32)})
    assert_same_masks(torch.from_numpy(masks), expected.pred_masks)
    torch.testing.assert_close(torch.from_numpy(scores), expected.iou_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_class", ["SamModel", "SamHQModel", "Sam2Model", "Sam3TrackerModel", "EdgeTamModel"])
def test_every_family_exports_to_its_own_class_with_the_adapters_masks(model_class, tmp_path):
    """A LoRA adapter folder of each family -> a folder `<FamilyModel>.from_pretrained` reads, masks as the adapter's;
    ONNX (SAM's split) is refused by name for the others, before anything is written."""
    import transformers

    from infosam_hf import load
    from infosam_hf.export import CannotExportOnnxError, export_onnx
    from infosam_hf.loading import load_processor
    from infosam_hf.models import family_of, load_sam_model
    from infosam_hf.testing import tiny_family_model, toy_segmentation_rows

    tiny_family_model(model_class).save_pretrained(tmp_path / "base")
    torch.manual_seed(0)
    config = InfoSAMConfig(relation_dim=32)
    student = build_student(load_sam_model(str(tmp_path / "base")), config, PeftArguments(lora_r=2))
    model = InfoSAMModel(student, config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    family = family_of(model.student)
    model.save_pretrained(tmp_path / "adapter", processor=load_processor(None, str(tmp_path / "base"), model.student))

    merged = export(str(tmp_path / "adapter"), tmp_path / "merged")
    with open(tmp_path / "merged" / "config.json") as f:
        assert json.load(f)["architectures"] == [model_class]
    assert f"{model_class}.from_pretrained" in (tmp_path / "merged" / "README.md").read_text()
    reloaded = getattr(transformers, model_class).from_pretrained(tmp_path / "merged").eval()
    size = family.image_size(reloaded.config)
    rows = toy_segmentation_rows(2, size, seed=1)
    batch = {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
             "input_boxes": torch.stack([r["input_boxes"] for r in rows])}
    adapter, _ = load(str(tmp_path / "adapter"))
    expected = predict(adapter, batch)
    assert_same_masks(predict(reloaded, batch), expected)
    assert_same_masks(predict(merged, batch), expected)
    base = predict(load_sam_model(str(tmp_path / "base")).eval(), batch)
    assert (base - expected).abs().max() > 1e-3 * expected.abs().max()  # the adapter changes the masks
    if model_class != "SamModel":  # SAM's ONNX graphs: test_onnx_encoder_and_decoder_match_pytorch
        with pytest.raises(CannotExportOnnxError, match=rf"SAM \(SamModel\) only; this is a {family.name} model"):
            export_onnx(merged, tmp_path / "onnx")
        assert not (tmp_path / "onnx").exists()
    if model_class == "Sam2Model":  # the script: the merged folder is written, --onnx refused in one line
        from infosam_hf.testing import load_script

        script = load_script(os.path.join(EXAMPLES, "export.py"), "export_script")
        with pytest.raises(SystemExit, match=r"^error: ONNX export covers SAM \(SamModel\) only.*no ONNX files"):
            script.main(["--adapter", str(tmp_path / "adapter"), "--output_dir", str(tmp_path / "cli"), "--onnx"])
        assert (tmp_path / "cli" / "model.safetensors").exists() and not (tmp_path / "cli" / "onnx").exists()


# ---------------------------------------------------------------------- export with another processor (issue 32 audit)
def test_export_saves_the_processor_it_is_given_not_the_adapters(tmp_path):
    from transformers import SamProcessor

    from infosam_hf.builtin import BUILTIN_MODEL_PATH
    from infosam_hf.export import export
    from infosam_hf.resolution import adapt_processor, processor_image_size

    saved = SamProcessor.from_pretrained(BUILTIN_MODEL_PATH)
    torch.manual_seed(0)
    model = InfoSAMModel(build_student(SamModel(tiny_sam_config()), InfoSAMConfig()), InfoSAMConfig())
    model.save_pretrained(tmp_path / "adapter", processor=saved)
    other = adapt_processor(saved, 96)
    assert processor_image_size(saved) != 96
    export(str(tmp_path / "adapter"), tmp_path / "out", base_model=SamModel(tiny_sam_config()), processor=other)
    assert processor_image_size(SamProcessor.from_pretrained(tmp_path / "out")) == 96
    # without one, the adapter's own
    export(str(tmp_path / "adapter"), tmp_path / "own", base_model=SamModel(tiny_sam_config()))
    assert processor_image_size(SamProcessor.from_pretrained(tmp_path / "own")) == processor_image_size(saved)
