#!/usr/bin/env python3
"""Bring up the local Docker stack for detserve and build the vLLM CPU image.

Run it with the project's venv (it needs the Docker SDK for Python)::

    .venv/bin/python scripts/stack/stack.py all

Subcommands (each idempotent, each says what it does on stderr):

  engine    make a Docker engine answer on /var/run/docker.sock (installs docker.io when dockerd
            is missing, starts ``dockerd --iptables=false`` in the background)
  registry  run Debian's docker-registry without auth on 127.0.0.1:5000 (own config file)
  base      make the base image detserve/debian-bookworm-minbase:local with debootstrap
  image     build 127.0.0.1:5000/detserve/vllm-cpu:0.32.0, push it, print its repository digest;
            with --ray, the same image with Ray added (tag 0.32.0-ray2.60.0, its own lock), for
            a cluster of several engines (detserve.runtime.cluster)
  all       engine, registry, base, image
  lock      regenerate requirements-vllm-cpu.lock (uv in a throwaway venv); with --ray,
            requirements-vllm-cpu-ray.lock
  node2 up|down
            a second Docker engine on this machine, for fleet tests: its own socket
            (unix:///run/detserve-node2/docker.sock), data root, exec root, pidfile and Linux
            bridge (br-node2, 10.99.0.1/24), --iptables=false; `down` stops it and removes its
            data root, exec root and bridge. It holds no image until one is pulled into it.

Docker is spoken to only through the Docker SDK (``import docker``), never the ``docker`` CLI.
Exit status: 0 ok, 2 bad options, 3 the environment failed (the message names what).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCKERFILE = HERE / "Dockerfile.vllm-cpu"
LOCK_IN = HERE / "requirements-vllm-cpu.in"
LOCK_FILE = HERE / "requirements-vllm-cpu.lock"

BASE_IMAGE = "detserve/debian-bookworm-minbase:local"
BASE_SUITE = "bookworm"
BASE_INCLUDE = "python3,python3-venv,ca-certificates"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

REGISTRY_ADDR = "127.0.0.1:5000"
REGISTRY_URL = f"http://{REGISTRY_ADDR}"
REGISTRY_ROOT = Path("/var/lib/detserve-registry")
REGISTRY_CONFIG = Path("/etc/detserve-registry/config.yml")
REGISTRY_LOG = Path("/var/log/detserve-registry.log")

DOCKER_SOCK = Path("/var/run/docker.sock")
DOCKERD_LOG = Path("/var/log/detserve-dockerd.log")
DOCKERD_PIDFILE = Path("/var/run/docker.pid")
ENGINE_TIMEOUT_S = 60.0

NODE2_RUN = Path("/run/detserve-node2")
NODE2_SOCK = NODE2_RUN / "docker.sock"
NODE2_HOST = f"unix://{NODE2_SOCK}"
NODE2_PIDFILE = NODE2_RUN / "docker.pid"
NODE2_EXEC_ROOT = NODE2_RUN / "exec"
NODE2_DATA_ROOT = Path("/var/lib/detserve-node2")
NODE2_LOG = Path("/var/log/detserve-node2.log")
NODE2_BRIDGE = "br-node2"
NODE2_BRIDGE_ADDR = "10.99.0.1/24"
NODE2_STOP_TIMEOUT_S = 90.0

VLLM_VERSION = "0.32.0"
RAY_VERSION = "2.60.0"
TORCH_VERSION = "2.13.0+cpu"
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
IMAGE_REPO = f"{REGISTRY_ADDR}/detserve/vllm-cpu"
IMAGE_TAG = VLLM_VERSION
IMAGE_REF = f"{IMAGE_REPO}:{IMAGE_TAG}"
LABEL_INPUTS = "io.detserve.build-inputs.sha256"
LABEL_RAY_VERSION = "io.detserve.ray.version"
ENTRYPOINT = ["/opt/venv/bin/python3", "-m", "vllm.entrypoints.openai.api_server"]
DEFAULT_WHEEL_DIR = Path("/opt/wheels")
DEFAULT_CA = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_SOURCE_URL = "detserve:scripts/stack/Dockerfile.vllm-cpu"
PYTORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"
PIP_INDEX_URL = "https://pypi.org/simple"

# lock regeneration (stack.py lock); the header of the lock file names this command.
UV_VERSION = "0.13.9"
LOCK_EXCLUDES = ("torchvision", "torchaudio", "torchcodec")
LOCK_PLATFORM = "x86_64-manylinux_2_36"  # Debian bookworm: glibc 2.36
LOCK_PYTHON = "3.11"  # Debian bookworm's python3
LOCK_EXCLUDE_NEWER = "2026-11-23T00:00:00Z"

EXIT_USAGE = 2
EXIT_ENV = 3

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)

REGISTRY_CONFIG_TEXT = f"""\
# Written by detserve scripts/stack/stack.py: a local registry without auth, for this machine.
version: 0.1
log:
  level: info
  fields:
    service: detserve-registry
storage:
  filesystem:
    rootdirectory: {REGISTRY_ROOT}
  delete:
    enabled: true
http:
  addr: {REGISTRY_ADDR}
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


@dataclass(frozen=True)
class Variant:
    """One image this script builds: its lock, its tag and the labels it adds.

    The plain image's build inputs are exactly what they were before variants existed (no extra
    label, no extra material), so adding the Ray variant rebuilds nothing anyone already has.
    """

    name: str
    lock_in: Path
    lock_file: Path
    tag: str
    #: labels set through the build API (not in the Dockerfile, whose bytes are a build input)
    labels: Mapping[str, str]

    @property
    def ref(self) -> str:
        return f"{IMAGE_REPO}:{self.tag}"


PLAIN = Variant("plain", LOCK_IN, LOCK_FILE, IMAGE_TAG, {})
RAY = Variant(
    "ray",
    HERE / "requirements-vllm-cpu-ray.in",
    HERE / "requirements-vllm-cpu-ray.lock",
    f"{IMAGE_TAG}-ray{RAY_VERSION}",
    {LABEL_RAY_VERSION: RAY_VERSION},
)


class EnvFailure(Exception):
    """The machine or a service failed: exit 3."""


class UsageFailure(Exception):
    """A bad option: exit 2."""


def log(msg: str) -> None:
    print(f"stack: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    t0 = time.monotonic()
    log(f"{name}: start")
    yield
    log(f"{name}: done in {time.monotonic() - t0:.1f}s")


# --------------------------------------------------------------------------- helpers


def run(cmd: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run a (non-docker) command, its output going to stderr; fail with EnvFailure."""
    log(f"{what}: $ {' '.join(cmd)}")
    kwargs.setdefault("stdout", sys.stderr)
    try:
        proc = subprocess.run(cmd, check=False, **kwargs)
    except OSError as exc:
        raise EnvFailure(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise EnvFailure(f"{what}: `{' '.join(cmd)}` exited {proc.returncode}")
    return proc


def which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


_apt_updated = False


def apt_install(packages: list[str], what: str) -> None:
    """apt-get install without starting the packages' services (policy-rc.d says no).

    docker.io's and docker-registry's postinst scripts would otherwise try to start dockerd
    (without --iptables=false) and a registry with the package's htpasswd config on :5000.
    """
    global _apt_updated
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# detserve stack.py: do not start services\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        if not _apt_updated:
            run(["apt-get", "update"], what, env=env)
            _apt_updated = True
        run(["apt-get", "install", "-y", *packages], what, env=env)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


def installed(binary: str, package: str, what: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` first when it is missing."""
    if which(binary) is None:
        log(f"{what}: {binary} missing; installing Debian's {package}")
        apt_install([package], what)
    path = which(binary)
    if path is None:
        raise EnvFailure(f"{what}: {binary} still missing after installing {package}")
    return path


def http_get(
    url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """GET url without proxies; returns (status, headers, body). Raises URLError on no answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def docker_client(timeout: int = 120) -> Any:
    """A Docker SDK client that has answered a ping, or EnvFailure."""
    import docker  # the project's venv has it; imported late so `--help` works without it

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EnvFailure(
            f"docker engine not answering ({exc}); run `stack.py engine` first"
        ) from exc
    return client


def engine_answers() -> bool:
    import docker

    try:
        client = docker.from_env(timeout=5)
        ok = bool(client.ping())
        client.close()
        return ok
    except docker.errors.DockerException:
        return False
    except Exception:  # noqa: BLE001 -- a half-started engine can fail in requests/urllib3 too
        return False


def pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_background(cmd: list[str], logfile: Path, what: str) -> subprocess.Popen[bytes]:
    """Start cmd in its own session (setsid), detached, output appended to logfile."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"{what}: starting `{' '.join(cmd)}` in the background, log {logfile}")
    with logfile.open("ab") as logf:
        try:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise EnvFailure(f"{what}: cannot start {cmd[0]}: {exc}") from exc


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(
    pred: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes] | None,
    what: str,
    logfile: Path,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise EnvFailure(
                f"{what}: process exited with {proc.returncode}; {logfile}: {tail(logfile)}"
            )
        time.sleep(0.5)
    raise EnvFailure(f"{what}: not ready after {timeout:.0f}s; {logfile}: {tail(logfile)}")


# --------------------------------------------------------------------------- engine


def ensure_engine() -> None:
    with step("engine"):
        if engine_answers():
            log("engine: a Docker engine already answers the ping; nothing to do")
            return
        host = os.environ.get("DOCKER_HOST", "")
        if host and host != f"unix://{DOCKER_SOCK}":
            raise EnvFailure(f"engine: DOCKER_HOST={host} does not answer; not starting one")
        pid = pid_alive(DOCKERD_PIDFILE)
        proc = None
        if pid is not None:
            log(f"engine: dockerd (pid {pid}) is running but not answering yet; waiting")
        else:
            dockerd = installed("dockerd", "docker.io", "engine")
            proc = start_background([dockerd, "--iptables=false"], DOCKERD_LOG, "engine")
        wait_until(engine_answers, ENGINE_TIMEOUT_S, proc, "engine", DOCKERD_LOG)
        log(f"engine: answers on {DOCKER_SOCK}")


# --------------------------------------------------------------------------- a second engine


def engine_answers_at(url: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=5)
        ok = bool(client.ping())
        client.close()
        return ok
    except Exception:  # noqa: BLE001 -- absent socket, half-started engine: not answering
        return False


def ensure_bridge() -> None:
    """br-node2 with its own address, up: the second engine's containers' own network."""
    ip = installed("ip", "iproute2", "node2")
    shown = subprocess.run([ip, "link", "show", NODE2_BRIDGE], capture_output=True, check=False)
    if shown.returncode != 0:
        run([ip, "link", "add", NODE2_BRIDGE, "type", "bridge"], "node2")
    addresses = subprocess.run(
        [ip, "-o", "addr", "show", "dev", NODE2_BRIDGE], capture_output=True, check=False
    )
    if NODE2_BRIDGE_ADDR.encode() not in addresses.stdout:
        run([ip, "addr", "add", NODE2_BRIDGE_ADDR, "dev", NODE2_BRIDGE], "node2")
    run([ip, "link", "set", NODE2_BRIDGE, "up"], "node2")


def node2_up() -> None:
    with step("node2 up"):
        if engine_answers_at(NODE2_HOST):
            log(f"node2: an engine already answers on {NODE2_HOST}; nothing to do")
            return
        ensure_bridge()
        for directory in (NODE2_RUN, NODE2_EXEC_ROOT, NODE2_DATA_ROOT):
            directory.mkdir(parents=True, exist_ok=True)
        pid = pid_alive(NODE2_PIDFILE)
        proc = None
        if pid is not None:
            log(f"node2: dockerd (pid {pid}) is running but not answering yet; waiting")
        else:
            dockerd = installed("dockerd", "docker.io", "node2")
            proc = start_background(
                [
                    dockerd,
                    "--host",
                    NODE2_HOST,
                    "--data-root",
                    str(NODE2_DATA_ROOT),
                    "--exec-root",
                    str(NODE2_EXEC_ROOT),
                    "--pidfile",
                    str(NODE2_PIDFILE),
                    "--bridge",
                    NODE2_BRIDGE,
                    "--iptables=false",
                    "--ip6tables=false",
                ],
                NODE2_LOG,
                "node2",
            )
        wait_until(
            lambda: engine_answers_at(NODE2_HOST), ENGINE_TIMEOUT_S, proc, "node2", NODE2_LOG
        )
        log(f"node2: answers on {NODE2_HOST} (detserve --docker-host {NODE2_HOST})")


def node2_down() -> None:
    """Stop the second engine (its containers die with it) and remove all it wrote."""
    import signal

    with step("node2 down"):
        pid = pid_alive(NODE2_PIDFILE)
        if pid is not None:
            log(f"node2: stopping dockerd (pid {pid})")
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + NODE2_STOP_TIMEOUT_S
            while pid_alive(NODE2_PIDFILE) == pid and time.monotonic() < deadline:
                time.sleep(0.3)
            if pid_alive(NODE2_PIDFILE) == pid:
                raise EnvFailure(f"node2: dockerd (pid {pid}) did not stop; {tail(NODE2_LOG)}")
        for root in (NODE2_DATA_ROOT, NODE2_RUN):
            if root.exists():
                _umount_below(root)
                shutil.rmtree(root, ignore_errors=False)
                log(f"node2: removed {root}")
        ip = which("ip")
        if ip is not None:
            shown = subprocess.run(
                [ip, "link", "show", NODE2_BRIDGE], capture_output=True, check=False
            )
            if shown.returncode == 0:
                run([ip, "link", "delete", NODE2_BRIDGE], "node2")


# --------------------------------------------------------------------------- registry


def registry_state() -> str:
    """'ok' (200, no auth), 'auth' (401), 'down' (no answer) or 'other:<status>'."""
    try:
        status, _, _ = http_get(f"{REGISTRY_URL}/v2/", timeout=3)
    except (urllib.error.URLError, OSError):
        return "down"
    if status == 200:
        return "ok"
    if status == 401:
        return "auth"
    return f"other:{status}"


def ensure_registry() -> None:
    with step("registry"):
        REGISTRY_ROOT.mkdir(parents=True, exist_ok=True)
        REGISTRY_CONFIG.parent.mkdir(parents=True, exist_ok=True)
        if not REGISTRY_CONFIG.exists() or REGISTRY_CONFIG.read_text() != REGISTRY_CONFIG_TEXT:
            log(
                f"registry: writing {REGISTRY_CONFIG} (no auth, {REGISTRY_ADDR}, "
                f"storage {REGISTRY_ROOT})"
            )
            REGISTRY_CONFIG.write_text(REGISTRY_CONFIG_TEXT)
        state = registry_state()
        if state == "ok":
            log(f"registry: {REGISTRY_URL}/v2/ already answers 200 without auth; nothing to do")
            return
        if state != "down":
            raise EnvFailure(
                f"registry: something else answers on {REGISTRY_ADDR} ({state}, e.g. a registry "
                "that demands auth); stop it first"
            )
        binary = installed("docker-registry", "docker-registry", "registry")
        proc = start_background([binary, "serve", str(REGISTRY_CONFIG)], REGISTRY_LOG, "registry")
        wait_until(lambda: registry_state() == "ok", 30, proc, "registry", REGISTRY_LOG)
        log(f"registry: {REGISTRY_URL}/v2/ answers 200 (pid {proc.pid})")


# --------------------------------------------------------------------------- base image


def detect_debian_mirror() -> str:
    """The URI apt uses here for the bookworm suite, else deb.debian.org."""
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and BASE_SUITE in fields.get("suites", "").split()
                ):
                    return fields.get("uris", DEFAULT_MIRROR).split()[0]
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                parts = [p for p in parts if not p.startswith("[")]
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == BASE_SUITE:
                    return parts[1]
    return DEFAULT_MIRROR


def _umount_below(root: Path) -> None:
    """Unmount anything a failed debootstrap left mounted under root (before deleting it)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    points = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for point in sorted((p for p in points if p.startswith(str(root) + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def image_exists(client: Any, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base(mirror: str | None) -> None:
    with step("base"):
        client = docker_client(timeout=600)
        if image_exists(client, BASE_IMAGE):
            log(f"base: image {BASE_IMAGE} exists; nothing to do")
            return
        debootstrap = installed("debootstrap", "debootstrap", "base")
        mirror = mirror or detect_debian_mirror()
        work = Path(tempfile.mkdtemp(prefix="detserve-rootfs-", dir="/var/tmp"))
        rootfs = work / "rootfs"
        tar_path = work / "rootfs.tar"
        try:
            run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={BASE_INCLUDE}",
                    BASE_SUITE,
                    str(rootfs),
                    mirror,
                ],
                "base",
            )
            run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tar_path), "."], "base")
            repo, tag = BASE_IMAGE.rsplit(":", 1)
            log(
                f"base: importing {tar_path} ({tar_path.stat().st_size / 1e6:.0f} MB) as "
                f"{BASE_IMAGE} through the SDK"
            )
            changes = [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/bash"]',
            ]
            result = client.api.import_image(
                src=str(tar_path), repository=repo, tag=tag, changes=changes
            )
            log(f"base: engine said {str(result).strip()[:200]}")
            if not image_exists(client, BASE_IMAGE):
                raise EnvFailure(f"base: import finished but {BASE_IMAGE} is not there")
            log(f"base: {BASE_IMAGE} = {client.images.get(BASE_IMAGE).id}")
        finally:
            _umount_below(work)
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- vLLM image


@dataclass(frozen=True)
class ImageOptions:
    torch_source: str  # local-wheel | pytorch-index
    wheel_dir: Path
    extra_ca: Path | None
    source_url: str
    pytorch_index_url: str = PYTORCH_INDEX_URL
    pip_index_url: str = PIP_INDEX_URL
    variant: Variant = PLAIN


def lock_torch_hashes(lock_text: str, lock_file: Path = LOCK_FILE) -> set[str]:
    m = re.search(r"^torch==(\S+)((?:\s*\\\n\s*--hash=sha256:[0-9a-f]{64})+)", lock_text, re.M)
    if not m:
        raise EnvFailure(f"image: no torch pin in {lock_file}")
    if m.group(1) != TORCH_VERSION:
        raise EnvFailure(f"image: {lock_file} pins torch {m.group(1)}, expected {TORCH_VERSION}")
    return set(re.findall(r"sha256:([0-9a-f]{64})", m.group(2)))


def build_args(opts: ImageOptions, base_id: str) -> tuple[dict[str, str], str]:
    """The build args, and the build-inputs hash that labels the image.

    The hash is sha256 over the Dockerfile, the lock file, the build args and the base
    image's ID (a re-made base image is a different input); for a variant other than the plain
    image, also its name and labels.
    """
    lock_bytes = opts.variant.lock_file.read_bytes()
    args = {
        "BASE_IMAGE": BASE_IMAGE,
        "TORCH_SOURCE": opts.torch_source,
        "PYTORCH_INDEX_URL": opts.pytorch_index_url,
        "PIP_INDEX_URL": opts.pip_index_url,
        "EXTRA_CA": "1" if opts.extra_ca else "0",
        "SOURCE_URL": opts.source_url,
        "LOCK_SHA256": hashlib.sha256(lock_bytes).hexdigest(),
    }
    material = {
        "dockerfile_sha256": hashlib.sha256(DOCKERFILE.read_bytes()).hexdigest(),
        "lock_sha256": args["LOCK_SHA256"],
        "build_args": args,
        "base_image_id": base_id,
    }
    if opts.variant != PLAIN:
        material["variant"] = {"name": opts.variant.name, "labels": dict(opts.variant.labels)}
    canon = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    inputs = hashlib.sha256(canon).hexdigest()
    return {**args, "BUILD_INPUTS_SHA256": inputs}, inputs


def make_context(opts: ImageOptions, dest: Path) -> None:
    """Write the build context as an uncompressed tar (fixed owners and times)."""

    def add(tf: tarfile.TarFile, src: Path | None, name: str, data: bytes = b"") -> None:
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.mode = 0, 0, 0, 0o644
        if src is None:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        else:
            info.size = src.stat().st_size
            with src.open("rb") as f:
                tf.addfile(info, f)

    with tarfile.open(dest, "w") as tf:
        add(tf, DOCKERFILE, "Dockerfile")
        add(tf, opts.variant.lock_file, "requirements-vllm-cpu.lock")
        if opts.torch_source == "local-wheel":
            add(tf, opts.wheel_dir / TORCH_WHEEL, f"extras/wheels/{TORCH_WHEEL}")
        else:
            add(tf, None, "extras/wheels/.keep")
        if opts.extra_ca:
            add(tf, opts.extra_ca, "extras/ca/extra-ca.pem")
        else:
            add(tf, None, "extras/ca/.keep")


def registry_tag_digest(repo_path: str, tag: str) -> str | None:
    try:
        status, headers, _ = http_get(
            f"{REGISTRY_URL}/v2/{repo_path}/manifests/{tag}",
            headers={"Accept": MANIFEST_ACCEPT},
            method="HEAD",
        )
    except (urllib.error.URLError, OSError) as exc:
        raise EnvFailure(
            f"image: registry {REGISTRY_ADDR} not answering ({exc}); run `stack.py registry`"
        ) from exc
    if status == 404:
        return None
    if status != 200:
        raise EnvFailure(f"image: registry answered {status} for {repo_path}:{tag}")
    lower = {k.lower(): v for k, v in headers.items()}
    return lower.get("docker-content-digest")


def local_repo_digest(image: Any) -> str | None:
    for ref in image.attrs.get("RepoDigests") or []:
        repo, _, digest = ref.partition("@")
        if repo == IMAGE_REPO:
            return str(digest)
    return None


def find_built(client: Any, inputs: str, ref: str = IMAGE_REF) -> Any | None:
    """A finished image labelled with these build inputs, preferring the one tagged ``ref``.

    The classic builder's intermediate images after the LABEL step carry the label too; only
    images with the final ENTRYPOINT count.
    """
    candidates = [
        img
        for img in client.images.list(filters={"label": f"{LABEL_INPUTS}={inputs}"})
        if (img.attrs.get("Config") or {}).get("Entrypoint") == ENTRYPOINT
    ]
    candidates.sort(key=lambda img: ref not in img.tags)
    return candidates[0] if candidates else None


def build_image(client: Any, opts: ImageOptions, args: dict[str, str]) -> Any:
    work = Path(tempfile.mkdtemp(prefix="detserve-context-", dir="/var/tmp"))
    try:
        ctx = work / "context.tar"
        make_context(opts, ctx)
        log(
            f"image: building {opts.variant.ref} (context {ctx.stat().st_size / 1e6:.0f} MB, "
            f"network host, torch from {opts.torch_source}, extra CA "
            f"{opts.extra_ca or 'none'})"
        )
        image_id = None
        with ctx.open("rb") as f:
            stream = client.api.build(
                fileobj=f,
                custom_context=True,
                dockerfile="Dockerfile",
                tag=opts.variant.ref,
                buildargs=args,
                labels=dict(opts.variant.labels) or None,
                network_mode="host",
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                timeout=3600,
            )
            for chunk in stream:
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise EnvFailure(f"image: build failed: {str(detail).strip()}")
                if "stream" in chunk:
                    sys.stderr.write(chunk["stream"])
                    sys.stderr.flush()
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
        if image_id is None:
            raise EnvFailure("image: build stream ended without an image ID")
        return client.images.get(image_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def push_image(client: Any, variant: Variant = PLAIN) -> str:
    log(f"image: pushing {variant.ref} through the SDK")
    pushed = None
    last_status: dict[str, str] = {}
    for chunk in client.api.push(IMAGE_REPO, tag=variant.tag, stream=True, decode=True):
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            raise EnvFailure(f"image: push failed: {str(detail).strip()}")
        status = chunk.get("status")
        if status and not chunk.get("progress"):
            key = chunk.get("id", "")
            if last_status.get(key) != status:
                last_status[key] = status
                log(f"image: push: {key + ': ' if key else ''}{status}")
        aux = chunk.get("aux")
        if aux and "Digest" in aux:
            pushed = aux["Digest"]
    if pushed is None:
        raise EnvFailure("image: push stream ended without a digest")
    return str(pushed)


def ensure_image(opts: ImageOptions) -> str:
    """Build (unless built from the same inputs) and push; return REPO@sha256:..."""
    variant = opts.variant
    with step("image"):
        if opts.torch_source == "local-wheel":
            wheel = opts.wheel_dir / TORCH_WHEEL
            if not wheel.is_file():
                raise EnvFailure(
                    f"image: torch wheel {wheel} missing (or use --torch-source pytorch-index)"
                )
            want = lock_torch_hashes(variant.lock_file.read_text(), variant.lock_file)
            got = sha256_file(wheel)
            if got not in want:
                raise EnvFailure(f"image: {wheel} has sha256 {got}, the lock wants {sorted(want)}")
            log(f"image: {wheel.name} matches the lock (sha256 {got[:16]}...)")
        client = docker_client(timeout=3600)
        if not image_exists(client, BASE_IMAGE):
            raise EnvFailure(f"image: base image {BASE_IMAGE} missing; run `stack.py base`")
        base_id = client.images.get(BASE_IMAGE).id
        args, inputs = build_args(opts, base_id)
        log(f"image: build inputs sha256 {inputs}")
        found = find_built(client, inputs, variant.ref)
        if found is not None:
            image = found
            log(f"image: {image.id} already built from these inputs; skipping the build")
            if variant.ref not in image.tags:
                log(f"image: tagging it {variant.ref}")
                image.tag(IMAGE_REPO, variant.tag)
        else:
            t0 = time.monotonic()
            image = build_image(client, opts, args)
            log(f"image: built {image.id} in {time.monotonic() - t0:.1f}s")
        image.reload()
        local = local_repo_digest(image)
        remote = registry_tag_digest("detserve/vllm-cpu", variant.tag)
        if local and remote == local:
            log(f"image: registry already has {variant.ref} at {remote}; skipping the push")
            digest = local
        else:
            log(
                f"image: registry has {variant.ref} at {remote or 'nothing'}; local repo digest "
                f"{local or 'none'}; pushing"
            )
            t0 = time.monotonic()
            digest = push_image(client, variant)
            log(f"image: pushed {digest} in {time.monotonic() - t0:.1f}s")
            remote = registry_tag_digest("detserve/vllm-cpu", variant.tag)
            if remote != digest:
                raise EnvFailure(f"image: pushed {digest} but the registry serves {remote}")
            image.reload()
            if local_repo_digest(image) != digest:
                raise EnvFailure(
                    f"image: pushed {digest} but RepoDigests is {image.attrs.get('RepoDigests')}"
                )
        pinned = f"{IMAGE_REPO}@{digest}"
        log(f"image: pinned reference {pinned}")
        return pinned


# --------------------------------------------------------------------------- lock


def lock_compile_args(variant: Variant = PLAIN) -> list[str]:
    return [
        "pip",
        "compile",
        variant.lock_in.name,
        "--generate-hashes",
        "--only-binary",
        ":all:",
        "--python-version",
        LOCK_PYTHON,
        "--python-platform",
        LOCK_PLATFORM,
        "--exclude-newer",
        LOCK_EXCLUDE_NEWER,
    ]


def regenerate_lock(wheel_dir: Path, variant: Variant = PLAIN) -> None:
    with step("lock"):
        work = Path(tempfile.mkdtemp(prefix="detserve-uv-"))
        try:
            run([sys.executable, "-m", "venv", str(work / "venv")], "lock")
            run([str(work / "venv/bin/pip"), "install", "-q", f"uv=={UV_VERSION}"], "lock")
            excludes = work / "excludes.txt"
            excludes.write_text("".join(f"{p}\n" for p in LOCK_EXCLUDES))
            header = (
                ".venv/bin/python scripts/stack/stack.py lock"
                + (" --ray" if variant == RAY else "")
                + "  # runs uv "
                + UV_VERSION
                + ": uv "
                + " ".join(lock_compile_args(variant))
                + " --find-links "
                + str(wheel_dir)
                + " --excludes <("
                + " ".join(LOCK_EXCLUDES)
                + ") -o "
                + variant.lock_file.name
            )
            run(
                [
                    str(work / "venv/bin/uv"),
                    *lock_compile_args(variant),
                    "--find-links",
                    str(wheel_dir),
                    "--excludes",
                    str(excludes),
                    "-o",
                    variant.lock_file.name,
                    "--custom-compile-command",
                    header,
                ],
                "lock",
                cwd=HERE,
                stdout=subprocess.DEVNULL,
            )  # uv echoes the whole lock on stdout
        finally:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="stack.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "command", choices=["engine", "registry", "base", "image", "all", "lock", "node2"]
    )
    p.add_argument("action", nargs="?", choices=["up", "down"], help="for node2: up or down")
    p.add_argument(
        "--torch-source",
        choices=["local-wheel", "pytorch-index"],
        default="local-wheel",
        help="where pip takes torch 2.13.0+cpu from (default: local-wheel)",
    )
    p.add_argument(
        "--wheel-dir",
        type=Path,
        default=DEFAULT_WHEEL_DIR,
        help=f"directory holding {TORCH_WHEEL} (default: {DEFAULT_WHEEL_DIR})",
    )
    ca = p.add_mutually_exclusive_group()
    ca.add_argument(
        "--extra-ca",
        type=Path,
        default=None,
        help=f"CA bundle pip trusts during the build (default: {DEFAULT_CA} if it exists)",
    )
    ca.add_argument("--no-extra-ca", action="store_true", help="build with no extra CA bundle")
    p.add_argument(
        "--debian-mirror",
        default=None,
        help="mirror for debootstrap (default: the one in /etc/apt/sources.list*)",
    )
    p.add_argument(
        "--source-url",
        default=DEFAULT_SOURCE_URL,
        help="value of the org.opencontainers.image.source label",
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help=f"image and lock: the variant with Ray {RAY_VERSION} (tag {RAY.tag}), for clusters",
    )
    p.add_argument("--pytorch-index-url", default=PYTORCH_INDEX_URL)
    p.add_argument("--pip-index-url", default=PIP_INDEX_URL)
    return p.parse_args(argv)


def image_options(ns: argparse.Namespace) -> ImageOptions:
    if ns.no_extra_ca:
        extra_ca = None
    elif ns.extra_ca is not None:
        if not ns.extra_ca.is_file():
            raise UsageFailure(f"--extra-ca {ns.extra_ca}: no such file")
        extra_ca = ns.extra_ca
    else:
        extra_ca = DEFAULT_CA if DEFAULT_CA.is_file() else None
    if ns.torch_source == "local-wheel" and not ns.wheel_dir.is_dir():
        raise UsageFailure(f"--wheel-dir {ns.wheel_dir}: no such directory")
    return ImageOptions(
        torch_source=ns.torch_source,
        wheel_dir=ns.wheel_dir,
        extra_ca=extra_ca,
        source_url=ns.source_url,
        pytorch_index_url=ns.pytorch_index_url,
        pip_index_url=ns.pip_index_url,
        variant=RAY if ns.ray else PLAIN,
    )


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)  # argparse exits 2 on bad options
    if ns.ray and ns.command not in ("image", "all", "lock"):
        print(
            f"stack.py: error: --ray is for image, all and lock, not {ns.command}", file=sys.stderr
        )
        return EXIT_USAGE
    if ns.action is not None and ns.command != "node2":
        print(f"stack.py: error: {ns.command} takes no action", file=sys.stderr)
        return EXIT_USAGE
    try:
        opts = image_options(ns) if ns.command in ("image", "all") else None
        if ns.command in ("engine", "all"):
            ensure_engine()
        if ns.command in ("registry", "all"):
            ensure_registry()
        if ns.command in ("base", "all"):
            ensure_base(ns.debian_mirror)
        if ns.command in ("image", "all"):
            assert opts is not None
            print(ensure_image(opts), flush=True)
        if ns.command == "lock":
            regenerate_lock(ns.wheel_dir, RAY if ns.ray else PLAIN)
        if ns.command == "node2":
            if ns.action is None:
                raise UsageFailure("node2 needs an action: up or down")
            if ns.action == "up":
                node2_up()
            else:
                node2_down()
    except UsageFailure as exc:
        print(f"stack.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EnvFailure as exc:
        print(f"stack.py: failed: {exc}", file=sys.stderr)
        return EXIT_ENV
    except Exception as exc:  # noqa: BLE001 -- the SDK, requests, OS errors: still one clear line, exit 3
        print(f"stack.py: failed: {ns.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ENV
    return 0


if __name__ == "__main__":
    sys.exit(main())
