"""Containers as a Docker engine reports them, for tests of the binding without an engine.

:func:`faithful_container` answers what ``docker inspect`` answers for a container created from a
:class:`~detserve.runtime.container_spec.ContainerSpec` exactly as ``detserve start`` creates it,
on an image that carries the pinned digest. Tests change one field of it at a time.
"""

from __future__ import annotations

from detserve.runtime.binding import shm_bytes
from detserve.runtime.container_spec import ContainerSpec
from detserve.runtime.docker_engine import (
    ContainerConfig,
    ContainerInfo,
    DeviceRequestInfo,
    ImageInfo,
    MountInfo,
)

IMAGE_ID = "sha256:" + "b" * 64
IMAGE_ENVIRONMENT = {"PATH": "/opt/venv/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
IMAGE_ENTRYPOINT = ("/opt/venv/bin/python3", "-m", "vllm.entrypoints.openai.api_server")


def pinned_image(spec: ContainerSpec, image_id: str = IMAGE_ID) -> ImageInfo:
    """The local image of the pinned reference, with an image's own environment and entrypoint."""
    return ImageInfo(
        id=image_id,
        repo_digests=(spec.image,),
        environment=dict(IMAGE_ENVIRONMENT),
        entrypoint=IMAGE_ENTRYPOINT,
    )


def faithful_config(spec: ContainerSpec) -> ContainerConfig:
    return ContainerConfig(
        entrypoint=spec.entrypoint if spec.entrypoint is not None else IMAGE_ENTRYPOINT,
        environment={**IMAGE_ENVIRONMENT, **spec.environment, **spec.secrets},
        mounts=tuple(
            sorted(
                MountInfo(type="bind", source=str(m.source), destination=m.target, read_only=True)
                for m in spec.mounts
            )
        ),
        port_bindings=spec.expected_ports(),
        device_requests=tuple(
            DeviceRequestInfo(
                driver=r["Driver"],
                count=int(r.get("Count") or 0),
                device_ids=tuple(r.get("DeviceIDs") or ()),
                capabilities=tuple(tuple(c) for c in r["Capabilities"]),
            )
            for r in spec.device_requests()
        ),
        privileged=False,
        devices=(),
        volumes_from=(),
        cap_add=(),
        tmpfs=(),
        network_mode=spec.network_mode or "default",
        ipc_mode=spec.ipc_mode or "private",
        pid_mode="",
        shm_size=shm_bytes(spec.shm_size),
        init=True,
        extra_hosts=spec.extra_host_lines(),
        hostname=spec.hostname or "c0ffeec0ffee",
    )


def faithful_container(
    spec: ContainerSpec,
    *,
    container_id: str = "c0ffee" * 10 + "abcd",
    image_id: str = IMAGE_ID,
    started_at: str = "2026-01-01T00:00:00.000000000Z",
) -> ContainerInfo:
    return ContainerInfo(
        id=container_id,
        name=spec.name,
        status="running",
        running=True,
        started_at=started_at,
        restart_count=0,
        exit_code=None,
        oom_killed=False,
        error="",
        image_id=image_id,
        image=spec.image,
        labels=dict(spec.labels),
        command=spec.command,
        config=faithful_config(spec),
    )
