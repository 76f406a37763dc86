"""The hub server of the tests (scripts/stack/olah_hub.py): offline, deterministic, stoppable."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from hub_fixtures import TINY_HUB_COMMIT, olah_hub, tiny_files


def test_an_olah_that_is_not_offline_is_refused(tmp_path: Path) -> None:
    # Online, it would ask its upstream (here 127.0.0.1:9, where nothing listens) about an
    # unknown repository and answer 504: the start-up check must see that and stop it.
    hub = olah_hub.OlahHub(tmp_path, offline=False)
    with pytest.raises(olah_hub.HubError, match="olah is not offline"):
        hub.start()
    assert hub._process is None  # stopped


def test_the_same_files_make_the_same_commit(olah_server: object) -> None:
    first = olah_server.model("determinism/one", tiny_files())[1]  # type: ignore[attr-defined]
    second = olah_server.model("determinism/two", tiny_files())[1]  # type: ignore[attr-defined]
    assert first == second == TINY_HUB_COMMIT


def test_weights_are_served_from_lfs_and_other_files_from_git(olah_server: object) -> None:
    repo, commit = olah_server.model("determinism/lfs", tiny_files())  # type: ignore[attr-defined]
    pointer = (repo.path / "model.safetensors").read_bytes()
    assert pointer.startswith(b"version https://git-lfs.github.com/spec/v1\n")
    weights = tiny_files()["model.safetensors"]
    assert isinstance(weights, Path)
    url = f"{olah_server.url}/{repo.repo_id}/resolve/{commit}/model.safetensors"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.read() == weights.read_bytes()


def test_stop_ends_the_server(tmp_path: Path) -> None:
    with olah_hub.OlahHub(tmp_path) as hub:
        port = hub.port
        process = hub._process
    assert process is not None
    assert process.poll() is not None
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass
