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
from detserve.profile import load_profile
from detserve.runtime.container_spec import build_container_spec
from detserve.runtime.docker_engine import ContainerInfo, ImageInfo
from detserve.runtime.placement import (
    PLACEMENT_SCRIPT,
    RELEASE_SCRIPT,
    apply_policy,
    layout_for,
    parse_placement_output,
    place,
)
from detserve.sampling_session import lay_out

from .committed import TinyWorkspace
from .containers import faithful_container, pinned_image
from .placement_answers import answer_to, placed_answer, released_answer

POLICY = "engine-core-with-worker"


def _parse(answer: object, exit_code: int = 0) -> Any:
    raw = json.dumps(answer).encode()
    return parse_placement_output(raw, exit_code, container="detserve-tiny-cpu", policy=POLICY)


def test_a_placed_container_is_read_back_process_by_process() -> None:
    placement = _parse(placed_answer())
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
    answer = placed_answer()
    answer["processes"]["25"]["cpus"] = [0, 1]
    assert "the engine core (pid 25) is on CPUs 0,1, not the worker's 0" in str(_refused(answer))


def test_an_api_server_left_on_the_workers_cpus_is_an_error() -> None:
    answer = placed_answer()
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
    _refused(placed_answer(**change))


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


def _container() -> ContainerInfo:
    return ContainerInfo(
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


def test_the_engine_is_asked_to_run_the_script_with_the_images_own_python() -> None:
    engine = _ExecEngine(0, json.dumps(placed_answer()).encode())
    placement = place(engine, _container(), POLICY)  # type: ignore[arg-type]
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


# --- the layout chosen per workload ------------------------------------------------------------

WHEN = "engine-core-with-worker-when-concurrent"


@pytest.mark.parametrize(
    ("policy", "concurrency", "layout"),
    [
        (None, 1, None),
        (None, 32, None),
        (POLICY, 1, "place"),
        (POLICY, 32, "place"),
        (WHEN, 1, "release"),
        (WHEN, 2, "place"),
        (WHEN, 32, "place"),
    ],
)
def test_the_layout_follows_the_policy_and_the_concurrency(
    policy: Any, concurrency: int, layout: str | None
) -> None:
    assert layout_for(policy, concurrency) == layout


def test_a_released_container_is_read_back_on_every_cpu() -> None:
    raw = json.dumps(released_answer()).encode()
    placement = parse_placement_output(raw, 0, container="c", policy=WHEN, layout="release")
    assert placement.layout == "release"
    assert placement.other_cpus == (0, 1)
    assert placement.describe().startswith("released: engine core and API server on CPUs 0,1")


def test_a_release_that_left_the_engine_core_placed_is_an_error() -> None:
    answer = released_answer()
    answer["processes"]["25"]["cpus"] = [0]
    with pytest.raises(ContainerError, match="not all of the container's 0,1"):
        parse_placement_output(
            json.dumps(answer).encode(), 0, container="c", policy=WHEN, layout="release"
        )


def test_an_answer_to_another_layout_is_an_error() -> None:
    with pytest.raises(ContainerError, match="asked to release, answered 'place'"):
        parse_placement_output(
            json.dumps(placed_answer(mode="place")).encode(),
            0,
            container="c",
            policy=WHEN,
            layout="release",
        )


@pytest.mark.parametrize(("concurrency", "script"), [(1, RELEASE_SCRIPT), (8, PLACEMENT_SCRIPT)])
def test_the_policy_per_workload_runs_the_script_its_concurrency_wants(
    concurrency: int, script: str
) -> None:
    answer = released_answer() if script is RELEASE_SCRIPT else placed_answer(mode="place")
    engine = _ExecEngine(0, json.dumps(answer).encode())
    placement = apply_policy(engine, _container(), WHEN, concurrency)  # type: ignore[arg-type]
    assert placement is not None
    assert [call[2] for call in engine.calls] == [script]


def test_no_policy_runs_nothing() -> None:
    engine = _ExecEngine(0, b"")
    assert apply_policy(engine, _container(), None, 32) is None  # type: ignore[arg-type]
    assert engine.calls == []


def test_the_release_script_only_changes_affinity() -> None:
    assert "os.sched_setaffinity(" in RELEASE_SCRIPT
    assert RELEASE_SCRIPT.startswith("MODE = 'release'\n")
    compile(RELEASE_SCRIPT, "release", "exec")


# --- the commands lay the container out as the policy wants ------------------------------------


class _BoundEngine(_ExecEngine):
    """The profile's container, faithfully bound, answering every exec with a layout's answer."""

    def __init__(self, container: ContainerInfo, image: ImageInfo) -> None:
        super().__init__(0, b"")
        self.container, self.image = container, image

    def image_by_id(self, image_id: str) -> ImageInfo:
        return self.image

    def find(self, name: str) -> ContainerInfo | None:
        return self.container if name == self.container.name else None

    def inspect(self, container_id: str) -> ContainerInfo:
        return self.container

    def exec_python(self, container_id: str, python: str, code: str) -> tuple[int, bytes]:
        self.calls.append((container_id, python, code))
        return answer_to(code)[1]


@pytest.mark.parametrize(
    ("policy", "concurrency", "scripts"),
    [
        (WHEN, 1, [RELEASE_SCRIPT]),
        (WHEN, 16, [PLACEMENT_SCRIPT]),
        (POLICY, 16, []),  # run placed it once
        (None, 16, []),
    ],
)
def test_a_command_lays_the_container_out_for_its_concurrency(
    tiny_workspace: TinyWorkspace, policy: Any, concurrency: int, scripts: list[str]
) -> None:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a" * 64
    document["runtime"]["cpu_placement"] = policy
    tiny_workspace.config.write_text(json.dumps(document), encoding="utf-8")
    loaded = load_profile(tiny_workspace.config)
    spec = build_container_spec(loaded)
    engine = _BoundEngine(faithful_container(spec), pinned_image(spec))
    placement = lay_out(loaded, engine, concurrency, what="sample from")  # type: ignore[arg-type]
    assert [call[2] for call in engine.calls] == scripts
    assert (placement is None) == (not scripts)
