"""Markers for the whole suite.

``tests/unit`` runs offline in seconds. Everything under ``tests/integration`` talks to the real
Docker engine and a real vLLM container, and is marked ``integration`` and ``docker`` here, so
``pytest -m "not integration"`` runs the unit tests alone.
"""

from __future__ import annotations

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.docker)
