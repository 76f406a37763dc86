"""The pins of a run, built in one place from a loaded profile and what was just verified.

Sampling writes them into the run log's header; replay compares a claim's with the verifier's
own before anything starts. Both use :func:`profile_pins` (what the profile and the verified
manifest fix before any server is asked) and :func:`run_pins` (those plus the prompt bundle and
the version the server reports), so the two can never be assembled differently.

What is a pin: every input that decides the tokens (model and revision, the manifest's hash, the
image by digest, the engine arguments, the entrypoint, the environment detserve gives the
container, the device request, the served name, the prompt bundle, the vLLM version). What is
not: the profile's file name or directory, the host, the container's id and times, GPU ids.
A cluster adds its layout (nodes, tensor and pipeline sizes, executor, the image's Ray version);
which engines, hosts or addresses the nodes were is not a pin (it goes to the sidecar).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detserve.profile import LoadedProfile
from detserve.runlog import DevicePins, RunPins
from detserve.runlog.layout import ClusterLayout
from detserve.runlog.models import EnginePins
from detserve.runtime.container_spec import container_environment, engine_args


@dataclass(frozen=True)
class ProfilePins:
    """The pins a profile fixes once its manifest is read: all but the bundle and the server's."""

    model_id: str
    model_revision: str
    manifest_sha256: str
    image: str
    engine_args: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    environment: Mapping[str, str]
    device: DevicePins
    served_model_name: str
    #: a cluster's layout but the Ray version (read from the running head), or None
    layout: Mapping[str, Any] | None = None

    def engine_pins(self, *, vllm_version: str, ray_version: str | None = None) -> EnginePins:
        """What fixes the server (a gateway transcript's pins): these and the server's version."""
        return EnginePins(**self._fields(ray_version), vllm_version=vllm_version)

    def run_pins(
        self, *, prompt_bundle_sha256: str, vllm_version: str, ray_version: str | None = None
    ) -> RunPins:
        """The run log's pins: these, the prompt bundle's hash and the server's version (and on
        a cluster, the Ray version its head's image holds)."""
        return RunPins(
            **self._fields(ray_version),
            prompt_bundle_sha256=prompt_bundle_sha256,
            vllm_version=vllm_version,
        )

    def _fields(self, ray_version: str | None) -> dict[str, Any]:
        layout = {}
        if self.layout is not None:
            layout = {"layout": ClusterLayout(**self.layout, ray_version=ray_version)}
        return {
            **layout,
            "model_id": self.model_id,
            "model_revision": self.model_revision,
            "manifest_sha256": self.manifest_sha256,
            "image": self.image,
            "engine_args": self.engine_args,
            "entrypoint": self.entrypoint,
            "environment": dict(self.environment),
            "device": self.device,
            "served_model_name": self.served_model_name,
        }


def profile_pins(loaded: LoadedProfile, *, manifest_sha256: str) -> ProfilePins:
    """The pins of ``loaded``, with the sha256 of the manifest the snapshot verified against."""
    loaded.require_pins()
    profile = loaded.profile
    runtime = profile.runtime
    return ProfilePins(
        model_id=profile.model.id,
        model_revision=loaded.revision,
        manifest_sha256=manifest_sha256,
        image=loaded.image,
        engine_args=tuple(engine_args(loaded)),
        entrypoint=tuple(runtime.entrypoint) if runtime.entrypoint is not None else None,
        environment=container_environment(loaded),
        device=DevicePins(kind=runtime.device, gpus=runtime.gpus_requested()),
        served_model_name=profile.vllm.served_model_name,
        layout=None if profile.cluster is None else cluster_layout(loaded),
    )


def cluster_layout(loaded: LoadedProfile) -> dict[str, Any]:
    """The layout pins a cluster profile fixes (all but the image's Ray version)."""
    cluster = loaded.profile.cluster
    assert cluster is not None
    return {
        "executor": cluster.executor,
        "nodes": len(cluster.nodes),
        "pipeline_parallel_size": cluster.pipeline_parallel_size,
        "tensor_parallel_size": loaded.profile.vllm.tensor_parallel_size,
    }


def pin_differences(
    claimed: RunPins, local: ProfilePins, *, prompt_bundle_sha256: str
) -> list[str]:
    """Each pin a claim holds that the local profile does not, sorted by name, both in full.

    The server's version (and a cluster's Ray version) cannot be known before a server runs;
    it is compared when the replay's own run log is (``eval-determinism``). A pin only one side
    holds (a cluster's layout against one container) is a difference, shown as absent.
    """
    ray_version = claimed.layout.ray_version if claimed.layout is not None else None
    ours: dict[str, Any] = {
        **local.run_pins(
            prompt_bundle_sha256=prompt_bundle_sha256,
            vllm_version=claimed.vllm_version,
            ray_version=ray_version,
        ).model_dump(mode="json"),
    }
    theirs = claimed.model_dump(mode="json")

    def shown(side: dict[str, Any], name: str) -> str:
        return repr(side[name]) if name in side else "(absent)"

    return [
        f"{name}: claim {shown(theirs, name)}, local {shown(ours, name)}"
        for name in sorted(set(ours) | set(theirs))
        if name not in theirs or name not in ours or theirs[name] != ours[name]
    ]
