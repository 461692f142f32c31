"""An InfoSAM adapter travels like any PEFT adapter: push to the Hub, and load back in one call.

What is pushed (and nothing else, so no pickle ever reaches the Hub): the PEFT adapter
(`adapter_config.json` naming the base model, `adapter_model.safetensors`), the relation
module (`relation_module.safetensors`, needed only to continue training),
`infosam_config.json`, the processor config, and the `README.md` model card
(`infosam_hf.model_card`). Loading reads only JSON and safetensors; the base model is the
one the adapter names unless one is given.

The public `infosam_hf.InfoSAMModel` is defined here: `infosam_hf.modeling.InfoSAMModel` (which
knows nothing of the Hub) plus `push_to_hub`, Hub ids in `from_pretrained` and the card on
`save_pretrained`. Entry points: `push_to_hub` (also `InfoSAMModel.push_to_hub`), `push_checkpoint` (what
`InfoSAMTrainer._push_from_checkpoint` runs instead of the stock one, which writes
`training_args.bin` with `torch.save`), `load`, `load_model_or_base`, `load_for_training`, `resolve_folder`.
Tokens are handed to `huggingface_hub` and never formatted into a message, card or log.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping

import torch

from .builtin import builtin_model_path
from .config import INFOSAM_CONFIG_NAME
from .model_card import (
    ALLOWED_PATTERNS,
    MODEL_CARD_NAME,
    PICKLE_SUFFIXES,
    card_is_replaceable,
    is_hub_id,
    model_card_info,
    render_model_card,
    save_model_card,
)
from . import modeling
from .models import family_of, load_sam_model, prepare_for_peft
from .resolution import adapt_model, adapt_processor, adapter_image_size
from .modeling import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    RELATION_WEIGHTS_NAME,
    base_model_id_of,
    loadable_base,
    quiet_peft_wrapping,
)


class InfoSAMModel(modeling.InfoSAMModel):
    """PEFT student + frozen teacher + shared relation module (`infosam_hf.modeling.InfoSAMModel`), with the Hub.

    Adds what a checkpoint needs to travel: `push_to_hub`, Hub repo ids in `from_pretrained`, and
    the InfoSAM README.md model card in `save_pretrained`. This is `infosam_hf.InfoSAMModel`.
    """

    def save_pretrained(
        self, save_directory: str | os.PathLike, processor=None, model_card: bool = True, **peft_kwargs
    ) -> None:
        """Adapter (PEFT format, safetensors) + relation module + infosam_config.json (+ processor) in one folder.

        With `model_card=True` the folder gets the InfoSAM README.md (model-level values; a
        Trainer's `create_model_card`/`push_to_hub` adds the run's). PEFT's generic stub is
        never written, and a README.md that infosam_hf did not write is left exactly as it was.
        """
        super().save_pretrained(save_directory, processor=processor, **peft_kwargs)
        if model_card:
            save_model_card(save_directory, render_model_card(model_card_info(self, folder=save_directory)))

    def push_to_hub(self, repo_id: str, processor=None, **kwargs):
        """Adapter, relation module, config, processor and model card in one commit; see `push_to_hub`."""
        return push_to_hub(self, repo_id, processor=processor, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        adapter_path: str | os.PathLike,
        base_model: torch.nn.Module | str | None = None,
        teacher: torch.nn.Module | str | None = None,
        is_trainable: bool = True,
        require_relation_module: bool = True,
        revision: str | None = None,
        token: str | bool | None = None,
        image_size: int | None = None,
        **base_kwargs,
    ) -> "InfoSAMModel":
        """Rebuild the pair from a folder written by `save_pretrained`, or a Hub repo it was pushed to.

        For inference only, `infosam_hf.load` is lighter (no relation module, optional merge).
        The base is built at the recorded training resolution (`InfoSAMConfig.image_size`);
        `image_size` replaces it (`infosam_hf.load_for_training` checks that this was asked for).
        """
        adapter_path = os.fspath(adapter_path)
        if not os.path.isdir(adapter_path):
            adapter_path = resolve_folder(adapter_path, revision=revision, token=token)
        return super().from_pretrained(
            adapter_path,
            base_model=base_model,
            teacher=teacher,
            is_trainable=is_trainable,
            require_relation_module=require_relation_module,
            image_size=image_size,
            **base_kwargs,
        )


# ====================================================================== push
def _raise_hub_error(err: Exception, repo_id: str, action: str, endpoint: str) -> None:
    """Say what failed in terms of the repo and what to do. The token is never part of the text."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(err, RepositoryNotFoundError):
        raise FileNotFoundError(
            f"Could not {action} {repo_id!r}: the Hub at {endpoint} has no such repository you can access. Check "
            "the name, or log in (`hf auth login`, or token=...) with an account that may read it."
        ) from None
    if isinstance(err, HfHubHTTPError) and err.response is not None and err.response.status_code in (401, 403):
        raise PermissionError(
            f"Could not {action} {repo_id!r}: the Hub at {endpoint} refused it (HTTP {err.response.status_code}). "
            "Log in with `hf auth login` or pass token=... with write access to that namespace."
        ) from None
    raise err


def _check_no_pickles(folder: str) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(PICKLE_SUFFIXES):
                raise RuntimeError(
                    f"{os.path.join(root, name)} is a pickle file; InfoSAM adapters are published as safetensors only."
                )


def push_to_hub(
    model: InfoSAMModel,
    repo_id: str,
    processor=None,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload InfoSAM adapter",
    revision: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    base_model_id: str | None = None,
    training_args=None,
    metrics: Mapping[str, float] | None = None,
    overwrite_card: bool = False,
    **card_kwargs,
):
    """Adapter + relation module + infosam_config.json + processor + model card in one commit.

    `base_model_id` replaces the base recorded in `adapter_config.json` (e.g. the Hub id
    of a base that was trained from a local copy), so others can load the adapter.
    `training_args`/`metrics` (and `language`, `license`, `tags`, `dataset`, ... as in
    `Trainer.create_model_card`) fill the card when no Trainer is at hand.
    A README.md already in the repo that infosam_hf did not generate (edited on the Hub,
    say) is left in place unless `overwrite_card=True`.
    Returns huggingface_hub's `CommitInfo`.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not isinstance(model, modeling.InfoSAMModel):
        raise TypeError(f"push_to_hub needs an InfoSAMModel, got {type(model).__name__}.")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    except HfHubHTTPError as err:
        _raise_hub_error(err, repo_id, "create", api.endpoint)
    repo_id = repo_url.repo_id
    keep_remote_card = not overwrite_card and _has_hand_written_card(api, repo_id, revision)
    with tempfile.TemporaryDirectory(prefix="infosam-push-") as folder:
        modeling.InfoSAMModel.save_pretrained(model, folder, processor=processor)  # files only: the card is below
        if base_model_id:
            _set_base_model(folder, base_model_id)
        elif not is_hub_id(recorded_base := base_model_id_of(folder)) and not builtin_model_path(recorded_base):
            warnings.warn(
                f"The adapter names its base model as {recorded_base!r}, a local path: others cannot load "
                "it from the Hub. Pass base_model_id='owner/name' to push_to_hub to record the Hub id of that base.",
                stacklevel=2,
            )
        info = model_card_info(
            model,
            repo_id=repo_id,
            folder=folder,
            training_args=training_args,
            metrics=metrics,
            finetuned_from=card_kwargs.pop("finetuned_from", None) or base_model_id,
            **card_kwargs,
        )
        if keep_remote_card:
            warnings.warn(
                f"{repo_id} already has a README.md that infosam_hf did not write; it was kept. Pass "
                "overwrite_card=True to replace it with the generated card.",
                stacklevel=2,
            )
        else:
            with open(os.path.join(folder, MODEL_CARD_NAME), "w", encoding="utf-8") as f:
                f.write(render_model_card(info))
        _check_no_pickles(folder)
        try:
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
                allow_patterns=ALLOWED_PATTERNS,
            )
        except HfHubHTTPError as err:
            _raise_hub_error(err, repo_id, "upload to", api.endpoint)


def _has_hand_written_card(api, repo_id: str, revision: str | None) -> bool:
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        path = api.hf_hub_download(repo_id, MODEL_CARD_NAME, revision=revision)
    except (EntryNotFoundError, RevisionNotFoundError):
        return False
    return not card_is_replaceable(path)


def _set_base_model(folder: str, base_model_id: str) -> None:
    path = os.path.join(folder, ADAPTER_CONFIG_NAME)
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["base_model_name_or_path"] = base_model_id
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)


CHECKPOINT_FILES = (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    RELATION_WEIGHTS_NAME,
    INFOSAM_CONFIG_NAME,
    "training_args.json",
)


def push_checkpoint(trainer, checkpoint_folder: str):
    """What `Trainer._push_from_checkpoint` does for `hub_strategy` every_save/checkpoint/all_checkpoints,
    without its pickles: the stock one `torch.save`s `training_args.bin` into output_dir and uploads
    the checkpoint's optimizer/scheduler/RNG `.pt` files. Here only JSON and safetensors travel; since
    InfoSAMTrainer writes those states as safetensors (`infosam_hf.training_state`), a `last-checkpoint`
    pushed this way resumes completely: weights, relation module, optimizer, scheduler, RNG and step.

    `InfoSAMTrainer._push_from_checkpoint` calls it. Returns the list of upload futures (also tracked in `trainer.push_in_progress`).
    """
    from transformers.trainer_utils import HubStrategy, SaveStrategy
    from transformers.utils.hub import PushInProgress, hf_api

    args = trainer.args
    if not trainer.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
        return []
    if not args.hub_always_push and trainer.push_in_progress is not None and not trainer.push_in_progress.is_done():
        return []
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    output_dir = args.output_dir
    for name in CHECKPOINT_FILES:
        if os.path.isfile(os.path.join(checkpoint_folder, name)):
            shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(output_dir, name))
    card = os.path.join(checkpoint_folder, MODEL_CARD_NAME)
    if os.path.isfile(card) and card_is_replaceable(os.path.join(output_dir, MODEL_CARD_NAME)):
        shutil.copy(card, os.path.join(output_dir, MODEL_CARD_NAME))
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    if args.save_strategy == SaveStrategy.STEPS:
        message = f"Training in progress, step {trainer.state.global_step}"
    else:
        message = f"Training in progress, epoch {int(trainer.state.epoch)}"
    upload = dict(token=args.hub_token, run_as_future=True, revision=args.hub_revision, allow_patterns=ALLOWED_PATTERNS)
    jobs = [hf_api().upload_folder(repo_id=trainer.hub_model_id, folder_path=output_dir, commit_message=message, **upload)]
    if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        in_repo = "last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT else os.path.basename(checkpoint_folder)
        jobs.append(
            hf_api().upload_folder(
                repo_id=trainer.hub_model_id,
                folder_path=checkpoint_folder,
                path_in_repo=in_repo,
                commit_message=message + ", checkpoint",
                **{**upload, "allow_patterns": ["*.json", "*.safetensors"]},
            )
        )
    if trainer.push_in_progress is None or trainer.push_in_progress.is_done():
        trainer.push_in_progress = PushInProgress(jobs)
    else:
        trainer.push_in_progress.jobs.extend(jobs)
    return jobs


# ====================================================================== load
def resolve_folder(repo_or_folder: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> str:
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
                            problems.append(f"{target} has {expected} {side} features in the base, {shape[dim]} in the adapter")
                    break
            else:
                name = name.replace(".bottleneck_norm.", ".")  # a trained LayerNorm copy has its base's shape
                if name in params and tuple(params[name].shape) != shape:
                    problems.append(f"{name} is {shape} in the adapter but {tuple(params[name].shape)} in the base")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(
            f"The adapter {source} does not fit this base model: {problems[0]}{more}. The adapter was trained on "
            f"{adapter_base!r}; the base given is {given or 'an unnamed ' + type(base_model).__name__!r}. Load the base "
            "the adapter names (omit base_model=)."
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
            f"The adapter {source} names its base model {base_id!r}, which cannot be loaded here ({type(err).__name__}: "
            f"{_first_line(err)}). Pass base_model=... (a SamModel or the id/path of the base it was trained on)."
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
        raise ValueError("merge=True returns a plain SamModel for deployment; it cannot be combined with is_trainable.")
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
        model, processor = load(adapter, base_model=base_model, device=device, image_size=image_size,
                                allow_image_size_change=allow_image_size_change)
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
