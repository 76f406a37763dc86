"""Is this the verified server? The container bound to the pins, and the watch over its identity.

:func:`bound_server` is what ``sample`` and ``check`` ask before their first request: the
container the profile's pins make, running (on a cluster, every node's, each bound by the same
comparison and its snapshot hashed inside it, :mod:`detserve.runtime.cluster_nodes`), and a watch
that fails the run as soon as the container (any node) is not the one the run started with: its
id, start time, restart count and running state are read again at most every
:data:`~detserve.identity_watch.IDENTITY_CHECK_INTERVAL_S` seconds while requests are in flight,
and whenever a caller forces it (before a run log is committed;
:class:`~detserve.identity_watch.IdentityWatch`).
"""

from __future__ import annotations

from detserve import identity_watch
from detserve.identity_watch import IdentityWatch
from detserve.profile import LoadedProfile
from detserve.runtime.binding import checked_container
from detserve.runtime.cluster_nodes import ClusterWatch, NodeEngines, checked_cluster, ray_version
from detserve.runtime.cluster_run import verify_nodes
from detserve.runtime.engine import ContainerEngine, ContainerInfo


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
    watch = ClusterWatch(bound, nodes, identity_watch.IDENTITY_CHECK_INTERVAL_S)
    return bound[0].container, watch, ray_version(nodes, bound[0])
