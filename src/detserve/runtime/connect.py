"""Which container engine a command talks to: the one it is given, else Docker's.

A caller (a test, a library user) may hand in an engine; otherwise the engine is Docker's at the
named ``docker_host``, else the one ``DOCKER_HOST`` or the current Docker context names. Giving
both is a usage error: which of the two was meant is not guessed. A cluster profile's nodes name
their own engines (``cluster.nodes[].docker_host``), so a cluster takes neither. The Docker SDK is
imported only when an engine is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from detserve.errors import UsageError

if TYPE_CHECKING:
    from detserve.profile import LoadedProfile
    from detserve.runtime.cluster_nodes import NodeEngines
    from detserve.runtime.docker_engine import ContainerEngine


def engine_for(engine: ContainerEngine | None, docker_host: str | None = None) -> ContainerEngine:
    """``engine`` as given, else the Docker engine at ``docker_host``, else the one
    ``DOCKER_HOST`` or the current Docker context names."""
    from detserve.runtime.docker_engine import DockerEngine

    if engine is not None:
        if docker_host is not None:
            raise UsageError("give an engine or a docker_host, not both")
        return engine
    return DockerEngine.from_env() if docker_host is None else DockerEngine.from_env(docker_host)


def engine_at(engine: ContainerEngine | None, docker_host: str | None) -> ContainerEngine | None:
    """The engine for a lifecycle call: as given (None: the lifecycle connects when it first
    needs to) unless a host is named."""
    return engine if docker_host is None else engine_for(engine, docker_host)


def nodes_for(loaded: LoadedProfile, nodes: NodeEngines | None) -> NodeEngines:
    """A cluster profile's engines: as given (tests), else each node's ``docker_host``."""
    from detserve.runtime.cluster_nodes import connect_nodes

    return nodes if nodes is not None else connect_nodes(loaded)


def cluster_engines(
    loaded: LoadedProfile, engine: ContainerEngine | None, docker_host: str | None
) -> NodeEngines:
    """A cluster profile's engines, each node's own; refused when an engine or host is given."""
    if engine is not None or docker_host is not None:
        raise UsageError(
            f"profile {loaded.path} is a cluster: its nodes name their engines "
            "(cluster.nodes[].docker_host); no engine or --docker-host is taken"
        )
    return nodes_for(loaded, None)
