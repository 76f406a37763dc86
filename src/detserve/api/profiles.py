"""The face's profile verbs: load a profile, scaffold a new one, and list what a strict profile
may set.

Wrappers only over :mod:`detserve.profile`, :mod:`detserve.scaffold` and
:mod:`detserve.engine_policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detserve.engine_policy import EngineOption, EnvironmentVariable
    from detserve.scaffold import InitResult


@dataclass(frozen=True)
class ProfileOptions:
    """What a strict profile may set (:func:`config_options`): engine options and environment
    variables pass only by exact name from these allowlists."""

    #: ``vllm.extra_args`` allowed, by exact name
    engine_options: Mapping[str, EngineOption]
    #: engine options refused, each with why
    refused_engine_options: Mapping[str, str]
    #: engine options detserve sets from the profile's own fields
    managed_engine_options: frozenset[str]
    #: ``runtime.environment`` allowed, by exact name
    environment: Mapping[str, EnvironmentVariable]
    #: the module a pinned ``entrypoint`` may run
    server_module: str

    def as_json(self) -> dict[str, object]:
        return {
            "engine_options": {
                name: {"kind": o.kind, "choices": list(o.choices), "why": o.why}
                for name, o in sorted(self.engine_options.items())
            },
            "refused_engine_options": dict(sorted(self.refused_engine_options.items())),
            "managed_engine_options": sorted(self.managed_engine_options),
            "environment": {
                name: {"form": v.pattern, "why": v.why}
                for name, v in sorted(self.environment.items())
            },
            "entrypoint": ["PYTHON", "-m", self.server_module],
        }


def config_options() -> ProfileOptions:
    """What a strict profile may set, and why each is safe to pin; refused options with why.

    vLLM's parser would expand an abbreviation, so only exact names are accepted."""
    from detserve import engine_policy as policy

    return ProfileOptions(
        engine_options=policy.ENGINE_OPTIONS,
        refused_engine_options=policy.NONDETERMINISTIC_OPTIONS,
        managed_engine_options=frozenset(policy.MANAGED_OPTIONS),
        environment=policy.ENVIRONMENT_VARIABLES,
        server_module=policy.SERVER_MODULE,
    )


def init_profile(
    model: str,
    *,
    device: str,
    name: str,
    gpus: int | None = None,
    output: Path | str | None = None,
    hf_home: Path | str | None = None,
) -> InitResult:
    """Write an unpinned profile for ``model`` on ``device`` (``cpu`` or ``nvidia``), by default
    ``configs/NAME.json``, and return it with the checklist of what to run next. Pins stay null:
    nothing is resolved or trusted here. An existing file is never replaced (exit 2)."""
    from detserve.scaffold import InitRequest
    from detserve.scaffold import init_profile as init_core

    return init_core(
        InitRequest(
            model_id=model,
            device=device,  # type: ignore[arg-type]  # checked by init_profile
            name=name,
            gpus=gpus,
            output=Path(output) if output is not None else None,
            hf_home=Path(hf_home) if hf_home is not None else None,
        )
    )


def profile_json_schema() -> dict[str, object]:
    """The JSON Schema of a profile (committed as docs/profile.schema.json)."""
    from detserve.profile import profile_json_schema as schema

    return schema()
