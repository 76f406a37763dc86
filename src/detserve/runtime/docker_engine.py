"""The container engine: a small protocol and its implementation over the Docker SDK.

Images are only ever referred to by digest (``REPO@sha256:...``): one that is not present
locally is pulled by that digest, never by a tag, and the engine checks the content against the
digest as it pulls. After a container is created, the image it actually got is checked again:
its ``RepoDigests`` must include the pin, or the container is removed and the start fails.

Every ``docker.errors.*`` and ``requests`` exception is converted here into a detserve error:
the engine unreachable is an :class:`EngineError` naming its socket or URL, a registry problem a
:class:`RegistryError` naming the registry, a container that cannot be created or started a
:class:`ContainerError` (a half-created container is removed first).

The records the engine answers with (:class:`ImageInfo`, :class:`ContainerInfo`, ...) and their
parsing from ``docker inspect`` are :mod:`detserve.runtime.inspection`; they are re-exported
here, where callers have always found them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import docker
import docker.errors
import requests

from detserve.errors import ContainerError, EngineError, PinMismatch, RegistryError
from detserve.imageref import ImageRef
from detserve.runtime.container_spec import ContainerSpec
from detserve.runtime.docker_host import (
    DEFAULT_DOCKER_HOST,
    DOCKER_HOST_SCHEMES,
    check_docker_host,
)
from detserve.runtime.inspection import (
    ContainerConfig,
    ContainerInfo,
    DeviceRequestInfo,
    ImageInfo,
    MountInfo,
    container_info,
    image_info,
    is_pinned_image,
    repo_digests_shown,
)

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "DOCKER_HOST_SCHEMES",
    "STOP_TIMEOUT_S",
    "ContainerConfig",
    "ContainerEngine",
    "ContainerInfo",
    "DeviceRequestInfo",
    "DockerEngine",
    "ImageInfo",
    "MountInfo",
    "connect",
    "docker_address",
    "is_pinned_image",
    "repo_digests_shown",
]

STOP_TIMEOUT_S = 10


def docker_address(host: str | None = None, environment: Mapping[str, str] | None = None) -> str:
    """The engine's address as the Docker SDK resolves it: ``host`` when given, else
    ``DOCKER_HOST``, else the current Docker context (``DOCKER_CONTEXT`` or the CLI's config),
    else the local socket. Whichever names it, an address that is not a Docker host URL
    (:func:`~detserve.runtime.docker_host.check_docker_host`) is a :class:`UsageError` (exit 2)
    naming where it came from (``--docker-host``, ``DOCKER_HOST``, the Docker context)."""
    if host is not None:
        return check_docker_host(host)
    environ = os.environ if environment is None else environment
    if environ.get("DOCKER_HOST"):
        # the environment's address passes the rule --docker-host does, refused by its name
        return check_docker_host(environ["DOCKER_HOST"], option="DOCKER_HOST")
    try:
        from docker.context import ContextAPI

        context_url = ContextAPI.kwargs_from_context(environment=dict(environ)).get("base_url")
    except Exception:  # noqa: BLE001 -- a broken context file: the SDK falls back the same way
        context_url = None
    if not context_url:
        return DEFAULT_DOCKER_HOST
    # the SDK normalises unix:// to http+unix://; the address is shown as a person wrote it
    return check_docker_host(
        str(context_url).removeprefix("http+"), option="the current Docker context's host"
    )


def connect(host: str | None = None) -> tuple[docker.DockerClient, str]:
    """A Docker SDK client that has answered a ping, and the address it talks to.

    ``host`` (``--docker-host``) wins; without it the SDK's own resolution applies
    (``DOCKER_HOST`` with ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH``, then the current
    Docker context). An engine that does not answer is an :class:`EngineError` (exit 3) naming
    the address.
    """
    address = docker_address(host)
    environment = dict(os.environ)
    if host is not None:
        environment["DOCKER_HOST"] = host
    try:
        client = docker.from_env(environment=environment)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise EngineError(
            f"the container engine at {address} does not answer",
            details=[str(exc)],
            hint=(
                "start it (here: `python scripts/stack/stack.py engine`, elsewhere: "
                "`systemctl start docker`), or name another with --docker-host or DOCKER_HOST"
            ),
        ) from exc
    return client, address


def python_of(entrypoint: tuple[str, ...] | None) -> str:
    """The image's own Python when its entrypoint names one, else ``python3`` on its PATH."""
    if entrypoint and entrypoint[0].rsplit("/", 1)[-1].startswith("python"):
        return entrypoint[0]
    return "python3"


class ContainerEngine(Protocol):
    """What detserve asks of a container engine."""

    def ensure_image(self, image: str) -> ImageInfo:
        """The local image of ``REPO@sha256:...``, pulled by that digest when absent."""
        ...

    def image_by_id(self, image_id: str) -> ImageInfo:
        """The local image with that id (a running container's); never pulls."""
        ...

    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        """Create the container, check it got the pinned image, start it."""
        ...

    def find(self, name: str) -> ContainerInfo | None:
        """The container of that exact name, running or not; None when there is none."""
        ...

    def inspect(self, container_id: str) -> ContainerInfo:
        """The container's current state; an error when it no longer exists."""
        ...

    def stop_and_remove(self, container_id: str) -> None:
        """Stop (gracefully, then killed) and remove; a container already gone is fine."""
        ...

    def logs(self, container_id: str, tail: int) -> list[str]:
        """The last ``tail`` lines of the container's output (stdout and stderr)."""
        ...

    def follow_logs(self, container_id: str, tail: int) -> Iterator[str]:
        """The last ``tail`` lines, then each new line until the container stops."""
        ...

    def exec_python(self, container_id: str, python: str, code: str) -> tuple[int, bytes]:
        """Run ``python -c code`` in the running container; its exit status and stdout."""
        ...


def _explanation(exc: docker.errors.APIError) -> str:
    text = exc.explanation
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text or exc).strip()


class DockerEngine:
    """:class:`ContainerEngine` over the Docker SDK (``docker.from_env()``)."""

    def __init__(self, client: docker.DockerClient, address: str) -> None:
        self._client = client
        self.address = address

    @property
    def client(self) -> docker.DockerClient:
        """The Docker SDK client this engine talks through (for the environment probe)."""
        return self._client

    @classmethod
    def from_env(cls, host: str | None = None) -> DockerEngine:
        """The engine at ``host`` (a Docker host URL), else as :func:`connect` resolves it."""
        client, address = connect(host)
        return cls(client, address)

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Turn an engine that stops answering mid-way into an EngineError."""
        try:
            yield
        except docker.errors.APIError:
            # an answer from the engine (APIError subclasses requests' HTTPError): the caller's
            raise
        except requests.exceptions.RequestException as exc:
            raise EngineError(
                f"the container engine at {self.address} stopped answering while {what}",
                details=[str(exc)],
            ) from exc

    # --- images ---------------------------------------------------------------------------

    def _local_image(self, image: str) -> ImageInfo | None:
        try:
            with self._talking(f"looking up {image}"):
                found = self._client.images.get(image)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot look up image {image}: {_explanation(exc)}") from exc
        return image_info(found.attrs)

    def image_by_id(self, image_id: str) -> ImageInfo:
        info = self._local_image(image_id)
        if info is None:
            raise ContainerError(f"image {image_id} of a running container is not in the engine")
        return info

    def _pull_by_digest(self, image: str) -> None:
        ref = ImageRef.parse(image)
        repo, digest, registry = ref.repository, ref.digest, ref.registry
        try:
            with self._talking(f"pulling {image}"):
                # tag=<digest>: the SDK asks for REPO@sha256:..., never a tag
                for message in self._client.api.pull(repo, tag=digest, stream=True, decode=True):
                    if isinstance(message, dict) and message.get("error"):
                        raise RegistryError(
                            f"pulling {image} from {registry} failed: {message['error']}"
                        )
        except docker.errors.APIError as exc:
            text = _explanation(exc)
            lowered = text.lower()
            if "manifest unknown" in lowered or "not found" in lowered:
                raise RegistryError(
                    f"registry {registry} has no image {image}",
                    details=[text],
                    hint=(
                        "the pinned digest is not in the registry: check runtime.image in the "
                        "profile, or push the image that was locked"
                    ),
                ) from exc
            if "unauthorized" in lowered or "denied" in lowered or "authentication" in lowered:
                raise RegistryError(
                    f"registry {registry} refused access to {image}",
                    details=[text],
                    hint="log in to the registry (credentials are read by the Docker SDK)",
                ) from exc
            raise RegistryError(
                f"cannot pull {image}: registry {registry} is unreachable or failed",
                details=[text],
                hint=f"check that the registry at {registry} is running and reachable",
            ) from exc

    def ensure_image(self, image: str) -> ImageInfo:
        ImageRef.parse(image)  # refuse a tag before anything is asked of the engine
        info = self._local_image(image)
        if info is None:
            self._pull_by_digest(image)
            info = self._local_image(image)
            if info is None:
                raise RegistryError(f"pulled {image}, but the engine does not have it")
        self._check_pin(image, info)
        return info

    @staticmethod
    def _check_pin(image: str, info: ImageInfo) -> None:
        if not is_pinned_image(image, info):
            raise PinMismatch(
                f"image {info.id} is not the pinned {image}", details=[repo_digests_shown(info)]
            )

    # --- containers ------------------------------------------------------------------------

    @staticmethod
    def _info(container: Any) -> ContainerInfo:
        return container_info(container.attrs)

    def _remove_quietly(self, container: Any) -> None:
        # Best effort while another error is being reported; that error is the one that matters.
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            container.remove(force=True)

    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        image = self.ensure_image(spec.image)
        try:
            with self._talking(f"creating {spec.name}"):
                container = self._client.containers.create(**spec.to_create_kwargs())
        except docker.errors.APIError as exc:
            text = _explanation(exc)
            if exc.status_code == 409:
                raise ContainerError(
                    f"a container named {spec.name} already exists",
                    details=[text],
                    hint=f"`detserve status` shows it; `detserve stop` removes {spec.name}",
                ) from exc
            raise ContainerError(f"cannot create container {spec.name}: {text}") from exc
        try:
            created = self._info(container)
            if created.image_id != image.id:
                raise PinMismatch(
                    f"container {spec.name} got image {created.image_id}, not the pinned "
                    f"{spec.image} ({image.id}); it was removed"
                )
            # Re-read the image the container got: its references may have changed since.
            current = self._local_image(created.image_id)
            if current is None:
                raise PinMismatch(f"image {created.image_id} of {spec.name} vanished; removed")
            self._check_pin(spec.image, current)
            try:
                with self._talking(f"starting {spec.name}"):
                    container.start()
            except docker.errors.APIError as exc:
                text = _explanation(exc)
                lowered = text.lower()
                if "address already in use" in lowered or "port is already allocated" in lowered:
                    raise ContainerError(
                        f"host port {spec.host}:{spec.port} is already in use; container "
                        f"{spec.name} was not started (and was removed)",
                        details=[text],
                        hint="stop what listens there, or set runtime.port in the profile",
                    ) from exc
                raise ContainerError(
                    f"cannot start container {spec.name} (it was removed): {text}"
                ) from exc
            container.reload()
        except BaseException:
            self._remove_quietly(container)
            raise
        return self._info(container)

    def find(self, name: str) -> ContainerInfo | None:
        try:
            with self._talking(f"looking up container {name}"):
                container = self._client.containers.get(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot look up container {name}: {_explanation(exc)}") from exc
        info = self._info(container)
        # containers.get also matches an id prefix; only the exact name is this profile's
        return info if info.name == name else None

    def inspect(self, container_id: str) -> ContainerInfo:
        try:
            with self._talking(f"inspecting container {container_id[:12]}"):
                container = self._client.containers.get(container_id)
        except docker.errors.NotFound as exc:
            raise ContainerError(f"container {container_id[:12]} no longer exists") from exc
        except docker.errors.APIError as exc:
            raise EngineError(
                f"cannot inspect container {container_id[:12]}: {_explanation(exc)}"
            ) from exc
        return self._info(container)

    def stop_and_remove(self, container_id: str) -> None:
        try:
            with self._talking(f"stopping container {container_id[:12]}"):
                container = self._client.containers.get(container_id)
                container.stop(timeout=STOP_TIMEOUT_S)
                container.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise ContainerError(
                f"cannot stop and remove container {container_id[:12]}: {_explanation(exc)}"
            ) from exc

    def _container(self, container_id: str, what: str = "reading logs of") -> Any:
        try:
            with self._talking(f"{what} {container_id[:12]}"):
                return self._client.containers.get(container_id)
        except docker.errors.NotFound as exc:
            raise ContainerError(f"container {container_id[:12]} no longer exists") from exc
        except docker.errors.APIError as exc:
            raise EngineError(
                f"cannot read container {container_id[:12]}: {_explanation(exc)}"
            ) from exc

    def exec_python(self, container_id: str, python: str, code: str) -> tuple[int, bytes]:
        container = self._container(container_id, f"running {python} in")
        try:
            with self._talking(f"running {python} in {container_id[:12]}"):
                result: Any = container.exec_run([python, "-c", code], stdout=True, stderr=False)
        except docker.errors.APIError as exc:
            raise ContainerError(
                f"cannot run {python} in container {container_id[:12]}: {_explanation(exc)}"
            ) from exc
        output: bytes = result.output
        return int(result.exit_code), output

    def logs(self, container_id: str, tail: int) -> list[str]:
        container = self._container(container_id)
        try:
            with self._talking(f"reading logs of {container_id[:12]}"):
                raw = container.logs(stdout=True, stderr=True, tail=tail)
        except docker.errors.APIError as exc:
            raise EngineError(
                f"cannot read logs of {container_id[:12]}: {_explanation(exc)}"
            ) from exc
        text: str = raw.decode("utf-8", "replace")
        return text.splitlines()

    def follow_logs(self, container_id: str, tail: int) -> Iterator[str]:
        container = self._container(container_id)
        try:
            with self._talking(f"following logs of {container_id[:12]}"):
                pending = ""
                for chunk in container.logs(
                    stdout=True, stderr=True, tail=tail, stream=True, follow=True
                ):
                    pending += chunk.decode("utf-8", "replace")
                    *lines, pending = pending.split("\n")
                    yield from lines
                if pending:
                    yield pending
        except docker.errors.APIError as exc:
            raise EngineError(
                f"cannot follow logs of {container_id[:12]}: {_explanation(exc)}"
            ) from exc
