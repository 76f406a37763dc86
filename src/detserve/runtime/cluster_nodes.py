"""The nodes of a running cluster: their engines, their binding, their state.

Each node is a Docker engine (:class:`~detserve.runtime.docker_engine.ContainerEngine`, one per
node, from its ``docker_host``) running the container :mod:`detserve.runtime.cluster` describes.
:func:`checked_cluster` applies the binding of one container
(:func:`~detserve.runtime.binding.binding_mismatches`) to every node, each against its own spec
(its place in the layout; on a bridge, the workers' host line to the head's actual address), and
requires each to run: a node missing, not bound or not running is an error naming it.
:func:`watch_nodes` fails, naming the node, as soon as one is gone, stopped or restarted; a
sample or a wait calls it throughout. :func:`status` reports every node without raising.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from detserve.errors import ContainerError, DetserveError, PinMismatch
from detserve.profile import LoadedProfile
from detserve.runtime.binding import binding_mismatches, failure_logs
from detserve.runtime.cluster import NodeContainer, cluster_of, node_containers
from detserve.runtime.container_spec import server_base_url
from detserve.runtime.docker_engine import ContainerEngine, ContainerInfo, DockerEngine, python_of
from detserve.runtime.reach import server_url
from detserve.runtime.secrets import SecretEnvironment
from detserve.runtime.vllm_client import ServedModel, status_of

#: node name -> that node's engine
NodeEngines = Mapping[str, ContainerEngine]
ResultT = TypeVar("ResultT")


def connect_nodes(loaded: LoadedProfile, *, reachable_only: bool = False) -> NodeEngines:
    """Every node's engine, by node name; an unreachable one is an EngineError (exit 3) naming
    the node and its address, unless ``reachable_only`` (to stop what can be stopped), when it
    is left out of the mapping."""
    engines: dict[str, ContainerEngine] = {}
    for rank, node in enumerate(cluster_of(loaded).nodes):
        try:
            engines[node.name] = DockerEngine.from_env(node.docker_host)
        except DetserveError as exc:
            exc.message = f"node {node.name} (rank {rank}): {exc.message}"
            if not reachable_only:
                raise
    return engines


def named(node: NodeContainer, exc: DetserveError) -> DetserveError:
    """The same error, its message naming the node (once)."""
    prefix = f"{node.describe()}: "
    if not exc.message.startswith(prefix):
        exc.message = prefix + exc.message
    return exc


def _head_ip(head: NodeContainer, info: ContainerInfo) -> str:
    if info.ip_address is None:
        raise ContainerError(f"{head.describe()}: its engine reports no single address for it")
    return info.ip_address


def plan_nodes(
    loaded: LoadedProfile,
    head_info: ContainerInfo | None,
    manifest: str | None,
    secrets: SecretEnvironment | None = None,
) -> tuple[NodeContainer, ...]:
    """Every node's container; the workers' specs need the running head (on a bridge)."""
    bridge = cluster_of(loaded).network == "bridge"
    head_ip = None
    if bridge and head_info is not None:
        head = node_containers(loaded, head_ip=None, manifest=manifest)[0]
        head_ip = _head_ip(head, head_info)
    return node_containers(loaded, head_ip=head_ip, manifest=manifest, secrets=secrets)


def node_mismatches(node: NodeContainer, info: ContainerInfo, engine: ContainerEngine) -> list[str]:
    try:
        image = engine.image_by_id(info.image_id)
    except ContainerError as exc:
        return [f"image id: {exc.message}"]
    return binding_mismatches(node.spec, image, info)


@dataclass(frozen=True)
class BoundNode:
    """A node's container, bound to the pins and running."""

    node: NodeContainer
    container: ContainerInfo

    def as_json(self) -> dict[str, object]:
        """Where and which container: for a sidecar (not a pin: hosts and ids vary)."""
        return {
            "name": self.node.node.name,
            "rank": self.node.rank,
            "role": self.node.role,
            "docker_host": self.node.node.docker_host,
            "container_id": self.container.id,
            "container_started_at": self.container.started_at,
            "address": self.container.ip_address,
        }


def checked_cluster(
    loaded: LoadedProfile, engines: NodeEngines, *, what: str, manifest: str | None = None
) -> tuple[BoundNode, ...]:
    """Every node's container, created exactly as the pins and the layout say, and running:
    the head first (the workers' specs need its address on a bridge), then each worker."""
    head = node_containers(loaded, head_ip=None, manifest=manifest)[0]
    bound = [_bound(loaded, head, engines, what)]
    for worker in plan_nodes(loaded, bound[0].container, manifest)[1:]:
        bound.append(_bound(loaded, worker, engines, what))
    return tuple(bound)


def _bound(
    loaded: LoadedProfile, node: NodeContainer, engines: NodeEngines, what: str
) -> BoundNode:
    engine = engines[node.node.name]
    info = engine.find(node.spec.name)
    if info is None:
        raise ContainerError(
            f"{node.describe()}: no container {node.spec.name} to {what}",
            hint=f"start the cluster with `detserve run --config {loaded.path}`",
        )
    mismatches = node_mismatches(node, info, engine)
    if mismatches:
        raise PinMismatch(
            f"{node.describe()}: container {node.spec.name} is not the one the pins and "
            f"layout of {loaded.path} describe; refusing to {what} it",
            details=mismatches,
            hint=f"`detserve stop --config {loaded.path}` removes the cluster",
        )
    if not info.running:
        raise ContainerError(
            f"{node.describe()}: container {node.spec.name} is {info.describe()}",
            details=failure_logs(engine, info.id),
            hint=f"`detserve run --config {loaded.path}` starts the cluster again",
        )
    return BoundNode(node, info)


def node_json(node: NodeContainer, info: ContainerInfo | None) -> dict[str, object]:
    return {
        "name": node.node.name,
        "rank": node.rank,
        "role": node.role,
        "docker_host": node.node.docker_host,
        "container": None if info is None else info.as_json(),
    }


def watch_nodes(bound: Sequence[BoundNode], engines: NodeEngines, *, during: str) -> None:
    """Raise when any node's container is gone, stopped or restarted, naming every such node
    with its state (a head stops when its workers did: the worker's exit code says which came
    first), and each one's last log lines."""
    down: list[str] = []
    details: list[str] = []
    for item in bound:
        engine = engines[item.node.node.name]
        try:
            now = engine.inspect(item.container.id)
        except ContainerError as exc:
            down.append(f"{item.node.describe()}: {exc.message}")
            continue
        except DetserveError as exc:  # the engine itself: exit 3, this node named
            raise named(item.node, exc) from exc
        before = (item.container.id, item.container.started_at, item.container.restart_count)
        if not now.running or (now.id, now.started_at, now.restart_count) != before:
            what = "restarted" if now.running else now.describe()
            down.append(f"{item.node.describe()}: container {now.name} {what}")
            details += [f"{item.node.node.name}: {line}" for line in failure_logs(engine, now.id)]
    if down:
        raise ContainerError(f"{'; '.join(down)} {during}", details=details)


# --- status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeStatus:
    node: NodeContainer
    container: ContainerInfo | None
    mismatches: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            **node_json(self.node, self.container),
            "pins_match": None if self.container is None else not self.mismatches,
            "mismatches": list(self.mismatches),
        }


@dataclass(frozen=True)
class ClusterStatus:
    nodes: tuple[NodeStatus, ...]
    health: str
    served: tuple[ServedModel, ...]
    base_url: str

    @property
    def mismatches(self) -> tuple[str, ...]:
        return tuple(
            f"{item.node.node.name}: {line}" for item in self.nodes for line in item.mismatches
        )

    def check(self) -> None:
        """Raise when any node's container runs with other pins or layout than the profile's."""
        if self.mismatches:
            raise PinMismatch(
                "the cluster's containers do not carry the pins of the profile",
                details=self.mismatches,
            )

    def as_json(self) -> dict[str, object]:
        return {
            "ok": not self.mismatches,
            "nodes": [item.as_json() for item in self.nodes],
            "health": self.health,
            "base_url": self.base_url,
            "served_models": [{"id": m.id, "root": m.root} for m in self.served],
        }


def status(loaded: LoadedProfile, engines: NodeEngines) -> ClusterStatus:
    """Every node's container, how it differs from the pins and layout, and the head's health."""
    head_plan = node_containers(loaded, head_ip=None)[0]
    head_info = engines[head_plan.node.name].find(head_plan.spec.name)
    bridge = cluster_of(loaded).network == "bridge"
    head_ip = head_info.ip_address if head_info is not None else None
    # Without a running head on a bridge the workers' host line cannot be known: their specs
    # are compared with a placeholder, so any worker shows that line as a difference.
    plan = node_containers(loaded, head_ip=head_ip or ("(no head)" if bridge else None))
    nodes = []
    for node in plan:
        engine = engines[node.node.name]
        info = head_info if node.rank == 0 else engine.find(node.spec.name)
        lines: tuple[str, ...] = ()
        if info is not None:
            lines = tuple(node_mismatches(node, info, engine))
            if not info.running:
                lines += (f"not running: {info.describe()}",)
        nodes.append(NodeStatus(node, info, lines))
    served: tuple[ServedModel, ...] = ()
    base_url = server_base_url(loaded.profile)
    if head_info is None or not head_info.running:
        health = "no running head"
    else:
        try:
            base_url = server_url(loaded, engines[head_plan.node.name], head_info)
        except ContainerError as exc:
            return ClusterStatus(tuple(nodes), f"unreachable: {exc.message}", served, "-")
        health, served = status_of(base_url)
    return ClusterStatus(tuple(nodes), health, served, base_url)


#: Runs in the head's container: the Ray version installed in the image, or null.
RAY_VERSION_PROBE = (
    "import importlib.metadata as m, json\n"
    "try:\n"
    "    version = m.version('ray')\n"
    "except m.PackageNotFoundError:\n"
    "    version = None\n"
    "print(json.dumps({'ray': version}))\n"
)


def ray_version(engines: NodeEngines, head: BoundNode) -> str | None:
    """The Ray version installed in the head's image (a layout pin), None when it has none."""
    import json

    engine = engines[head.node.node.name]
    image = engine.image_by_id(head.container.image_id)
    python = python_of(head.node.spec.entrypoint or image.entrypoint)
    status, output = engine.exec_python(head.container.id, python, RAY_VERSION_PROBE)
    try:
        document = json.loads(output[:4096].decode("utf-8"))
        version = document["ray"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise ContainerError(
            f"{head.node.describe()}: the Ray version probe printed something else",
            details=[output[:300].decode("utf-8", "replace")],
        ) from exc
    if status != 0 or not (
        version is None or (isinstance(version, str) and 0 < len(version) < 128)
    ):
        raise ContainerError(f"{head.node.describe()}: the Ray version probe failed ({status})")
    return version


class ClusterWatch:
    """Fails a run, naming the node, as soon as any node is not the container it started with
    (the identity watch of one container, for every node)."""

    def __init__(self, bound: Sequence[BoundNode], engines: NodeEngines, interval_s: float) -> None:
        self.bound = tuple(bound)
        self._engines = engines
        self._interval_s = interval_s
        self._last = time.monotonic()

    def check(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval_s:
            return
        self._last = now
        watch_nodes(self.bound, self._engines, during="during the run; no run log was written")

    def guarded(self, call: Callable[[], ResultT]) -> ResultT:
        """``call()`` with every node watched while it runs, every ``interval_s``.

        A request in flight when a worker dies is not answered until vLLM's head gives up on
        the stage (``VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS``, 300 s by default), and never
        correctly: so the call runs on a daemon thread and a node that dies fails the run at
        once, the request abandoned (its server cannot answer it any more)."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = call()
            except BaseException as exc:  # noqa: BLE001 -- handed to the calling thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="detserve-cluster-request", daemon=True)
        thread.start()
        while True:
            thread.join(max(self._interval_s, 0.05))
            if not thread.is_alive():
                break
            self.check(force=True)
        if "error" in outcome:
            raise outcome["error"]
        result: ResultT = outcome["result"]
        return result
