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
the server is ready, by ``detserve run``; the result is read back and checked. Placement decides
which core runs what, never what is computed: the tokens do not depend on it, and every claim of
the profile names it through the profile's digest all the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from detserve.errors import ContainerError
from detserve.profile import CpuPlacement
from detserve.runtime.engine import ContainerEngine, ContainerInfo, python_of

__all__ = ["PLACEMENT_SCRIPT", "CpuPlacement", "Placement", "parse_placement_output", "place"]

#: process titles vLLM gives its processes (``/proc/PID/comm``, cut at 15 bytes)
WORKER_TITLE = "VLLM::Worker"
ENGINE_CORE_TITLE = "VLLM::EngineCor"

#: Run inside the container with the image's own Python. Prints one JSON object; exit 0 placed,
#: 3 when vLLM's processes are not all there. Only ``sched_setaffinity``: nothing else changes.
PLACEMENT_SCRIPT = f"""
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
others = (allowed - worker_cpus) or allowed
for pid, name in processes.items():
    if pid in workers:
        continue
    cpus = worker_cpus if pid in engines else others
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
answer = {{"worker_cpus": sorted(worker_cpus), "other_cpus": sorted(others), "processes": placed}}
print(json.dumps(answer))
"""


@dataclass(frozen=True)
class Placement:
    """What the container's processes were placed on, read back after placing them."""

    policy: CpuPlacement
    worker_cpus: tuple[int, ...]
    other_cpus: tuple[int, ...]
    #: pid -> (process title, the CPUs it may run on)
    processes: tuple[tuple[int, str, tuple[int, ...]], ...]

    def as_json(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "worker_cpus": list(self.worker_cpus),
            "other_cpus": list(self.other_cpus),
            "processes": [
                {"pid": pid, "title": title, "cpus": list(cpus)}
                for pid, title, cpus in self.processes
            ],
        }

    def describe(self) -> str:
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
    raw: bytes, exit_code: int, *, container: str, policy: CpuPlacement
) -> Placement:
    """Check what :data:`PLACEMENT_SCRIPT` printed: every engine core is on exactly the worker's
    CPUs and every other process on the others. Raises :class:`ContainerError` (exit 3)."""
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
    worker_cpus = _cpu_list(document.get("worker_cpus"), where)
    other_cpus = _cpu_list(document.get("other_cpus"), where)
    listed = document.get("processes")
    if not isinstance(listed, dict):
        raise ContainerError(f"{where}: no process list in the answer")
    processes: list[tuple[int, str, tuple[int, ...]]] = []
    for pid, entry in listed.items():
        if not (pid.isdigit() and isinstance(entry, dict) and isinstance(entry.get("title"), str)):
            raise ContainerError(f"{where}: unexpected process entry {pid!r:.50}: {entry!r:.200}")
        title: str = entry["title"]
        cpus = _cpu_list(entry.get("cpus"), where)
        if title.startswith(ENGINE_CORE_TITLE) and cpus != worker_cpus:
            raise ContainerError(
                f"{where}: the engine core (pid {pid}) is on CPUs {_cpus(cpus)}, not the "
                f"worker's {_cpus(worker_cpus)}"
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
    )


def place(engine: ContainerEngine, container: ContainerInfo, policy: CpuPlacement) -> Placement:
    """Place the running container's processes by ``policy`` and return what they are on.

    Raises :class:`ContainerError` (exit 3) when the processes cannot be found or placed."""
    image = engine.image_by_id(container.image_id)
    exit_code, raw = engine.exec_python(container.id, python_of(image.entrypoint), PLACEMENT_SCRIPT)
    return parse_placement_output(raw, exit_code, container=container.name, policy=policy)
