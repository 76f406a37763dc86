"""The engine layer's own image checks, against a fake Docker client.

``DockerEngine`` checks two things that a correct Docker engine and registry never get wrong, so
the real stack cannot show them failing: that the local image it looked up by the pinned
reference lists the pinned digest in its ``RepoDigests`` (``DockerEngine._check_pin``), and that
a newly created container got that very image (``DockerEngine.create_and_start``). Here a fake
client answers the few SDK calls the engine makes, and answers them wrongly on purpose: a local
image without the pinned digest, a container created from another image, an image whose
references changed between the look-up and the create.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import pytest

from detserve.errors import EXIT_VERIFICATION, PinMismatch
from detserve.profile import LoadedProfile, load_profile
from detserve.runtime.container_spec import ContainerSpec, build_container_spec
from detserve.runtime.docker_engine import DockerEngine

from .committed import TinyWorkspace

REPO = "127.0.0.1:5000/detserve/vllm-cpu"
PINNED_DIGEST = "sha256:" + "a1" * 32
OTHER_DIGEST = "sha256:" + "b2" * 32
PINNED = f"{REPO}@{PINNED_DIGEST}"
IMAGE_ID = "sha256:" + "c3" * 32
OTHER_IMAGE_ID = "sha256:" + "d4" * 32


@dataclass
class FakeImage:
    id: str
    repo_digests: list[str]

    @property
    def attrs(self) -> dict[str, Any]:
        return {"Id": self.id, "RepoDigests": list(self.repo_digests)}


@dataclass
class FakeImages:
    """``client.images``: images found by reference (``REPO@sha256:…``) or by id."""

    by_name: dict[str, FakeImage] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def get(self, name: str) -> FakeImage:
        self.asked.append(name)
        if name not in self.by_name:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return self.by_name[name]


@dataclass
class FakeContainer:
    image_id: str
    name: str
    started: bool = False
    removed: bool = False

    @property
    def attrs(self) -> dict[str, Any]:
        return {
            "Id": "e5" * 32,
            "Name": f"/{self.name}",
            "State": {"Status": "running" if self.started else "created", "Running": self.started},
            "RestartCount": 0,
            "Image": self.image_id,
            "Config": {"Image": PINNED, "Labels": {}, "Cmd": []},
        }

    def start(self) -> None:
        self.started = True

    def reload(self) -> None:
        pass

    def remove(self, force: bool = False) -> None:
        self.removed = True


@dataclass
class FakeContainers:
    """``client.containers``: ``create`` makes a container of ``image_id``, whatever was asked."""

    image_id: str
    created: list[FakeContainer] = field(default_factory=list)

    def create(self, **kwargs: Any) -> FakeContainer:
        container = FakeContainer(image_id=self.image_id, name=kwargs["name"])
        self.created.append(container)
        return container


@dataclass
class FakeApi:
    """``client.api``: a pull records what was asked for and then runs ``arrives``."""

    pulls: list[tuple[str, str]] = field(default_factory=list)
    arrives: Callable[[], None] | None = None

    def pull(self, repo: str, tag: str, stream: bool, decode: bool) -> Iterator[dict[str, Any]]:
        self.pulls.append((repo, tag))
        if self.arrives is not None:
            self.arrives()
        return iter(())


@dataclass
class FakeDockerClient:
    images: FakeImages
    containers: FakeContainers
    api: FakeApi = field(default_factory=FakeApi)


def engine_with(
    images: dict[str, FakeImage], *, created_image_id: str = IMAGE_ID
) -> tuple[DockerEngine, FakeDockerClient]:
    client = FakeDockerClient(FakeImages(images), FakeContainers(created_image_id))
    return DockerEngine(client, "unix:///fake/docker.sock"), client


@pytest.fixture
def spec(tiny_workspace: TinyWorkspace) -> ContainerSpec:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = PINNED
    tiny_workspace.config.write_text(json.dumps(document), encoding="utf-8")
    loaded: LoadedProfile = load_profile(tiny_workspace.config)
    return build_container_spec(loaded, {})


# --- the local image's RepoDigests must include the pin ----------------------------------------


@pytest.mark.parametrize(
    ("pinned", "repo_digests"),
    [
        pytest.param(PINNED, [PINNED], id="same-spelling"),
        pytest.param(PINNED, [f"{REPO}@{OTHER_DIGEST}", PINNED], id="among-others"),
        pytest.param(
            f"vllm/vllm-openai@{PINNED_DIGEST}",
            [f"docker.io/vllm/vllm-openai@{PINNED_DIGEST}"],
            id="docker-hub-spellings",
        ),
    ],
)
def test_a_local_image_listing_the_pinned_digest_is_used(
    pinned: str, repo_digests: list[str]
) -> None:
    engine, client = engine_with({pinned: FakeImage(IMAGE_ID, repo_digests)})
    assert engine.ensure_image(pinned).id == IMAGE_ID
    assert client.api.pulls == []


@pytest.mark.parametrize(
    "repo_digests",
    [
        pytest.param([f"{REPO}@{OTHER_DIGEST}"], id="another-digest"),
        pytest.param([f"127.0.0.1:5001/detserve/vllm-cpu@{PINNED_DIGEST}"], id="another-repo"),
        pytest.param([], id="none"),
    ],
)
def test_a_local_image_without_the_pinned_digest_is_refused(
    repo_digests: list[str], spec: ContainerSpec
) -> None:
    engine, client = engine_with({PINNED: FakeImage(IMAGE_ID, repo_digests)})
    with pytest.raises(PinMismatch) as raised:
        engine.ensure_image(PINNED)
    assert raised.value.exit_code == EXIT_VERIFICATION
    assert raised.value.message == f"image {IMAGE_ID} is not the pinned {PINNED}"
    assert raised.value.details == (
        f"its RepoDigests: {', '.join(sorted(repo_digests)) or '(none)'}",
    )
    # start refuses it before any container exists
    with pytest.raises(PinMismatch):
        engine.create_and_start(spec)
    assert client.containers.created == []
    assert client.api.pulls == []


def test_an_absent_image_is_pulled_by_digest_then_checked() -> None:
    images: dict[str, FakeImage] = {}
    engine, client = engine_with(images)

    def arrives() -> None:
        images[PINNED] = FakeImage(IMAGE_ID, [f"{REPO}@{OTHER_DIGEST}"])

    client.api.arrives = arrives
    with pytest.raises(PinMismatch, match="is not the pinned"):
        engine.ensure_image(PINNED)
    assert client.api.pulls == [(REPO, PINNED_DIGEST)], "pulled by digest, never by tag"


# --- the created container must have got the pinned image ---------------------------------------


def test_a_container_created_from_the_pinned_image_is_started(spec: ContainerSpec) -> None:
    image = FakeImage(IMAGE_ID, [PINNED])
    engine, client = engine_with({PINNED: image, IMAGE_ID: image})
    info = engine.create_and_start(spec)
    [container] = client.containers.created
    assert container.started
    assert not container.removed
    assert info.image_id == IMAGE_ID
    assert client.images.asked == [PINNED, IMAGE_ID], "the created container's image is re-read"


def test_a_container_created_from_another_image_is_removed_unstarted(
    spec: ContainerSpec,
) -> None:
    # The engine gave the container another image than the one just checked: a correct engine
    # cannot, since the reference names content, so only a fake can show this check failing.
    image = FakeImage(IMAGE_ID, [PINNED])
    other = FakeImage(OTHER_IMAGE_ID, [PINNED])
    engine, client = engine_with(
        {PINNED: image, IMAGE_ID: image, OTHER_IMAGE_ID: other}, created_image_id=OTHER_IMAGE_ID
    )
    with pytest.raises(PinMismatch) as raised:
        engine.create_and_start(spec)
    assert raised.value.exit_code == EXIT_VERIFICATION
    assert raised.value.message == (
        f"container {spec.name} got image {OTHER_IMAGE_ID}, not the pinned {PINNED} "
        f"({IMAGE_ID}); it was removed"
    )
    [container] = client.containers.created
    assert container.removed
    assert not container.started


def test_a_created_containers_image_that_lost_the_pin_is_removed_unstarted(
    spec: ContainerSpec,
) -> None:
    # Same image id, but re-read after the create it no longer lists the pinned digest.
    engine, client = engine_with(
        {
            PINNED: FakeImage(IMAGE_ID, [PINNED]),
            IMAGE_ID: FakeImage(IMAGE_ID, [f"{REPO}@{OTHER_DIGEST}"]),
        }
    )
    with pytest.raises(PinMismatch) as raised:
        engine.create_and_start(spec)
    assert raised.value.message == f"image {IMAGE_ID} is not the pinned {PINNED}"
    [container] = client.containers.created
    assert container.removed
    assert not container.started


def test_a_created_containers_image_that_vanished_is_removed_unstarted(
    spec: ContainerSpec,
) -> None:
    engine, client = engine_with({PINNED: FakeImage(IMAGE_ID, [PINNED])})
    with pytest.raises(PinMismatch) as raised:
        engine.create_and_start(spec)
    assert raised.value.message == f"image {IMAGE_ID} of {spec.name} vanished; removed"
    [container] = client.containers.created
    assert container.removed
    assert not container.started
