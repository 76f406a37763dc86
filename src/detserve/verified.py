"""Is this the verified server? The one path ``sample``, ``check`` and ``serve`` take to know it.

:func:`verified_server` is what each of them asks before its first request: the container the
profile's pins make, running (on a cluster, every node's, each bound by the same comparison and
its snapshot hashed inside it, :mod:`detserve.runtime.cluster_nodes`), bound to the very manifest
bytes the snapshot is then verified against (for the container's lifetime,
:mod:`detserve.snapshot_state`), the run's pins from that verification, and the address the bound
container answers on (never a stand-in's). :func:`opened_server` then opens that address and
checks that it serves the pinned model before anything is sent.

A watch fails the run as soon as the container (any node) is not the one the run started with:
its id, start time, restart count and running state are read again at most every
:data:`~detserve.identity_watch.IDENTITY_CHECK_INTERVAL_S` seconds while requests are in flight,
and whenever a caller forces it (before a run log is committed;
:class:`~detserve.identity_watch.IdentityWatch`). Before a claim is committed the snapshot is
verified again, and it must have verified against the same manifest at the end as at the start
(:func:`check_same_manifest`), or the claim would straddle two trust roots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from detserve import identity_watch
from detserve.errors import PinMismatch
from detserve.identity_watch import IdentityWatch
from detserve.pins import ProfilePins, profile_pins
from detserve.profile import LoadedProfile
from detserve.runtime.binding import checked_container
from detserve.runtime.cluster_nodes import ClusterWatch, NodeEngines, checked_cluster, ray_version
from detserve.runtime.cluster_run import verify_nodes
from detserve.runtime.docker_engine import ContainerEngine, ContainerInfo
from detserve.runtime.reach import server_url
from detserve.runtime.smoke import check_served_model
from detserve.runtime.vllm_client import VllmServer
from detserve.snapshot import VerifyReport
from detserve.snapshot_state import Lifetime, PinnedManifest, lifetime_of, verify_in_lifetime


@dataclass(frozen=True)
class VerifiedServer:
    """The bound container, the watch over it, and the snapshot verified for its lifetime."""

    #: the container that serves (a cluster's head)
    container: ContainerInfo
    #: the watch over its identity (over every node's, on a cluster)
    watch: IdentityWatch | ClusterWatch
    #: on a cluster, the Ray version the head's image holds; else None
    ray_version: str | None
    #: the container's lifetime, which later verifications of the snapshot are bound to
    lifetime: Lifetime
    #: the snapshot's verification against the manifest the container was bound to
    report: VerifyReport
    #: the run's pins, with the sha256 of that manifest
    pins: ProfilePins
    #: where requests go: the bound container's address
    url: str


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


def verified_server(
    loaded: LoadedProfile,
    engine: ContainerEngine,
    manifest: PinnedManifest,
    *,
    nodes: NodeEngines | None = None,
    what: str = "sample from",
    full_verify: bool = False,
    progress: Callable[[int], None] | None = None,
) -> VerifiedServer:
    """Bind the container (every node) to ``manifest``, then verify the snapshot against those
    same bytes for the container's lifetime; raise on any failure."""
    container, watch, ray = bound_server(loaded, engine, nodes, manifest.sha256, what=what)
    lifetime = lifetime_of(container)
    report = verify_in_lifetime(
        loaded.snapshot_dir, manifest, lifetime, full=full_verify, progress=progress
    )
    return VerifiedServer(
        container=container,
        watch=watch,
        ray_version=ray,
        lifetime=lifetime,
        report=report,
        pins=profile_pins(loaded, manifest_sha256=report.manifest_sha256),
        url=server_url(loaded, engine, container),
    )


@contextmanager
def opened_server(loaded: LoadedProfile, url: str) -> Iterator[tuple[VllmServer, str]]:
    """The server at ``url``, open, once it serves the pinned model; and its vLLM version."""
    with VllmServer(url, model=loaded.profile.vllm.served_model_name) as server:
        check_served_model(loaded, server)
        yield server, server.version()


def served_version(loaded: LoadedProfile, url: str) -> str:
    """The vLLM version of the server at ``url``, once it serves the pinned model."""
    with opened_server(loaded, url) as (_server, version):
        return version


def check_same_manifest(first: str, final: str, loaded: LoadedProfile) -> None:
    """Refuse when the snapshot verified against another manifest at the end than at the start."""
    # The claim names one manifest: the snapshot must have verified against that same manifest
    # at the end as at the start, or the run straddles two trust roots.
    if final != first:
        raise PinMismatch(
            f"the manifest {loaded.manifest_path} changed during the run; no run log was written",
            details=[f"at start: sha256 {first}", f"at end:   sha256 {final}"],
        )
