"""Where the CPU engine's processes run: ``runtime.cpu_placement`` of a profile.

vLLM's CPU backend runs three busy processes: the API server (HTTP, tokenising, detokenising),
the engine core (the scheduler loop) and the worker (the model, its OpenMP threads bound to the
cores ``VLLM_CPU_OMP_THREADS_BIND`` gives it; by default one core is left for the rest). The
engine core and the worker wait for each other by spinning on shared memory. Left to the kernel,
the engine core often shares a core with the API server, and with many requests in flight the
API server is then slow to take new requests in: the engine steps with two or three sequences
instead of thirty-two, and throughput at 32 in flight swings between 1,500 and 15,000 tokens/s
from one round to the next on two cores (docs/performance.md, "Certified concurrency").

``"engine-core-with-worker"`` moves every thread of the engine core onto the worker's cores, and
every other process of the container (the API server and its helpers) onto the cores the worker
does not use (all of the container's cores when the worker uses them all). It is applied through
the Docker SDK (an ``exec`` of the image's Python, which only calls ``sched_setaffinity``) once
the server is ready, by ``detserve run``; the result is read back and checked. It costs at one
request in flight: the engine core and the worker then take turns on the worker's core (782
against 1,055 tokens/s on two cores, docs/performance.md).

``"engine-core-with-worker-when-concurrent"`` chooses per workload: a command that keeps more
than one request in flight (``sample`` or ``check`` with a level above 1, a gateway with
``--concurrency`` above 1) places the processes as above before it starts; ``run``, ``sample``
at concurrency 1 and a gateway at 1 release them (every process but the worker back on all of
the container's cores, where the kernel places them), so that one request at a time runs on the
unplaced server. The ``exec`` re-places a running server; the layout stays until the next
command that decides. Placement decides which core runs what, never what is computed: the tokens
do not depend on it, and every claim of the profile names it through the profile's digest all
the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from detserve.errors import ContainerError
from detserve.profile import CpuPlacement
from detserve.runtime.docker_engine import ContainerEngine, ContainerInfo, python_of

__all__ = [
    "PLACEMENT_SCRIPT",
    "RELEASE_SCRIPT",
    "CpuPlacement",
    "Placement",
    "apply_policy",
    "layout_for",
    "parse_placement_output",
    "place",
]

#: "place": the engine core with the worker, the rest apart; "release": the kernel's placement
Layout = Literal["place", "release"]

#: process titles vLLM gives its processes (``/proc/PID/comm``, cut at 15 bytes)
WORKER_TITLE = "VLLM::Worker"
ENGINE_CORE_TITLE = "VLLM::EngineCor"

#: Run inside the container with the image's own Python. Prints one JSON object; exit 0 placed,
#: 3 when vLLM's processes are not all there. Only ``sched_setaffinity``: nothing else changes.
_SCRIPT = f"""
import json, os, sys
def title(pid):
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return None
def threads(pid):
    try:
        return [int(tid) for tid in os.listdir("/proc/%d/task" % pid)]
    except OSError:
        return []
me = os.getpid()
processes = {{}}
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) != me:
        name = title(int(entry))
        if name is not None and name != "docker-init":
            processes[int(entry)] = name
workers = [pid for pid, name in processes.items() if name.startswith({WORKER_TITLE!r})]
engines = [pid for pid, name in processes.items() if name.startswith({ENGINE_CORE_TITLE!r})]
if not workers or not engines:
    names = sorted(set(processes.values()))
    print(json.dumps({{"error": "vLLM's processes were not found", "processes": names}}))
    sys.exit(3)
worker_cpus = set()
for pid in workers:
    worker_cpus |= os.sched_getaffinity(pid)
allowed = os.sched_getaffinity(0)
others = ((allowed - worker_cpus) or allowed) if MODE == "place" else allowed
for pid, name in processes.items():
    if pid in workers:
        continue
    cpus = worker_cpus if pid in engines and MODE == "place" else others
    for tid in threads(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            pass
placed = {{}}
for pid, name in sorted(processes.items()):
    try:
        placed[str(pid)] = {{"title": name, "cpus": sorted(os.sched_getaffinity(pid))}}
    except ProcessLookupError:
        pass
answer = {{
    "mode": MODE,
    "worker_cpus": sorted(worker_cpus),
    "other_cpus": sorted(others),
    "processes": placed,
}}
print(json.dumps(answer))
"""


def _script(layout: Layout) -> str:
    return f"MODE = {layout!r}\n" + _SCRIPT


#: the engine core onto the worker's CPUs, every other process onto the rest
PLACEMENT_SCRIPT = _script("place")
#: every process but the worker back onto all of the container's CPUs
RELEASE_SCRIPT = _script("release")


@dataclass(frozen=True)
class Placement:
    """What the container's processes were placed on, read back after placing them."""

    policy: CpuPlacement
    worker_cpus: tuple[int, ...]
    other_cpus: tuple[int, ...]
    #: pid -> (process title, the CPUs it may run on)
    processes: tuple[tuple[int, str, tuple[int, ...]], ...]
    #: what was done: placed, or released to the kernel
    layout: Layout = "place"

    def as_json(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "layout": self.layout,
            "worker_cpus": list(self.worker_cpus),
            "other_cpus": list(self.other_cpus),
            "processes": [
                {"pid": pid, "title": title, "cpus": list(cpus)}
                for pid, title, cpus in self.processes
            ],
        }

    def describe(self) -> str:
        if self.layout == "release":
            return (
                f"released: engine core and API server on CPUs {_cpus(self.other_cpus)}, "
                f"placed by the kernel; worker on {_cpus(self.worker_cpus)}"
            )
        return (
            f"engine core on CPUs {_cpus(self.worker_cpus)} with the worker; "
            f"API server on {_cpus(self.other_cpus)}"
        )


def _cpus(cpus: tuple[int, ...]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def _cpu_list(value: Any, where: str) -> tuple[int, ...]:
    if not (isinstance(value, list) and value and all(type(v) is int and v >= 0 for v in value)):
        raise ContainerError(f"{where}: expected a list of CPU numbers, found {value!r:.200}")
    return tuple(value)


def parse_placement_output(
    raw: bytes,
    exit_code: int,
    *,
    container: str,
    policy: CpuPlacement,
    layout: Layout = "place",
) -> Placement:
    """Check what :data:`PLACEMENT_SCRIPT` (or :data:`RELEASE_SCRIPT`) printed: every engine core
    is on exactly the worker's CPUs (released: on the others, which are then all of them) and
    every other process on the others. Raises :class:`ContainerError` (exit 3)."""
    where = f"CPU placement in container {container}"
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ContainerError(
            f"{where} failed (exit {exit_code}) without a readable answer",
            details=[raw[:500].decode("utf-8", "replace")],
        ) from None
    if not isinstance(document, dict):
        raise ContainerError(f"{where}: expected a JSON object, found {document!r:.200}")
    if exit_code != 0 or "error" in document:
        raise ContainerError(
            f"{where} failed (exit {exit_code}): {document.get('error', 'no reason given')}",
            details=[f"processes: {document.get('processes')!r:.500}"],
            hint="runtime.cpu_placement needs vLLM's CPU backend (its worker and engine core)",
        )
    if document.get("mode", "place") != layout:
        raise ContainerError(f"{where}: asked to {layout}, answered {document.get('mode')!r:.50}")
    worker_cpus = _cpu_list(document.get("worker_cpus"), where)
    other_cpus = _cpu_list(document.get("other_cpus"), where)
    engine_cpus = worker_cpus if layout == "place" else other_cpus
    listed = document.get("processes")
    if not isinstance(listed, dict):
        raise ContainerError(f"{where}: no process list in the answer")
    processes: list[tuple[int, str, tuple[int, ...]]] = []
    for pid, entry in listed.items():
        if not (pid.isdigit() and isinstance(entry, dict) and isinstance(entry.get("title"), str)):
            raise ContainerError(f"{where}: unexpected process entry {pid!r:.50}: {entry!r:.200}")
        title: str = entry["title"]
        cpus = _cpu_list(entry.get("cpus"), where)
        if title.startswith(ENGINE_CORE_TITLE) and cpus != engine_cpus:
            whose = "the worker's" if layout == "place" else "all of the container's"
            raise ContainerError(
                f"{where}: the engine core (pid {pid}) is on CPUs {_cpus(cpus)}, not {whose} "
                f"{_cpus(engine_cpus)}"
            )
        if not title.startswith((ENGINE_CORE_TITLE, WORKER_TITLE)) and cpus != other_cpus:
            raise ContainerError(
                f"{where}: {title} (pid {pid}) is on CPUs {_cpus(cpus)}, not {_cpus(other_cpus)}"
            )
        processes.append((int(pid), title, cpus))
    return Placement(
        policy=policy,
        worker_cpus=worker_cpus,
        other_cpus=other_cpus,
        processes=tuple(sorted(processes)),
        layout=layout,
    )


def place(
    engine: ContainerEngine,
    container: ContainerInfo,
    policy: CpuPlacement,
    layout: Layout = "place",
) -> Placement:
    """Place the running container's processes (or release them, ``layout="release"``) and
    return what they are on.

    Raises :class:`ContainerError` (exit 3) when the processes cannot be found or placed."""
    image = engine.image_by_id(container.image_id)
    script = PLACEMENT_SCRIPT if layout == "place" else RELEASE_SCRIPT
    exit_code, raw = engine.exec_python(container.id, python_of(image.entrypoint), script)
    return parse_placement_output(
        raw, exit_code, container=container.name, policy=policy, layout=layout
    )


def layout_for(policy: CpuPlacement | None, concurrency: int) -> Layout | None:
    """The layout ``policy`` wants for a command with ``concurrency`` requests in flight (None:
    leave the processes as they are)."""
    if policy is None:
        return None
    if policy == "engine-core-with-worker":
        return "place"
    return "place" if concurrency > 1 else "release"


def apply_policy(
    engine: ContainerEngine,
    container: ContainerInfo,
    policy: CpuPlacement | None,
    concurrency: int,
) -> Placement | None:
    """Lay the container out as ``policy`` wants for ``concurrency``; None when it wants nothing.

    Raises :class:`ContainerError` (exit 3) when the processes cannot be found or placed."""
    layout = layout_for(policy, concurrency)
    if layout is None or policy is None:
        return None
    return place(engine, container, policy, layout)
