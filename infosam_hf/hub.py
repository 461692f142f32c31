"""Pushing an InfoSAM adapter to the Hub: what travels, in one commit, with no pickle.

What is pushed (and nothing else): the PEFT adapter (`adapter_config.json` naming the base model,
`adapter_model.safetensors`), the relation module (`relation_module.safetensors`, needed only to
continue training), `infosam_config.json`, the processor config, and the `README.md` model card
(`infosam_hf.model_card`). Entry points: `push_to_hub` (what `InfoSAMModel.push_to_hub` calls) and
`push_checkpoint` (what `InfoSAMTrainer._push_from_checkpoint` runs instead of the stock one, which
writes `training_args.bin` with `torch.save`). Loading back is `infosam_hf.loading`'s.
Tokens are handed to `huggingface_hub` and never formatted into a message, card or log.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping

from .builtin import builtin_model_path
from .config import INFOSAM_CONFIG_NAME
from .loading import (  # noqa: F401  all but base_model_id_of: moved to infosam_hf.loading, kept here for one release
    base_model_id_of,
    check_adapter_fits,
    load,
    load_for_training,
    load_model_or_base,
    load_processor,
    resolve_folder,
)
from .model_card import (
    ALLOWED_PATTERNS,
    MODEL_CARD_NAME,
    PICKLE_SUFFIXES,
    card_is_replaceable,
    is_hub_id,
    model_card_info,
    render_model_card,
)
from .modeling import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, RELATION_WEIGHTS_NAME, InfoSAMModel


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

    if not isinstance(model, InfoSAMModel):
        raise TypeError(f"push_to_hub needs an InfoSAMModel, got {type(model).__name__}.")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    except HfHubHTTPError as err:
        _raise_hub_error(err, repo_id, "create", api.endpoint)
    repo_id = repo_url.repo_id
    keep_remote_card = not overwrite_card and _has_hand_written_card(api, repo_id, revision)
    with tempfile.TemporaryDirectory(prefix="infosam-push-") as folder:
        InfoSAMModel.save_pretrained(model, folder, processor=processor, model_card=False)  # the card is below
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

    `InfoSAMTrainer._push_from_checkpoint` calls it. Returns the list of upload futures (also tracked in
    `trainer.push_in_progress`).
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
    upload = dict(
        token=args.hub_token, run_as_future=True, revision=args.hub_revision, allow_patterns=ALLOWED_PATTERNS
    )
    jobs = [
        hf_api().upload_folder(repo_id=trainer.hub_model_id, folder_path=output_dir, commit_message=message, **upload)
    ]
    if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        in_repo = (
            "last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT else os.path.basename(checkpoint_folder)
        )
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
