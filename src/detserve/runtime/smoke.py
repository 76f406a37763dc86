"""The smoke test: the server serves the pinned model, and repeated greedy answers are equal.

``smoke`` checks that the server answers under the pinned name from the pinned model (its
``root``), then asks a few short greedy completions twice each, all once before any again, and
requires identical token ids, text, finish reasons and logprobs. It runs only against a
container bound to the pins (:func:`~detserve.runtime.binding.checked_container`).
"""

from __future__ import annotations

from dataclasses import dataclass

from detserve.errors import Divergence, PinMismatch
from detserve.first_difference import first_difference
from detserve.profile import LoadedProfile
from detserve.runtime.binding import checked_container
from detserve.runtime.docker_engine import ContainerEngine, DockerEngine
from detserve.runtime.reach import server_url
from detserve.runtime.vllm_client import Completion, VllmServer

#: prompts of the smoke test; each is asked twice, all once before any is asked again
SMOKE_PROMPTS = ("The quick brown fox", "1, 2, 3, 4, 5,", "def main():")
SMOKE_MAX_TOKENS = 8
SMOKE_LOGPROBS = 1


@dataclass(frozen=True)
class SmokeSample:
    prompt: str
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str

    def as_json(self) -> dict[str, object]:
        return {
            "prompt": self.prompt,
            "prompt_token_ids": list(self.prompt_token_ids),
            "token_ids": list(self.token_ids),
            "text": self.text,
        }


@dataclass(frozen=True)
class SmokeResult:
    served_model: str
    root: str | None
    version: str
    samples: tuple[SmokeSample, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "served_model": self.served_model,
            "root": self.root,
            "vllm_version": self.version,
            "repeats_identical": True,
            "samples": [sample.as_json() for sample in self.samples],
        }


def _root_is_model(root: str | None, loaded: LoadedProfile) -> bool:
    """vLLM reports the model it loaded as the id it was given, or as the snapshot path."""
    if root is None:
        return False
    model_id = loaded.profile.model.id
    snapshot = f"models--{model_id.replace('/', '--')}/snapshots/{loaded.revision}"
    return root == model_id or root.rstrip("/").endswith("/" + snapshot)


def _compare_repeats(prompt: str, first: Completion, second: Completion) -> list[str]:
    lines = []
    if first.prompt_token_ids != second.prompt_token_ids:
        lines.append(f"{prompt!r}: prompt token ids differ between the two runs")
    if first.token_ids != second.token_ids:
        at = first_difference(first.token_ids, second.token_ids)
        lines.append(
            f"{prompt!r}: token ids first differ at position {at}: run 1 "
            f"{list(first.token_ids)}, run 2 {list(second.token_ids)}"
        )
    elif first.text != second.text:
        lines.append(
            f"{prompt!r}: same token ids, different text: {first.text!r} vs {second.text!r}"
        )
    if first.finish_reason != second.finish_reason:
        lines.append(
            f"{prompt!r}: finish_reason {first.finish_reason!r} vs {second.finish_reason!r}"
        )
    if first.token_ids == second.token_ids and first.logprobs != second.logprobs:
        at = first_difference(first.logprobs or (), second.logprobs or ())
        lines.append(f"{prompt!r}: same tokens, logprobs first differ at position {at}")
    return lines


def check_served_model(loaded: LoadedProfile, server: VllmServer) -> str | None:
    """Raise unless the server serves the pinned model under the profile's name; return its root."""
    profile = loaded.profile
    served_name = profile.vllm.served_model_name
    served = {model.id: model for model in server.models()}
    if served_name not in served:
        raise PinMismatch(
            f"the server at {server.base_url} does not serve {served_name!r}",
            details=[f"it serves: {', '.join(sorted(served)) or '(nothing)'}"],
        )
    root = served[served_name].root
    if not _root_is_model(root, loaded):
        raise PinMismatch(
            f"the server at {server.base_url} serves {served_name!r} from {root!r}, not from "
            f"the pinned model {profile.model.id}"
        )
    return root


def smoke(loaded: LoadedProfile, *, engine: ContainerEngine | None = None) -> SmokeResult:
    """The server serves the pinned model, and repeated greedy completions are identical."""
    engine = engine if engine is not None else DockerEngine.from_env()
    container = checked_container(loaded, engine, what="smoke-test")
    return smoke_server(loaded, server_url(loaded, engine, container))


def smoke_server(loaded: LoadedProfile, base_url: str) -> SmokeResult:
    """The smoke test against the server at ``base_url``, whose container(s) the caller has
    already checked (one container, or every node of a cluster)."""
    profile = loaded.profile
    served_name = profile.vllm.served_model_name
    with VllmServer(base_url, model=served_name) as server:
        root = check_served_model(loaded, server)
        version = server.version()
        runs: list[list[Completion]] = [[], []]
        for run in runs:
            for prompt in SMOKE_PROMPTS:
                run.append(
                    server.complete(
                        prompt,
                        max_tokens=SMOKE_MAX_TOKENS,
                        seed=profile.sampling.seed,
                        logprobs=SMOKE_LOGPROBS,
                    )
                )
    problems = []
    for prompt, first, second in zip(SMOKE_PROMPTS, runs[0], runs[1], strict=True):
        problems += _compare_repeats(prompt, first, second)
    if problems:
        raise Divergence(
            f"the server at {base_url} answered the same greedy request differently",
            details=problems,
            hint="this server is not deterministic for these inputs; do not record runs from it",
        )
    samples = tuple(
        SmokeSample(
            prompt=prompt,
            prompt_token_ids=completion.prompt_token_ids,
            token_ids=completion.token_ids,
            text=completion.text,
        )
        for prompt, completion in zip(SMOKE_PROMPTS, runs[0], strict=True)
    )
    return SmokeResult(served_model=served_name, root=root, version=version, samples=samples)
