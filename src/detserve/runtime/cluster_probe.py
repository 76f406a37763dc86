"""The environment fingerprint of a cluster: the head's, with every node's engine and container.

For one container, :func:`detserve.fingerprint.environment_fingerprint` describes this host and
the container. A cluster's fingerprint is the same document with ``nodes`` added: each node's
name, rank, Docker engine version and container (image id, Python, vLLM and torch versions read
inside it, its numerics environment), head first. Every node is bound to the pins before it is
read (:func:`~detserve.runtime.cluster_nodes.checked_cluster`). The ``host`` part stays this
host's: a remote node's hardware is read by ``detserve env --docker-host`` on that node.
"""

from __future__ import annotations

from detserve.errors import UsageError
from detserve.fingerprint import (
    EnvironmentFingerprint,
    NodeFingerprint,
    container_fingerprint,
    host_fingerprint,
)
from detserve.profile import LoadedProfile
from detserve.runtime.cluster_nodes import NodeEngines, checked_cluster
from detserve.runtime.docker_engine import DockerEngine, python_of
from detserve.runtime.probe import DockerProbe


def cluster_fingerprint(loaded: LoadedProfile, engines: NodeEngines) -> EnvironmentFingerprint:
    """This host, the head's container, and every node's engine and container."""
    nodes = []
    head_version = None
    for item in checked_cluster(loaded, engines, what="fingerprint"):
        engine = engines[item.node.node.name]
        if not isinstance(engine, DockerEngine):
            raise UsageError("a cluster's fingerprint is read through the Docker SDK")
        probe = DockerProbe(engine.client, engine.address)
        image = engine.image_by_id(item.container.image_id)
        python = python_of(item.node.spec.entrypoint or image.entrypoint)
        version = probe.engine_version()
        head_version = head_version or version
        nodes.append(
            NodeFingerprint(
                name=item.node.node.name,
                rank=item.node.rank,
                docker_engine_version=version.version,
                container=container_fingerprint(
                    loaded.image, probe.running_facts(item.container, python)
                ),
            )
        )
    assert head_version is not None
    return EnvironmentFingerprint(
        host=host_fingerprint(head_version), container=nodes[0].container, nodes=tuple(nodes)
    )
