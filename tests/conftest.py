"""Markers for the whole suite.

``tests/unit`` runs offline in seconds. Everything under ``tests/integration`` talks to the real
Docker engine and a real vLLM container, and is marked ``integration`` and ``docker`` here, so
``pytest -m "not integration"`` runs the unit tests alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"

# The tiny model on a real hub server (olah), for unit and integration tests alike.
pytest_plugins = ("hub_fixtures",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs the local stack (`make stack`): engine, registry, image"
    )
    config.addinivalue_line("markers", "docker: talks to the real Docker engine")


@pytest.fixture(autouse=True, scope="session")
def _session_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Snapshot records (detserve.snapshot_state) of this session, never the user's own."""
    before = os.environ.get("DETSERVE_STATE_DIR")
    os.environ["DETSERVE_STATE_DIR"] = str(tmp_path_factory.mktemp("detserve-state"))
    yield
    if before is None:
        os.environ.pop("DETSERVE_STATE_DIR", None)
    else:
        os.environ["DETSERVE_STATE_DIR"] = before


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.docker)
