"""The doctor's checklist: the tiny profile passes, and each item fails on facts built to break it.

Engine facts come from :class:`FakeDoctorEngine` (a container as ``docker inspect`` reports it,
from ``containers.py``); the snapshot is a real copy of the tiny model, verified for real.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detserve.doctor_checks import (
    CHECKS,
    DoctorEngine,
    DoctorFacts,
    gather_facts,
    run_checks,
)
from detserve.errors import ContainerError, EngineError
from detserve.fingerprint import EngineVersion
from detserve.host_facts import NO_NVIDIA_SMI, GpuHost
from detserve.profile import LoadedProfile, load_profile
from detserve.runtime.binding import binding_mismatches
from detserve.runtime.container_spec import build_container_spec
from detserve.runtime.docker_engine import ContainerInfo, ImageInfo, MountInfo

from .committed import CliRunner, TinyWorkspace
from .containers import IMAGE_ENTRYPOINT, IMAGE_ENVIRONMENT, IMAGE_ID, faithful_container
from .gpu_hosts import CAPTURED as H100

IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a1" * 32
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def pinned_profile(ws: TinyWorkspace, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    document = json.loads(ws.config.read_text())
    document["runtime"]["image"] = IMAGE
    if edit is not None:
        edit(document)
    ws.config.write_text(json.dumps(document))
    return ws.config


class FakeDoctorEngine:
    """Answers as a Docker engine holding the pinned image and, optionally, the container."""

    def __init__(
        self,
        loaded: LoadedProfile,
        *,
        image: bool = True,
        running: bool = False,
        clock: datetime = NOW,
        change: Callable[[ContainerInfo], ContainerInfo] | None = None,
    ) -> None:
        self.image: ImageInfo | None = None
        if image:
            self.image = ImageInfo(IMAGE_ID, (IMAGE,), dict(IMAGE_ENVIRONMENT), IMAGE_ENTRYPOINT)
        container = faithful_container(build_container_spec(loaded)) if running else None
        if container is not None and change is not None:
            container = change(container)
        self._container = container
        self._clock = clock

    def engine_version(self) -> EngineVersion:
        return EngineVersion("20.10.24", "1.41")

    def engine_time(self) -> datetime | None:
        return self._clock

    def local_image(self, image: str) -> ImageInfo | None:
        return self.image

    def image_created(self, image: str) -> datetime | None:
        return NOW - timedelta(days=30) if self.image is not None else None

    def container(self, loaded: LoadedProfile) -> ContainerInfo | None:
        return self._container

    def image_by_id(self, image_id: str) -> ImageInfo:
        if self.image is None or image_id != self.image.id:
            raise ContainerError(f"image {image_id} of a running container is not in the engine")
        return self.image


#: a host without NVIDIA GPUs, as read_gpu_host reports one
NO_GPU = GpuHost(None, None, None, NO_NVIDIA_SMI, nvidia_smi=False)


def facts_for(
    loaded: LoadedProfile,
    engine: DoctorEngine | None = None,
    *,
    gpu: GpuHost | None = None,
    **kw: Any,
) -> DoctorFacts:
    def connect() -> DoctorEngine:
        if engine is None:
            raise EngineError("the container engine at unix:///var/run/docker.sock does not answer")
        return engine

    if gpu is None:
        gpu = H100 if loaded.profile.runtime.device == "nvidia" else NO_GPU
    facts = gather_facts(loaded, connect, gpu=lambda: gpu)
    return dataclasses.replace(facts, host_clock=NOW, **kw)


def statuses(loaded: LoadedProfile, facts: DoctorFacts) -> dict[str, str]:
    return {item.name: item.status for item in run_checks(loaded, facts).items}


def failed(loaded: LoadedProfile, facts: DoctorFacts) -> dict[str, str]:
    return {item.name: item.detail for item in run_checks(loaded, facts).items if not item.passed}


@pytest.fixture
def loaded(tiny_workspace: TinyWorkspace) -> LoadedProfile:
    return load_profile(pinned_profile(tiny_workspace))


def gpu_profile(ws: TinyWorkspace, **environment: str) -> LoadedProfile:
    def edit(document: dict[str, Any]) -> None:
        document["runtime"].update(device="nvidia", gpu_count=1, cpu_placement=None)
        document["runtime"]["environment"] = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", **environment}

    return load_profile(pinned_profile(ws, edit))


@pytest.mark.parametrize("running", [False, True], ids=["no-container", "running-container"])
def test_the_tiny_profile_passes_every_item(loaded: LoadedProfile, running: bool) -> None:
    report = run_checks(loaded, facts_for(loaded, FakeDoctorEngine(loaded, running=running)))
    assert [item.status for item in report.items] == ["PASS"] * len(CHECKS), report
    assert report.passed
    assert len(report.items) == 12


def test_unpinned_fails_the_pins_and_everything_that_needs_them(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = load_profile(tiny_workspace.config)  # runtime.image is null in the committed file
    fails = failed(loaded, facts_for(loaded, FakeDoctorEngine(loaded)))
    assert fails["pins filled"] == "unpinned: runtime.image"
    assert "runtime.image is not pinned" in fails["image present by digest"]
    assert "needs the pins" in fails["prefix caching off"]
    assert "needs the pins" in fails["seed set"]


def test_a_changed_snapshot_fails_the_manifest(tiny_workspace: TinyWorkspace) -> None:
    loaded = load_profile(pinned_profile(tiny_workspace))
    blob = tiny_workspace.blob_of("config.json")
    blob.write_bytes(blob.read_bytes() + b" ")
    fails = failed(loaded, facts_for(loaded, FakeDoctorEngine(loaded)))
    assert list(fails) == ["manifest present and verifying"]
    assert "changed: ./config.json" in fails["manifest present and verifying"]


def test_a_missing_manifest_fails_the_manifest(tiny_workspace: TinyWorkspace) -> None:
    loaded = load_profile(pinned_profile(tiny_workspace))
    tiny_workspace.manifest.unlink()
    fails = failed(loaded, facts_for(loaded, FakeDoctorEngine(loaded)))
    assert "manifest present and verifying" in fails


def test_an_unreachable_engine_fails_the_engine_image_and_clock(loaded: LoadedProfile) -> None:
    fails = failed(loaded, facts_for(loaded, None))
    assert "does not answer" in fails["engine reachable"]
    assert fails["image present by digest"] == "the engine does not answer"
    assert "its clock cannot be compared" in fails["host clock sane"]


def test_an_absent_image_fails_the_image(loaded: LoadedProfile) -> None:
    fails = failed(loaded, facts_for(loaded, FakeDoctorEngine(loaded, image=False)))
    assert list(fails) == ["image present by digest"]
    assert f"{IMAGE} is not in the engine by that digest" == fails["image present by digest"]


def _command(change: Callable[[list[str]], list[str]]) -> Callable[[ContainerInfo], ContainerInfo]:
    def edit(container: ContainerInfo) -> ContainerInfo:
        return dataclasses.replace(container, command=tuple(change(list(container.command))))

    return edit


def test_a_container_with_prefix_caching_fails_it(loaded: LoadedProfile) -> None:
    change = _command(
        lambda args: [
            a if a != "--no-enable-prefix-caching" else "--enable-prefix-caching" for a in args
        ]
    )
    engine = FakeDoctorEngine(loaded, running=True, change=change)
    fails = failed(loaded, facts_for(loaded, engine))
    assert list(fails) == ["container bound to the pins", "prefix caching off"]
    assert "prefix caching is not turned off" in fails["prefix caching off"]


def test_a_container_with_another_seed_fails_the_seed(loaded: LoadedProfile) -> None:
    def reseed(args: list[str]) -> list[str]:
        args[args.index("--seed") + 1] = "1"
        return args

    engine = FakeDoctorEngine(loaded, running=True, change=_command(reseed))
    fails = failed(loaded, facts_for(loaded, engine))
    assert list(fails) == ["container bound to the pins", "seed set"]
    assert "the server's --seed is '1', the profile's sampling.seed is 0" in fails["seed set"]


def test_a_container_without_a_seed_fails_the_seed(loaded: LoadedProfile) -> None:
    def unseed(args: list[str]) -> list[str]:
        at = args.index("--seed")
        return args[:at] + args[at + 2 :]

    engine = FakeDoctorEngine(loaded, running=True, change=_command(unseed))
    assert "--seed is None" in failed(loaded, facts_for(loaded, engine))["seed set"]


def test_a_gpu_profile_that_may_batch_without_batch_invariance_fails(
    tiny_workspace: TinyWorkspace,
) -> None:
    loaded = gpu_profile(tiny_workspace)
    fails = failed(loaded, facts_for(loaded, FakeDoctorEngine(loaded)))
    assert list(fails) == ["batch-invariant mode"]
    assert "may batch 32 sequences" in fails["batch-invariant mode"]


def test_a_gpu_profile_with_batch_invariance_passes(tiny_workspace: TinyWorkspace) -> None:
    loaded = gpu_profile(tiny_workspace, VLLM_BATCH_INVARIANT="1")
    assert failed(loaded, facts_for(loaded, FakeDoctorEngine(loaded))) == {}


def test_a_gpu_profile_without_cublas_workspace_fails_the_numerics(
    tiny_workspace: TinyWorkspace,
) -> None:
    def edit(document: dict[str, Any]) -> None:
        document["runtime"].update(device="nvidia", gpu_count=1, cpu_placement=None)
        document["runtime"]["environment"] = {"VLLM_BATCH_INVARIANT": "1"}

    loaded = load_profile(pinned_profile(tiny_workspace, edit))
    fails = failed(loaded, facts_for(loaded, FakeDoctorEngine(loaded)))
    assert list(fails) == ["numerics environment"]
    assert "without CUBLAS_WORKSPACE_CONFIG" in fails["numerics environment"]


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        (
            {"OMP_NUM_THREADS": "3"},
            "OMP_NUM_THREADS: expected None (image and profile), container has '3'",
        ),
        ({"VLLM_CPU_KVCACHE_SPACE": "4"}, "VLLM_CPU_KVCACHE_SPACE: expected '1'"),
    ],
    ids=["added", "changed"],
)
def test_a_container_whose_numerics_environment_differs_fails(
    loaded: LoadedProfile, environment: dict[str, str], message: str
) -> None:
    def change(container: ContainerInfo) -> ContainerInfo:
        assert container.config is not None
        config = dataclasses.replace(
            container.config, environment={**container.config.environment, **environment}
        )
        return dataclasses.replace(container, config=config)

    engine = FakeDoctorEngine(loaded, running=True, change=change)
    fails = failed(loaded, facts_for(loaded, engine))
    assert list(fails) == ["container bound to the pins", "numerics environment"]
    assert message in fails["numerics environment"]


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"host_clock": datetime(2001, 1, 1, tzinfo=UTC)}, "before 2025-01-01"),
        ({"host_clock": NOW - timedelta(days=60)}, "earlier than the pinned image's build"),
        ({"host_clock": NOW + timedelta(minutes=5)}, "the host and engine clocks differ by 300 s"),
    ],
    ids=["before-detserve", "before-the-image", "skewed"],
)
def test_an_insane_clock_fails(loaded: LoadedProfile, facts: dict[str, Any], message: str) -> None:
    broken = dataclasses.replace(facts_for(loaded, FakeDoctorEngine(loaded)), **facts)
    fails = failed(loaded, broken)
    assert list(fails) == ["host clock sane"]
    assert message in fails["host clock sane"]


def test_every_failed_item_names_a_fix(loaded: LoadedProfile) -> None:
    report = run_checks(loaded, facts_for(loaded, None))
    assert not report.passed
    for item in report.items:
        assert (item.fix is None) == item.passed, item


# --- the command line ---------------------------------------------------------------------------


def test_doctor_json_and_exit_codes(
    tiny_workspace: TinyWorkspace, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = pinned_profile(tiny_workspace)
    loaded = load_profile(config)
    engine = FakeDoctorEngine(loaded, clock=datetime.now(UTC))
    monkeypatch.setattr("detserve.runtime.probe.DockerProbe.from_env", lambda: engine)
    monkeypatch.setattr("detserve.doctor_checks.read_gpu_host", lambda: NO_GPU)
    ran = cli("doctor", "--config", config, "--json")
    assert ran.code == 0, ran
    report = json.loads(ran.out)
    assert report["ok"] is True
    assert [item["status"] for item in report["items"]] == ["PASS"] * 12

    engine.image = None
    ran = cli("doctor", "--config", config)
    assert ran.code == 1, ran
    assert "FAIL image present by digest" in ran.out
    assert "fix: `detserve start" in ran.out
    assert "11 passed, 1 failed" in ran.err


def test_doctor_reports_an_unreachable_engine_as_a_failed_item(
    tiny_workspace: TinyWorkspace, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = pinned_profile(tiny_workspace)

    def unreachable() -> DoctorEngine:
        raise EngineError("the container engine at unix:///nowhere does not answer")

    monkeypatch.setattr("detserve.runtime.probe.DockerProbe.from_env", unreachable)
    monkeypatch.setattr("detserve.doctor_checks.read_gpu_host", lambda: NO_GPU)
    ran = cli("doctor", "--config", config, "--json")
    assert ran.code == 1, ran
    items = {item["name"]: item for item in json.loads(ran.out)["items"]}
    assert items["engine reachable"]["status"] == "FAIL"
    assert "unix:///nowhere" in items["engine reachable"]["detail"]


# --- the doctor passes nothing `sample` refuses -------------------------------------------------


def _args(change: Callable[[list[str]], list[str]]) -> Callable[[ContainerInfo], ContainerInfo]:
    return _command(change)


def _config(**changes: Any) -> Callable[[ContainerInfo], ContainerInfo]:
    def edit(container: ContainerInfo) -> ContainerInfo:
        assert container.config is not None
        return dataclasses.replace(
            container, config=dataclasses.replace(container.config, **changes)
        )

    return edit


#: containers `sample` refuses (the binding names a difference), each made another way
REFUSED: dict[str, Callable[[ContainerInfo], ContainerInfo]] = {
    "a second --seed, the last one wins": _args(lambda a: [*a, "--seed", "7"]),
    "--seed=VALUE": _args(lambda a: [w if w != "--seed" else "--seed=7" for w in a if w != "0"]),
    "--seed abbreviated": _args(lambda a: [*a, "--see", "7"]),
    "the same seed twice": _args(lambda a: [*a, "--seed", "0"]),
    "prefix caching abbreviated": _args(lambda a: [*a, "--enable-prefix-cach"]),
    "prefix caching after the off switch": _args(lambda a: [*a, "--enable-prefix-caching"]),
    "another engine option": _args(lambda a: [*a, "--max-num-batched-tokens", "64"]),
    "a mount more": _config(
        mounts=(MountInfo(type="bind", source="/etc", destination="/x", read_only=True),)
    ),
    "an environment variable more": _config(environment={"LD_PRELOAD": "/x.so"}),
    "privileged": _config(privileged=True),
    "another entrypoint": _config(entrypoint=("/bin/sh", "-c", "true")),
    "labels of other pins": lambda c: dataclasses.replace(
        c, labels={**c.labels, "io.detserve.manifest-sha256": "0" * 64}
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_doctor_fails_every_container_sample_refuses(loaded: LoadedProfile, name: str) -> None:
    engine = FakeDoctorEngine(loaded, running=True, change=REFUSED[name])
    container = engine.container(loaded)
    assert container is not None
    assert engine.image is not None
    spec = build_container_spec(loaded)
    assert binding_mismatches(spec, engine.image, container), "sample would take this container"
    report = run_checks(loaded, facts_for(loaded, engine))
    assert not report.passed
    fails = failed(loaded, facts_for(loaded, engine))
    assert "container bound to the pins" in fails, fails
    assert "so `sample` refuses it" in fails["container bound to the pins"]


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (lambda a: [*a, "--seed", "7"], "'7'"),
        (lambda a: [w if w != "--seed" else "--seed=7" for w in a if w != "0"], "'7'"),
        (lambda a: [*a, "--see", "7"], "'7'"),
    ],
    ids=["last-wins", "equals-form", "abbreviated"],
)
def test_the_seed_is_read_as_the_servers_parser_reads_it(
    loaded: LoadedProfile, change: Callable[[list[str]], list[str]], found: str
) -> None:
    engine = FakeDoctorEngine(loaded, running=True, change=_command(change))
    fails = failed(loaded, facts_for(loaded, engine))
    assert f"the server's --seed is {found}" in fails["seed set"], fails


def test_prefix_caching_turned_on_again_by_an_abbreviation_fails(loaded: LoadedProfile) -> None:
    engine = FakeDoctorEngine(loaded, running=True, change=REFUSED["prefix caching abbreviated"])
    fails = failed(loaded, facts_for(loaded, engine))
    assert "prefix caching is not turned off" in fails["prefix caching off"]
