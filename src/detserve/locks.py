"""Resolve human references (a branch, a tag) to pins (a commit, a digest).

These are the only functions that create pins, and they run only when a person asks
(``lock-model``, ``lock-image``). The result is shown for review; ``--write`` changes the one pin
field of the profile and nothing else, so that the change is committed by a person.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from huggingface_hub import HfApi

from detserve.errors import (
    EngineError,
    HubError,
    InputError,
    PinMismatch,
    ProfileError,
    RegistryError,
)
from detserve.fileio import MAX_PROFILE_BYTES, atomic_write_bytes, check_outputs, read_input
from detserve.hub import hub_call
from detserve.imageref import is_digest_ref, registry_of, repository_of_tag
from detserve.pinfile import replace_pin
from detserve.profile import COMMIT_RE, LoadedProfile, parse_profile


@dataclass(frozen=True)
class LockResult:
    """What a lock resolved: ``field`` of the profile, from ``source`` to ``pinned``."""

    field: str
    source: str
    pinned: str
    previous: str | None
    resolved_by: str

    @property
    def changed(self) -> bool:
        return self.previous != self.pinned

    def as_json(self) -> dict[str, object]:
        return {
            "field": self.field,
            "source": self.source,
            "pinned": self.pinned,
            "previous": self.previous,
            "changed": self.changed,
            "resolved_by": self.resolved_by,
        }


def resolve_model_revision(
    loaded: LoadedProfile, *, endpoint: str | None = None, token: str | None = None
) -> LockResult:
    """Ask the hub which commit ``model.ref`` names now."""
    model = loaded.profile.model
    api = HfApi(endpoint=endpoint, token=token)
    with hub_call(endpoint, f"{model.id}@{model.ref}") as address:
        info = api.model_info(model.id, revision=model.ref, timeout=30)
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not COMMIT_RE.fullmatch(sha):
        raise HubError(f"{address}: the hub answered no commit for {model.id}@{model.ref}: {sha!r}")
    return LockResult(
        field="model.revision",
        source=f"{model.id}@{model.ref}",
        pinned=sha,
        previous=model.revision,
        resolved_by=address,
    )


def resolve_image_digest(loaded: LoadedProfile, client: Any | None = None) -> LockResult:
    """Ask the registry, through the engine, which digest ``runtime.image_tag`` names now."""
    tag = loaded.profile.runtime.image_tag
    repository = repository_of_tag(tag)
    registry = registry_of(repository)
    if client is None:
        from detserve.runtime.docker_engine import docker_address

        docker_address()  # DOCKER_HOST (or the context) passes the rule --docker-host does
    try:
        engine = client if client is not None else docker.from_env(timeout=60)
        data = engine.images.get_registry_data(tag)
    except docker.errors.NotFound as exc:
        raise InputError(f"registry {registry}: no image {tag}: {exc.explanation}") from exc
    except docker.errors.APIError as exc:
        explanation = str(exc.explanation or exc)
        refused = exc.status_code in (401, 403) or any(
            word in explanation.lower() for word in ("unauthorized", "credentials", "denied")
        )
        raise RegistryError(
            f"registry {registry} did not resolve {tag}: {explanation}",
            hint=(
                f"the registry at {registry} wants credentials: `docker login {registry}` "
                "(read from ~/.docker/config.json, or $DOCKER_CONFIG/config.json)"
                if refused
                else f"is the registry at {registry} reachable from the Docker engine?"
            ),
        ) from exc
    except docker.errors.DockerException as exc:
        raise EngineError(
            f"cannot reach the Docker engine: {exc}",
            hint="is dockerd running? (DOCKER_HOST or /var/run/docker.sock)",
        ) from exc
    pinned = f"{repository}@{data.id}"
    if not is_digest_ref(pinned):
        raise RegistryError(
            f"registry {registry} answered an invalid digest for {tag}: {data.id!r}"
        )
    return LockResult(
        field="runtime.image",
        source=tag,
        pinned=pinned,
        previous=loaded.profile.runtime.image,
        resolved_by=registry,
    )


def check_unchanged(result: LockResult) -> None:
    """Without ``--write``: a pin that no longer matches what its reference resolves to fails."""
    if result.previous is not None and result.changed:
        raise PinMismatch(
            f"{result.source} now resolves to a different value than {result.field} pins",
            details=[f"pinned:   {result.previous}", f"resolved: {result.pinned}"],
            hint="if the new value is trusted, re-run with --write and review the diff",
        )


def write_lock(
    loaded: LoadedProfile, result: LockResult, output: Path | None, *, force: bool
) -> Path:
    """Write the profile with the one pin changed, in place or to ``output``."""
    section, key = result.field.split(".")
    data = read_input(loaded.path, what="profile", cap=MAX_PROFILE_BYTES, error=ProfileError)
    if hashlib.sha256(data).hexdigest() != loaded.file_sha256:
        raise ProfileError(
            f"profile {loaded.path} changed since it was validated; nothing was written",
            hint="run the lock again",
        )
    updated = replace_pin(data.decode("utf-8"), section, key, result.pinned)
    parse_profile(updated.encode("utf-8"), source=f"{loaded.path} (locked)")
    # In place (the purpose of --write) the profile is replaced; --output is never the profile.
    target, replace = (loaded.path, True) if output is None else (output, force)
    check_outputs([target], force=replace, inputs=() if output is None else [loaded.path])
    atomic_write_bytes(target, updated.encode("utf-8"), force=replace)
    return target
