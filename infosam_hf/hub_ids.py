"""Is a `--model_name_or_path` / `--dataset_name` that is not a local path a Hub repository we can use?

Asked once, before anything loads: the loaders of transformers and datasets retry an unreachable Hub for a minute
or more and end in a long traceback, where the user needs one line (not found, gated, unreachable and not cached,
or offline and not cached) and what to do about it.
"""

from __future__ import annotations

import os

HUB_PROBE_TIMEOUT_S = 10.0


def _in_hub_cache(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import constants, try_to_load_from_cache

    if repo_type == "model":
        return isinstance(try_to_load_from_cache(repo_id, "config.json", repo_type="model"), str)
    # a dataset: its files in the Hub cache, or what `datasets` prepared from them in its own cache
    hub_folder = os.path.join(constants.HF_HUB_CACHE, f"datasets--{repo_id.replace('/', '--')}")
    datasets_cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(constants.HF_HOME, "datasets")
    prepared = os.path.join(datasets_cache, repo_id.replace("/", "___"))
    return os.path.isdir(hub_folder) or os.path.isdir(prepared)


def check_hub_source(name: str, flag: str, repo_type: str = "model", token: str | bool | None = None) -> None:
    """Raise one clear error when `name` is neither a local path nor a Hub repository this run can read.

    A repository in the local Hub cache passes without asking the Hub (it loads offline). Errors:
    FileNotFoundError (no such repository, or offline and not cached), PermissionError (gated or private),
    ConnectionError (the Hub cannot be reached and nothing is cached).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if os.path.exists(os.path.expanduser(name)) or _in_hub_cache(name, repo_type):
        return
    download = f"`hf download {name}{' --repo-type dataset' if repo_type == 'dataset' else ''}`"
    if constants.HF_HUB_OFFLINE or (repo_type == "dataset" and os.environ.get("HF_DATASETS_OFFLINE") == "1"):
        raise FileNotFoundError(
            f"{flag} {name!r}: not a local path and not in the Hub cache ({constants.HF_HUB_CACHE}), and the Hub is "
            f"switched off (HF_HUB_OFFLINE). Download it where the Hub is reachable ({download}) or give a local path."
        )
    try:
        HfApi().repo_info(name, repo_type=repo_type, token=token, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        raise PermissionError(
            f"{flag} {name!r} is gated on the Hub: accept its conditions on its page, then log in (`hf auth login`)."
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{flag} {name!r} not found: no such local path, and no {repo_type} of that id on the Hub (or a private "
            "one: log in with `hf auth login`). Check the spelling."
        ) from None
    except HfHubHTTPError as error:
        if getattr(error.response, "status_code", None) == 404:
            raise FileNotFoundError(f"{flag} {name!r} not found on the Hub ({error}). Check the spelling.") from None
        raise
    except OSError as error:  # no network, DNS, timeouts
        raise ConnectionError(_unreachable(flag, name, download, error)) from None
    except Exception as error:  # the HTTP client's own transport errors (httpx, httpx2, requests), not OSErrors
        if type(error).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise ConnectionError(_unreachable(flag, name, download, error)) from None
        raise


def _unreachable(flag: str, name: str, download: str, error: Exception) -> str:
    return (
        f"{flag} {name!r}: not a local path, not in the Hub cache, and the Hub cannot be reached "
        f"({type(error).__name__}: {str(error)[:120]}). Download it where the Hub is reachable ({download}) and pass "
        "the folder, or set HF_ENDPOINT to a reachable mirror."
    )
