"""The pins of a run, built in one place from a loaded profile and what was just verified.

Sampling writes them into the run log's header; replay compares a claim's with the verifier's
own before anything starts. Both use :func:`profile_pins` (what the profile and the verified
manifest fix before any server is asked) and :func:`run_pins` (those plus the prompt bundle and
the version the server reports), so the two can never be assembled differently.

What is a pin: every input that decides the tokens (model and revision, the manifest's hash, the
image by digest, the engine arguments, the entrypoint, the environment detserve gives the
container, the device request, the served name, the prompt bundle, the vLLM version). What is
not: the profile's file name or directory, the host, the container's id and times, GPU ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detserve.profile import LoadedProfile
from detserve.runlog import DevicePins, RunPins
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

    def engine_pins(self, *, vllm_version: str) -> EnginePins:
        """What fixes the server (a gateway transcript's pins): these and the server's version."""
        return EnginePins(**self._fields(), vllm_version=vllm_version)

    def run_pins(self, *, prompt_bundle_sha256: str, vllm_version: str) -> RunPins:
        """The run log's pins: these, the prompt bundle's hash and the server's version."""
        return RunPins(
            **self._fields(), prompt_bundle_sha256=prompt_bundle_sha256, vllm_version=vllm_version
        )

    def _fields(self) -> dict[str, Any]:
        return {
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
    )


def pin_differences(
    claimed: RunPins, local: ProfilePins, *, prompt_bundle_sha256: str
) -> list[str]:
    """Each pin a claim holds that the local profile does not, sorted by name, both in full.

    The server's version cannot be known before a server runs; it is compared when the replay's
    own run log is (``eval-determinism``).
    """
    ours: dict[str, Any] = {
        **local.run_pins(
            prompt_bundle_sha256=prompt_bundle_sha256, vllm_version=claimed.vllm_version
        ).model_dump(mode="json"),
    }
    theirs = claimed.model_dump(mode="json")
    return [
        f"{name}: claim {theirs.get(name)!r}, local {ours[name]!r}"
        for name in sorted(ours)
        if theirs.get(name) != ours[name]
    ]
