"""The containers of a profile that spans several GPU nodes: a Ray head and its workers.

vLLM runs a model larger than one node on its own distributed executor: Ray, with one container
per node (the head serves the API and holds rank 0), tensor parallel across the GPUs inside a
node and pipeline parallel across nodes (``--tensor-parallel-size GPUS_PER_NODE
--pipeline-parallel-size NODES --distributed-executor-backend ray``). This module says what
detserve would start on each node; ``docs/scale-out.md`` says how and what is verified. Nothing
here talks to an engine: each node's container is created on that node's engine
(``--docker-host``) by the same binding rules as a single-node start.

Invariants, each unit-tested: every node's container has the same image digest, the same
snapshot mounts (the same verified manifest, by its sha256 on the labels), the same numerics
environment including the NCCL settings below, and the same engine arguments on the head; only
the role, the rank and the head's address differ between nodes. A profile whose own engine
arguments already set a parallelism other than the plan's is refused, never silently overridden.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from detserve.errors import InputError
from detserve.profile import LoadedProfile
from detserve.runtime.container_spec import ContainerSpec, build_container_spec

#: NCCL settings every node gets: one algorithm and protocol, so that the reduction order of a
#: collective does not depend on the message size, the topology or NCCL's tuner; no in-network
#: (NVLS, CollNet) reductions, whose order is the switch's.
NCCL_DETERMINISM: Final[Mapping[str, str]] = {
    "NCCL_ALGO": "Ring",
    "NCCL_PROTO": "Simple",
    "NCCL_NVLS_ENABLE": "0",
    "NCCL_COLLNET_ENABLE": "0",
}
#: the port Ray's head listens on (GCS)
RAY_PORT: Final = 6379
ROLE_LABEL: Final = "io.detserve.scale-out.role"
RANK_LABEL: Final = "io.detserve.scale-out.rank"
NODES_LABEL: Final = "io.detserve.scale-out.nodes"
PARALLEL_ARGS: Final = (
    "--tensor-parallel-size",
    "--pipeline-parallel-size",
    "--distributed-executor-backend",
)
#: the server the head runs after Ray, unless the profile names its own entrypoint
SERVER_MODULE: Final = ("python3", "-m", "vllm.entrypoints.openai.api_server")

Role = Literal["head", "worker"]


@dataclass(frozen=True)
class NodeContainer:
    """One node's container: the single-node spec it derives from, its role and rank."""

    role: Role
    rank: int
    spec: ContainerSpec

    def to_create_kwargs(self) -> dict[str, Any]:
        """``client.containers.create`` arguments on that node's engine: host networking (NCCL
        and Ray between nodes), so no port is published; the head's server listens on the
        node's own address at the profile's port."""
        kwargs = self.spec.to_create_kwargs()
        kwargs.pop("ports", None)
        kwargs["network_mode"] = "host"
        return kwargs


def _flag_values(args: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for index, word in enumerate(args):
        flag, separator, value = word.partition("=")
        if flag in PARALLEL_ARGS:
            values[flag] = (
                value if separator else (args[index + 1] if index + 1 < len(args) else "")
            )
    return values


def _without_parallelism(args: tuple[str, ...], planned: Mapping[str, str]) -> tuple[str, ...]:
    """The profile's engine arguments without the parallelism flags, after checking that the
    profile sets none other than the plan's."""
    given = _flag_values(args)
    clashes = {flag: value for flag, value in given.items() if planned[flag] != value}
    if clashes:
        raise InputError(
            "the profile's engine arguments set a parallelism other than the scale-out plan's",
            details=[
                f"{flag}: profile {value}, plan {planned[flag]}" for flag, value in clashes.items()
            ],
        )
    kept: list[str] = []
    skip = False
    for word in args:
        if skip:
            skip = False
            continue
        flag, separator, _ = word.partition("=")
        if flag in PARALLEL_ARGS:
            skip = not separator
            continue
        kept.append(word)
    return tuple(kept)


def scale_out_containers(
    loaded: LoadedProfile,
    *,
    nodes: int,
    gpus_per_node: int,
    head_address: str,
    manifest: str | None = None,
    ray_port: int = RAY_PORT,
) -> tuple[NodeContainer, ...]:
    """The head's container (rank 0) and each worker's, for ``nodes`` nodes of
    ``gpus_per_node`` GPUs each; ``manifest`` is the sha256 of the verified manifest."""
    if nodes < 2:
        raise InputError(f"a scale-out profile spans two or more nodes, not {nodes}")
    if gpus_per_node < 1:
        raise InputError(f"each node needs at least one GPU, not {gpus_per_node}")
    if loaded.profile.runtime.device != "nvidia":
        raise InputError("a scale-out profile runs on NVIDIA GPUs (runtime.device: nvidia)")
    base = build_container_spec(loaded, manifest=manifest)
    planned = {
        "--tensor-parallel-size": str(gpus_per_node),
        "--pipeline-parallel-size": str(nodes),
        "--distributed-executor-backend": "ray",
    }
    args = (
        *_without_parallelism(base.command, planned),
        *(w for kv in planned.items() for w in kv),
    )
    environment = {**base.environment, **NCCL_DETERMINISM}
    ray = ("ray", "start", "--disable-usage-stats", f"--num-gpus={gpus_per_node}")
    head_script = " ".join(
        [
            shlex.join([*ray, "--head", f"--port={ray_port}"]),
            "&&",
            "exec",
            shlex.join([*(base.entrypoint or SERVER_MODULE), *args]),
        ]
    )
    containers = []
    for rank in range(nodes):
        role: Role = "head" if rank == 0 else "worker"
        labels = {
            **base.labels,
            ROLE_LABEL: role,
            RANK_LABEL: str(rank),
            NODES_LABEL: str(nodes),
        }
        if role == "head":
            entrypoint: tuple[str, ...] = ("/bin/sh", "-c")
            command: tuple[str, ...] = (head_script,)
        else:
            entrypoint = ray[:1]
            command = (*ray[1:], "--block", f"--address={head_address}:{ray_port}")
        spec = replace(
            base,
            name=f"{base.name}-{role}-{rank}",
            entrypoint=entrypoint,
            command=command,
            environment=environment,
            labels=labels,
            gpu_count=gpus_per_node,
            gpu_ids=None,
            ipc_mode="host",
        )
        containers.append(NodeContainer(role=role, rank=rank, spec=spec))
    return tuple(containers)
