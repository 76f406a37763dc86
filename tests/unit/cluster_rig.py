"""A cluster profile of the tiny model and engines that keep containers as Docker reports them.

:func:`cluster_profile` turns a :class:`~tests.unit.committed.TinyWorkspace`'s profile into a
cluster of two nodes (the default engine and a second one). :class:`NodeEngine` is one node's
engine: it creates a container from a spec exactly as Docker would report it
(:func:`~tests.unit.containers.faithful_container`) with an address on its bridge, and records
what was asked of it, so that a test can check the order of starts and removals across nodes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from detserve.errors import ContainerError, RegistryError
from detserve.profile import LoadedProfile, load_profile
from detserve.runtime.container_spec import ContainerSpec
from detserve.runtime.docker_engine import ContainerInfo, ImageInfo

from .containers import IMAGE_ID, faithful_container

IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a1" * 32
MAIN = "unix:///var/run/docker.sock"
NODE2 = "unix:///run/detserve-node2/docker.sock"


def cluster_document(config: Path, **cluster: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = IMAGE
    document["runtime"].pop("cpu_placement", None)
    document["vllm"].pop("enforce_eager", None)
    document["cluster"] = {
        "nodes": [
            {"name": "head", "docker_host": MAIN},
            {"name": "node2", "docker_host": NODE2},
        ],
        "executor": "mp",
        "network": "bridge",
        "rendezvous_port": 29501,
        **cluster,
    }
    return document


def cluster_profile(config: Path, **cluster: Any) -> LoadedProfile:
    """The workspace's profile with a cluster section (``cluster`` overrides its fields)."""
    path = config.with_name("tiny-cpu-cluster.json")
    path.write_text(json.dumps(cluster_document(config, **cluster)), encoding="utf-8")
    return load_profile(path)


class NodeEngine:
    """One node's engine, holding containers by name; ``journal`` is shared by the nodes."""

    def __init__(self, name: str, address: str, journal: list[str]) -> None:
        self.name, self.address, self.journal = name, address, journal
        self.containers: dict[str, ContainerInfo] = {}
        self.image = ImageInfo(
            id=IMAGE_ID,
            repo_digests=(IMAGE,),
            environment={"PATH": "/opt/venv/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
            entrypoint=("/opt/venv/bin/python3", "-m", "vllm.entrypoints.openai.api_server"),
        )
        self.fail_create: str | None = None
        self.fail_pull: str | None = None
        self.hash_output = b""
        self.exec_log: list[str] = []

    # what the lifecycle asks
    def ensure_image(self, image: str) -> ImageInfo:
        self.journal.append(f"{self.name}: pull")
        if self.fail_pull:
            raise RegistryError(self.fail_pull)
        return self.image

    def image_by_id(self, image_id: str) -> ImageInfo:
        return self.image if image_id == self.image.id else ImageInfo(image_id, ())

    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        self.journal.append(f"{self.name}: start {spec.name}")
        if self.fail_create:
            raise ContainerError(self.fail_create)
        info = dataclasses.replace(
            faithful_container(spec, container_id=f"{self.name}-{len(self.journal):058d}"),
            ip_address=self.address,
        )
        self.containers[spec.name] = info
        return info

    def find(self, name: str) -> ContainerInfo | None:
        return self.containers.get(name)

    def inspect(self, container_id: str) -> ContainerInfo:
        for info in self.containers.values():
            if info.id == container_id:
                return info
        raise ContainerError(f"container {container_id[:12]} no longer exists")

    def stop_and_remove(self, container_id: str) -> None:
        for name, info in list(self.containers.items()):
            if info.id == container_id:
                self.journal.append(f"{self.name}: remove {name}")
                del self.containers[name]

    def logs(self, container_id: str, tail: int) -> list[str]:
        return ["the last line"]

    def follow_logs(self, container_id: str, tail: int) -> Iterator[str]:
        return iter(())

    def exec_python(self, container_id: str, python: str, code: str) -> tuple[int, bytes]:
        self.exec_log.append(code)
        if "ray" in code:
            return 0, b'{"ray": null}\n'
        return 0, self.hash_output

    # what a test does to a node
    def kill(self, name: str) -> None:
        info = self.containers[name]
        self.containers[name] = dataclasses.replace(
            info, running=False, status="exited", exit_code=137
        )


def node_engines(manifest: Path) -> tuple[dict[str, NodeEngine], list[str]]:
    """Two nodes' engines whose containers hash the snapshot as ``manifest`` says."""
    journal: list[str] = []
    engines = {
        "head": NodeEngine("head", "172.17.0.2", journal),
        "node2": NodeEngine("node2", "10.99.0.2", journal),
    }
    for engine in engines.values():
        engine.hash_output = manifest.read_bytes()
    return engines, journal
