"""Fixtures for tests against the real Docker engine and the real vLLM CPU container.

Nothing here builds or starts the stack: ``make test-integration`` runs ``make stack``
(``scripts/stack/stack.py all``) first, which starts the engine and the registry and pushes
``127.0.0.1:5000/detserve/vllm-cpu:0.32.0``. A missing stack fails the tests, naming what to run.

Profiles are copies of ``configs/tiny-cpu.json`` under a temporary directory, each with its own
name (so its own container, ``detserve-<name>``) and its own free host port, the image pinned to
the digest the local registry holds, and the snapshot's and the prompt bundle's paths made
absolute. Every container a profile made here could create is removed when the session ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from detserve.errors import DetserveError
from detserve.profile import container_name, load_profile

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "tiny-cpu.json"
IMAGE_TAG = "127.0.0.1:5000/detserve/vllm-cpu:0.32.0"
IMAGE_REPO = IMAGE_TAG.rsplit(":", 1)[0]
STACK = REPO_ROOT / "scripts" / "stack" / "stack.py"
#: the second engine of the local stack (`stack.py node2 up`), a second node for cluster and fleet
NODE2 = "unix:///run/detserve-node2/docker.sock"

Document = dict[str, Any]


@dataclass(frozen=True)
class CliRun:
    """One ``detserve`` command run as a user runs it: a separate process."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return (
            f"detserve {' '.join(self.args)} -> exit {self.code} in {self.seconds:.1f} s\n"
            f"--- stdout\n{self.out}--- stderr\n{self.err}"
        )


DetserveRunner = Callable[..., CliRun]


def run_detserve(
    *args: str | Path, timeout: float = 600, env: dict[str, str] | None = None
) -> CliRun:
    words = tuple(str(arg) for arg in args)
    began = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "detserve", *words],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return CliRun(
        args=words,
        code=completed.returncode,
        out=completed.stdout,
        err=completed.stderr,
        seconds=time.monotonic() - began,
    )


@pytest.fixture(scope="session")
def detserve() -> DetserveRunner:
    """Run ``python -m detserve ARGS...``; returns its exit code, stdout, stderr and duration."""
    return run_detserve


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The real engine (started by `make stack`; nothing is started here)."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        pytest.fail(f"no Docker engine answers ({exc}); run `make stack` first")
    yield client
    client.close()


@pytest.fixture(scope="session")
def pinned_image(docker_client: docker.DockerClient) -> str:
    """``127.0.0.1:5000/detserve/vllm-cpu@sha256:...``: the digest the local registry holds."""
    try:
        image = docker_client.images.get(IMAGE_TAG)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{IMAGE_TAG} is not built; run `make stack` first")
    digests = [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(f"{IMAGE_REPO}@")]
    if not digests:
        pytest.fail(f"{IMAGE_TAG} was never pushed to the local registry; run `make stack`")
    return str(digests[0])


def container_of(path: Path) -> str:
    """The name of the container ``detserve run --config PATH`` starts, by the runtime's rule."""
    return container_name(load_profile(path).profile)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _absolute(base: Path, value: str) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else (base / path).resolve())


class ProfileFactory:
    """Writes tiny-cpu copies with a distinct name and port; remembers their containers."""

    def __init__(self, root: Path, image: str, client: docker.DockerClient) -> None:
        self.root = root
        self.image = image
        self.client = client
        self.paths: list[Path] = []

    def __call__(
        self,
        label: str,
        *,
        port: int | None = None,
        edit: Callable[[Document], None] | None = None,
    ) -> Path:
        if not TINY_CONFIG.is_file():
            pytest.fail(f"{TINY_CONFIG} is missing")
        document: Document = json.loads(TINY_CONFIG.read_text(encoding="utf-8"))
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40]
        name = f"it-{slug}-{uuid.uuid4().hex[:6]}"
        revision = document["model"]["revision"]
        manifest = (
            Path(_absolute(TINY_CONFIG.parent, document["snapshot"]["manifest_dir"]))
            / document["name"]
            / f"{revision}.sha256"
        )
        folder = self.root / name
        manifests = folder / "manifests"
        (manifests / name).mkdir(parents=True)
        # the committed manifest is the trust root; the copy is filed under this profile's name
        shutil.copyfile(manifest, manifests / name / manifest.name)
        document["name"] = name
        document["runtime"]["image"] = self.image
        document["runtime"]["port"] = port if port is not None else free_port()
        document["snapshot"]["hf_home"] = _absolute(
            TINY_CONFIG.parent, document["snapshot"]["hf_home"]
        )
        document["snapshot"]["manifest_dir"] = str(manifests)
        if document.get("prompts") is not None:
            # the committed bundle the profile names, wherever the copy lives
            document["prompts"] = {
                field: _absolute(TINY_CONFIG.parent, value)
                for field, value in document["prompts"].items()
            }
        if edit is not None:
            edit(document)
        path = folder / f"{name}.json"
        path.write_text(json.dumps(document, indent=2), encoding="utf-8")
        self.paths.append(path)
        return path

    def remove_containers(self) -> None:
        for path in self.paths:
            # a profile the runtime cannot load never had a container (ProfileError)
            with contextlib.suppress(docker.errors.NotFound, DetserveError):
                self.client.containers.get(container_of(path)).remove(force=True)


@pytest.fixture(scope="session")
def profile_factory(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    pinned_image: str,
) -> Iterator[ProfileFactory]:
    factory = ProfileFactory(tmp_path_factory.mktemp("profiles"), pinned_image, docker_client)
    yield factory
    factory.remove_containers()


@pytest.fixture
def local_profile(profile_factory: ProfileFactory, request: pytest.FixtureRequest) -> Path:
    """A tiny-cpu copy for this test: its own name, container and free port; image pinned."""
    return profile_factory(request.node.name)


def _stack(*args: str) -> None:
    ran = subprocess.run(
        [sys.executable, str(STACK), *args], capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr


@pytest.fixture(scope="module")
def node2() -> Iterator[docker.DockerClient]:
    """The second engine, up for the module that asks for it and down after it."""
    _stack("node2", "up")
    client = docker.DockerClient(base_url=NODE2)
    try:
        yield client
    finally:
        client.close()
        _stack("node2", "down")


def wait_for_run_log(sampling: subprocess.Popen[str], out: Path, timeout_s: float) -> None:
    """Wait until ``sampling`` has begun ``out/x.runlog.jsonl`` (its ``.partial`` exists);
    fail if it exits first or the log never starts."""
    deadline = time.monotonic() + timeout_s
    while not list(out.glob("*.partial")) and time.monotonic() < deadline:
        assert sampling.poll() is None, sampling.communicate()
        time.sleep(0.05)
    assert list(out.glob(".x.runlog.jsonl.*.partial")), "the run log never started"
