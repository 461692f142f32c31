"""The student/teacher pair InfoSAM trains, as one `nn.Module` the Trainer can wrap.

Why one module: under DDP only parameters of the wrapped model get their gradients
all-reduced, and DDP must see every trained parameter used inside its forward. So
the PEFT student, the relation module and (if given) a separate teacher all live in
`InfoSAMModel`, and its forward runs student, teacher and relation module together.

By default the teacher is the student's own base weights with the adapters disabled
(`PeftModel.disable_adapter()`), so only one copy of SAM is held in memory.

`InfoSAMModel` is the one public class: forward, `save_pretrained` (with the model card),
`from_pretrained` (a folder or a Hub repo) and `push_to_hub`. Those three reach `model_card`,
`loading` and `hub` through imports inside the methods: those modules import this one, so
this module imports none of them when it is loaded (tests/test_imports.py checks it).
(~560 lines: the PEFT wrapping checks (`build_student`) sit beside the pair they build.)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from torch import nn
from transformers.utils import ModelOutput

from .config import INFOSAM_CONFIG_NAME, InfoSAMConfig, PeftArguments, check_teacher_dtype
from .features import capture_sam_features, check_is_sam_model
from .models import (
    LORA_PRESETS,
    MODEL_PARTS,
    SamFamily,
    enable_checkpointing,
    family_of,
    load_sam_model,
    part_of,
    prepare_for_peft,
)
from .relation import RelationModule

logger = logging.getLogger(__name__)

RELATION_WEIGHTS_NAME = "relation_module.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PROMPT_KEYS = ("input_boxes", "input_points", "input_labels")


def default_peft_config(peft_args: PeftArguments | None = None, family: SamFamily | None = None) -> PeftConfig:
    """`PeftArguments.get_peft_config` (kept under its older name): the student's adapter, LoRA by default."""
    return (peft_args or PeftArguments()).get_peft_config(family)


def build_student(
    base_model: nn.Module,
    config: InfoSAMConfig | None = None,
    peft_config: PeftConfig | PeftArguments | None = None,
) -> PeftModel:
    """Wrap a SAM model of any supported family with PEFT: any `PeftConfig`, or `PeftArguments` resolved for the
    model's family (default: `PeftArguments()`, LoRA on the image encoder). `config` (the method) shapes no adapter;
    it stays in the signature so `build_student(model, config)` calls keep working."""
    family = family_of(base_model, "base model")
    if isinstance(base_model, PeftModel):
        return base_model
    prepare_for_peft(base_model)
    if peft_config is None or isinstance(peft_config, PeftArguments):
        peft_args = peft_config or PeftArguments()
        peft_config = peft_args.get_peft_config(family)
        if peft_args.peft_method == "lora":
            check_lora_targets(base_model, peft_config, family, peft_args.lora_target_modules)
    check_targets_not_saved(base_model, peft_config)
    with quiet_peft_wrapping():
        return get_peft_model(base_model, peft_config)


@contextlib.contextmanager
def quiet_peft_wrapping():
    """PEFT reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model: a FutureWarning
    about PEFT's code, not the user's, at every run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def check_lora_targets(model: nn.Module, peft_config: PeftConfig, family: SamFamily, requested: str) -> None:
    """`--lora_target_modules` as PEFT will match it: a name (or regex) that matches no module is an error naming
    the family's module names (PEFT skips it silently when another name matches); a preset that leaves its part is
    an error (a wrong spec); plain names that match in more than one part are reported (one warning)."""
    from peft.tuners.lora import LoraModel

    targets = peft_config.target_modules
    singles = [targets] if isinstance(targets, str) else sorted(targets)
    found: dict[str, list[str]] = {}
    for target in singles:
        probe = copy.copy(peft_config)
        probe.target_modules, probe.modules_to_save = target if isinstance(targets, str) else {target}, None
        found[target] = [n for n, _ in model.named_modules() if n and LoraModel._check_target_module_exists(probe, n)]
    missing = [target for target, names in found.items() if not names]
    if missing:
        raise ValueError(
            f"PeftArguments.lora_target_modules={requested!r} (--lora_target_modules): "
            f"{', '.join(map(repr, missing))} match(es) no module of this {family.name} model. Use a preset, "
            f"'encoder' or 'decoder', or its names: {_linear_names(model)}."
        )
    per_part: dict[str, int] = {}
    for names in found.values():
        for name in names:
            per_part[part_of(name)] = per_part.get(part_of(name), 0) + 1
    where = ", ".join(f"{count} in the {MODEL_PARTS.get(part, 'rest')}" for part, count in per_part.items())
    if requested in LORA_PRESETS and set(per_part) != {LORA_PRESETS[requested]}:
        raise ValueError(
            f"The {family.name} spec's LoRA preset {requested!r} matches modules outside the "
            f"{MODEL_PARTS[LORA_PRESETS[requested]]} ({where}); fix it in infosam_hf.models."
        )
    if requested not in LORA_PRESETS and len(per_part) > 1:
        logger.warning(
            "lora_target_modules=%r matches modules in more than one part of this %s model (%s). For one part use "
            "the preset 'encoder' or 'decoder' (--lora_target_modules decoder).",
            requested, family.name, where,
        )


def _linear_names(model: nn.Module) -> str:
    """The module names LoRA can take (Linear and Conv layers), by model part: what a target list may name."""
    by_part: dict = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            by_part.setdefault(part_of(name), set()).add(name.rsplit(".", 1)[-1])
    return "; ".join(
        f"{MODEL_PARTS.get(part, 'other')}: {', '.join(sorted(names))}" for part, names in by_part.items()
    )


def check_targets_not_saved(model: nn.Module, peft_config: PeftConfig) -> None:
    """A module is either adapted or trained in full (`modules_to_save`), never both.

    PEFT silently skips adapter targets inside `modules_to_save` (or fails with "target
    modules not found"); say which module collides and how to choose instead.
    """
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    saved = list(getattr(peft_config, "modules_to_save", None) or [])
    targets = getattr(peft_config, "target_modules", None)
    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_config.peft_type)
    if not saved or not targets or tuner is None:
        return
    probe = copy.copy(peft_config)
    probe.modules_to_save = None
    for name, _ in model.named_modules():
        inside = [m for m in saved if name == m or name.startswith(f"{m}.") or f".{m}." in f".{name}."]
        if inside and name and tuner._check_target_module_exists(probe, name):
            raise ValueError(
                f"{name} is both an adapter target (target_modules={targets!r}) and inside modules_to_save "
                f"({inside[0]!r}); a module is either adapted or trained in full, never both. To put LoRA on the mask "
                "decoder's attention, take 'mask_decoder' out of modules_to_save (--modules_to_save '' trains only "
                "the adapter; the encoder stays frozen unless it is targeted too)."
            )


def upsample_masks(low_res_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SAM's low-resolution logits (B, 1, h, w) -> logits at `size`, bilinear as SAM's own post-processing."""
    return F.interpolate(low_res_masks.float(), size=size, mode="bilinear", align_corners=False)


@dataclass
class InfoSAMModelOutput(ModelOutput):
    """Student predictions plus the features and relations the InfoSAM losses need."""

    pred_masks: torch.Tensor | None = None  # student mask logits (B, 1, h, w), low resolution
    iou_scores: torch.Tensor | None = None  # (B, 1)
    student_image_feats: torch.Tensor | None = None  # (B, HW, C)
    student_mask_tokens: torch.Tensor | None = None  # (B, 1, C)
    teacher_image_feats: torch.Tensor | None = None
    teacher_mask_tokens: torch.Tensor | None = None
    relation_student: torch.Tensor | None = None  # (B, HW)
    relation_teacher: torch.Tensor | None = None
    # Several prompts per image: the per-prompt fields above hold the M valid (image, prompt) pairs
    # (pred_masks (M, 1, h, w), mask tokens (M, 1, C), relations (M, HW)), image features stay per image,
    # and image_index (M,) names each pair's image; prompt_mask (B, N) is the collator's validity mask.
    image_index: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None


class InfoSAMModel(nn.Module):
    """PEFT student + frozen teacher + shared relation module.

    Args:
        student: a `PeftModel` over a `SamModel` (see `build_student`).
        config: the method's knobs.
        teacher: optional separate, frozen `SamModel`. `None` uses the student with
            its adapters disabled.
        relation_module: optional pre-trained relation module (e.g. from a checkpoint).
        teacher_dtype: run the frozen teacher under autocast in 'bfloat16' or 'float16' (a run-local choice,
            `InfoSAMTrainingArguments.teacher_dtype`, which `InfoSAMTrainer` sets here). None: the student's precision.
    """

    def __init__(
        self,
        student: PeftModel,
        config: InfoSAMConfig | None = None,
        teacher: nn.Module | None = None,
        relation_module: RelationModule | None = None,
        teacher_dtype: str | None = None,
    ):
        super().__init__()
        check_is_sam_model(student, "student")
        if not isinstance(student, PeftModel):
            raise TypeError(
                "The student must be a PeftModel; wrap your SamModel with infosam_hf.build_student(model, config) "
                "or peft.get_peft_model(model, LoraConfig(...))."
            )
        config = config or InfoSAMConfig()
        if teacher is not None:
            check_is_sam_model(teacher, "teacher")
            if config.image_size is not None:  # z_i of the teacher on the student's grid
                teacher = _adapt_teacher(student, teacher, config)
            teacher.requires_grad_(False)
            teacher.eval()
        self.infosam_config = config
        self.student = student
        self.teacher = teacher
        self.relation_module = relation_module or RelationModule(self.infosam_config.relation_dim)
        self.relation_module.requires_grad_(self.infosam_config.train_relation_module)
        self._check_dims()
        self.teacher_cache = None  # set by the Trainer when `cache_teacher_embeddings` is on
        check_teacher_dtype(teacher_dtype, "InfoSAMModel")
        self.teacher_dtype = teacher_dtype

    def _check_dims(self) -> None:
        if self.infosam_config.image_size is not None:
            from .resolution import model_image_size

            size = model_image_size(self.student)
            if size != self.infosam_config.image_size:
                raise ValueError(
                    f"The student takes {size} px inputs but InfoSAMConfig.image_size is {self.infosam_config.image_size}. "
                    "Adapt the base before wrapping it (infosam_hf.resolution.adapt_model(base, image_size)), or pass "
                    "the bare base to InfoSAMTrainer, which does it."
                )
        channels = SamFamily.channels(self.student.get_base_model().config)
        if channels != self.relation_module.dim:
            raise ValueError(
                f"The SAM image embeddings have {channels} channels but InfoSAMConfig.relation_dim is "
                f"{self.relation_module.dim}; set relation_dim={channels}."
            )
        if self.teacher is not None:
            teacher_channels = SamFamily.channels(self.teacher.config)
            if teacher_channels != channels:
                raise ValueError(
                    f"Teacher and student image embeddings differ in channels ({teacher_channels} vs {channels})."
                )
            # The teacher sees the student's pixel_values: both must read images the same way.
            student_family, teacher_family = family_of(self.student), family_of(self.teacher)
            student_input = (student_family.geometry, student_family.image_size(self.sam_config))
            teacher_input = (teacher_family.geometry, teacher_family.image_size(self.teacher.config))
            if student_input != teacher_input:
                raise ValueError(
                    f"The teacher ({teacher_family.name}) takes {teacher_input[1]} px inputs in the "
                    f"{teacher_input[0]} geometry but the student ({student_family.name}) takes {student_input[1]} px "
                    f"in the {student_input[0]} geometry; both see the same pixel_values. Use a teacher of the same "
                    "input size and geometry."
                )

    # ------------------------------------------------------------------ conveniences the Trainer uses
    @property
    def sam_config(self):
        return self.student.get_base_model().config

    @property
    def teacher_image_encoder(self) -> nn.Module:
        """The image encoder whose output the teacher store keeps (adapters included but off when shared)."""
        return (self.teacher if self.teacher is not None else self.student.get_base_model()).vision_encoder

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a frozen teacher never switches to training behaviour
        if mode:
            keep_frozen_batchnorm_in_eval(self.student)
        return self

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Checkpoints the student's encoder layers. Non-reentrant by default: the reentrant variant gives no
        gradient to LoRA weights when the layer input (pixels) does not require grad."""
        kwargs = {"use_reentrant": False}
        kwargs.update(activation_checkpointing_kwargs or {})
        enable_checkpointing(
            self.student.get_base_model(),
            activation_checkpointing_kwargs=kwargs,
            every_n_layers=every_n_layers,
            offload=offload,
        )

    def activation_checkpointing_disable(self) -> None:
        self.student.get_base_model().activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.student.get_base_model().is_activation_checkpointing

    # transformers < 5 names, kept so scripts written for them work
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _prompts(inputs: dict) -> dict:
        prompts = {k: inputs[k] for k in PROMPT_KEYS if inputs.get(k) is not None}
        if "input_boxes" not in prompts and "input_points" not in prompts:
            raise ValueError(
                f"The batch has no prompt: expected 'input_boxes' (B, 1, 4) or 'input_points' (B, 1, N, 2), got keys "
                f"{sorted(inputs)}. Use infosam_hf.data.SamSegmentationCollator, which samples prompts from the masks."
            )
        return prompts

    def _teacher_context(self):
        if self.teacher is not None:
            return contextlib.nullcontext()
        return self.student.disable_adapter()

    def _teacher_autocast(self, device: torch.device):
        dtype = self.teacher_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, dtype))

    def _run_teacher(self, pixel_values: torch.Tensor, prompts: dict, multimask_output: bool, per_prompt=None):
        model = self.teacher if self.teacher is not None else self.student
        with torch.no_grad():
            embeddings, keys = (None, None) if self.teacher_cache is None else self.teacher_cache.lookup(pixel_values)
            # Only z_i and the decoder tokens are needed: the teacher stops after the two-way transformer
            # (no mask upscaling, hypernetworks or IoU head).
            with self._teacher_context(), self._teacher_autocast(pixel_values.device), capture_sam_features(
                model, stop_after_tokens=True
            ) as feats:
                if embeddings is None:
                    model(pixel_values=pixel_values, multimask_output=multimask_output, **prompts)
                else:
                    model(**embeddings, multimask_output=multimask_output, **prompts)
        if embeddings is None and self.teacher_cache is not None:
            # What the family's decoder needs besides the prompts (SAM 2: every feature level).
            self.teacher_cache.store(keys, family_of(model).cache_inputs(feats.decoder_inputs))
        tokens = feats.mask_token if per_prompt is None else feats.prompt_mask_tokens
        image_feats, tokens = feats.image_feats.detach(), tokens.detach()
        if self.teacher_dtype is not None:  # the relation module's LayerNorms run in float32
            image_feats, tokens = image_feats.float(), tokens.float()
        return image_feats, tokens

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_boxes: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        with_teacher: bool = True,
        prompt_mask: torch.Tensor | None = None,
        **_unused,
    ) -> InfoSAMModelOutput:
        """Student forward, then (if `with_teacher`) the teacher and the shared relation module.

        Extra batch keys (`gt_masks`, sizes) are accepted and ignored, so the
        collator's whole batch can be passed. Several prompts per image (N > 1, with the
        collator's `prompt_mask`) go through `_forward_prompts`: one encoder pass per image.
        """
        prompts = self._prompts(
            {"input_boxes": input_boxes, "input_points": input_points, "input_labels": input_labels}
        )
        multimask = self.infosam_config.multimask_output
        first = prompts.get("input_boxes", prompts.get("input_points"))
        if first.shape[1] > 1 or (prompt_mask is not None and not bool(prompt_mask.all())):
            return self._forward_prompts(pixel_values, prompts, prompt_mask, with_teacher, multimask)
        # The frozen teacher runs first: its no-grad activations are freed before the student's autograd graph is
        # built, so InfoSAM's peak memory is the student's, not the student's plus the teacher's.
        distill = with_teacher and self.infosam_config.uses_distillation
        teacher = self._run_teacher(pixel_values, prompts, multimask) if distill else None
        with capture_sam_features(self.student) as feats:
            outputs = self.student(pixel_values=pixel_values, multimask_output=multimask, **prompts)
        student_image_feats, student_mask_tokens = feats.image_feats, feats.mask_token
        pred_masks, iou_scores = outputs.pred_masks[:, 0], outputs.iou_scores[:, 0]  # one prompt per image

        result = InfoSAMModelOutput(
            pred_masks=pred_masks,
            iou_scores=iou_scores,
            student_image_feats=student_image_feats,
            student_mask_tokens=student_mask_tokens,
        )
        if teacher is None:
            return result
        teacher_image_feats, teacher_mask_tokens = teacher
        result.teacher_image_feats = teacher_image_feats
        result.teacher_mask_tokens = teacher_mask_tokens
        result.relation_teacher = self.relation_module(teacher_image_feats, teacher_mask_tokens)
        result.relation_student = self.relation_module(student_image_feats, student_mask_tokens)
        return result

    def _forward_prompts(self, pixel_values, prompts, prompt_mask, with_teacher, multimask) -> InfoSAMModelOutput:
        """N prompts per image as SAM's point batch; every valid (image, prompt) pair is one InfoSAM sample."""
        first = prompts.get("input_boxes", prompts.get("input_points"))
        valid = (
            torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
            if prompt_mask is None
            else prompt_mask.to(device=first.device, dtype=torch.bool)
        )
        if valid.shape != first.shape[:2]:
            raise ValueError(f"prompt_mask {tuple(valid.shape)} does not match the prompts {tuple(first.shape[:2])}.")
        distill = with_teacher and self.infosam_config.uses_distillation
        try:  # the teacher first, as in `forward`; either pass may run out of memory decoding N prompts
            teacher = self._run_teacher(pixel_values, prompts, multimask, per_prompt=True) if distill else None
            with capture_sam_features(self.student) as feats:
                outputs = self.student(pixel_values=pixel_values, multimask_output=multimask, **prompts)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err):
                raise
            raise torch.OutOfMemoryError(
                f"Out of memory decoding {first.shape[1]} prompts for each of {first.shape[0]} images: lower "
                "max_objects_per_image (examples/train.py: --max_objects_per_image) or the per-device batch size."
            ) from err
        image_index = valid.nonzero()[:, 0]
        result = InfoSAMModelOutput(
            pred_masks=outputs.pred_masks[valid],
            iou_scores=outputs.iou_scores[valid],
            student_image_feats=feats.image_feats,
            student_mask_tokens=feats.prompt_mask_tokens[valid].unsqueeze(1),
            image_index=image_index,
            prompt_mask=valid,
        )
        if teacher is None:
            return result
        teacher_image_feats, teacher_tokens = teacher
        result.teacher_image_feats = teacher_image_feats
        result.teacher_mask_tokens = teacher_tokens[valid].unsqueeze(1)
        result.relation_teacher = self.relation_module.forward_prompts(teacher_image_feats, teacher_tokens)[valid]
        result.relation_student = self.relation_module.forward_prompts(
            result.student_image_feats, feats.prompt_mask_tokens
        )[valid]
        return result

    # ------------------------------------------------------------------ save / load / push
    def save_pretrained(
        self, save_directory: str | os.PathLike, processor=None, model_card: bool = True, **peft_kwargs
    ) -> None:
        """Adapter (PEFT format, safetensors) + relation module + infosam_config.json (+ processor) in one folder.

        With `model_card=True` the folder gets the InfoSAM README.md (model-level values; a
        Trainer's `create_model_card`/`push_to_hub` adds the run's). PEFT's generic stub is
        never written, and a README.md that infosam_hf did not write is left exactly as it was.
        """
        os.makedirs(save_directory, exist_ok=True)
        peft_kwargs.setdefault("safe_serialization", True)
        with _without_peft_model_card(self.student):
            self.student.save_pretrained(save_directory, **peft_kwargs)
        state = {k: v.detach().contiguous().cpu() for k, v in self.relation_module.state_dict().items()}
        save_file(state, os.path.join(save_directory, RELATION_WEIGHTS_NAME), metadata={"format": "pt"})
        self.infosam_config.save_pretrained(save_directory)
        if processor is not None:
            processor.save_pretrained(save_directory)
        if model_card:
            from .model_card import model_card_info, render_model_card, save_model_card  # it imports this module

            save_model_card(save_directory, render_model_card(model_card_info(self, folder=save_directory)))

    def push_to_hub(self, repo_id: str, processor=None, **kwargs):
        """Adapter, relation module, config, processor and model card in one commit (`infosam_hf.hub.push_to_hub`)."""
        from .hub import push_to_hub  # the Hub layer imports this module, not the reverse at import time

        return push_to_hub(self, repo_id, processor=processor, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        adapter_path: str | os.PathLike,
        base_model: nn.Module | str | None = None,
        teacher: nn.Module | str | None = None,
        is_trainable: bool = True,
        require_relation_module: bool = True,
        revision: str | None = None,
        token: str | bool | None = None,
        image_size: int | None = None,
        **base_kwargs,
    ) -> InfoSAMModel:
        """Rebuild the pair from a folder written by `save_pretrained`, or a Hub repo it was pushed to.

        For inference only, `infosam_hf.load` is lighter (no relation module, optional merge).
        The base is built at the recorded training resolution (`InfoSAMConfig.image_size`);
        `image_size` replaces it (`infosam_hf.load_for_training` checks that this was asked for).
        """
        from .loading import base_model_id_of, load_relation_module, resolve_folder  # it imports this module

        adapter_path = os.fspath(adapter_path)
        if not os.path.isdir(adapter_path):
            adapter_path = resolve_folder(adapter_path, revision=revision, token=token)
        if not os.path.isfile(os.path.join(adapter_path, ADAPTER_CONFIG_NAME)):
            raise FileNotFoundError(
                f"{adapter_path} has no {ADAPTER_CONFIG_NAME}: it is not a PEFT adapter folder. Point at the folder "
                "that InfoSAMTrainer.save_model / InfoSAMModel.save_pretrained wrote."
            )
        config_path = os.path.join(adapter_path, INFOSAM_CONFIG_NAME)
        config = InfoSAMConfig.from_json_file(config_path) if os.path.isfile(config_path) else InfoSAMConfig()
        if image_size is not None:
            config.image_size = image_size
        if base_model is None or isinstance(base_model, str):
            base_model = load_sam_model(base_model or base_model_id_of(adapter_path), **base_kwargs)
        if config.image_size is not None:
            from .resolution import adapt_model

            base_model = adapt_model(base_model, config.image_size, allow_upscaling=True)
        with quiet_peft_wrapping():
            student = PeftModel.from_pretrained(prepare_for_peft(base_model), adapter_path, is_trainable=is_trainable)
        relation = load_relation_module(adapter_path, config.relation_dim, required=require_relation_module)
        if isinstance(teacher, str):
            teacher = load_sam_model(teacher)
        elif teacher is None and config.teacher_model_name_or_path:
            teacher = load_sam_model(config.teacher_model_name_or_path)
        return cls(student, config, teacher=teacher, relation_module=relation)


def _adapt_teacher(student: PeftModel, teacher: nn.Module, config: InfoSAMConfig) -> nn.Module:
    """A separate teacher at the student's resolution, so both read the same pixel_values (logged when adapted)."""
    from .resolution import adapt_model, model_image_size

    return adapt_model(teacher, model_image_size(student), allow_upscaling=config.allow_image_upscaling)


def keep_frozen_batchnorm_in_eval(module: nn.Module) -> int:
    """Puts every BatchNorm whose weights are frozen into eval mode; returns how many.

    A frozen encoder with BatchNorm (EdgeTAM's RepViT) would otherwise update its running
    statistics in train mode: they are buffers, not part of the adapter, so a saved adapter
    reloaded on the pre-trained base would predict differently, and the shared-weights teacher
    would drift with the student's batches. SAM, SAM-HQ, SAM 2 and SAM 3 have no BatchNorm.
    """
    frozen = 0
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in child.parameters(recurse=False)
        ):
            child.eval()
            frozen += 1
    return frozen


@contextlib.contextmanager
def _without_peft_model_card(peft_model):
    """PEFT's save_pretrained rewrites any README.md it finds (and fails on one that is not UTF-8); the card is ours."""
    peft_model.create_or_update_model_card = lambda output_dir: None
    try:
        yield
    finally:
        del peft_model.create_or_update_model_card
