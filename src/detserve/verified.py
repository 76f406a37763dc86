"""Is this the verified server? The container bound to the pins, and the watch over its identity.

:func:`bound_server` is what ``sample`` and ``check`` ask before their first request: the
container the profile's pins make, running (on a cluster, every node's, each bound by the same
comparison and its snapshot hashed inside it, :mod:`detserve.runtime.cluster_nodes`), and a watch
that fails the run as soon as the container (any node) is not the one the run started with: its
id, start time, restart count and running state are read again at most every
:data:`IDENTITY_CHECK_INTERVAL_S` seconds while requests are in flight, and whenever a caller
forces it (before a run log is committed). The gateway's replay uses :class:`IdentityWatch`.
"""

from __future__ import annotations

import time

from detserve.errors import ContainerError
from detserve.profile import LoadedProfile
from detserve.runtime.binding import checked_container
from detserve.runtime.cluster_nodes import ClusterWatch, NodeEngines, checked_cluster, ray_version
from detserve.runtime.cluster_run import verify_nodes
from detserve.runtime.engine import ContainerEngine, ContainerInfo

#: how often, in seconds, the container's identity is re-checked while requests are in flight
IDENTITY_CHECK_INTERVAL_S = 2.0


def _identity(container: ContainerInfo) -> tuple[str, str, int, bool]:
    return (container.id, container.started_at, container.restart_count, container.running)


class IdentityWatch:
    """Fails the run as soon as the container is not the one the run started with."""

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


def bound_server(
    loaded: LoadedProfile,
    engine: ContainerEngine,
    nodes: NodeEngines | None,
    manifest: str,
    *,
    what: str = "sample from",
) -> tuple[ContainerInfo, IdentityWatch | ClusterWatch, str | None]:
    """The container that serves (a cluster's head), the watch over it (over every node), and
    on a cluster the Ray version its image holds, once every node is bound and verified."""
    if nodes is None:
        container = checked_container(loaded, engine, what=what, manifest=manifest)
        return container, IdentityWatch(engine, container), None
    bound = checked_cluster(loaded, nodes, what=what, manifest=manifest)
    verify_nodes(loaded, nodes, bound)  # each node's own copy, where its server reads it
    watch = ClusterWatch(bound, nodes, IDENTITY_CHECK_INTERVAL_S)
    return bound[0].container, watch, ray_version(nodes, bound[0])
