"""The face's container verbs: start, wait, smoke, run, stop, status and logs of the profile's
pinned container, and the same for a cluster's nodes.

Every function that talks to an engine takes ``docker_host`` (``unix:///...``, ``tcp://...``,
``ssh://...``): that engine instead of the one ``DOCKER_HOST`` or the current Docker context
names (:mod:`detserve.runtime.connect`). The work is :mod:`detserve.runtime.lifecycle`'s and, for
a cluster, :mod:`detserve.runtime.cluster_run`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.api._common import ProfileLike, StageSink, WaitSink, load_profile
from detserve.runtime.connect import engine_at, nodes_for

if TYPE_CHECKING:
    from detserve.runtime.cluster_nodes import ClusterStatus, NodeEngines
    from detserve.runtime.cluster_run import ClusterRun, ClusterStop
    from detserve.runtime.docker_engine import ContainerEngine
    from detserve.runtime.lifecycle import (
        RunResult,
        SmokeResult,
        StartResult,
        StatusResult,
        StopResult,
        WaitResult,
    )


def start(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> StartResult:
    """Start the profile's pinned container (or find it running, bound to the same pins).

    Every function that talks to an engine takes ``docker_host`` (``unix:///...``,
    ``tcp://...``, ``ssh://...``): that engine instead of the one ``DOCKER_HOST`` or the current
    Docker context names. One that does not answer is an :class:`~detserve.errors.EngineError`
    (exit 3) naming the address.
    """
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    secrets = Path(secrets_file) if secrets_file is not None else None
    return lifecycle.start(loaded, secrets, engine=engine_at(engine, docker_host))


def wait(
    config: ProfileLike,
    *,
    timeout_s: float | None = None,
    verify_manifest: bool = False,
    on_progress: WaitSink | None = None,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> WaitResult:
    """Wait until the bound container serves the pinned model; optionally verify meanwhile."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.wait(
        loaded,
        timeout_s,
        verify_manifest=verify_manifest,
        on_progress=on_progress,
        engine=engine_at(engine, docker_host),
    )


def smoke(
    config: ProfileLike,
    *,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> SmokeResult:
    """The pinned model is served, and repeated greedy completions are identical; else raise."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.smoke(loaded, engine=engine_at(engine, docker_host))


def run(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    hash_first: bool = False,
    stop_after: bool = False,
    timeout_s: float | None = None,
    on_stage: StageSink | None = None,
    on_progress: WaitSink | None = None,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
    full_verify: bool = False,
) -> RunResult:
    """Start, wait with the whole snapshot verified meanwhile, smoke test: a server to sample.

    A container already running with these pins keeps its lifetime's record of a full pass;
    ``full_verify`` hashes every byte of the snapshot even where the record of a full pass in
    the container's lifetime vouches for it (:mod:`detserve.snapshot_state`)."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    secrets = Path(secrets_file) if secrets_file is not None else None
    return lifecycle.run(
        loaded,
        secrets,
        hash_first=hash_first,
        stop_after=stop_after,
        timeout_s=timeout_s,
        on_stage=on_stage,
        on_progress=on_progress,
        engine=engine_at(engine, docker_host),
        full_verify=full_verify,
    )


def stop(
    config: ProfileLike,
    *,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> StopResult:
    """Stop and remove the profile's container; none running is not an error."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.stop(loaded, engine=engine_at(engine, docker_host))


def status(
    config: ProfileLike,
    *,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> StatusResult:
    """The profile's container, how it differs from the pins (if at all), and its health."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.status(loaded, engine=engine_at(engine, docker_host))


def run_cluster(
    config: ProfileLike,
    *,
    secrets_file: Path | str | None = None,
    stop_after: bool = False,
    timeout_s: float | None = None,
    on_stage: StageSink | None = None,
    nodes: NodeEngines | None = None,
) -> ClusterRun:
    """Start a cluster profile's nodes, each on its own engine, bound as one container is; wait
    for the head to serve the pinned model while every node is watched; verify the snapshot
    inside every node's container; smoke. Any failure stops and removes every node's container.
    ``nodes``: the engines by node name (default: each node's ``docker_host``)."""
    from detserve.runtime import cluster_run
    from detserve.runtime.lifecycle import require_manifest
    from detserve.runtime.secrets import SecretEnvironment, load_secrets_file

    loaded = load_profile(config)
    manifest = require_manifest(loaded)
    secrets = load_secrets_file(Path(secrets_file)) if secrets_file else SecretEnvironment()
    return cluster_run.run(
        loaded,
        nodes_for(loaded, nodes),
        manifest=manifest,
        secrets=secrets,
        stop_after=stop_after,
        timeout_s=timeout_s,
        on_stage=on_stage,
    )


def stop_cluster(config: ProfileLike, *, nodes: NodeEngines | None = None) -> ClusterStop:
    """Stop and remove every node's container of a cluster profile (workers first)."""
    from detserve.runtime import cluster_run
    from detserve.runtime.cluster_nodes import connect_nodes

    loaded = load_profile(config)
    engines = nodes if nodes is not None else connect_nodes(loaded, reachable_only=True)
    return cluster_run.stop(loaded, engines)


def status_cluster(config: ProfileLike, *, nodes: NodeEngines | None = None) -> ClusterStatus:
    """Every node's container of a cluster profile, how it differs from the pins and the layout,
    and the head's health."""
    from detserve.runtime import cluster_nodes
    from detserve.runtime.container_spec import expected_labels

    loaded = load_profile(config)
    expected_labels(loaded)  # fail closed on an unpinned profile or a missing manifest
    return cluster_nodes.status(loaded, nodes_for(loaded, nodes))


def logs(
    config: ProfileLike,
    *,
    follow: bool = False,
    tail: int = 100,
    engine: ContainerEngine | None = None,
    docker_host: str | None = None,
) -> Iterator[str]:
    """The container's last ``tail`` log lines; with ``follow``, then new ones as they come."""
    from detserve.runtime import lifecycle

    loaded = load_profile(config)
    return lifecycle.logs(loaded, follow=follow, tail=tail, engine=engine_at(engine, docker_host))


def container_name(config: ProfileLike) -> str:
    """The name of the profile's container (what ``docker ps`` shows)."""
    from detserve.profile import container_name as name_of

    return name_of(load_profile(config).profile)
