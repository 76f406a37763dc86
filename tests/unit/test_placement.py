"""`runtime.cpu_placement`: what is asked of the container, and how its answer is checked.

The script itself moves every process of the PID namespace it runs in, so it runs only inside
the engine's container: `tests/integration/test_runtime.py` checks the placement of the real
one from the host's side. Here: the exact exec the engine gets, and that an answer which does
not show the asked placement is an environment error (exit 3), never a silent pass.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from detserve.errors import EXIT_ENVIRONMENT, ContainerError
from detserve.runtime.engine import ContainerInfo, ImageInfo
from detserve.runtime.placement import PLACEMENT_SCRIPT, parse_placement_output, place

POLICY = "engine-core-with-worker"


def _answer(**changes: Any) -> dict[str, Any]:
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


def _parse(answer: object, exit_code: int = 0) -> Any:
    raw = json.dumps(answer).encode()
    return parse_placement_output(raw, exit_code, container="detserve-tiny-cpu", policy=POLICY)


def test_a_placed_container_is_read_back_process_by_process() -> None:
    placement = _parse(_answer())
    assert placement.worker_cpus == (0,)
    assert placement.other_cpus == (1,)
    assert placement.processes == (
        (7, "python3", (1,)),
        (25, "VLLM::EngineCor", (0,)),
        (37, "VLLM::Worker", (0,)),
    )
    assert placement.describe() == "engine core on CPUs 0 with the worker; API server on 1"
    assert placement.as_json()["policy"] == POLICY


def _refused(answer: object, exit_code: int = 0) -> ContainerError:
    with pytest.raises(ContainerError) as raised:
        _parse(answer, exit_code)
    assert raised.value.exit_code == EXIT_ENVIRONMENT
    return raised.value


def test_an_engine_core_left_off_the_workers_cpus_is_an_error() -> None:
    answer = _answer()
    answer["processes"]["25"]["cpus"] = [0, 1]
    assert "the engine core (pid 25) is on CPUs 0,1, not the worker's 0" in str(_refused(answer))


def test_an_api_server_left_on_the_workers_cpus_is_an_error() -> None:
    answer = _answer()
    answer["processes"]["7"]["cpus"] = [0, 1]
    assert "python3 (pid 7) is on CPUs 0,1, not 1" in str(_refused(answer))


def test_missing_vllm_processes_are_an_error_that_names_what_was_there() -> None:
    error = _refused({"error": "vLLM's processes were not found", "processes": ["nginx"]}, 3)
    assert "failed (exit 3): vLLM's processes were not found" in str(error)
    assert "nginx" in " ".join(error.details)


@pytest.mark.parametrize(
    "raw",
    [b"", b"Traceback (most recent call last):", b"\xff\xfe", b"[1, 2]"],
)
def test_an_unreadable_answer_is_an_error(raw: bytes) -> None:
    with pytest.raises(ContainerError):
        parse_placement_output(raw, 1, container="c", policy=POLICY)


@pytest.mark.parametrize(
    "change",
    [
        {"worker_cpus": []},
        {"worker_cpus": [-1]},
        {"other_cpus": ["1"]},
        {"other_cpus": [True]},
        {"processes": []},
        {"processes": {"x": {"title": "python3", "cpus": [1]}}},
        {"processes": {"7": {"cpus": [1]}}},
    ],
)
def test_a_malformed_answer_is_an_error(change: dict[str, Any]) -> None:
    _refused(_answer(**change))


class _ExecEngine:
    def __init__(self, exit_code: int, answer: bytes) -> None:
        self.answer = (exit_code, answer)
        self.calls: list[tuple[str, str, str]] = []

    def image_by_id(self, image_id: str) -> ImageInfo:
        return ImageInfo(
            id=image_id,
            repo_digests=(),
            entrypoint=("/opt/venv/bin/python3", "-m", "vllm.entrypoints.openai.api_server"),
        )

    def exec_python(self, container_id: str, python: str, code: str) -> tuple[int, bytes]:
        self.calls.append((container_id, python, code))
        return self.answer


def test_the_engine_is_asked_to_run_the_script_with_the_images_own_python() -> None:
    engine = _ExecEngine(0, json.dumps(_answer()).encode())
    container = ContainerInfo(
        id="c0ffee",
        name="detserve-tiny-cpu",
        status="running",
        running=True,
        started_at="2026-12-01T00:00:00Z",
        restart_count=0,
        exit_code=None,
        oom_killed=False,
        error="",
        image_id="sha256:" + "a" * 64,
        image="127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a" * 64,
    )
    placement = place(engine, container, POLICY)  # type: ignore[arg-type]
    assert engine.calls == [("c0ffee", "/opt/venv/bin/python3", PLACEMENT_SCRIPT)]
    assert placement.worker_cpus == (0,)


def test_the_script_only_changes_affinity() -> None:
    calls = {
        name
        for name in ("sched_setaffinity", "kill", "system", "remove", "unlink", "write", "exec")
        if f"os.{name}(" in PLACEMENT_SCRIPT
    }
    assert calls == {"sched_setaffinity"}
    compile(PLACEMENT_SCRIPT, "placement", "exec")
