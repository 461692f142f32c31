"""Loading a trained InfoSAM adapter, from a local folder or the Hub, in one call.

Only JSON and safetensors files are ever fetched or read. The base model is the one
the adapter names (`base_model_name_or_path` in `adapter_config.json`) unless given.
Model-card rendering and `push_to_hub` helpers are not here yet (issue 5); the
Trainer's own push works and falls back to transformers' card.
"""

from __future__ import annotations

import os

import torch

from .modeling import ADAPTER_CONFIG_NAME, InfoSAMModel, base_model_id_of

ALLOWED_PATTERNS = ["*.json", "*.safetensors", "README.md"]


def resolve_folder(repo_or_folder: str, revision: str | None = None, token: str | bool | None = None) -> str:
    """A local folder as is; otherwise a snapshot of the Hub repo restricted to JSON/safetensors."""
    if os.path.isdir(repo_or_folder):
        if not os.path.isfile(os.path.join(repo_or_folder, ADAPTER_CONFIG_NAME)):
            raise FileNotFoundError(
                f"{repo_or_folder} has no {ADAPTER_CONFIG_NAME}: it is not an adapter folder. Point at the folder "
                "InfoSAMTrainer.save_model wrote (it holds adapter_config.json and adapter_model.safetensors)."
            )
        return repo_or_folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return snapshot_download(repo_or_folder, revision=revision, token=token, allow_patterns=ALLOWED_PATTERNS)
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(
            f"{repo_or_folder!r} is neither a local folder nor a Hub repository you can access. Check the name, "
            "or log in with `hf auth login` for a private repository."
        ) from None


def _check_base_matches(base_model, folder: str) -> None:
    """An adapter trained on another SAM size fails deep in PEFT with a shape error; say what is wrong instead."""
    from safetensors import safe_open

    path = os.path.join(folder, "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} has no adapter_model.safetensors; the adapter weights are missing.")
    params = dict(base_model.named_parameters())
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            if "lora_" in key:
                continue
            name = key.replace("base_model.model.", "", 1)
            if name in params and tuple(f.get_slice(key).get_shape()) != tuple(params[name].shape):
                raise ValueError(
                    f"The adapter in {folder} does not fit this base model: {name} is "
                    f"{tuple(f.get_slice(key).get_shape())} in the adapter but {tuple(params[name].shape)} in the base "
                    f"({getattr(base_model.config, '_name_or_path', '?')}). Load the base the adapter was trained on "
                    f"({base_model_id_of(folder)})."
                )


def load(
    repo_or_folder: str,
    *,
    merge: bool = False,
    base_model=None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    is_trainable: bool = False,
):
    """(model, processor) ready for inference: the base SAM with the adapter applied (merged if `merge`)."""
    from peft import PeftModel
    from transformers import SamModel, SamProcessor

    folder = resolve_folder(repo_or_folder, revision, token)
    base_id = base_model if isinstance(base_model, str) else base_model_id_of(folder) if base_model is None else None
    base = base_model if isinstance(base_model, torch.nn.Module) else SamModel.from_pretrained(base_id)
    _check_base_matches(base, folder)
    try:
        model = PeftModel.from_pretrained(base, folder, is_trainable=is_trainable)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        first = str(err).split("size mismatch for ", 1)[-1].split("\n", 1)[0]
        raise ValueError(
            f"The adapter in {folder} does not fit this base model ({first}). Load the base model the adapter was "
            f"trained on ({base_model_id_of(folder)})."
        ) from None
    if merge:
        model = model.merge_and_unload()
    try:
        processor = SamProcessor.from_pretrained(folder)
    except (OSError, ValueError):
        processor = SamProcessor.from_pretrained(base_id or base.config._name_or_path)
    if device is not None:
        model = model.to(device)
    return (model if is_trainable else model.eval()), processor


def load_for_training(repo_or_folder: str, base_model=None, **kwargs) -> InfoSAMModel:
    """The student/teacher pair with its trained relation module, to continue InfoSAM training."""
    folder = resolve_folder(repo_or_folder, kwargs.pop("revision", None), kwargs.pop("token", None))
    return InfoSAMModel.from_pretrained(folder, base_model=base_model, is_trainable=True, **kwargs)
