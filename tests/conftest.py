"""Shared fixtures. The Hub ones start a loopback Hub-compatible server (see tests/hub_server.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from hub_server import FakeHub  # noqa: E402


@pytest.fixture
def hub_server():
    """A running loopback Hub; nothing points at it yet (use `fake_hub` for that)."""
    with FakeHub() as server:
        yield server


@pytest.fixture
def fake_hub(hub_server, monkeypatch, tmp_path):
    """huggingface_hub, transformers and peft talk to the loopback Hub, with an empty cache, for this test."""
    hub_server.activate(monkeypatch, tmp_path / "hf-cache")
    return hub_server
