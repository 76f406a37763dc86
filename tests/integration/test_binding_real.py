"""The binding of the running container to the verified snapshot, against the real engine.

The hole this closes, as it was demonstrated: two profiles with the same bytes in two
directories, each with a relative ``hf_home``, one snapshot with a flipped byte. The container is
started from the tampered one; sampling is asked of the clean one. Both carry the same labels
(same profile content, same manifest), and the clean snapshot verifies, so a run log used to be
written naming the clean manifest's hash over tampered weights. Now ``sample`` compares the
container's mounts with the directories it just verified, and refuses (exit 1, naming the mount).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import docker
import pytest

from .conftest import DetserveRunner, ProfileFactory, container_of

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 400


def _relative_copy(factory: ProfileFactory) -> Path:
    """A tiny-cpu profile whose hf_home and manifest_dir are relative to its own directory."""

    def relative(document: dict[str, object]) -> None:
        snapshot = document["snapshot"]
        assert isinstance(snapshot, dict)
        shutil.copytree(
            snapshot["hf_home"], Path(snapshot["manifest_dir"]).parent / "hf-cache", symlinks=True
        )
        snapshot["hf_home"] = "hf-cache"
        snapshot["manifest_dir"] = "manifests"

    return factory("binding", edit=relative)


def test_a_container_of_another_snapshot_is_never_sampled(
    profile_factory: ProfileFactory,
    detserve: DetserveRunner,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    tampered_profile = _relative_copy(profile_factory)
    clean_dir = tmp_path / "clean"
    shutil.copytree(tampered_profile.parent, clean_dir, symlinks=True)
    clean_profile = clean_dir / tampered_profile.name
    assert clean_profile.read_bytes() == tampered_profile.read_bytes()
    # one flipped byte near the end of the tampered copy's weights (tensor data: still loads)
    weights = next(tampered_profile.parent.glob("hf-cache/hub/*/snapshots/*/model.safetensors"))
    blob = weights.resolve()
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0x01
    blob.write_bytes(bytes(data))
    try:
        started = detserve("start", "--config", tampered_profile)
        assert started.code == 0, started
        waited = detserve(
            "wait",
            "--config",
            tampered_profile,
            "--timeout",
            str(READY_TIMEOUT_S),
            timeout=READY_TIMEOUT_S + 60,
        )
        assert waited.code == 0, waited
        # The clean copy verifies and its labels match the container's ...
        assert detserve("verify", "--config", clean_profile).code == 0
        # ... but the container mounts the other directory: refused before the first request.
        out = tmp_path / "out"
        sampled = detserve(
            "sample",
            "--config",
            clean_profile,
            "--n-prompts",
            "2",
            "--max-tokens",
            "4",
            "--run-log-output",
            out / "run.runlog.jsonl",
            "--output",
            out / "run.sidecar.json",
        )
        assert sampled.code == 1, sampled
        assert "is not the one the pins of" in sampled.err
        clean_snapshot = next(clean_dir.glob("hf-cache/hub/*/snapshots/*")).resolve()
        assert f"expected a read-only bind of {clean_snapshot}, absent" in sampled.err
        assert not out.exists() or list(out.iterdir()) == []
        # smoke and status say the same of it
        smoked = detserve("smoke", "--config", clean_profile)
        assert smoked.code == 1, smoked
        status = detserve("status", "--config", clean_profile, "--json")
        assert status.code == 1, status
        assert any("mount" in line for line in status.json()["mismatches"])
        # The real container mounts exactly the snapshot and its blobs, read-only, nothing else.
        container = docker_client.containers.get(container_of(tampered_profile))
        mounts = sorted((m["Destination"], m["RW"]) for m in container.attrs["Mounts"])
        assert [rw for _, rw in mounts] == [False, False]
        destinations = [d for d, _ in mounts]
        assert destinations[0].endswith("/blobs")
        assert "/snapshots/" in destinations[1]
        assert "/hf-home" not in destinations
    finally:
        detserve("stop", "--config", tampered_profile)
