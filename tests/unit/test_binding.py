"""The binding of a running container to the pins: every field that decides what it serves.

A container that differs from the one the pins produce in any of these fields is refused before
anything is sampled, smoked or waited on (exit 1, each difference named). The reference is what
Docker reports for a container created exactly as ``detserve start`` creates it
(:func:`tests.unit.containers.faithful_container`); each case changes one field of it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from detserve.errors import EXIT_VERIFICATION, PinMismatch
from detserve.profile import LoadedProfile, load_profile
from detserve.runtime.binding import binding_mismatches, bound_container
from detserve.runtime.container_spec import build_container_spec
from detserve.runtime.docker_engine import ContainerInfo, DeviceRequestInfo, ImageInfo, MountInfo

from .committed import TinyWorkspace
from .containers import IMAGE_ID, faithful_container, pinned_image

IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a1" * 32


def _pinned(config: Path) -> LoadedProfile:
    document = json.loads(config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = IMAGE
    config.write_text(json.dumps(document), encoding="utf-8")
    return load_profile(config)


@pytest.fixture
def loaded(tiny_workspace: TinyWorkspace) -> LoadedProfile:
    return _pinned(tiny_workspace.config)


class OneEngine:
    """An engine holding one container and its image."""

    def __init__(self, container: ContainerInfo, image: ImageInfo) -> None:
        self.container, self.image = container, image

    def find(self, name: str) -> ContainerInfo | None:
        return self.container if name == self.container.name else None

    def image_by_id(self, image_id: str) -> ImageInfo:
        # any other id is another image: one that does not carry the pinned digest
        return self.image if image_id == self.image.id else ImageInfo(image_id, ())


def _config(**changes: Any) -> Callable[[ContainerInfo], ContainerInfo]:
    def change(container: ContainerInfo) -> ContainerInfo:
        assert container.config is not None
        return dataclasses.replace(
            container, config=dataclasses.replace(container.config, **changes)
        )

    return change


def _env(container: ContainerInfo, **env: str) -> ContainerInfo:
    assert container.config is not None
    merged = {**container.config.environment, **env}
    return _config(environment=merged)(container)


def _without_env(name: str) -> Callable[[ContainerInfo], ContainerInfo]:
    def change(container: ContainerInfo) -> ContainerInfo:
        assert container.config is not None
        env = {k: v for k, v in container.config.environment.items() if k != name}
        return _config(environment=env)(container)

    return change


def _mounts(*extra: MountInfo, keep: bool = True) -> Callable[[ContainerInfo], ContainerInfo]:
    def change(container: ContainerInfo) -> ContainerInfo:
        assert container.config is not None
        mounts = (container.config.mounts if keep else ()) + extra
        return _config(mounts=mounts)(container)

    return change


def _writable(container: ContainerInfo) -> ContainerInfo:
    assert container.config is not None
    mounts = tuple(dataclasses.replace(m, read_only=False) for m in container.config.mounts)
    return _config(mounts=mounts)(container)


CHANGES: dict[str, tuple[Callable[[ContainerInfo], ContainerInfo], str]] = {
    "another image reference": (
        lambda c: dataclasses.replace(c, image=IMAGE.replace("a1", "b2")),
        "image: expected",
    ),
    "another image id": (
        lambda c: dataclasses.replace(c, image_id="sha256:" + "9" * 64),
        "is not the pinned image",
    ),
    "another engine argument": (
        lambda c: dataclasses.replace(c, command=(*c.command, "--enable-prefix-caching")),
        "engine args: expected",
    ),
    "another label": (
        lambda c: dataclasses.replace(c, labels={**c.labels, "io.detserve.model-revision": "x"}),
        "io.detserve.model-revision: expected",
    ),
    "another entrypoint": (
        _config(entrypoint=("sh", "-c", "exec python3 -m vllm.entrypoints.openai.api_server")),
        "entrypoint: expected",
    ),
    "an environment variable redirecting the weights": (
        lambda c: _env(c, HF_HUB_CACHE="/tmp/unverified"),
        "environment HF_HUB_CACHE: not set by the pins",
    ),
    "LD_PRELOAD": (lambda c: _env(c, LD_PRELOAD="/tmp/evil.so"), "environment LD_PRELOAD"),
    "a changed profile variable": (
        lambda c: _env(c, VLLM_CPU_KVCACHE_SPACE="2"),
        "environment VLLM_CPU_KVCACHE_SPACE: expected 1, found 2",
    ),
    "offline mode off": (lambda c: _env(c, HF_HUB_OFFLINE="0"), "environment HF_HUB_OFFLINE"),
    "an image variable overridden": (
        lambda c: _env(c, PATH="/tmp/evil:/usr/bin"),
        "environment PATH: expected",
    ),
    "a profile variable missing": (
        _without_env("VLLM_CPU_KVCACHE_SPACE"),
        "environment VLLM_CPU_KVCACHE_SPACE: expected 1, absent",
    ),
    "the whole Hugging Face home mounted besides": (
        _mounts(MountInfo("bind", "/var/lib/hf-home", "/hf-home", True)),
        "mount /hf-home: not one of the pins' mounts",
    ),
    "a volume besides": (
        _mounts(MountInfo("volume", "/var/lib/docker/volumes/x/_data", "/data", False)),
        "mount /data: not one of the pins' mounts",
    ),
    "mounts read-write": (_writable, "(read-write)"),
    "no mounts": (_mounts(keep=False), "expected a read-only bind of"),
    "another published port": (
        _config(port_bindings={"8000/tcp": (("0.0.0.0", "8000"),)}),
        "published ports: expected",
    ),
    "a second published port": (
        _config(
            port_bindings={"8000/tcp": (("127.0.0.1", "8000"),), "22/tcp": (("0.0.0.0", "22"),)}
        ),
        "published ports: expected",
    ),
    "privileged": (_config(privileged=True), "privileged: expected false"),
    "a device": (_config(devices=("/dev/nvidia0:/dev/nvidia0",)), "devices: expected none"),
    "volumes of another container": (_config(volumes_from=("other",)), "volumes from"),
    "an added capability": (_config(cap_add=("SYS_ADMIN",)), "added capabilities"),
    "a tmpfs": (_config(tmpfs=("/hf-home",)), "tmpfs: expected none"),
    "the host's network": (_config(network_mode="host"), "network mode"),
    "a host line redirecting a name": (
        _config(extra_hosts=("detserve-cluster-head:10.0.0.66",)),
        "extra hosts: expected none",
    ),
    "the host's pids": (_config(pid_mode="host"), "pid mode"),
    "the host's ipc": (_config(ipc_mode="host"), "ipc mode"),
    "another shm size": (_config(shm_size=64 * 1024**2), "shm size"),
    "no init": (_config(init=False), "init: expected"),
    "a GPU request on a CPU profile": (
        lambda c: _config(device_requests=(_gpu(),))(c),
        "device requests: expected none",
    ),
    "no configuration reported": (
        lambda c: dataclasses.replace(c, config=None),
        "configuration: the engine did not report",
    ),
}


def _gpu() -> DeviceRequestInfo:
    return DeviceRequestInfo(driver="nvidia", count=1, device_ids=(), capabilities=(("gpu",),))


def test_a_faithful_container_is_bound(loaded: LoadedProfile) -> None:
    spec = build_container_spec(loaded)
    assert binding_mismatches(spec, pinned_image(spec), faithful_container(spec)) == []


def test_secret_variables_are_allowed_and_never_shown(loaded: LoadedProfile) -> None:
    spec = build_container_spec(loaded, {"HF_TOKEN": "hf_DoNotShowMe"})
    container = faithful_container(spec)
    assert binding_mismatches(build_container_spec(loaded), pinned_image(spec), container) == []
    tampered = _env(container, LD_PRELOAD="/x.so")
    lines = binding_mismatches(build_container_spec(loaded), pinned_image(spec), tampered)
    assert lines
    assert "hf_DoNotShowMe" not in "\n".join(lines)


@pytest.mark.parametrize("case", sorted(CHANGES), ids=str)
def test_each_difference_is_refused_naming_it(loaded: LoadedProfile, case: str) -> None:
    change, phrase = CHANGES[case]
    spec = build_container_spec(loaded)
    container = change(faithful_container(spec))
    engine = OneEngine(container, pinned_image(spec))
    with pytest.raises(PinMismatch) as raised:
        bound_container(loaded, engine, what="sample from")  # type: ignore[arg-type]
    assert raised.value.exit_code == EXIT_VERIFICATION
    assert any(phrase in line for line in raised.value.details), raised.value.details


def test_an_image_without_the_pinned_digest_is_refused(loaded: LoadedProfile) -> None:
    spec = build_container_spec(loaded)
    image = dataclasses.replace(pinned_image(spec), repo_digests=("other@sha256:" + "c" * 64,))
    lines = binding_mismatches(spec, image, faithful_container(spec))
    assert any(line.startswith(f"image id: {IMAGE_ID} is not the pinned image") for line in lines)


def test_two_equal_profiles_in_two_directories_are_not_interchangeable(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    """The demonstrated hole: same profile bytes, relative hf_home, two snapshots.

    The container started from one copy carries the very labels of the other (their contents and
    manifests are equal), but mounts another directory: sampling with the other profile must be
    refused, or its clean manifest's hash would be written over tampered weights.
    """
    other_root = tmp_path / "other"
    shutil.copytree(tiny_workspace.root, other_root, symlinks=True)
    clean = _pinned(tiny_workspace.config)
    tampered = _pinned(other_root / "configs" / "tiny-cpu.json")
    started = build_container_spec(tampered)
    assert started.labels == build_container_spec(clean).labels  # labels cannot tell them apart
    engine = OneEngine(faithful_container(started), pinned_image(started))
    with pytest.raises(PinMismatch) as raised:
        bound_container(clean, engine, what="sample from")  # type: ignore[arg-type]
    shown = "\n".join(raised.value.details)
    assert str(clean.snapshot_dir) in shown
    assert str(tampered.snapshot_dir) in shown


def test_only_the_snapshot_and_its_blobs_are_mounted(loaded: LoadedProfile) -> None:
    spec = build_container_spec(loaded)
    sources = sorted(str(m.source) for m in spec.mounts)
    assert sources == sorted([str(loaded.snapshot_dir), str(loaded.model_cache_dir / "blobs")])
    assert str(loaded.hf_home) not in sources
    # resolved now: the mount is the directory that was verified, whatever links led to it
    assert all(Path(source).resolve() == Path(source) for source in sources)
