"""A Hub id that cannot be used fails at once with one line, before any model or data loads (issue 28)."""

import json
import socket

import pytest

from infosam_hf.hub_ids import check_hub_source


def unreachable_endpoint(monkeypatch):
    """A loopback port nobody listens on: the Hub client gets a real connection error, at once."""
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def test_an_unknown_id_is_not_found(fake_hub):
    fake_hub.create_repo({"name": "sam-mine", "organization": "someone", "type": "model"})
    check_hub_source("someone/sam-mine", "--model_name_or_path")  # exists: passes
    with pytest.raises(FileNotFoundError, match=r"--model_name_or_path 'someone/sam-nothing' not found"):
        check_hub_source("someone/sam-nothing", "--model_name_or_path")
    with pytest.raises(FileNotFoundError, match=r"--dataset_name 'nobody/nodataset' not found.*no dataset"):
        check_hub_source("nobody/nodataset", "--dataset_name", "dataset")


def test_an_unreachable_hub_names_the_flag_and_the_download_command(monkeypatch, tmp_path):
    unreachable_endpoint(monkeypatch)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConnectionError, match=r"--dataset_name 'nobody/nodataset'.*cannot be reached.*"
                                              r"`hf download nobody/nodataset --repo-type dataset`"):
        check_hub_source("nobody/nodataset", "--dataset_name", "dataset")


def test_offline_and_not_cached_fails_without_asking_the_hub(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(FileNotFoundError, match=r"'facebook/sam-vit-base'.*not in the Hub cache.*HF_HUB_OFFLINE"):
        check_hub_source("facebook/sam-vit-base", "--model_name_or_path")


def test_a_cached_model_passes_without_the_hub(monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    snapshot = cache / "models--facebook--sam-vit-base" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "sam"}))
    (cache / "models--facebook--sam-vit-base" / "refs").mkdir()
    (cache / "models--facebook--sam-vit-base" / "refs" / "main").write_text("a" * 40)
    unreachable_endpoint(monkeypatch)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    check_hub_source("facebook/sam-vit-base", "--model_name_or_path")  # loads offline from the cache: no error
    with pytest.raises(ConnectionError):
        check_hub_source("facebook/sam-vit-huge", "--model_name_or_path")


def test_train_script_fails_in_one_line_before_loading_anything(monkeypatch, tmp_path, capsys):
    from helpers import load_example

    import infosam_hf.models

    unreachable_endpoint(monkeypatch)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(infosam_hf.models, "load_sam_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as exit_info:
        load_example("train").run(["--model_name_or_path", "facebook/sam-vit-base", "--output_dir", str(tmp_path)])
    message = str(exit_info.value)
    assert message.startswith("error: --model_name_or_path 'facebook/sam-vit-base': not a local path") and \
        "\n" not in message, message
