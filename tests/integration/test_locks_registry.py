"""``lock-image`` against the real engine and real registries.

Needs ``make stack``: dockerd, Debian's ``docker-registry`` on 127.0.0.1:5000 without auth, and
``127.0.0.1:5000/detserve/vllm-cpu:0.32.0`` pushed to it. The credential tests start a second
``docker-registry`` of their own, with htpasswd auth, on a free loopback port, and push a
one-file image built from ``scratch`` to it.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import io
import json
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from .conftest import IMAGE_REPO, IMAGE_TAG, TINY_CONFIG, CliRun, DetserveRunner

pytestmark = pytest.mark.integration

EXIT_OK, EXIT_VERIFICATION, EXIT_INPUT, EXIT_ENVIRONMENT = 0, 1, 2, 3
TINY_TEXT = TINY_CONFIG.read_text(encoding="utf-8")
OTHER_DIGEST = "sha256:" + "0" * 64


def registry_digest(client: docker.DockerClient, tag: str) -> str:
    """``REPO@sha256:...`` as the engine recorded it when the image was pushed or pulled."""
    repository = tag.rsplit(":", 1)[0]
    image = client.images.get(tag)
    digests = [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(f"{repository}@")]
    assert len(digests) == 1, f"{tag}: RepoDigests {image.attrs.get('RepoDigests')}"
    return str(digests[0])


def write_profile(directory: Path, text: str, name: str = "tiny-cpu.json") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def with_image_tag(tag: str) -> str:
    return TINY_TEXT.replace(f'"image_tag": "{IMAGE_TAG}"', f'"image_tag": "{tag}"')


def changed_lines(before: str, after: str) -> list[str]:
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def expect(run: CliRun, code: int) -> CliRun:
    assert run.code == code, str(run)
    assert "internal error" not in run.err, str(run)
    return run


# --- the stack's registry (127.0.0.1:5000, no auth) ------------------------------------------


def test_lock_image_resolves_the_repo_digest(
    detserve: DetserveRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    expected = registry_digest(docker_client, IMAGE_TAG)
    profile = write_profile(tmp_path, TINY_TEXT)
    run = expect(detserve("lock-image", "--config", profile, "--json"), EXIT_OK)
    report = run.json()
    assert report["pinned"] == expected
    assert report["source"] == IMAGE_TAG
    assert report["previous"] is None
    assert report["resolved_by"] == "127.0.0.1:5000"
    assert report["written"] is None
    assert profile.read_text(encoding="utf-8") == TINY_TEXT
    plain = expect(detserve("lock-image", "--config", profile), EXIT_OK)
    assert plain.out.strip() == f"{IMAGE_TAG} -> {expected}"
    assert "runtime.image is unpinned; re-run with --write" in plain.err


def test_lock_image_write_output_gives_a_fully_pinned_profile(
    detserve: DetserveRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    expected = registry_digest(docker_client, IMAGE_TAG)
    profile = write_profile(tmp_path, TINY_TEXT)
    output = tmp_path / "tiny-cpu.local.json"
    expect(detserve("lock-image", "--config", profile, "--write", "--output", output), EXIT_OK)
    assert profile.read_text(encoding="utf-8") == TINY_TEXT
    locked = output.read_text(encoding="utf-8")
    assert changed_lines(TINY_TEXT, locked) == [
        '-    "image": null,',
        f'+    "image": "{expected}",',
    ]
    validated = expect(detserve("config", "validate", "--config", output), EXIT_OK)
    assert "fully pinned" in validated.out
    # and what was written is what the registry still answers: a second lock is unchanged
    again = expect(detserve("lock-image", "--config", output, "--json"), EXIT_OK)
    assert again.json()["changed"] is False


def test_lock_image_a_different_pinned_digest_exits_1(
    detserve: DetserveRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    expected = registry_digest(docker_client, IMAGE_TAG)
    stale = f"{IMAGE_REPO}@{OTHER_DIGEST}"
    text = TINY_TEXT.replace('"image": null', f'"image": "{stale}"')
    profile = write_profile(tmp_path, text)
    run = expect(detserve("lock-image", "--config", profile), EXIT_VERIFICATION)
    assert f"pinned:   {stale}" in run.err
    assert f"resolved: {expected}" in run.err
    assert f"{IMAGE_TAG} now resolves to a different value than runtime.image pins" in run.err
    assert profile.read_text(encoding="utf-8") == text
    # --write is how a person accepts the new digest; only the pin changes
    expect(detserve("lock-image", "--config", profile, "--write"), EXIT_OK)
    assert changed_lines(text, profile.read_text(encoding="utf-8")) == [
        f'-    "image": "{stale}",',
        f'+    "image": "{expected}",',
    ]


@pytest.mark.parametrize(
    "tag",
    [
        "127.0.0.1:5000/detserve/vllm-cpu:no-such-tag",
        "127.0.0.1:5000/detserve/no-such-repository:0.32.0",
    ],
    ids=["tag", "repository"],
)
def test_lock_image_unknown_tag_exits_2(tag: str, detserve: DetserveRunner, tmp_path: Path) -> None:
    profile = write_profile(tmp_path, with_image_tag(tag))
    run = expect(detserve("lock-image", "--config", profile, "--write"), EXIT_INPUT)
    assert f"registry 127.0.0.1:5000: no image {tag}" in run.err
    assert profile.read_text(encoding="utf-8") == with_image_tag(tag)


def test_lock_image_registry_not_listening_exits_3(
    detserve: DetserveRunner, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5999)) == 0:
            pytest.skip("something listens on 127.0.0.1:5999")
    tag = "127.0.0.1:5999/detserve/vllm-cpu:0.32.0"
    profile = write_profile(tmp_path, with_image_tag(tag))
    run = expect(detserve("lock-image", "--config", profile, "--write"), EXIT_ENVIRONMENT)
    assert f"registry 127.0.0.1:5999 did not resolve {tag}" in run.err
    assert "127.0.0.1:5999" in run.err.splitlines()[-1]  # the hint names it too
    assert profile.read_text(encoding="utf-8") == with_image_tag(tag)


def test_lock_image_engine_not_reachable_exits_3(detserve: DetserveRunner, tmp_path: Path) -> None:
    profile = write_profile(tmp_path, TINY_TEXT)
    run = detserve(
        "lock-image", "--config", profile, env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    )
    expect(run, EXIT_ENVIRONMENT)
    assert "cannot reach the Docker engine" in run.err


# --- a registry with htpasswd auth (credentials) -----------------------------------------------


def bcrypt_entry(user: str, password: str) -> str:
    """An htpasswd line with a bcrypt hash (the only kind docker-registry accepts)."""
    try:
        import bcrypt  # type: ignore[import-not-found,unused-ignore]

        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    except ImportError:
        # The standard library's crypt (libxcrypt) makes the same $2b$ hashes where it offers them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import crypt
            except ImportError:
                pytest.skip("neither bcrypt nor the crypt module: cannot write an htpasswd entry")
        if crypt.METHOD_BLOWFISH not in crypt.methods:
            pytest.skip("no bcrypt: neither the bcrypt package nor a crypt(3) with $2b$ hashes")
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    return f"{user}:{hashed}\n"


@dataclass(frozen=True)
class AuthRegistry:
    address: str
    user: str
    password: str

    def docker_config(self, directory: Path, *, password: str | None = None) -> Path:
        """A ``DOCKER_CONFIG`` directory whose config.json holds credentials for this registry."""
        directory.mkdir(parents=True, exist_ok=True)
        auths = {}
        if password is not None:
            token = base64.b64encode(f"{self.user}:{password}".encode()).decode()
            auths[self.address] = {"auth": token}
        (directory / "config.json").write_text(json.dumps({"auths": auths}), encoding="utf-8")
        return directory


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_401(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"docker-registry did not answer {url} with 401 in {timeout} s")


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("Debian's docker-registry is not installed (make stack installs it)")
    root = tmp_path_factory.mktemp("auth-registry")
    user, password = "detserve", secrets.token_urlsafe(12)
    (root / "htpasswd").write_text(bcrypt_entry(user, password), encoding="utf-8")
    address = f"127.0.0.1:{_free_port()}"
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {address}\n  secret: {secrets.token_hex(16)}\n"
        f"auth:\n  htpasswd:\n    realm: detserve-test\n    path: {root / 'htpasswd'}\n",
        encoding="utf-8",
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_for_401(f"http://{address}/v2/", process)
        yield AuthRegistry(address=address, user=user, password=password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def pushed_to_auth_registry(
    auth_registry: AuthRegistry, docker_client: docker.DockerClient
) -> Iterator[tuple[str, str]]:
    """``(tag, REPO@digest)`` of a one-file image pushed with credentials."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {
            "Dockerfile": b"FROM scratch\nCOPY marker /marker\n",
            "marker": secrets.token_hex(16).encode(),  # a digest of its own, every session
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    repository = f"{auth_registry.address}/detserve/auth-test"
    tag = f"{repository}:1"
    image, _ = docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    credentials = {"username": auth_registry.user, "password": auth_registry.password}
    try:
        for line in docker_client.images.push(
            repository, "1", auth_config=credentials, stream=True, decode=True
        ):
            if "error" in line:
                pytest.fail(f"push to {auth_registry.address} failed: {line['error']}")
        yield tag, registry_digest(docker_client, tag)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image.id, force=True)


def test_auth_registry_refuses_anonymous_lock(
    auth_registry: AuthRegistry,
    pushed_to_auth_registry: tuple[str, str],
    detserve: DetserveRunner,
    tmp_path: Path,
) -> None:
    tag, _ = pushed_to_auth_registry
    profile = write_profile(tmp_path, with_image_tag(tag))
    config = auth_registry.docker_config(tmp_path / "docker-config")
    run = detserve("lock-image", "--config", profile, env={"DOCKER_CONFIG": str(config)})
    expect(run, EXIT_ENVIRONMENT)
    assert f"registry {auth_registry.address} did not resolve {tag}" in run.err
    assert f"wants credentials: `docker login {auth_registry.address}`" in run.err
    assert profile.read_text(encoding="utf-8") == with_image_tag(tag)


def test_auth_registry_wrong_password_fails_without_echoing_it(
    auth_registry: AuthRegistry,
    pushed_to_auth_registry: tuple[str, str],
    detserve: DetserveRunner,
    tmp_path: Path,
) -> None:
    tag, _ = pushed_to_auth_registry
    profile = write_profile(tmp_path, with_image_tag(tag))
    wrong = "not-" + auth_registry.password
    config = auth_registry.docker_config(tmp_path / "docker-config", password=wrong)
    run = detserve("lock-image", "--config", profile, env={"DOCKER_CONFIG": str(config)})
    expect(run, EXIT_ENVIRONMENT)
    assert "wants credentials" in run.err
    assert wrong not in run.text
    assert base64.b64encode(f"{auth_registry.user}:{wrong}".encode()).decode() not in run.text


def test_auth_registry_lock_with_credentials(
    auth_registry: AuthRegistry,
    pushed_to_auth_registry: tuple[str, str],
    detserve: DetserveRunner,
    tmp_path: Path,
) -> None:
    tag, expected = pushed_to_auth_registry
    profile = write_profile(tmp_path, with_image_tag(tag))
    config = auth_registry.docker_config(
        tmp_path / "docker-config", password=auth_registry.password
    )
    output = tmp_path / "locked.json"
    run = detserve(
        "lock-image", "--config", profile, "--write", "--output", output, "--json",
        env={"DOCKER_CONFIG": str(config)},
    )  # fmt: skip
    expect(run, EXIT_OK)
    assert run.json()["pinned"] == expected
    assert json.loads(output.read_text(encoding="utf-8"))["runtime"]["image"] == expected
    assert auth_registry.password not in run.text
