"""The runtime against the real Docker engine and the real vLLM CPU container.

Every command runs as a user runs it (``python -m detserve ...`` in a separate process) and is
checked by its exit code and its messages, and by what the engine then holds.

Starting the server takes about a minute on two cores, so one container is started by ``run``
and shared by the tests of :class:`TestSharedServer` (which ends by stopping it). The failure
tests each start a container of their own only when they must, and never wait for it to be
ready: a refused start costs nothing, and a killed or tampered one a few seconds.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from detserve.errors import InputError
from detserve.profile import load_profile
from detserve.runtime.container_spec import build_container_spec
from detserve.runtime.docker_engine import DockerEngine

from .conftest import (
    IMAGE_TAG,
    REPO_ROOT,
    CliRun,
    DetserveRunner,
    ProfileFactory,
    container_of,
    free_port,
    run_detserve,
)

#: generous: the server is ready 40-80 s after start on two cores
READY_TIMEOUT_S = 400
EXIT_VERIFICATION, EXIT_INPUT, EXIT_ENVIRONMENT = 1, 2, 3


def container_or_none(client: docker.DockerClient, name: str) -> Any:
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def wait_for_running(client: docker.DockerClient, name: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container = container_or_none(client, name)
        if container is not None and container.status == "running":
            return container
        time.sleep(0.2)
    pytest.fail(f"container {name} never ran")


# --- refusals before anything starts -----------------------------------------------------------


def test_a_tag_is_refused(
    profile_factory: ProfileFactory, detserve: DetserveRunner, docker_client: docker.DockerClient
) -> None:
    def tag(document: dict[str, Any]) -> None:
        document["runtime"]["image"] = IMAGE_TAG

    profile = profile_factory("tag", edit=tag)
    ran = detserve("start", "--config", profile)
    assert ran.code == EXIT_INPUT, ran
    assert "runtime.image: expected 'REPO@sha256:<64 hex>'" in ran.err, ran
    assert "a tag alone is refused" in ran.err, ran
    # the runtime refuses the profile, so it names no container: none mentions the profile
    name = json.loads(profile.read_text(encoding="utf-8"))["name"]
    assert [c.name for c in docker_client.containers.list(all=True) if name in c.name] == []
    # the engine layer refuses a tag by itself too, before asking the engine anything
    with pytest.raises(InputError, match="only 'REPO@sha256:<64 hex>' is accepted"):
        DockerEngine.from_env().ensure_image(IMAGE_TAG)


def test_a_wrong_digest_is_refused(
    profile_factory: ProfileFactory, detserve: DetserveRunner, docker_client: docker.DockerClient
) -> None:
    wrong = f"{IMAGE_TAG.rsplit(':', 1)[0]}@sha256:{'0' * 64}"

    def pin_wrong(document: dict[str, Any]) -> None:
        document["runtime"]["image"] = wrong

    profile = profile_factory("wrong-digest", edit=pin_wrong)
    ran = detserve("start", "--config", profile)
    assert ran.code == EXIT_ENVIRONMENT, ran
    assert f"registry 127.0.0.1:5000 has no image {wrong}" in ran.err, ran
    assert container_or_none(docker_client, container_of(profile)) is None
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(wrong)


def test_an_unreachable_registry_is_named(
    profile_factory: ProfileFactory, detserve: DetserveRunner, pinned_image: str
) -> None:
    port = free_port()  # nothing listens there
    elsewhere = f"127.0.0.1:{port}/detserve/vllm-cpu@{pinned_image.split('@')[1]}"

    def pin_elsewhere(document: dict[str, Any]) -> None:
        document["runtime"]["image"] = elsewhere

    ran = detserve("start", "--config", profile_factory("no-registry", edit=pin_elsewhere))
    assert ran.code == EXIT_ENVIRONMENT, ran
    assert f"registry 127.0.0.1:{port} is unreachable" in ran.err, ran


def test_no_manifest_refuses_before_starting_anything(
    local_profile: Path, detserve: DetserveRunner, docker_client: docker.DockerClient
) -> None:
    manifest_dir = Path(json.loads(local_profile.read_text())["snapshot"]["manifest_dir"])
    shutil.rmtree(manifest_dir)
    for command in ("run", "start"):
        ran = detserve(command, "--config", local_profile)
        assert ran.code == EXIT_INPUT, ran
        assert "manifest not found" in ran.err, ran
    assert container_or_none(docker_client, container_of(local_profile)) is None


def test_a_host_port_in_use_is_named_and_nothing_is_left(
    profile_factory: ProfileFactory, detserve: DetserveRunner, docker_client: docker.DockerClient
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        profile = profile_factory("port-in-use", port=port)
        ran = detserve("start", "--config", profile)
    assert ran.code == EXIT_ENVIRONMENT, ran
    assert f"host port 127.0.0.1:{port} is already in use" in ran.err, ran
    assert container_or_none(docker_client, container_of(profile)) is None


def test_an_unreachable_engine_is_named(local_profile: Path) -> None:
    ran = run_detserve(
        "status", "--config", local_profile, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    )
    assert ran.code == EXIT_ENVIRONMENT, ran
    assert "the container engine at unix:///nonexistent/docker.sock does not answer" in ran.err


# --- containers that fail while starting --------------------------------------------------------


def test_a_container_killed_during_wait_fails_at_once_with_its_logs(
    local_profile: Path, detserve: DetserveRunner, docker_client: docker.DockerClient
) -> None:
    name = container_of(local_profile)
    started = detserve("start", "--config", local_profile)
    assert started.code == 0, started
    waiting = subprocess.Popen(
        [sys.executable, "-m", "detserve", "wait", "--config", str(local_profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        # kill it while the server loads: once it has written log lines, with the wait polling
        container = docker_client.containers.get(name)
        deadline = time.monotonic() + 60
        while not container.logs(tail=1).strip() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        assert waiting.poll() is None, "wait returned before the container was killed"
        killed_at = time.monotonic()
        docker_client.containers.get(name).kill()
        _, err = waiting.communicate(timeout=30)
        reacted_s = time.monotonic() - killed_at
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == EXIT_ENVIRONMENT, err
    assert f"container {name} exited (exit code 137" in err, err
    assert "log lines:" in err, err
    assert "\n  | " in err, err
    assert reacted_s < 5, f"wait took {reacted_s:.1f} s to notice"
    print(f"\nwait failed {reacted_s:.2f} s after the kill")
    # the dead container is kept for inspection; a new start replaces it, stop removes it
    dead = container_or_none(docker_client, name)
    assert dead.status == "exited"
    again = detserve("start", "--json", "--config", local_profile)
    assert again.code == 0, again
    assert again.json()["replaced_container"] == dead.id
    assert again.json()["container"]["id"] != dead.id
    assert detserve("stop", "--config", local_profile).code == 0
    assert container_or_none(docker_client, name) is None


def test_secrets_reach_the_container_environment_only(
    local_profile: Path,
    detserve: DetserveRunner,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    secret = "hf_integration-secret-4f1c2b"
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"# test credentials\nHF_TOKEN={secret}\n", encoding="utf-8")
    name = container_of(local_profile)
    started = detserve("start", "--json", "--config", local_profile, "--secrets-file", secrets)
    assert started.code == 0, started
    attrs = docker_client.containers.get(name).attrs
    assert f"HF_TOKEN={secret}" in attrs["Config"]["Env"]
    assert secret not in json.dumps(attrs["Config"]["Labels"])
    assert secret not in json.dumps(attrs["Config"]["Cmd"])
    assert secret not in json.dumps(attrs["Args"])
    # a wait that times out shows log lines and names the limit, never the secret
    timed_out = detserve("wait", "--timeout", "1", "--config", local_profile)
    assert timed_out.code == EXIT_ENVIRONMENT, timed_out
    assert "did not serve 'tiny-llama' within 1 s" in timed_out.err, timed_out
    for ran in (started, timed_out, detserve("status", "--json", "--config", local_profile)):
        assert secret not in ran.text
    assert detserve("stop", "--config", local_profile).code == 0


def test_run_with_stop_removes_the_container_after_a_failure(
    local_profile: Path, docker_client: docker.DockerClient
) -> None:
    name = container_of(local_profile)
    running = subprocess.Popen(
        [sys.executable, "-m", "detserve", "run", "--stop", "--config", str(local_profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        wait_for_running(docker_client, name).kill()
        _, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == EXIT_ENVIRONMENT, err
    assert "exited (exit code 137" in err, err
    assert container_or_none(docker_client, name) is None


def test_a_tampered_snapshot_fails_the_wait_and_removes_the_container(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    hf_home = tmp_path / "hf-cache"

    def tampered_copy(document: dict[str, Any]) -> None:
        shutil.copytree(document["snapshot"]["hf_home"], hf_home, symlinks=True)
        weights = next(hf_home.glob("hub/*/snapshots/*/model.safetensors")).resolve()
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01  # one bit of one weight: same size, same shape, other numbers
        weights.write_bytes(bytes(data))
        document["snapshot"]["hf_home"] = str(hf_home)

    profile = profile_factory("tampered", edit=tampered_copy)
    name = container_of(profile)
    assert detserve("start", "--config", profile).code == 0
    ran = detserve("wait", "--config", profile, "--verify-manifest")
    assert ran.code == EXIT_VERIFICATION, ran
    assert "changed: ./model.safetensors expected" in ran.err, ran
    assert "was stopped and removed" in ran.err, ran
    assert container_or_none(docker_client, name) is None
    # and `run --hash` refuses it before any container exists
    ran = detserve("run", "--hash", "--config", profile)
    assert ran.code == EXIT_VERIFICATION, ran
    assert "changed: ./model.safetensors" in ran.err, ran
    assert container_or_none(docker_client, name) is None


def test_right_labels_over_other_engine_args_are_refused(
    local_profile: Path, detserve: DetserveRunner, docker_client: docker.DockerClient
) -> None:
    """A container made by other means (compose) with the pin labels but another --seed."""
    spec = build_container_spec(load_profile(local_profile), {})
    kwargs = spec.to_create_kwargs()
    seed = kwargs["command"].index("--seed") + 1
    kwargs["command"][seed] = "1"
    container = docker_client.containers.create(**kwargs)
    try:
        container.start()
        for command in ("start", "wait", "smoke"):
            ran = detserve(command, "--config", local_profile)
            assert ran.code == EXIT_VERIFICATION, ran
            assert "engine args: expected" in ran.err, ran
            assert "--seed 0" in ran.err, ran
            assert "--seed 1" in ran.err, ran
        status = detserve("status", "--json", "--config", local_profile)
        assert status.code == EXIT_VERIFICATION, status
        assert status.json()["pins_match"] is False
    finally:
        container.remove(force=True)


# --- one real server, shared --------------------------------------------------------------------


@dataclass(frozen=True)
class SharedServer:
    profile: Path
    name: str
    run: CliRun


@pytest.fixture(scope="class")
def shared_server(
    profile_factory: ProfileFactory, detserve: DetserveRunner
) -> Iterator[SharedServer]:
    profile = profile_factory("shared")
    ran = detserve(
        "run",
        "--hash",
        "--json",
        "--config",
        profile,
        "--timeout",
        str(READY_TIMEOUT_S),
        timeout=READY_TIMEOUT_S + 120,
    )
    yield SharedServer(profile=profile, name=container_of(profile), run=ran)
    detserve("stop", "--config", profile)


class TestSharedServer:
    """run, then everything that needs a ready server, then stop (in this order)."""

    def test_run_is_ready_and_smoke_passes(
        self, shared_server: SharedServer, pinned_image: str, docker_client: docker.DockerClient
    ) -> None:
        ran = shared_server.run
        assert ran.code == 0, ran
        report = ran.json()
        assert report["ok"] is True
        assert report["snapshot_verified_before_start"]["files"] == 6
        assert report["wait"]["snapshot_verified"]["files"] == 6
        assert [m["id"] for m in report["wait"]["served_models"]] == ["tiny-llama"]
        assert report["wait"]["served_models"][0]["root"] == "detserve/tiny-llama"
        assert report["wait"]["vllm_version"] == "0.32.0"
        assert report["smoke"]["repeats_identical"] is True
        assert len(report["smoke"]["samples"]) == 3
        assert all(len(s["token_ids"]) == 8 for s in report["smoke"]["samples"])
        assert report["stopped"] is False
        args = report["start"]["engine_args"]
        assert "--no-enable-prefix-caching" in args
        container = docker_client.containers.get(shared_server.name)
        assert container.attrs["Config"]["Image"] == pinned_image
        assert container.attrs["Config"]["Cmd"] == args
        assert container.attrs["HostConfig"]["Mounts"][0]["ReadOnly"] is True
        binding = container.attrs["HostConfig"]["PortBindings"]["8000/tcp"][0]
        assert binding["HostIp"] == "127.0.0.1"
        print(
            f"\nrun took {ran.seconds:.1f} s; container start to ready "
            f"{report['wait']['start_to_ready_s']:.1f} s; engine args: {' '.join(args)}"
        )

    def test_second_start_is_a_no_op(
        self, shared_server: SharedServer, detserve: DetserveRunner
    ) -> None:
        first = shared_server.run.json()["start"]["container"]
        ran = detserve("start", "--json", "--config", shared_server.profile)
        assert ran.code == 0, ran
        again = ran.json()
        assert again["already_running"] is True
        assert again["container"]["id"] == first["id"]
        assert again["container"]["started_at"] == first["started_at"]
        text = detserve("start", "--config", shared_server.profile)
        assert "already running" in text.out, text

    def test_wait_again_is_immediate(
        self, shared_server: SharedServer, detserve: DetserveRunner
    ) -> None:
        ran = detserve("wait", "--json", "--config", shared_server.profile)
        assert ran.code == 0, ran
        assert ran.json()["waited_s"] < 5

    def test_smoke_again_gives_the_same_tokens(
        self, shared_server: SharedServer, detserve: DetserveRunner
    ) -> None:
        ran = detserve("smoke", "--json", "--config", shared_server.profile)
        assert ran.code == 0, ran
        assert ran.json()["samples"] == shared_server.run.json()["smoke"]["samples"]

    def test_status_shows_pins_and_health(
        self, shared_server: SharedServer, detserve: DetserveRunner, pinned_image: str
    ) -> None:
        ran = detserve("status", "--json", "--config", shared_server.profile)
        assert ran.code == 0, ran
        state = ran.json()
        assert state["pins_match"] is True
        assert state["health"] == "ok"
        assert state["pins"]["io.detserve.image"] == pinned_image
        assert state["container"]["running"] is True

    def test_logs_tail(self, shared_server: SharedServer, detserve: DetserveRunner) -> None:
        ran = detserve("logs", "--tail", "5", "--config", shared_server.profile)
        assert ran.code == 0, ran
        lines = ran.out.splitlines()
        assert 1 <= len(lines) <= 5
        assert any("/v1/completions" in line or "GET" in line for line in lines), ran

    def test_logs_follow_shows_new_lines(
        self, shared_server: SharedServer, detserve: DetserveRunner
    ) -> None:
        following = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "detserve",
                "logs",
                "--follow",
                "--tail",
                "0",
                "--config",
                str(shared_server.profile),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        try:
            time.sleep(2)  # the follow is attached
            assert detserve("smoke", "--config", shared_server.profile).code == 0
            assert following.stdout is not None
            seen = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                line = following.stdout.readline()
                seen.append(line)
                if "POST /v1/completions" in line:
                    break
            assert any("POST /v1/completions" in line for line in seen), seen
        finally:
            following.terminate()
            following.wait(timeout=10)

    def test_other_pins_are_never_reused(
        self, shared_server: SharedServer, detserve: DetserveRunner, tmp_path: Path
    ) -> None:
        document = json.loads(shared_server.profile.read_text(encoding="utf-8"))
        document["description"] = "same name and port, another profile hash"
        other = tmp_path / "other.json"
        other.write_text(json.dumps(document), encoding="utf-8")
        before = shared_server.run.json()["wait"]["container"]
        ours = detserve("config", "validate", "--json", "--config", shared_server.profile).json()
        theirs = detserve("config", "validate", "--json", "--config", other).json()
        for command in ("start", "wait", "smoke", "status"):
            ran = detserve(command, "--config", other)
            assert ran.code == EXIT_VERIFICATION, ran
            assert ours["profile_sha256"] in ran.err, ran
            assert theirs["profile_sha256"] in ran.err, ran
        state = detserve("status", "--json", "--config", shared_server.profile).json()
        assert state["container"]["id"] == before["id"]
        assert state["container"]["running"] is True

    def test_stop_removes_it_and_stopping_again_is_fine(
        self,
        shared_server: SharedServer,
        detserve: DetserveRunner,
        docker_client: docker.DockerClient,
    ) -> None:
        ran = detserve("stop", "--json", "--config", shared_server.profile)
        assert ran.code == 0, ran
        assert ran.json()["removed"] is True
        assert container_or_none(docker_client, shared_server.name) is None
        again = detserve("stop", "--config", shared_server.profile)
        assert again.code == 0, again
        assert "nothing to stop" in again.out
        status = detserve("status", "--json", "--config", shared_server.profile)
        assert status.code == 0, status
        assert status.json()["container"] is None
