"""Loading an InfoSAM adapter: a local folder or a Hub repo, checked before PEFT touches the base model.

Why a module of its own: loading is where a user's mistakes surface (a folder that is not an adapter,
an adapter for another SAM size, a base that cannot be found, a pickle instead of safetensors), so
every check says what is wrong in terms of the adapter and the base, before a shape error deep inside
PEFT would. Only JSON and safetensors are read (`ALLOWED_PATTERNS`); the base model is the one the
adapter names unless one is given. Entry points: `load` (inference, optional merge), `load_model_or_base`
(an adapter or a bare SAM checkpoint), `load_for_training` (the student/teacher pair with its relation
module), `resolve_folder`, `check_adapter_fits`, `load_processor`. `InfoSAMModel.from_pretrained` reads
Hub ids through `resolve_folder`. Pushing is `infosam_hf.hub`'s.
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from safetensors.torch import load_file

from .model_card import ALLOWED_PATTERNS, PICKLE_SUFFIXES
from .modeling import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    RELATION_WEIGHTS_NAME,
    InfoSAMModel,
    quiet_peft_wrapping,
)
from .models import family_of, load_sam_model, prepare_for_peft
from .relation import RelationModule
from .resolution import adapt_model, adapt_processor, adapter_image_size


def resolve_folder(
    repo_or_folder: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> str:
    """A local adapter folder as is; otherwise a snapshot of the Hub repo restricted to JSON/safetensors/README."""
    source = os.fspath(repo_or_folder)
    if os.path.isdir(source):
        _require_adapter_files(source, f"The folder {source}")
        return source
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    try:
        folder = snapshot_download(source, revision=revision, token=token, allow_patterns=ALLOWED_PATTERNS)
    except GatedRepoError:
        raise PermissionError(
            f"{source!r} is a gated repository: accept its conditions on its Hub page, then log in "
            "(`hf auth login`) or pass token=..."
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{source!r} is neither a local folder nor a Hub repository you can access at {endpoint}. Check the "
            "name, or log in (`hf auth login`, or token=...) for a private repository."
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"The Hub repository {source!r} has no revision {revision!r}.") from None
    except HFValidationError:
        raise FileNotFoundError(
            f"{source!r} is neither an existing local folder nor a Hub repo id of the form 'owner/name'."
        ) from None
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"Could not download {source!r}: the Hub at {endpoint} cannot be reached (or HF_HUB_OFFLINE is set) and "
            "no copy is cached. Check the connection, or download it once while online."
        ) from err
    _require_adapter_files(folder, f"The Hub repository {source!r}")
    return folder


def _require_adapter_files(folder: str, what: str) -> None:
    present = sorted(os.listdir(folder))
    if ADAPTER_CONFIG_NAME not in present:
        raise FileNotFoundError(
            f"{what} has no {ADAPTER_CONFIG_NAME}, so it is not a PEFT adapter (it holds: "
            f"{', '.join(present) or 'nothing'}). Point at what InfoSAMTrainer.save_model or "
            "InfoSAMModel.save_pretrained/push_to_hub wrote; a full SamModel loads with SamModel.from_pretrained."
        )
    if ADAPTER_WEIGHTS_NAME not in present:
        pickled = [p for p in present if p.startswith("adapter_model") and p.endswith(PICKLE_SUFFIXES)]
        hint = (
            f" It has {pickled[0]}, a pickle, which is not read; re-save the adapter with safe_serialization=True."
            if pickled
            else ""
        )
        raise FileNotFoundError(f"{what} has no {ADAPTER_WEIGHTS_NAME}: the adapter weights are missing.{hint}")


def check_adapter_fits(base_model: torch.nn.Module, folder: str, source: str | None = None) -> None:
    """An adapter for another SAM size fails deep inside PEFT with a shape error; name both models instead.

    Checks every LoRA matrix (and bottleneck-adapter up-projection) against the features of the
    module it adapts, and every fully saved weight against the base's, before PEFT touches the model.
    """
    from safetensors import safe_open

    source = source or folder
    adapter_base = _adapter_base(folder)
    given = getattr(getattr(base_model, "config", None), "_name_or_path", "") or ""
    modules = dict(base_model.named_modules())
    params = dict(base_model.named_parameters())
    problems: list[str] = []
    with safe_open(os.path.join(folder, ADAPTER_WEIGHTS_NAME), framework="pt") as f:
        for key in f.keys():
            shape = tuple(f.get_slice(key).get_shape())
            name = key.removeprefix("base_model.model.")
            for marker, dim in ((".lora_A.", 1), (".lora_B.", 0), (".bottleneck_up.", 0)):
                if marker in name:
                    target = name.split(marker)[0]
                    weight = getattr(modules.get(target), "weight", None)
                    if marker == ".bottleneck_up." and target in modules:  # an MLP block: its output width
                        from .tuners.bottleneck_adapter.layer import mlp_features

                        weight = torch.empty(mlp_features(modules[target])[1], 0, device="meta")
                    if target not in modules:
                        problems.append(f"the adapted module {target} does not exist in the base")
                    elif weight is not None and weight.dim() == 2 and len(shape) == 2:
                        expected = weight.shape[1] if dim == 1 else weight.shape[0]
                        if shape[dim] != expected:
                            side = "input" if dim == 1 else "output"
                            problems.append(
                                f"{target} has {expected} {side} features in the base, {shape[dim]} in the adapter"
                            )
                    break
            else:
                name = name.replace(".bottleneck_norm.", ".")  # a trained LayerNorm copy has its base's shape
                if name in params and tuple(params[name].shape) != shape:
                    problems.append(f"{name} is {shape} in the adapter but {tuple(params[name].shape)} in the base")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(
            f"The adapter {source} does not fit this base model: {problems[0]}{more}. The adapter was trained on "
            f"{adapter_base!r}; the base given is {given or 'an unnamed ' + type(base_model).__name__!r}. "
            "Load the base the adapter names (omit base_model=)."
        )
    resolved = loadable_base(adapter_base)
    if resolved and given and os.path.normpath(resolved) != os.path.normpath(given):
        warnings.warn(
            f"The adapter {source} was trained on {adapter_base!r} but is applied to {given!r}; the shapes fit, so "
            "it loads, but the predictions are only those of the trained model on the same base weights.",
            stacklevel=3,
        )


def _check_mergeable(folder: str, source: str) -> None:
    """Refuse merge=True for a nonlinear adapter before any weights are loaded."""
    from .tuners.bottleneck_adapter import NOT_MERGEABLE, PEFT_TYPE

    with open(os.path.join(folder, ADAPTER_CONFIG_NAME), encoding="utf-8") as f:
        peft_type = json.load(f).get("peft_type")
    if peft_type == PEFT_TYPE:
        raise ValueError(f"merge=True cannot be used for {source}: {NOT_MERGEABLE}")


def _adapter_base(folder: str) -> str | None:
    with open(os.path.join(folder, ADAPTER_CONFIG_NAME), encoding="utf-8") as f:
        return json.load(f).get("base_model_name_or_path")


def base_model_id_of(adapter_path: str | os.PathLike) -> str:
    with open(os.path.join(adapter_path, ADAPTER_CONFIG_NAME), encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{os.path.join(adapter_path, ADAPTER_CONFIG_NAME)} does not name its base model "
            "(base_model_name_or_path); pass base_model=... explicitly."
        )
    return loadable_base(base)


def loadable_base(recorded: str | None) -> str | None:
    """A recorded base as this machine can load it: a built-in model recorded under another install's path
    is this install's copy; anything else is returned as recorded."""
    if recorded and not os.path.exists(recorded):
        from .builtin import builtin_model_path

        return builtin_model_path(recorded) or recorded
    return recorded


def load_relation_module(folder: str | os.PathLike, dim: int, required: bool = True) -> RelationModule | None:
    """The relation module saved beside an adapter; `None` if absent and not `required`."""
    path = os.path.join(folder, RELATION_WEIGHTS_NAME)
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(
                f"{folder} has no {RELATION_WEIGHTS_NAME}: continuing InfoSAM training needs the trained relation "
                "module. Use a folder saved by InfoSAMTrainer, or pass require_relation_module=False to start a "
                "fresh relation module."
            )
        return None
    module = RelationModule(dim)
    module.load_state_dict(load_file(path))
    return module


def _load_base(folder: str, base_model, token, torch_dtype, source: str):
    """(base SAM model of any supported family, its id or None)."""
    if isinstance(base_model, torch.nn.Module):
        if torch_dtype is not None:
            base_model = base_model.to(torch_dtype)
        return base_model, None
    base_id = base_model or base_model_id_of(folder)
    kwargs = {"token": token} if token is not None else {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        return load_sam_model(base_id, **kwargs), base_id
    except OSError as err:
        if base_model is not None:
            raise
        raise OSError(
            f"The adapter {source} names its base model {base_id!r}, which cannot be loaded here "
            f"({type(err).__name__}: {_first_line(err)}). Pass base_model=... (a SamModel or the id/path of the base "
            "it was trained on)."
        ) from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def load_processor(folder: str, base_id: str | None, model, token: str | bool | None = None):
    """The adapter's processor config, else its base's, else a SamProcessor for `model`'s image size (warned).

    Families whose transformers processor cannot be built here (SAM 2's import torchvision) get a
    `SamSegmentationPreprocessor` in their geometry, read from the same config where there is one."""
    from transformers import SamImageProcessor, SamProcessor

    family = family_of(model)
    if family.processor_class != "SamProcessor":
        return _family_processor(folder, base_id, model, family, token)
    kwargs = {"token": token} if token is not None else {}
    for source in (folder, base_id):
        if not source:
            continue
        try:
            return SamProcessor.from_pretrained(source, **({} if source == folder else kwargs))
        except (OSError, ValueError):
            continue
    size = family.image_size(model.config)
    warnings.warn(
        f"Neither the adapter nor its base ({base_id!r}) has a processor config; using a SamProcessor for "
        f"{size} px inputs (the model's image size) with SAM's default normalisation.",
        stacklevel=3,
    )
    return SamProcessor(
        image_processor=SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size})
    )


def _family_processor(folder: str, base_id: str | None, model, family, token):
    import transformers

    from .data.preprocessing import SamSegmentationPreprocessor

    kwargs = {"token": token} if token is not None else {}
    for source in (folder, base_id):
        if not source:
            continue
        try:
            return getattr(transformers, family.processor_class).from_pretrained(
                source, **({} if source == folder else kwargs)
            )
        except (ImportError, OSError, ValueError, AttributeError):
            pass
        if os.path.isdir(source):
            try:
                return SamSegmentationPreprocessor.from_processor(source)
            except (OSError, ValueError):
                continue
    warnings.warn(
        f"No usable {family.processor_class} config for this {family.name} adapter; using a "
        f"SamSegmentationPreprocessor in {family.name}'s geometry at the model's image size.",
        stacklevel=3,
    )
    return SamSegmentationPreprocessor.for_model(model)


def load(
    repo_or_folder: str | os.PathLike,
    *,
    merge: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
    base_model: torch.nn.Module | str | None = None,
    is_trainable: bool = False,
    torch_dtype: torch.dtype | None = None,
    image_size: int | None = None,
    allow_image_size_change: bool = False,
):
    """(model, processor) ready for inference: the base SAM with the adapter applied, in eval mode.

    `merge=True` folds LoRA into the base weights (`merge_and_unload`) and returns a plain
    `SamModel` with the same masks, for deployment without peft at inference time; it is
    refused for the bottleneck adapter, which is nonlinear and cannot be merged.
    The base is built at the resolution the adapter was trained at (`infosam_config.json`
    image_size, logged); another `image_size` is refused unless `allow_image_size_change=True`.
    """
    from peft import PeftModel

    if merge and is_trainable:
        raise ValueError(
            "merge=True returns a plain SamModel for deployment; it cannot be combined with is_trainable."
        )
    source = os.fspath(repo_or_folder)
    folder = resolve_folder(source, revision, token)
    if merge:
        _check_mergeable(folder, source)
    base, base_id = _load_base(folder, base_model, token, torch_dtype, source)
    size = adapter_image_size(base, folder, image_size, allow_change=allow_image_size_change, source=source)
    base = adapt_model(base, size, allow_upscaling=True)
    check_adapter_fits(base, folder, source)
    try:
        with quiet_peft_wrapping():
            model = PeftModel.from_pretrained(prepare_for_peft(base), folder, is_trainable=is_trainable)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        detail = str(err).split("size mismatch for ", 1)[-1].split("\n", 1)[0]
        raise ValueError(
            f"The adapter {source} does not fit this base model ({detail}). The adapter was trained on "
            f"{_adapter_base(folder)!r}; load that base (omit base_model=)."
        ) from None
    if merge:
        model = model.merge_and_unload()
    processor = load_processor(folder, base_id or _adapter_base(folder), model, token)
    if size is not None:
        processor = adapt_processor(processor, size)
    if device is not None:
        model = model.to(device)
    return (model if is_trainable else model.eval()), processor


def load_model_or_base(
    adapter: str | os.PathLike | None,
    base_model: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    image_size: int | None = None,
    allow_image_size_change: bool = False,
):
    """(model, processor) in eval mode: `adapter` on its base (see `load`), or, with no adapter, the base alone.

    What evaluation and prediction need when the same flags may name a fine-tuned adapter
    or just a SAM checkpoint to run zero-shot. `image_size`: see `load`; a base alone is adapted
    to it (above its own size only with `allow_image_size_change`).
    """
    if adapter is not None:
        model, processor = load(
            adapter,
            base_model=base_model,
            device=device,
            image_size=image_size,
            allow_image_size_change=allow_image_size_change,
        )
    elif base_model is not None:
        from transformers import SamProcessor

        model = load_sam_model(base_model)
        if family_of(model).processor_class == "SamProcessor":
            processor = SamProcessor.from_pretrained(base_model)
        else:
            processor = load_processor(base_model if os.path.isdir(base_model) else None, base_model, model)
        model = adapt_model(model, image_size, allow_upscaling=allow_image_size_change)
        processor = adapt_processor(processor, image_size)
    else:
        raise ValueError("Name an adapter or a base model to load.")
    return model.to(device=device, dtype=dtype).eval(), processor


def load_for_training(
    repo_or_folder: str | os.PathLike,
    base_model: torch.nn.Module | str | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    require_relation_module: bool = True,
    teacher: torch.nn.Module | str | None = None,
    seed: int | None = None,
    image_size: int | None = None,
    allow_image_size_change: bool = False,
) -> InfoSAMModel:
    """The student/teacher pair with its trained relation module, to continue InfoSAM training.

    `seed` (the run's `TrainingArguments.seed`) seeds what is built at random before the
    saved weights are loaded (and a fresh relation module with `require_relation_module=False`),
    so two runs with the same seed start identically.
    """
    if seed is not None:
        from transformers.trainer_utils import set_seed

        set_seed(seed)
    source = os.fspath(repo_or_folder)
    folder = resolve_folder(source, revision, token)
    if require_relation_module and not os.path.isfile(os.path.join(folder, RELATION_WEIGHTS_NAME)):
        raise FileNotFoundError(
            f"{source} has no {RELATION_WEIGHTS_NAME}: continuing InfoSAM training needs the trained relation module. "
            "Push or save with infosam_hf (InfoSAMTrainer.push_to_hub / InfoSAMModel.push_to_hub / save_pretrained "
            "write it), or pass require_relation_module=False to start a fresh relation module."
        )
    base, _ = _load_base(folder, base_model, token, None, source)
    size = adapter_image_size(base, folder, image_size, allow_change=allow_image_size_change, source=source)
    base = adapt_model(base, size, allow_upscaling=True)
    check_adapter_fits(base, folder, source)
    return InfoSAMModel.from_pretrained(
        folder,
        base_model=base,
        teacher=teacher,
        is_trainable=True,
        require_relation_module=require_relation_module,
        image_size=size,
    )
