"""What vLLM's CPU container answers to detserve's placement scripts
(:mod:`detserve.runtime.placement`): a worker bound to CPU 0 of two, an engine core and an API
server. The script itself moves the processes of the PID namespace it runs in, so only the real
container runs it (``tests/integration/test_check_real.py`` reads the result from the host's
``/proc``); fakes of the container answer with these."""

from __future__ import annotations

import json
from typing import Any

from detserve.runtime.placement import PLACEMENT_SCRIPT, RELEASE_SCRIPT


def placed_answer(**changes: Any) -> dict[str, Any]:
    """The engine core on the worker's CPU, every other process on the other."""
    answer: dict[str, Any] = {
        "worker_cpus": [0],
        "other_cpus": [1],
        "processes": {
            "7": {"title": "python3", "cpus": [1]},
            "25": {"title": "VLLM::EngineCor", "cpus": [0]},
            "37": {"title": "VLLM::Worker", "cpus": [0]},
        },
    }
    answer.update(changes)
    return answer


def released_answer(**changes: Any) -> dict[str, Any]:
    """Every process but the worker on both CPUs."""
    answer = placed_answer(mode="release", other_cpus=[0, 1])
    for process in answer["processes"].values():
        if process["title"] != "VLLM::Worker":
            process["cpus"] = [0, 1]
    answer.update(changes)
    return answer


def answer_to(code: str) -> tuple[str, tuple[int, bytes]]:
    """The layout a placement script asks for, and the container's answer (exit code, stdout).
    Any other code is not something detserve sends the container."""
    if code == PLACEMENT_SCRIPT:
        return "place", (0, json.dumps(placed_answer(mode="place")).encode())
    if code == RELEASE_SCRIPT:
        return "release", (0, json.dumps(released_answer()).encode())
    raise AssertionError(f"an exec that is not a placement script: {code[:200]!r}")
