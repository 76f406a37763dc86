"""Read-only questions to the Docker engine for fingerprints and the doctor.

:class:`DockerProbe` answers :class:`~detserve.fingerprint.FingerprintEngine` and the doctor's
engine facts over the Docker SDK. It never pulls, creates or changes anything the profile runs,
with one exception: when the profile's container does not run, the container fingerprint runs a
short-lived container of the pinned image (by image id, without network, removed at once) to
read package versions. A running container is used only once it is bound to the pins.

Every ``docker.errors.*`` and ``requests`` exception is converted here: the engine unreachable is
an :class:`~detserve.errors.EngineError` (exit 3), a probe that fails a
:class:`~detserve.errors.ContainerError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime

import docker
import docker.errors
import requests

from detserve.errors import ContainerError, EngineError
from detserve.fingerprint import (
    VERSION_PROBE,
    ContainerFacts,
    EngineVersion,
    parse_probe_output,
)
from detserve.profile import LoadedProfile, container_name
from detserve.runtime.binding import bound_container
from detserve.runtime.container_spec import container_environment
from detserve.runtime.docker_engine import (
    ContainerInfo,
    DockerEngine,
    ImageInfo,
    connect,
    is_pinned_image,
    python_of,
)


class DockerProbe:
    """Engine facts over the Docker SDK (``docker.from_env()``)."""

    def __init__(self, client: docker.DockerClient, address: str) -> None:
        self._client = client
        self.address = address
        self.engine = DockerEngine(client, address)

    @classmethod
    def from_env(cls, host: str | None = None) -> DockerProbe:
        """The engine at ``host``, else ``DOCKER_HOST`` or the current Docker context;
        :class:`EngineError` naming its address when it does not answer."""
        client, address = connect(host)
        return cls(client, address)

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        try:
            yield
        except docker.errors.APIError as exc:
            raise EngineError(f"the engine at {self.address} refused {what}: {exc}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineError(
                f"the container engine at {self.address} stopped answering while {what}",
                details=[str(exc)],
            ) from exc

    def engine_version(self) -> EngineVersion:
        with self._talking("reading its version"):
            answer = self._client.version()
        return EngineVersion(
            version=str(answer.get("Version", "unknown")),
            api_version=str(answer.get("ApiVersion", "unknown")),
        )

    def engine_time(self) -> datetime | None:
        """The engine host's clock (``docker info``'s ``SystemTime``), None if it does not say."""
        with self._talking("reading its clock"):
            info = self._client.info()
        text = str(info.get("SystemTime") or "")
        # Docker writes nanoseconds; fromisoformat takes at most microseconds.
        head, dot, rest = text.partition(".")
        if dot:
            digits = "".join(c for c in rest if c.isdigit())
            text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None

    def local_image(self, image: str) -> ImageInfo | None:
        """The local image of the pinned ``REPO@sha256`` reference; never pulls."""
        try:
            with self._talking(f"looking up {image}"):
                found = self._client.images.get(image)
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound):
                return None
            raise
        attrs = found.attrs
        config = attrs.get("Config") or {}
        environment = dict(str(entry).partition("=")[::2] for entry in config.get("Env") or ())
        info = ImageInfo(
            id=str(attrs.get("Id", "")),
            repo_digests=tuple(attrs.get("RepoDigests") or ()),
            environment=environment,
            entrypoint=tuple(config.get("Entrypoint") or ()) or None,
        )
        return info if is_pinned_image(image, info) else None

    def image_created(self, image: str) -> datetime | None:
        """When the pinned image was built, as its configuration says."""
        with contextlib.suppress(EngineError):
            with self._talking(f"looking up {image}"):
                created = str(self._client.images.get(image).attrs.get("Created") or "")
            head, dot, rest = created.partition(".")
            if dot:
                created = f"{head}.{''.join(c for c in rest if c.isdigit())[:6]}+00:00"
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(created.replace("Z", "+00:00"))
        return None

    def image_by_id(self, image_id: str) -> ImageInfo:
        """The local image a container runs (never pulled); for the binding."""
        return self.engine.image_by_id(image_id)

    def container(self, loaded: LoadedProfile) -> ContainerInfo | None:
        """The profile's container, running or not; None when there is none."""
        return self.engine.find(container_name(loaded.profile))

    def container_facts(self, loaded: LoadedProfile) -> ContainerFacts:
        """Versions and environment of the bound running container, or of the pinned image."""
        existing = self.container(loaded)
        if existing is not None and existing.running:
            container = bound_container(loaded, self.engine, what="fingerprint")
            image = self.engine.image_by_id(container.image_id)
            return self.running_facts(container, python_of(image.entrypoint))
        image = self.engine.ensure_image(loaded.image)  # by digest, pin checked
        raw = self._run(image)
        return ContainerFacts(
            image_id=image.id,
            environment={**image.environment, **container_environment(loaded)},
            versions=parse_probe_output(raw, where=loaded.image),
        )

    def running_facts(self, container: ContainerInfo, python: str) -> ContainerFacts:
        """Versions and environment of a running container the caller has bound to the pins."""
        raw = self._exec(container.id, python)
        environment = dict(container.config.environment) if container.config else {}
        return ContainerFacts(
            image_id=container.image_id,
            environment=environment,
            versions=parse_probe_output(raw, where=f"container {container.name}"),
        )

    def _exec(self, container_id: str, python: str) -> bytes:
        exit_code, output = self.engine.exec_python(container_id, python, VERSION_PROBE)
        if exit_code != 0:
            raise ContainerError(
                f"the version probe in container {container_id[:12]} exited {exit_code}"
            )
        return output

    def _run(self, image: ImageInfo) -> bytes:
        try:
            with self._talking(f"running the version probe in image {image.id[:19]}"):
                output: bytes = self._client.containers.run(
                    image.id,
                    entrypoint=[python_of(image.entrypoint), "-c", VERSION_PROBE],
                    command=[],
                    network_disabled=True,
                    remove=True,
                    stdout=True,
                    stderr=False,
                    labels={"io.detserve.purpose": "fingerprint"},
                )
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.ContainerError):
                raise ContainerError(
                    f"the version probe in image {image.id[:19]} failed",
                    details=[str(exc.__cause__)[:500]],
                ) from exc
            raise
        return output
