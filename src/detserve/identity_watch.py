"""The container a run started with, watched: a run fails as soon as the container is another.

``sample``, ``check`` and a transcript's replay send requests for a while to the container they
verified at the start; :class:`IdentityWatch` compares its identity (id, start time, restart
count, running) with that one's at most every :data:`IDENTITY_CHECK_INTERVAL_S` between requests,
and always when forced (before a log is committed). A restarted or replaced server is another
lifetime: samples from two lifetimes are not one claim, so the run fails with
:class:`~detserve.errors.ContainerError` and writes nothing.
"""

from __future__ import annotations

import time

from detserve.errors import ContainerError
from detserve.runtime.docker_engine import ContainerEngine, ContainerInfo

#: how often, in seconds, the container's identity is re-checked while sampling
IDENTITY_CHECK_INTERVAL_S = 2.0


def _identity(container: ContainerInfo) -> tuple[str, str, int, bool]:
    return (container.id, container.started_at, container.restart_count, container.running)


class IdentityWatch:
    """Fails the run as soon as the container is not the one sampling started with."""

    def __init__(self, engine: ContainerEngine, container: ContainerInfo) -> None:
        self._engine = engine
        self.initial = container
        self._last_check = time.monotonic()

    def check(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_check < IDENTITY_CHECK_INTERVAL_S:
            return
        self._last_check = now
        try:
            current = self._engine.inspect(self.initial.id)
        except ContainerError as exc:
            raise ContainerError(
                f"container {self.initial.short_id} is gone; no run log was written",
                details=[exc.message],
            ) from exc
        if _identity(current) != _identity(self.initial):
            raise ContainerError(
                "the server changed during the run; no run log was written",
                details=[
                    f"at start: container {self.initial.short_id} started "
                    f"{self.initial.started_at}, restarts {self.initial.restart_count}",
                    f"now:      container {current.short_id} {current.describe()}, started "
                    f"{current.started_at}, restarts {current.restart_count}",
                ],
                hint="samples from two server lifetimes are not one claim; sample again",
            )
