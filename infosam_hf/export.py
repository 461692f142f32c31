"""Ship a fine-tuned SAM as a plain model: merge the adapter, save a folder `SamModel.from_pretrained` reads.

Every supported family (SAM, SAM-HQ, SAM 2, the SAM 3 tracker, EdgeTAM) exports to a folder its own
transformers class reads (`SamHQModel.from_pretrained`, `Sam2Model.from_pretrained`, ...); the ONNX
graphs are SAM's only (`export_onnx` names the family and the alternative otherwise).

Why: an InfoSAM adapter needs peft (and, for the built-in base, infosam_hf) wherever it
runs. Deployment targets (an inference endpoint, `transformers.pipeline`, ONNX tooling)
expect a standalone checkpoint instead. LoRA (and every PEFT method whose update is a
static weight delta) folds into the base weights with the same masks up to float
rounding; the folder written here holds only `config.json`, `model.safetensors`, the
processor config and a short model card.

An adapter whose update depends on the input (a bottleneck adapter that adds layers,
ShadowPEFT, ...) cannot become a plain `SamModel`: `export` refuses with `CannotMergeError`
and names the unmerged path (the adapter folder + peft) instead of writing a model that
would silently drop the adaptation.

`mask_generation_pipeline` is `transformers.pipeline("mask-generation", ...)` with one
workaround: transformers' SAM image processors import torchvision for the final
non-maximum suppression of automatic mask generation only; without torchvision (e.g.
CPU-only installs of torch) the same NMS runs in plain torch.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import torch

from .model_card import MODEL_CARD_NAME, is_hub_id
from .models import family_of

EXPORT_CARD_MARKER = "<!-- infosam-hf export -->"


class CannotMergeError(ValueError):
    """The adapter's update is not a weight delta, so no plain SamModel can reproduce it."""


class CannotExportOnnxError(ValueError):
    """The model's family has no ONNX split here (SAM's: one image-embedding tensor between the two graphs)."""


def _refuse_non_empty(output_dir: str, overwrite: bool) -> None:
    if os.path.isfile(output_dir):
        raise FileExistsError(f"{output_dir} is a file; export writes a folder. Choose another output_dir.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(
            f"Refusing to write into {output_dir}: it is not empty ({', '.join(sorted(os.listdir(output_dir))[:5])}). "
            "Pass overwrite=True (--overwrite) to replace the model files there, or choose an empty output_dir."
        )


def _unmerged_hint(source: str, model_class: str = "SamModel") -> str:
    return (
        "Use the adapter unmerged instead: `model, processor = infosam_hf.load(" + repr(source) + ")`, or with peft "
        f"alone `PeftModel.from_pretrained({model_class}.from_pretrained(<base>), " + repr(source) + ")`."
    )


def _peft_student(adapter, base_model, revision, token):
    """(PeftModel to merge, processor or None, source text for messages); in-memory models are copied, never merged in place."""
    from peft import PeftModel

    from .inference import unwrap_sam_model
    from .loading import load

    if isinstance(adapter, torch.nn.Module):
        student = unwrap_sam_model(adapter)
        if not isinstance(student, PeftModel):
            raise TypeError(
                f"export needs an adapter: an adapter folder or Hub id, an InfoSAMModel or a PeftModel; got "
                f"{type(adapter).__name__}. A plain SamModel is already standalone: call its save_pretrained."
            )
        return copy.deepcopy(student).eval(), None, f"<in-memory {type(adapter).__name__}>"
    source = os.fspath(adapter)
    model, processor = load(source, revision=revision, token=token, base_model=base_model)
    return model, processor, source


def merge_adapter(peft_model, source: str = "the adapter"):
    """The plain base model (`SamModel`, `Sam2Model`, ... as the family's) with the adapter folded in;
    `CannotMergeError` when that is impossible."""
    family = family_of(peft_model, "adapter's model")
    kind = getattr(peft_model.active_peft_config, "peft_type", None)
    peft_type = getattr(kind, "value", kind) or "unknown PEFT method"
    try:
        merged = peft_model.merge_and_unload()
    except (NotImplementedError, AttributeError, TypeError, ValueError, RuntimeError) as err:
        raise CannotMergeError(
            f"{source} ({peft_type}) cannot be merged into the base weights: {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}. "
            f"{_unmerged_hint(source, family.model_class)}"
        ) from err
    if type(merged).__name__ != family.model_class:
        raise CannotMergeError(
            f"Merging {source} ({peft_type}) gave a {type(merged).__name__}, not a {family.model_class}. "
            f"{_unmerged_hint(source, family.model_class)}"
        )
    with torch.device("meta"):
        reference = type(merged)(merged.config)
    extra = sorted(set(merged.state_dict()) - set(reference.state_dict()))
    # Module types the plain class, built from the same config, does not have (an image encoder from timm is its own).
    known = {type(m) for m in reference.modules()}
    foreign = sorted({type(m).__module__ + "." + type(m).__name__ for m in merged.modules() if type(m) not in known})
    if extra or foreign:
        what = f"modules {', '.join(foreign[:3])}" if foreign else f"weights {', '.join(extra[:3])}"
        raise CannotMergeError(
            f"{source} ({peft_type}) adds layers to {family.name} that remain after merging ({what}); it is not a "
            f"weight delta, so no plain {family.model_class} can reproduce it. "
            f"{_unmerged_hint(source, family.model_class)}"
        )
    return merged.eval()


def _export_card(base: str | None, source: str, location: str, family) -> str:
    base_line = f"base_model: {base}\n" if base and is_hub_id(base) else ""
    origin = f"[{source}](https://huggingface.co/{source})" if is_hub_id(source) else f"`{source}`"
    return (
        "---\n"
        "library_name: transformers\n"
        "pipeline_tag: mask-generation\n"
        f"{base_line}"
        "tags:\n- sam\n- infosam\n- merged\n"
        "---\n"
        f"{EXPORT_CARD_MARKER}\n\n"
        f"# Merged InfoSAM fine-tune of {family.name}\n\n"
        f"The InfoSAM adapter {origin} merged into its base model{f' `{base}`' if base else ''}: a plain "
        f"`{family.model_class}` that needs neither peft nor infosam-hf.\n\n"
        "```python\n"
        f"from transformers import {family.model_class}, {family.processor_class}"
        f"{', pipeline' if family.model_class == 'SamModel' else ''}\n\n"
        f"model = {family.model_class}.from_pretrained({location!r})\n"
        f"processor = {family.processor_class}.from_pretrained({location!r})\n"
        + (f"generator = pipeline(\"mask-generation\", model={location!r})  # automatic masks; needs torchvision\n"
           if family.model_class == "SamModel" else "")
        + "```\n"
    )


def export(
    adapter,
    output_dir: str | os.PathLike,
    *,
    base_model=None,
    processor=None,
    overwrite: bool = False,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload merged InfoSAM model",
):
    """Merge `adapter` into its base and save a standalone model folder; returns the merged model (`SamModel`, or
    the family's class: `SamHQModel`, `Sam2Model`, `Sam3TrackerModel`, `EdgeTamModel`).

    `adapter`: an adapter folder or Hub id (as `infosam_hf.load` takes), an `InfoSAMModel` or
    a `PeftModel` (copied: the object you pass keeps its adapter). `processor` overrides the
    one saved with the adapter (an in-memory model has none: pass it, or the base's is used).
    The folder must be empty or absent unless `overwrite=True`. `push_to_hub=True` uploads
    the folder to `repo_id` (created if needed) in one commit.
    """
    output_dir = os.fspath(output_dir)
    if push_to_hub and not repo_id:
        raise ValueError("push_to_hub=True needs repo_id='owner/name' (--hub_model_id).")
    _refuse_non_empty(output_dir, overwrite)
    student, loaded_processor, source = _peft_student(adapter, base_model, revision, token)
    base = getattr(student.active_peft_config, "base_model_name_or_path", None)
    processor = processor if processor is not None else loaded_processor
    if processor is None:
        from .loading import load_processor

        with tempfile.TemporaryDirectory() as empty:
            processor = load_processor(empty, base, student, token)
    merged = merge_adapter(student, source)
    merged.config.architectures = [type(merged).__name__]
    os.makedirs(output_dir, exist_ok=True)
    merged.save_pretrained(output_dir, safe_serialization=True)
    processor.save_pretrained(output_dir)
    with open(os.path.join(output_dir, MODEL_CARD_NAME), "w", encoding="utf-8") as f:
        f.write(_export_card(base, source, repo_id or output_dir, family_of(merged)))
    if push_to_hub:
        push_folder(output_dir, repo_id, private=private, token=token, commit_message=commit_message)
    return merged


def push_folder(folder: str, repo_id: str, *, private=None, token=None, commit_message="Upload merged InfoSAM model"):
    """Upload an exported folder (JSON, safetensors, README.md; never a pickle) in one commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .hub import _check_no_pickles, _raise_hub_error

    _check_no_pickles(folder)
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            allow_patterns=["*.json", "*.safetensors", MODEL_CARD_NAME],
        )
    except HfHubHTTPError as err:
        _raise_hub_error(err, repo_id, "upload to", api.endpoint)


# ---------------------------------------------------------------------- ONNX
ONNX_ENCODER_NAME = "encoder.onnx"
ONNX_DECODER_NAME = "prompt_encoder_mask_decoder.onnx"


class _OnnxEncoder(torch.nn.Module):
    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, pixel_values):
        return self.sam.get_image_embeddings(pixel_values)


class _OnnxDecoder(torch.nn.Module):
    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, image_embeddings, input_boxes):
        out = self.sam(image_embeddings=image_embeddings, input_boxes=input_boxes, multimask_output=False)
        return out.pred_masks, out.iou_scores


def export_onnx(model, output_dir: str | os.PathLike, *, check: bool = True, opset_version: int = 17) -> dict:
    """`encoder.onnx` (pixel_values -> image_embeddings) and `prompt_encoder_mask_decoder.onnx`
    (image_embeddings, input_boxes -> pred_masks, iou_scores) for one image and one box, SAM's usual split
    (embed once, prompt many times).

    `model`: a merged `SamModel` or the folder `export` wrote. Uses torch's TorchScript exporter
    (`dynamo=False`): the dynamo exporter fails on SAM's vision encoder here (torch 2.13: a `view` of a
    non-contiguous tensor in the attention's relative-position path). With `check=True` (needs
    onnxruntime) both graphs are run on random inputs and compared with PyTorch; returns the max
    absolute differences and the largest PyTorch value of each output.
    """
    from .models import SAM, load_sam_model

    sam = load_sam_model(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model
    family = family_of(sam, "model to export to ONNX")
    if family is not SAM:
        raise CannotExportOnnxError(
            f"ONNX export covers SAM (SamModel) only; this is a {family.name} model ({family.model_class}), whose "
            f"encoder hands the decoder more than one tensor. Its merged folder is a transformers checkpoint: "
            f"serve it with {family.model_class}.from_pretrained, or run it through infosam_hf.load."
        )
    sam = sam.eval().float()
    size = sam.config.vision_config.image_size
    os.makedirs(output_dir, exist_ok=True)
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[0.1 * size, 0.15 * size, 0.7 * size, 0.8 * size]]])
    encoder, decoder = _OnnxEncoder(sam), _OnnxDecoder(sam)
    with torch.no_grad():
        embeddings = encoder(pixel_values)
        masks, scores = decoder(embeddings, boxes)
    encoder_path = os.path.join(output_dir, ONNX_ENCODER_NAME)
    decoder_path = os.path.join(output_dir, ONNX_DECODER_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(encoder, (pixel_values,), encoder_path, input_names=["pixel_values"],
                          output_names=["image_embeddings"], opset_version=opset_version, dynamo=False)
        torch.onnx.export(decoder, (embeddings, boxes), decoder_path, input_names=["image_embeddings", "input_boxes"],
                          output_names=["pred_masks", "iou_scores"], opset_version=opset_version, dynamo=False)
    if not check:
        return {}
    import onnxruntime

    ort_embeddings = onnxruntime.InferenceSession(encoder_path).run(None, {"pixel_values": pixel_values.numpy()})[0]
    ort_masks, ort_scores = onnxruntime.InferenceSession(decoder_path).run(
        None, {"image_embeddings": embeddings.numpy(), "input_boxes": boxes.numpy()}
    )
    report = {}
    for name, ours, theirs in (("image_embeddings", embeddings, ort_embeddings), ("pred_masks", masks, ort_masks),
                               ("iou_scores", scores, ort_scores)):
        report[name] = {"max_abs_diff": float((ours - torch.from_numpy(theirs)).abs().max()), "max_abs": float(ours.abs().max())}
        if report[name]["max_abs_diff"] > 1e-4 * max(1.0, report[name]["max_abs"]):
            raise RuntimeError(f"The ONNX graph's {name} differ from PyTorch's by {report[name]['max_abs_diff']:.3g}.")
    return report


# ---------------------------------------------------------------------- mask-generation pipeline
def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS in plain torch, as `torchvision.ops.nms` (one class): indices kept, highest score first."""
    boxes = boxes.float()
    scores = scores.reshape(-1).float()
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=torch.finfo(torch.float32).eps)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _torch_nms_image_processor(source):
    """transformers' PIL SAM image processor with the automatic-mask-generation NMS in plain torch."""
    from transformers.models.sam import image_processing_pil_sam as pil_sam

    class SamImageProcessorTorchNMS(pil_sam.SamImageProcessorPil):
        def post_process_for_mask_generation(self, all_masks, all_scores, all_boxes, crops_nms_thresh):
            keep = batched_nms(all_boxes, all_scores, crops_nms_thresh)
            rle = [all_masks[i] for i in keep.tolist()]
            return [pil_sam._rle_to_mask(r) for r in rle], all_scores[keep], rle, all_boxes[keep]

    if isinstance(source, str):
        return SamImageProcessorTorchNMS.from_pretrained(source)
    return SamImageProcessorTorchNMS(**source.to_dict())


def mask_generation_pipeline(model, image_processor=None, **kwargs):
    """`transformers.pipeline("mask-generation", model=...)`, working also where torchvision is missing.

    `model`: an exported folder or Hub id, or a merged `SamModel` (then pass `image_processor`,
    or the processor saved with it is looked up at `model.name_or_path`). With torchvision
    installed this is exactly the stock pipeline.
    """
    from transformers import pipeline
    from transformers.utils import is_torchvision_available

    if image_processor is None and not isinstance(model, str):
        image_processor = getattr(model, "name_or_path", None) or None
        if image_processor is None:
            raise ValueError("Pass image_processor= (e.g. SamProcessor.from_pretrained(...).image_processor) with an in-memory model.")
    if not is_torchvision_available():
        image_processor = _torch_nms_image_processor(image_processor if image_processor is not None else model)
    elif isinstance(image_processor, str):
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(image_processor)
    if image_processor is not None:
        kwargs["image_processor"] = image_processor
    return pipeline("mask-generation", model=model, **kwargs)


__all__ = [
    "CannotExportOnnxError",
    "CannotMergeError",
    "batched_nms",
    "export",
    "export_onnx",
    "mask_generation_pipeline",
    "merge_adapter",
    "push_folder",
]
