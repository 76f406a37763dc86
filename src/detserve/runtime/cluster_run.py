"""A cluster's life: start every node, check each is bound, wait, verify per node, stop.

Each node is a Docker engine (:class:`~detserve.runtime.docker_engine.ContainerEngine`, one per
node, from its ``docker_host``) and runs the container :mod:`detserve.runtime.cluster`
describes. The rules of one container apply per node, and any node failing them fails the
whole cluster:

* ``start`` pulls the pinned image by digest on every node before anything starts, then starts
  the head, reads the address its engine gave it (on a bridge), and starts the workers. If any
  step fails, every container it started is stopped and removed: nothing half-started is left.
  A cluster already running with these pins on every node is left alone; a running container of
  another profile or other pins on any node is an error naming the node, never reused.
* :func:`checked_cluster` is the binding of every node (the same comparison as one container's,
  :func:`~detserve.runtime.binding.binding_mismatches`), each running; a node missing, not bound
  or not running is an error naming it.
* ``wait`` polls the head's server (where :mod:`~detserve.runtime.reach` says this host reaches
  it) while watching every node: a node that exits or restarts
  fails the wait at once, naming it, with its last log lines.
* ``verify_nodes`` hashes the snapshot *inside each node's running container*, where its server
  reads it, and compares the result with the pinned manifest: each node's own copy is verified,
  whichever host it is on.
* ``run`` is start, wait, verify on every node, smoke; on any failure the whole cluster is stopped
  and removed. ``stop`` stops and removes every node's container of this profile, workers first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from detserve.errors import (
    ContainerError,
    DetserveError,
    EngineError,
    PinMismatch,
    ServerError,
    SnapshotMismatch,
)
from detserve.manifest import load_manifest, parse_manifest
from detserve.profile import LoadedProfile
from detserve.runtime.binding import failure_logs
from detserve.runtime.cluster import (
    NodeContainer,
    cluster_of,
    node_container_name,
    node_containers,
)
from detserve.runtime.cluster_nodes import (
    BoundNode,
    NodeEngines,
    checked_cluster,
    named,
    node_json,
    plan_nodes,
    watch_nodes,
)
from detserve.runtime.container_spec import LABEL_PROFILE, model_cache_target
from detserve.runtime.docker_engine import ContainerInfo, python_of
from detserve.runtime.reach import server_url
from detserve.runtime.secrets import SecretEnvironment
from detserve.runtime.smoke import SmokeResult, smoke_server
from detserve.runtime.vllm_client import ServedModel, VllmServer

POLL_INTERVAL_S = 1.0

#: Runs in a node's container: the sha256 of every file under the snapshot mount (links
#: followed, as the server reads them), in manifest form, sorted by the path's bytes.
HASH_SNAPSHOT = """\
import hashlib, os, sys
root = sys.argv[1] if len(sys.argv) > 1 else ROOT
lines = []
for top, dirs, files in os.walk(root):
    for name in files:
        path = os.path.join(top, name)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        rel = os.path.relpath(path, root)
        lines.append((rel.encode("utf-8", "surrogateescape"), digest.hexdigest(), rel))
for _, digest, rel in sorted(lines):
    sys.stdout.write(f"{digest}  ./{rel}\\n")
"""


# --- start and stop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterStart:
    nodes: tuple[BoundNode, ...]
    already_running: bool

    def as_json(self) -> dict[str, object]:
        return {
            "already_running": self.already_running,
            "nodes": [node_json(bound.node, bound.container) for bound in self.nodes],
        }


def _clear_the_way(loaded: LoadedProfile, engines: NodeEngines, manifest: str) -> bool:
    """True when the whole cluster already runs bound to these pins; stopped containers of this
    profile are removed; anything else in the way is an error naming the node."""
    with contextlib.suppress(ContainerError, PinMismatch):
        checked_cluster(loaded, engines, what="reuse", manifest=manifest)
        return True
    for rank, node in enumerate(cluster_of(loaded).nodes):
        engine = engines[node.name]
        name = node_container_name(loaded, node)
        info = engine.find(name)
        if info is None:
            continue
        where = f"node {node.name} (rank {rank}) on {node.docker_host}"
        if info.labels.get(LABEL_PROFILE) != loaded.name:
            raise ContainerError(
                f"{where}: a container named {name} that detserve did not start for profile "
                f"{loaded.name} is in the way ({info.describe()})",
                hint="remove it yourself; detserve never removes what it did not start",
            )
        if info.running:
            raise PinMismatch(
                f"{where}: container {name} runs, but the cluster is not the one the pins of "
                f"{loaded.path} describe on every node; it is never reused",
                hint=f"`detserve stop --config {loaded.path}` removes the cluster",
            )
        engine.stop_and_remove(info.id)
    return False


def start(
    loaded: LoadedProfile,
    engines: NodeEngines,
    *,
    manifest: str,
    secrets: SecretEnvironment | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ClusterStart:
    """Start every node's container, head first; on any failure, remove all it started."""
    stage = on_stage or (lambda _message: None)
    if _clear_the_way(loaded, engines, manifest):
        bound = checked_cluster(loaded, engines, what="reuse", manifest=manifest)
        return ClusterStart(nodes=bound, already_running=True)
    plan = node_containers(loaded, head_ip=None, manifest=manifest, secrets=secrets)
    image = plan[0].spec.image
    for rank, member in enumerate(cluster_of(loaded).nodes):
        # every pull before any start: a node without the image starts nothing
        where = f"node {member.name} (rank {rank}) on {member.docker_host}"
        stage(f"{where}: image {image}")
        try:
            engines[member.name].ensure_image(image)
        except DetserveError as exc:
            exc.message = f"{where}: {exc.message}"
            raise
    started: list[tuple[NodeContainer, ContainerInfo]] = []
    try:
        head = plan[0]
        stage(f"{head.describe()}: starting {head.spec.name}")
        started.append((head, _create(head, engines)))
        for node in plan_nodes(loaded, started[0][1], manifest, secrets)[1:]:
            stage(f"{node.describe()}: starting {node.spec.name}")
            started.append((node, _create(node, engines)))
    except BaseException:
        _remove_all(started, engines)
        raise
    return ClusterStart(
        nodes=tuple(BoundNode(node, info) for node, info in started), already_running=False
    )


def _create(node: NodeContainer, engines: NodeEngines) -> ContainerInfo:
    try:
        return engines[node.node.name].create_and_start(node.spec)
    except DetserveError as exc:
        raise named(node, exc) from exc


def _remove_all(
    started: Sequence[tuple[NodeContainer, ContainerInfo]], engines: NodeEngines
) -> None:
    # Workers first: a head that loses its workers only logs; the reverse leaves workers waiting.
    for node, info in reversed(started):
        with contextlib.suppress(DetserveError):
            engines[node.node.name].stop_and_remove(info.id)


@dataclass(frozen=True)
class ClusterStop:
    removed: tuple[tuple[str, str], ...]

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "removed": [{"node": node, "container": name} for node, name in self.removed],
        }


def stop(loaded: LoadedProfile, engines: NodeEngines) -> ClusterStop:
    """Stop and remove every node's container of this profile, workers first; none is fine.
    Every node is tried; the first failure (a node whose engine is missing from ``engines``, as
    :func:`~detserve.runtime.cluster_nodes.connect_nodes` leaves an unreachable one) is raised
    after the others were stopped."""
    removed: list[tuple[str, str]] = []
    failure: DetserveError | None = None
    for rank, node in reversed(list(enumerate(cluster_of(loaded).nodes))):
        name = node_container_name(loaded, node)
        try:
            if node.name not in engines:
                raise EngineError(
                    f"node {node.name} (rank {rank}): the engine at {node.docker_host} does not "
                    f"answer; its container {name} (if any) was not stopped"
                )
            info = engines[node.name].find(name)
            if info is None:
                continue
            if info.labels.get(LABEL_PROFILE) != loaded.name:
                raise ContainerError(
                    f"node {node.name} (rank {rank}): container {name} was not started by "
                    f"detserve for profile {loaded.name}; refusing to remove it"
                )
            engines[node.name].stop_and_remove(info.id)
            removed.append((node.name, name))
        except DetserveError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return ClusterStop(removed=tuple(removed))


# --- wait, verify, run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterReady:
    base_url: str
    waited_s: float
    version: str
    served: tuple[ServedModel, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "base_url": self.base_url,
            "waited_s": round(self.waited_s, 3),
            "vllm_version": self.version,
            "served_models": [{"id": m.id, "root": m.root} for m in self.served],
        }


def head_url(loaded: LoadedProfile, engines: NodeEngines, bound: Sequence[BoundNode]) -> str:
    """Where this host reaches the head's server: :func:`~detserve.runtime.reach.server_url`."""
    head = bound[0]
    return server_url(loaded, engines[head.node.node.name], head.container)


def wait(
    loaded: LoadedProfile,
    engines: NodeEngines,
    bound: Sequence[BoundNode],
    timeout_s: float | None = None,
    *,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> ClusterReady:
    """Until the head serves the pinned name, every node watched meanwhile."""
    timeout = float(timeout_s or loaded.profile.runtime.startup_timeout_s)
    name = loaded.profile.vllm.served_model_name
    base_url = head_url(loaded, engines, bound)
    began = time.monotonic()
    with VllmServer(base_url, model=name, timeout_s=10, retries=0) as server:
        while True:
            elapsed = time.monotonic() - began
            watch_nodes(bound, engines, during=f"while the cluster started ({elapsed:.0f} s)")
            served: list[ServedModel] = []
            with contextlib.suppress(ServerError):
                server.health()
                served = server.models()
            if any(model.id == name for model in served):
                return ClusterReady(base_url, elapsed, server.version(), tuple(served))
            if elapsed > timeout:
                head = bound[0]
                raise ContainerError(
                    f"the cluster's head did not serve {name!r} within {timeout:.0f} s",
                    details=failure_logs(engines[head.node.node.name], head.container.id),
                    hint="raise runtime.startup_timeout_s or --timeout",
                )
            time.sleep(poll_interval_s)


def verify_nodes(
    loaded: LoadedProfile, engines: NodeEngines, bound: Sequence[BoundNode]
) -> dict[str, int]:
    """Hash the snapshot inside every node's container and compare with the pinned manifest.

    Returns node name -> files verified; a difference is a SnapshotMismatch naming the node and
    each file (missing, extra, changed)."""
    pinned = load_manifest(loaded.manifest_path).manifest.digests
    target = f"{model_cache_target(loaded.profile)}/snapshots/{loaded.revision}"
    code = HASH_SNAPSHOT.replace("ROOT", repr(target))
    checked: dict[str, int] = {}
    for item in bound:
        engine = engines[item.node.node.name]
        image = engine.image_by_id(item.container.image_id)
        status, output = engine.exec_python(
            item.container.id, python_of(item.node.spec.entrypoint or image.entrypoint), code
        )
        parsed = parse_manifest(output)
        if status != 0 or parsed.problems:
            raise ContainerError(
                f"{item.node.describe()}: hashing the snapshot in its container failed "
                f"(exit {status})",
                details=[str(problem) for problem in parsed.problems[:10]],
            )
        seen = parsed.manifest.digests
        lines = [f"missing: ./{path}" for path in sorted(set(pinned) - set(seen))]
        lines += [f"extra: ./{path}" for path in sorted(set(seen) - set(pinned))]
        lines += [
            f"changed: ./{path}: expected {pinned[path]}, found {seen[path]}"
            for path in sorted(set(pinned) & set(seen))
            if pinned[path] != seen[path]
        ]
        if lines:
            raise SnapshotMismatch(
                f"{item.node.describe()}: the snapshot its server reads does not match "
                f"{loaded.manifest_path}",
                details=lines,
            )
        checked[item.node.node.name] = len(seen)
    return checked


@dataclass(frozen=True)
class ClusterRun:
    start: ClusterStart
    ready: ClusterReady
    verified: Mapping[str, int]
    smoke: SmokeResult
    stopped: bool

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "cluster": self.start.as_json(),
            "wait": self.ready.as_json(),
            "snapshot_verified_on_nodes": dict(self.verified),
            "smoke": self.smoke.as_json(),
            "stopped": self.stopped,
        }


def _explained(
    exc: DetserveError, bound: Sequence[BoundNode], engines: NodeEngines
) -> DetserveError:
    """Before a failed cluster is removed with its logs: a node that died is the reason, by
    name; and every node's last log lines go with the error, whichever it is."""
    reason = exc
    try:
        watch_nodes(bound, engines, during="while the cluster started")
    except DetserveError as died:
        reason = died
    logs: list[str] = []
    for item in bound:
        engine = engines[item.node.node.name]
        if reason is not exc and reason.message.startswith(f"{item.node.describe()}:"):
            continue  # the node that died: its lines are the reason's already
        logs += [
            f"node {item.node.node.name}: {line}"
            for line in failure_logs(engine, item.container.id)
        ]
    reason.details = (*reason.details, *logs)
    return reason


def run(
    loaded: LoadedProfile,
    engines: NodeEngines,
    *,
    manifest: str,
    secrets: SecretEnvironment | None = None,
    stop_after: bool = False,
    timeout_s: float | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ClusterRun:
    """start, wait, verify every node's snapshot, smoke; any failure stops the whole cluster."""
    stage = on_stage or (lambda _message: None)
    started = start(loaded, engines, manifest=manifest, secrets=secrets, on_stage=stage)
    try:
        url = head_url(loaded, engines, started.nodes)
        stage(f"waiting for the head at {url}, every node watched")
        ready = wait(loaded, engines, started.nodes, timeout_s)
        stage("verifying the snapshot inside every node's container")
        verified = verify_nodes(loaded, engines, started.nodes)
        checked_cluster(loaded, engines, what="smoke-test", manifest=manifest)
        stage("smoke test: repeated greedy completions")
        smoked = smoke_server(loaded, ready.base_url)
        watch_nodes(started.nodes, engines, during="during the smoke test")
    except DetserveError as exc:
        reason = _explained(exc, started.nodes, engines)
        with contextlib.suppress(DetserveError):
            stop(loaded, engines)
        if reason is exc:
            raise
        raise reason from exc
    except BaseException:
        with contextlib.suppress(DetserveError):
            stop(loaded, engines)
        raise
    if stop_after:
        stage("stopping the cluster")
        stop(loaded, engines)
    return ClusterRun(started, ready, verified, smoked, stop_after)
