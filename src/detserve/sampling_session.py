"""One strict sampling run as a command drives it, around :func:`detserve.sampling.sample`.

What ``sample`` and ``replay`` add to the sampler: progress told to a
:class:`SamplingObserver`, the environment fingerprint for the sidecar (taken from the bound
container once it is known to be the bound one; on a cluster, every node's), and the CPU layout
the profile chooses per workload (``engine-core-with-worker-when-concurrent``; ``run`` lays out
the other policies once, :mod:`detserve.runtime.placement`). A cluster profile samples through
its head with every node bound, watched and verified; its nodes name their engines, so no engine
or host is taken. The request is refused before any engine is asked
(:func:`~detserve.sampling.check_request`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from detserve.runtime.connect import cluster_engines, engine_for

if TYPE_CHECKING:
    from detserve.profile import LoadedProfile
    from detserve.prompts import PromptBundle
    from detserve.runtime.cluster_nodes import NodeEngines
    from detserve.runtime.docker_engine import ContainerEngine
    from detserve.runtime.placement import Placement
    from detserve.sampling import CheckedRequest, SampleRequest, SampleSummary


class SamplingObserver(Protocol):
    """Told how many samples a run will take, each snapshot byte verified, each sample done."""

    def planned(self, n_samples: int) -> None: ...

    def verified(self, count: int) -> None: ...

    def sampled(self, done: int, tokens: int) -> None: ...


def sample_observed(
    loaded: LoadedProfile,
    prompts: PromptBundle,
    request: SampleRequest,
    engine: ContainerEngine,
    observer: SamplingObserver | None,
    fingerprint: Callable[[], Mapping[str, object]] | None = None,
    nodes: NodeEngines | None = None,
    checked: CheckedRequest | None = None,
) -> SampleSummary:
    """:func:`~detserve.sampling.sample`, its progress told to ``observer``; ``checked`` is
    :func:`~detserve.sampling.check_request`'s result, so that it runs once."""
    from detserve.sampling import sample as sample_core

    if observer is not None:
        observer.planned(len(prompts.take(request.n_prompts)))
    return sample_core(
        loaded,
        prompts,
        request,
        engine=engine,
        progress=observer.sampled if observer is not None else None,
        verify_progress=observer.verified if observer is not None else None,
        fingerprint=fingerprint,
        nodes=nodes,
        checked=checked,
    )


def fingerprint_for(
    loaded: LoadedProfile, engine: ContainerEngine
) -> Callable[[], Mapping[str, object]] | None:
    """The environment fingerprint of the bound container, for the sidecar, when the engine is
    Docker's (another engine, a test's, has no probe to ask)."""
    from detserve.runtime.docker_engine import DockerEngine

    if not isinstance(engine, DockerEngine):
        return None
    docker_engine = engine

    def take() -> Mapping[str, object]:
        from detserve.fingerprint import environment_fingerprint
        from detserve.runtime.probe import DockerProbe

        probe = DockerProbe(docker_engine.client, docker_engine.address)
        document: Mapping[str, object] = environment_fingerprint(loaded, probe).model_dump(
            mode="json"
        )
        return document

    return take


def lay_out(
    loaded: LoadedProfile, engine: ContainerEngine, concurrency: int, *, what: str
) -> Placement | None:
    """The profile's CPU layout for a command keeping ``concurrency`` requests in flight, where
    it is chosen per workload (``engine-core-with-worker-when-concurrent``); ``run`` lays out the
    other policies once (:mod:`detserve.runtime.placement`). ``what`` is what the command does
    with the container (``sample from``, ``check``, ``serve``): a refusal names the command's
    purpose, not the placement's."""
    from detserve.runtime.binding import checked_container
    from detserve.runtime.placement import apply_policy

    policy = loaded.profile.runtime.cpu_placement
    if policy != "engine-core-with-worker-when-concurrent":
        return None
    container = checked_container(loaded, engine, what=what)
    return apply_policy(engine, container, policy, concurrency)


def sample_profile(
    loaded: LoadedProfile,
    prompts: PromptBundle,
    request: SampleRequest,
    *,
    observer: SamplingObserver | None,
    engine: ContainerEngine | None,
    docker_host: str | None,
) -> SampleSummary:
    """Sample ``prompts`` from the profile's bound, running server (a cluster's head, every node
    bound); the request is checked before the engine is asked."""
    from detserve.sampling import check_request

    # outputs and budget before the engine is asked; sampling does not check them again
    checked = check_request(loaded, prompts, request)
    if loaded.profile.cluster is not None:
        nodes = cluster_engines(loaded, engine, docker_host)
        head = nodes[loaded.profile.cluster.nodes[0].name]

        def every_node() -> Mapping[str, object]:
            from detserve.runtime.cluster_probe import cluster_fingerprint

            return cluster_fingerprint(loaded, nodes).model_dump(mode="json")

        return sample_observed(
            loaded, prompts, request, head, observer, every_node, nodes, checked=checked
        )
    engine = engine_for(engine, docker_host)
    fingerprint = fingerprint_for(loaded, engine)
    placement = lay_out(loaded, engine, request.concurrency, what="sample from")
    summary = sample_observed(
        loaded, prompts, request, engine, observer, fingerprint, checked=checked
    )
    if placement is None:
        return summary
    return replace(summary, cpu_placement=placement.as_json())
