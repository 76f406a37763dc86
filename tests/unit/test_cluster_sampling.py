"""A claim sampled from a cluster: its layout is a pin, every node is watched, and a node that
dies mid-run leaves no claim. The server is the fake vLLM of the sampling fault tests; the nodes
are engines that keep containers as Docker reports them."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from detserve import identity_watch, verified
from detserve.errors import ContainerError, DetserveError, RunLogError, SnapshotMismatch
from detserve.pins import pin_differences, profile_pins
from detserve.profile import LoadedProfile, load_profile
from detserve.prompts import load_bundle
from detserve.replay_plan import NotAReplay, plan_replay
from detserve.runlog import validate_run_log
from detserve.runlog.models import RunPins
from detserve.runtime import cluster_run
from detserve.runtime.container_spec import manifest_sha256
from detserve.runtime.vllm_client import VllmServer
from detserve.sampling import SampleRequest, sample

from .cluster_rig import NodeEngine, cluster_profile, node_engines
from .committed import BUNDLE_DIR, BUNDLE_PIN
from .conftest import TinyWorkspace
from .fake_http import Answer, serving
from .test_sampling_faults import EXIT_ENVIRONMENT, FakeVllm

WORKER = "detserve-tiny-cpu-node2"
LAYOUT = {
    "executor": "mp",
    "nodes": 2,
    "pipeline_parallel_size": 2,
    "ray_version": None,
    "tensor_parallel_size": 1,
}


class ClusterRig:
    def __init__(
        self, loaded: LoadedProfile, engines: dict[str, NodeEngine], out: Path, fake: FakeVllm
    ) -> None:
        self.loaded, self.engines, self.out, self.fake = loaded, engines, out, fake
        self.bundle = load_bundle(BUNDLE_DIR, BUNDLE_PIN)

    def request(self, name: str = "claim") -> SampleRequest:
        return SampleRequest(
            n_prompts=3,
            max_tokens=5,
            logprobs=None,
            run_log_output=self.out / f"{name}.runlog.jsonl",
            sidecar_output=self.out / f"{name}.sidecar.json",
        )

    def sample(self, progress: Callable[[int, int], None] | None = None) -> Any:
        return sample(
            self.loaded,
            self.bundle,
            self.request(),
            engine=self.engines["head"],
            nodes=self.engines,
            progress=progress,
        )


@pytest.fixture
def rig(
    tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ClusterRig]:
    bundle = load_bundle(BUNDLE_DIR, BUNDLE_PIN)
    fake = FakeVllm(n_tokens={p.prompt: p.n_tokens for p in bundle.prompts})
    with serving(fake.answer) as port:
        loaded = cluster_profile(tiny_workspace.config)
        document = json.loads(loaded.path.read_text(encoding="utf-8"))
        document["runtime"]["port"] = port
        loaded.path.write_text(json.dumps(document), encoding="utf-8")
        loaded = load_profile(loaded.path)
        engines, _ = node_engines(tiny_workspace.manifest)
        cluster_run.start(loaded, engines, manifest=manifest_sha256(loaded))
        monkeypatch.setattr(verified, "VllmServer", functools.partial(VllmServer, sleep=print))
        monkeypatch.setattr(identity_watch, "IDENTITY_CHECK_INTERVAL_S", 0.0)
        (tmp_path / "out").mkdir()
        yield ClusterRig(loaded, engines, tmp_path / "out", fake)


def test_a_cluster_claim_pins_its_layout_and_the_sidecar_names_every_node(
    rig: ClusterRig,
) -> None:
    summary = rig.sample()
    header = validate_run_log(summary.run_log).header
    assert header.pins.layout is not None
    assert header.pins.layout.model_dump(mode="json") == LAYOUT
    sidecar = json.loads(summary.sidecar.read_text(encoding="utf-8"))
    nodes = sidecar["cluster_nodes"]
    assert [(n["name"], n["rank"], n["role"]) for n in nodes] == [
        ("head", 0, "head"),
        ("node2", 1, "worker"),
    ]
    assert [n["address"] for n in nodes] == ["172.17.0.2", "10.99.0.2"]
    # every node's snapshot was hashed in its container, at the start and before the commit
    assert sum("hashlib" in code for code in rig.engines["node2"].exec_log) == 2


@pytest.mark.parametrize("after", [1, 3], ids=["mid-run", "after-the-last-sample"])
def test_a_worker_killed_during_the_run_leaves_no_claim(rig: ClusterRig, after: int) -> None:
    def kill(done: int, tokens: int) -> None:
        if done == after:
            rig.engines["node2"].kill(WORKER)

    request = rig.request()
    with pytest.raises(ContainerError) as raised:
        rig.sample(progress=kill)
    assert raised.value.exit_code == EXIT_ENVIRONMENT
    assert raised.value.message.startswith("node node2 (rank 1, worker)")
    assert "no run log was written" in raised.value.message
    assert not request.run_log_output.exists()
    assert list(rig.out.iterdir()) == []


def test_a_head_failing_because_a_worker_died_is_reported_as_that_worker(
    rig: ClusterRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The head's engine fails its request when its pipeline loses a stage: the error names the
    # node that died, not only the HTTP failure it caused.
    monkeypatch.setattr(identity_watch, "IDENTITY_CHECK_INTERVAL_S", 3600.0)
    rig.fake.fault = lambda number, body: (
        Answer(500, {"error": "EngineDeadError"}) if number > 1 else None
    )

    def kill(done: int, tokens: int) -> None:
        if done == 1:
            rig.engines["node2"].kill(WORKER)

    with pytest.raises(ContainerError, match=r"^node node2 .* exited"):
        rig.sample(progress=kill)
    assert list(rig.out.iterdir()) == []


def test_a_nodes_own_snapshot_that_differs_stops_the_run_before_any_request(
    rig: ClusterRig, tiny_workspace: TinyWorkspace
) -> None:
    lines = tiny_workspace.manifest.read_bytes().splitlines(keepends=True)
    rig.engines["node2"].hash_output = b"".join([b"0" * 64 + lines[0][64:], *lines[1:]])
    with pytest.raises(SnapshotMismatch, match=r"^node node2"):
        rig.sample()
    assert list(rig.out.iterdir()) == []


# --- the layout as a pin --------------------------------------------------------------------


def _claim_pins(loaded: LoadedProfile, **layout: Any) -> RunPins:
    pins = profile_pins(loaded, manifest_sha256=manifest_sha256(loaded))
    run_pins = pins.run_pins(prompt_bundle_sha256="c" * 64, vllm_version="0.32.0")
    if layout:
        document = run_pins.model_dump(mode="json")
        document["layout"] = layout
        return RunPins.model_validate_json(json.dumps(document))
    return run_pins


def test_a_cluster_claim_is_not_a_replay_on_one_container_nor_the_reverse(
    tiny_workspace: TinyWorkspace,
) -> None:
    single = load_profile(tiny_workspace.config)
    doc = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    doc["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a1" * 32
    doc["vllm"].pop("enforce_eager")  # as the cluster's: the layout is the only difference
    tiny_workspace.config.write_text(json.dumps(doc), encoding="utf-8")
    single = load_profile(tiny_workspace.config)
    cluster = cluster_profile(tiny_workspace.config)
    on_cluster = _claim_pins(cluster)
    assert on_cluster.model_dump(mode="json")["layout"] == LAYOUT
    local_single = profile_pins(single, manifest_sha256=manifest_sha256(single))
    assert "layout" not in local_single.run_pins(
        prompt_bundle_sha256="c" * 64, vllm_version="0.32.0"
    ).model_dump(mode="json")
    differences = pin_differences(on_cluster, local_single, prompt_bundle_sha256="c" * 64)
    assert differences == [f"layout: claim {LAYOUT!r}, local (absent)"]
    local_cluster = profile_pins(cluster, manifest_sha256=manifest_sha256(cluster))
    on_single = _claim_pins(single)
    assert pin_differences(on_single, local_cluster, prompt_bundle_sha256="c" * 64) == [
        f"layout: claim (absent), local {LAYOUT!r}"
    ]
    assert pin_differences(on_cluster, local_cluster, prompt_bundle_sha256="c" * 64) == []
    # the same nodes in another layout: three stages is another claim
    three = _claim_pins(cluster, **{**LAYOUT, "nodes": 3, "pipeline_parallel_size": 3})
    (line,) = pin_differences(three, local_cluster, prompt_bundle_sha256="c" * 64)
    assert line.startswith("layout: claim {'executor': 'mp', 'nodes': 3")


def test_replaying_a_cluster_claim_on_one_container_is_refused_before_anything_runs(
    rig: ClusterRig, tiny_workspace: TinyWorkspace
) -> None:
    summary = rig.sample()
    doc = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    doc["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a1" * 32
    doc["vllm"].pop("enforce_eager")  # as the cluster's: the layout is the only difference
    tiny_workspace.config.write_text(json.dumps(doc), encoding="utf-8")
    single = load_profile(tiny_workspace.config)
    with pytest.raises(NotAReplay) as raised:
        plan_replay(summary.run_log, single, rig.bundle)
    assert any(line.startswith("layout: claim {") for line in raised.value.details)


def test_a_null_layout_is_refused_as_a_second_spelling_of_one_container(
    rig: ClusterRig, tmp_path: Path
) -> None:
    summary = rig.sample()
    lines = summary.run_log.read_bytes().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["pins"]["layout"] = None
    from detserve.canonical import canonical_bytes

    forged_header = canonical_bytes(header)
    footer = json.loads(lines[-1])
    footer["header_sha256"] = hashlib.sha256(forged_header).hexdigest()
    forged = tmp_path / "null-layout.runlog.jsonl"
    forged.write_bytes(forged_header + b"".join(lines[1:-1]) + canonical_bytes(footer))
    with pytest.raises(RunLogError) as raised:
        validate_run_log(forged)
    assert "absent for one container, never null" in "\n".join(raised.value.details), raised.value


def test_a_fingerprint_lists_every_node_and_one_containers_has_no_nodes_field() -> None:
    from detserve.fingerprint import (
        ContainerFingerprint,
        EnvironmentFingerprint,
        HostFingerprint,
        NodeFingerprint,
        parse_fingerprint,
    )

    container = ContainerFingerprint(
        image="r/x@sha256:" + "a" * 64,
        image_id="sha256:" + "b" * 64,
        python_version="3.11.2",
        vllm_version="0.32.0",
        torch_version="2.13.0+cpu",
        numerics_environment={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    host = HostFingerprint(
        os="Linux", kernel="6", machine="x86_64", cpu_model=None, cpu_flags=(), cpu_count=2,
        memory_bytes=None, gpus=None, gpu_driver_version=None, cuda_version=None,
        gpu_reason="no nvidia-smi", docker_engine_version="20.10.24", docker_api_version="1.41",
    )  # fmt: skip
    single = EnvironmentFingerprint(host=host, container=container)
    assert b'"nodes"' not in single.canonical()
    nodes = tuple(
        NodeFingerprint(name=name, rank=rank, docker_engine_version="20.10.24", container=container)
        for rank, name in enumerate(("head", "node2"))
    )
    cluster = EnvironmentFingerprint(host=host, container=container, nodes=nodes)
    document = json.loads(cluster.canonical())
    assert [node["name"] for node in document["nodes"]] == ["head", "node2"]
    assert parse_fingerprint(document, source="sidecar") == cluster


def _with_health(fake: FakeVllm) -> Callable[[str, str, dict[str, Any] | None], Answer]:
    def answer(method: str, path: str, body: dict[str, Any] | None) -> Answer:
        return Answer(200, b"") if path == "/health" else fake.answer(method, path, body)

    return answer


@pytest.mark.parametrize("worker_dies", [False, True], ids=["head-fails", "worker-died"])
def test_a_run_that_fails_after_start_is_removed_with_every_nodes_last_lines(
    tiny_workspace: TinyWorkspace, worker_dies: bool
) -> None:
    bundle = load_bundle(BUNDLE_DIR, BUNDLE_PIN)
    fake = FakeVllm(n_tokens={p.prompt: p.n_tokens for p in bundle.prompts})
    fake.fault = lambda number, body: Answer(400, {"error": {"message": "engine dead"}})
    with serving(_with_health(fake)) as port:
        loaded = cluster_profile(tiny_workspace.config)
        document = json.loads(loaded.path.read_text(encoding="utf-8"))
        document["runtime"]["port"] = port
        loaded.path.write_text(json.dumps(document), encoding="utf-8")
        loaded = load_profile(loaded.path)
        engines, _ = node_engines(tiny_workspace.manifest)
        original = engines["node2"].exec_python

        def dying(container_id: str, python: str, code: str) -> tuple[int, bytes]:
            answer = original(container_id, python, code)
            if worker_dies:  # after its snapshot was hashed, before the smoke test
                engines["node2"].kill(WORKER)
            return answer

        engines["node2"].exec_python = dying  # type: ignore[method-assign]
        with pytest.raises(DetserveError) as raised:
            cluster_run.run(loaded, engines, manifest=manifest_sha256(loaded), timeout_s=30)
    if worker_dies:
        assert isinstance(raised.value, ContainerError)
        assert raised.value.message.startswith("node node2 (rank 1, worker)")
        assert "node head: last 1 log lines:" in raised.value.details
    else:
        assert "node head: last 1 log lines:" in raised.value.details
        assert "node node2: last 1 log lines:" in raised.value.details
    assert engines["head"].containers == {}
    assert engines["node2"].containers == {}


def test_a_worker_dying_while_the_head_holds_a_request_fails_the_run_at_once(
    rig: ClusterRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vLLM's head answers nothing for its execute-model timeout (300 s) once a stage is gone;
    # the run must not wait for it.
    monkeypatch.setattr(identity_watch, "IDENTITY_CHECK_INTERVAL_S", 0.2)

    def hang(number: int, body: dict[str, Any]) -> Answer | None:
        if number == 2:
            rig.engines["node2"].kill(WORKER)
            return Answer(body=rig.fake.completion(body), delay_s=30)
        return None

    rig.fake.fault = hang
    began = time.monotonic()
    with pytest.raises(ContainerError, match=r"^node node2 .* exited .* no run log was written"):
        rig.sample()
    assert time.monotonic() - began < 15
    assert list(rig.out.iterdir()) == []
