"""The strict sampler against servers that misbehave on purpose.

Real vLLM cannot be made to fail on cue, so here the sampler (:func:`detserve.sampling.sample`)
talks to a real HTTP server in a thread that answers as vLLM does (``/v1/models``, ``/version``,
``/v1/completions`` with ``token_ids`` and ``prompt_token_ids``) until a test tells it to fail,
and to a fake container engine that reports the profile's own container. Every failure must
raise the documented error with its exit code and leave nothing at either output path, not even
a ``.partial`` temporary file.

The retry policy tested is the one ``detserve/runtime/vllm_client.py`` documents: at most four
attempts, waiting 0.5 s, 1 s and 2 s; 5xx and timeouts retried, 4xx and malformed 2xx never.
The client's ``sleep`` is recorded instead of slept (and, for the timeout, its timeout is short):
what is tested is how many requests were sent and how long the client asked to wait between them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from detserve import identity_watch, sampling, snapshot_state, verified
from detserve.errors import (
    ContainerError,
    DetserveError,
    PinMismatch,
    ServerError,
    SnapshotMismatch,
)
from detserve.profile import LoadedProfile, load_profile
from detserve.prompts import PromptBundle, load_bundle
from detserve.runlog import validate_run_log
from detserve.runtime.container_spec import ContainerSpec, build_container_spec, engine_args
from detserve.runtime.docker_engine import ContainerInfo, DockerEngine, ImageInfo
from detserve.runtime.vllm_client import VllmServer
from detserve.sampling import SampleRequest, SampleSummary, sample
from detserve.snapshot import build_manifest

from .committed import BUNDLE_DIR, BUNDLE_PIN, CliRunner, TinyWorkspace
from .containers import faithful_container, pinned_image
from .fake_http import Answer, serving
from .placement_answers import answer_to

IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a" * 64
SERVED_NAME = "tiny-llama"
N_PROMPTS = 4
MAX_TOKENS = 6
EXIT_VERIFICATION, EXIT_ENVIRONMENT = 1, 3

# --- a server that answers as vLLM does, until told otherwise -----------------------------------

#: (completion request number from 1, request body) -> an answer that replaces the normal one
Fault = Callable[[int, dict[str, Any]], "Answer | None"]


@dataclass
class FakeVllm:
    """What the fake server knows (the bundle's prompts) and what it was asked."""

    n_tokens: dict[str, int]
    models: list[dict[str, Any]] = field(
        default_factory=lambda: [{"id": SERVED_NAME, "root": "detserve/tiny-llama"}]
    )
    fault: Fault | None = None
    completions: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """A well-formed answer: the prompt's pinned length, tokens derived from the prompt."""
        prompt = body["prompt"]
        seed = hashlib.sha256(prompt.encode()).digest()
        tokens = [seed[i] + 3 for i in range(body["max_tokens"])]
        choice: dict[str, Any] = {
            "index": 0,
            "text": "".join(f" t{token}" for token in tokens),
            "finish_reason": "length",
            "token_ids": tokens,
            "prompt_token_ids": list(range(1, self.n_tokens[prompt] + 1)),
            "logprobs": None,
        }
        if body.get("logprobs") is not None:
            choice["logprobs"] = {
                "tokens": [f" t{token}" for token in tokens],
                "token_logprobs": [-token / 64 for token in tokens],
                "top_logprobs": [{f" t{token}": -token / 64} for token in tokens],
            }
        return {"id": "cmpl-1", "model": body["model"], "choices": [choice]}

    def answer(self, method: str, path: str, body: dict[str, Any] | None) -> Answer:
        if method == "GET" and path == "/v1/models":
            return Answer(body={"object": "list", "data": self.models})
        if method == "GET" and path == "/version":
            return Answer(body={"version": "0.32.0"})
        if method == "POST" and path == "/v1/completions" and body is not None:
            with self.lock:
                self.completions.append(body)
                number = len(self.completions)
            replaced = self.fault(number, body) if self.fault is not None else None
            return replaced or Answer(body=self.completion(body))
        return Answer(404, {"error": f"no route {method} {path}"})


# --- a container engine that holds the profile's container --------------------------------------


class FakeEngine:
    """The profile's container, running with its pins; ``restart`` gives it another lifetime."""

    def __init__(self, container: ContainerInfo, image: ImageInfo) -> None:
        self.container = container
        self.image = image
        self.gone = False
        #: the CPU layouts asked of the container, in order ("place", "release")
        self.layouts: list[str] = []

    def image_by_id(self, image_id: str) -> ImageInfo:
        assert image_id == self.image.id
        return self.image

    def restart(self) -> None:
        self.container = dataclasses.replace(
            self.container, started_at="2030-01-01T00:00:00.000000000Z"
        )

    def find(self, name: str) -> ContainerInfo | None:
        return self.container if name == self.container.name and not self.gone else None

    def inspect(self, container_id: str) -> ContainerInfo:
        if self.gone or container_id != self.container.id:
            raise ContainerError(f"container {container_id[:12]} no longer exists")
        return self.container

    def logs(self, container_id: str, tail: int) -> list[str]:
        return ["(fake engine)"]

    def exec_python(self, container_id: str, python: str, code: str) -> tuple[int, bytes]:
        """Only a placement script (the profile's ``runtime.cpu_placement``), answered as vLLM's
        CPU container answers it."""
        self.inspect(container_id)
        layout, answer = answer_to(code)
        self.layouts.append(layout)
        return answer

    # The sampler never starts, stops or pulls anything.
    def ensure_image(self, image: str) -> ImageInfo:
        raise AssertionError("the sampler pulled an image")

    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        raise AssertionError("the sampler started a container")

    def stop_and_remove(self, container_id: str) -> None:
        raise AssertionError("the sampler stopped a container")

    def follow_logs(self, container_id: str, tail: int) -> Iterator[str]:
        raise AssertionError("the sampler followed logs")


# --- fixtures -----------------------------------------------------------------------------------


@dataclass
class Rig:
    """A pinned profile on a copy of the tiny model, its server, engine and output paths."""

    loaded: LoadedProfile
    bundle: PromptBundle
    fake: FakeVllm
    engine: FakeEngine
    out: Path
    sleeps: list[float]
    workspace: TinyWorkspace

    def request(self, name: str = "run", *, logprobs: int | None = 1) -> SampleRequest:
        return SampleRequest(
            n_prompts=N_PROMPTS,
            max_tokens=MAX_TOKENS,
            logprobs=logprobs,
            run_log_output=self.out / f"{name}.runlog.jsonl",
            sidecar_output=self.out / f"{name}.sidecar.json",
        )

    def sample(
        self,
        request: SampleRequest | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SampleSummary:
        return sample(
            self.loaded,
            self.bundle,
            request or self.request(),
            engine=self.engine,
            progress=progress,
        )

    def fails(
        self,
        error: type[DetserveError],
        exit_code: int,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> DetserveError:
        """Sample, expect ``error``, and check that nothing was left in the output folder."""
        request = self.request()
        with pytest.raises(error) as raised:
            self.sample(request, progress)
        assert raised.value.exit_code == exit_code
        assert not request.run_log_output.exists()
        assert not request.sidecar_output.exists()
        leftovers = sorted(p.name for p in self.out.iterdir()) if self.out.exists() else []
        assert leftovers == [], f"left behind: {leftovers}"
        return raised.value


@pytest.fixture
def rig(
    tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rig]:
    bundle = load_bundle(BUNDLE_DIR, BUNDLE_PIN)
    fake = FakeVllm(n_tokens={p.prompt: p.n_tokens for p in bundle.prompts if p.prompt is not None})
    with serving(fake.answer) as port:
        yield from _rig(tiny_workspace, tmp_path, monkeypatch, bundle, fake, port)


def _rig(
    tiny_workspace: TinyWorkspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bundle: PromptBundle,
    fake: FakeVllm,
    port: int,
) -> Iterator[Rig]:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = IMAGE
    document["runtime"]["port"] = port
    tiny_workspace.config.write_text(json.dumps(document), encoding="utf-8")
    loaded = load_profile(tiny_workspace.config)
    spec = build_container_spec(loaded)
    container = faithful_container(spec)
    sleeps: list[float] = []
    # The sampler's own client, with the documented retry policy; its waits are recorded.
    monkeypatch.setattr(verified, "VllmServer", functools.partial(VllmServer, sleep=sleeps.append))
    yield Rig(
        loaded=loaded,
        bundle=bundle,
        fake=fake,
        engine=FakeEngine(container, pinned_image(spec)),
        out=tmp_path / "out",
        sleeps=sleeps,
        workspace=tiny_workspace,
    )


def on_request(number: int, answer: Answer, *, every_attempt: bool = True) -> Fault:
    """Answer completion request ``number`` (and, by default, every later one) with ``answer``."""

    def fault(received: int, body: dict[str, Any]) -> Answer | None:
        if received == number or (every_attempt and received > number):
            return answer
        return None

    return fault


# --- the baseline -------------------------------------------------------------------------------


def test_a_well_behaved_server_gives_a_valid_run_log(rig: Rig) -> None:
    summary = rig.sample()
    checked = validate_run_log(summary.run_log)
    assert checked.sha256 == summary.run_log_sha256
    assert checked.n_samples == N_PROMPTS
    pins = checked.header.pins
    assert pins.image == IMAGE
    assert pins.served_model_name == SERVED_NAME
    assert pins.vllm_version == "0.32.0"
    assert pins.prompt_bundle_sha256 == rig.bundle.sha256
    assert list(pins.engine_args) == engine_args(rig.loaded)
    # the container's whole configuration that decides tokens is pinned; names are not
    assert pins.environment == {
        "HF_HOME": "/hf-home",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    assert pins.entrypoint is None
    assert (pins.device.kind, pins.device.gpus) == ("cpu", 0)
    assert "profile_name" not in pins.model_dump()
    sidecar = json.loads(summary.sidecar.read_text(encoding="utf-8"))
    assert sidecar["run_log_sha256"] == summary.run_log_sha256
    assert sidecar["container_id"] == rig.engine.container.id
    # greedy, the profile's seed, the pinned name, one request per prompt, nothing retried
    assert [body["prompt"] for body in rig.fake.completions] == [
        p.prompt for p in rig.bundle.prompts[:N_PROMPTS]
    ]
    assert {(b["temperature"], b["seed"], b["model"], b["n"]) for b in rig.fake.completions} == {
        (0, 0, SERVED_NAME, 1)
    }
    assert rig.sleeps == []


# --- HTTP failures and the retry policy ---------------------------------------------------------


def test_http_500_on_the_third_request_fails_after_the_documented_retries(rig: Rig) -> None:
    rig.fake.fault = on_request(3, Answer(500, b"engine dead"))
    error = rig.fails(ServerError, EXIT_ENVIRONMENT)
    assert "HTTP 500: engine dead (after 4 attempts)" in error.message
    # two good requests, then the third sent 1 + 3 times, waiting 0.5 s, 1 s, 2 s between
    assert len(rig.fake.completions) == 2 + 4
    assert rig.sleeps == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_transient_5xx_is_retried_and_changes_nothing(rig: Rig, status: int) -> None:
    reference = rig.sample(rig.request("reference"))
    rig.fake.completions.clear()
    rig.fake.fault = on_request(3, Answer(status, b"busy"), every_attempt=False)
    retried = rig.sample(rig.request("retried"))
    assert len(rig.fake.completions) == N_PROMPTS + 1
    assert rig.sleeps == [0.5]
    # a greedy request with a fixed seed is safe to repeat: the log is the same bytes
    assert retried.run_log.read_bytes() == reference.run_log.read_bytes()


@pytest.mark.parametrize("status", [400, 404, 422])
def test_a_4xx_is_never_retried(rig: Rig, status: int) -> None:
    rig.fake.fault = on_request(2, Answer(status, {"message": "bad request"}))
    error = rig.fails(ServerError, EXIT_ENVIRONMENT)
    assert f"was refused: HTTP {status}" in error.message
    assert len(rig.fake.completions) == 2
    assert rig.sleeps == []


def test_a_timeout_is_retried_then_fails(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        verified,
        "VllmServer",
        functools.partial(VllmServer, timeout_s=0.3, sleep=rig.sleeps.append),
    )
    rig.fake.fault = on_request(2, Answer(body=b"{}", delay_s=1.5))
    error = rig.fails(ServerError, EXIT_ENVIRONMENT)
    assert "timed out (ReadTimeout) (after 4 attempts)" in error.message
    assert len(rig.fake.completions) == 1 + 4
    assert rig.sleeps == [0.5, 1.0, 2.0]


def test_malformed_json_is_never_retried(rig: Rig) -> None:
    rig.fake.fault = on_request(3, Answer(body=b'{"choices": [ oops'))
    error = rig.fails(ServerError, EXIT_ENVIRONMENT)
    assert "malformed response from POST" in error.message
    assert "not JSON" in error.message
    assert len(rig.fake.completions) == 3
    assert rig.sleeps == []


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("token_ids", "choices.0.token_ids: Field required"),
        ("prompt_token_ids", "no prompt_token_ids"),
    ],
)
def test_a_response_without_token_ids_is_refused(rig: Rig, missing: str, expected: str) -> None:
    def without(number: int, body: dict[str, Any]) -> Answer | None:
        if number != 2:
            return None
        answer = rig.fake.completion(body)
        del answer["choices"][0][missing]
        return Answer(body=answer)

    rig.fake.fault = without
    error = rig.fails(ServerError, EXIT_ENVIRONMENT)
    assert expected in error.diagnostics()
    assert len(rig.fake.completions) == 2
    assert rig.sleeps == []


def test_logprobs_asked_and_none_given_is_refused(rig: Rig) -> None:
    def no_logprobs(number: int, body: dict[str, Any]) -> Answer | None:
        answer = rig.fake.completion(body)
        answer["choices"][0]["logprobs"] = None
        return Answer(body=answer)

    rig.fake.fault = no_logprobs
    error = rig.fails(ServerError, EXIT_ENVIRONMENT)
    assert "logprobs were asked, none came" in error.message


# --- a server that is not the pinned one --------------------------------------------------------


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        (
            [{"id": "other-model", "root": "detserve/tiny-llama"}],
            "does not serve 'tiny-llama'",
        ),
        (
            [{"id": SERVED_NAME, "root": "someone/other-model"}],
            "serves 'tiny-llama' from 'someone/other-model', not from the pinned model",
        ),
        ([{"id": SERVED_NAME, "root": None}], "from None, not from the pinned model"),
    ],
)
def test_another_model_is_refused_before_any_completion(
    rig: Rig, models: list[dict[str, Any]], expected: str
) -> None:
    rig.fake.models = models
    error = rig.fails(PinMismatch, EXIT_VERIFICATION)
    assert expected in error.message
    assert rig.fake.completions == []


def test_a_tokenizer_mismatch_fails_the_run(rig: Rig) -> None:
    prompt = rig.bundle.prompts[1]

    def one_token_more(number: int, body: dict[str, Any]) -> Answer | None:
        if number != 2:
            return None
        answer = rig.fake.completion(body)
        answer["choices"][0]["prompt_token_ids"].append(2)
        return Answer(body=answer)

    rig.fake.fault = one_token_more
    error = rig.fails(PinMismatch, EXIT_VERIFICATION)
    assert error.message == (
        f"sample 1 ({prompt.id}, completion): the server tokenized the prompt into "
        f"{prompt.n_tokens + 1} tokens; the pinned tokenizer gives {prompt.n_tokens}"
    )
    assert len(rig.fake.completions) == 2


# --- the container and the snapshot during the run ----------------------------------------------


def test_a_container_restarted_during_the_run_voids_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole run is shorter than the interval: with it at 0 the check between samples runs
    # after every sample, and it is that check, not the one before the commit, that stops the run.
    monkeypatch.setattr(identity_watch, "IDENTITY_CHECK_INTERVAL_S", 0.0)

    def restart_after_first(done: int, tokens: int) -> None:
        if done == 1:
            rig.engine.restart()

    error = rig.fails(ContainerError, EXIT_ENVIRONMENT, progress=restart_after_first)
    assert "the server changed during the run" in error.message
    assert any("2030-01-01" in detail for detail in error.details)
    # restarted after sample 1: sample 2 is requested, its check fails, samples 3 and 4 are not
    assert len(rig.fake.completions) == 2


def test_a_container_gone_during_the_run_voids_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity_watch, "IDENTITY_CHECK_INTERVAL_S", 0.0)

    def remove_after_first(done: int, tokens: int) -> None:
        if done == 1:
            rig.engine.gone = True

    error = rig.fails(ContainerError, EXIT_ENVIRONMENT, progress=remove_after_first)
    assert "is gone; no run log was written" in error.message
    assert len(rig.fake.completions) == 2


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(FakeEngine.restart, "the server changed during the run", id="restarted"),
        pytest.param(
            lambda engine: setattr(engine, "gone", True),
            "is gone; no run log was written",
            id="gone",
        ),
    ],
)
def test_a_container_changed_after_the_last_sample_is_caught_before_the_commit(
    rig: Rig,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[FakeEngine], None],
    expected: str,
) -> None:
    # Checked after every sample, and still: a change after the last sample's check is caught
    # only by the check that runs before the run log is committed.
    monkeypatch.setattr(identity_watch, "IDENTITY_CHECK_INTERVAL_S", 0.0)

    def change_after_last(done: int, tokens: int) -> None:
        if done == N_PROMPTS:
            change(rig.engine)

    error = rig.fails(ContainerError, EXIT_ENVIRONMENT, progress=change_after_last)
    assert expected in error.message
    assert len(rig.fake.completions) == N_PROMPTS


def test_a_snapshot_changed_during_the_run_voids_it(rig: Rig) -> None:
    weights = rig.workspace.blob_of("model.safetensors")

    def flip_after_first(done: int, tokens: int) -> None:
        if done == 1:
            data = bytearray(weights.read_bytes())
            data[-1] ^= 0x01
            weights.write_bytes(bytes(data))

    error = rig.fails(SnapshotMismatch, EXIT_VERIFICATION, progress=flip_after_first)
    assert "changed: ./model.safetensors" in error.diagnostics()
    assert len(rig.fake.completions) == N_PROMPTS  # found at the end, before the commit


def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the copied snapshot's last change age past a (shortened) racy margin, so that a full
    pass leaves a record (detserve.snapshot_state)."""
    monkeypatch.setattr(snapshot_state, "RACY_MARGIN_NS", 50_000_000)
    time.sleep(0.1)


def test_a_recorded_pass_vouches_for_the_snapshot_at_both_ends(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled(monkeypatch)
    first = rig.sample(rig.request("first"))
    assert [c.verified_by for c in first.snapshot_checks] == ["full pass", "record"]
    again = rig.sample(rig.request("again"))
    assert [c.verified_by for c in again.snapshot_checks] == ["record", "record"]
    full = rig.sample(dataclasses.replace(rig.request("full"), full_verify=True))
    assert [c.verified_by for c in full.snapshot_checks] == ["full pass", "full pass"]


def test_a_snapshot_changed_during_a_recorded_run_voids_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record holds at the start; the change is caught before the commit all the same."""
    settled(monkeypatch)
    first = rig.sample(rig.request("first"))
    assert first.snapshot_checks[-1].verified_by == "record"
    first.run_log.unlink()
    first.sidecar.unlink()
    weights = rig.workspace.blob_of("model.safetensors")

    def flip_after_first(done: int, tokens: int) -> None:
        if done == 1:
            data = bytearray(weights.read_bytes())
            data[-1] ^= 0x01
            weights.write_bytes(bytes(data))

    error = rig.fails(SnapshotMismatch, EXIT_VERIFICATION, progress=flip_after_first)
    assert "changed: ./model.safetensors" in error.diagnostics()


def test_a_manifest_changed_during_the_run_voids_it(rig: Rig) -> None:
    """Weights and manifest swapped together mid-run: the snapshot verifies at both ends, but
    against two manifests; the log could name only one of them."""
    weights = rig.workspace.blob_of("model.safetensors")

    def swap_after_first(done: int, tokens: int) -> None:
        if done == 1:
            data = bytearray(weights.read_bytes())
            data[-1] ^= 0x01
            weights.write_bytes(bytes(data))
            manifest = build_manifest(rig.loaded.snapshot_dir)
            rig.loaded.manifest_path.write_bytes(manifest.to_bytes())

    error = rig.fails(PinMismatch, EXIT_VERIFICATION, progress=swap_after_first)
    assert error.message.startswith(f"the manifest {rig.loaded.manifest_path} changed during")
    assert len(rig.fake.completions) == N_PROMPTS


def test_the_manifest_is_read_at_the_start_and_at_the_end_only(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One read before the first request (the container is compared with those very bytes) and
    one before the commit; a third read could see other bytes than the ones verified."""
    from detserve import manifest, snapshot, snapshot_state
    from detserve.runtime import container_spec

    reads: list[Path] = []
    original = manifest.read_manifest_bytes

    def counted(path: Path) -> bytes:
        reads.append(path)
        return original(path)

    monkeypatch.setattr(snapshot, "read_manifest_bytes", counted)
    monkeypatch.setattr(snapshot_state, "read_manifest_bytes", counted)
    monkeypatch.setattr(container_spec, "read_manifest_bytes", counted)
    rig.sample()
    assert reads == [rig.loaded.manifest_path, rig.loaded.manifest_path]


def test_no_container_is_an_environment_error_before_any_request(rig: Rig) -> None:
    rig.engine.gone = True
    error = rig.fails(ContainerError, EXIT_ENVIRONMENT)
    assert error.message == f"no container detserve-{rig.loaded.name} to sample from"
    assert rig.fake.completions == []


def test_no_container_is_named_for_sampling_where_the_profile_places_per_workload(
    rig: Rig,
) -> None:
    """The workspace's profile chooses CPU placement per workload, so the command lays the
    container out first (a release at concurrency 1): a container that is not there is refused
    there, in the sample's words, before any exec or request."""
    from detserve.sampling_session import sample_profile

    assert rig.loaded.profile.runtime.cpu_placement == "engine-core-with-worker-when-concurrent"
    rig.engine.gone = True
    request = rig.request()
    with pytest.raises(ContainerError) as raised:
        sample_profile(
            rig.loaded, rig.bundle, request, observer=None, engine=rig.engine, docker_host=None
        )
    assert raised.value.message == f"no container detserve-{rig.loaded.name} to sample from"
    assert raised.value.exit_code == EXIT_ENVIRONMENT
    assert rig.engine.layouts == []
    assert rig.fake.completions == []
    assert not request.run_log_output.exists()


def test_ctrl_c_during_the_run_leaves_nothing(rig: Rig) -> None:
    request = rig.request()

    def interrupt(done: int, tokens: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rig.sample(request, interrupt)
    assert not request.run_log_output.exists()
    assert not request.sidecar_output.exists()
    assert sorted(rig.out.iterdir()) == []


def test_ctrl_c_in_the_cli_exits_3_and_says_nothing_was_written(
    rig: Rig, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``main``: Typer turns Ctrl-C into exit 130 unless detserve maps it (it must)."""
    real_sample = sampling.sample

    def interrupted_sample(*args: Any, progress: Any = None, **kwargs: Any) -> SampleSummary:
        def interrupt(done: int, tokens: int) -> None:
            progress(done, tokens)
            if done == 2:
                raise KeyboardInterrupt

        return real_sample(*args, progress=interrupt, **kwargs)

    monkeypatch.setattr(sampling, "sample", interrupted_sample)
    monkeypatch.setattr(DockerEngine, "from_env", classmethod(lambda cls: rig.engine))
    request = rig.request()
    ran = cli(
        "sample",
        "--config",
        rig.loaded.path,
        "--bundle",
        BUNDLE_DIR,
        "--bundle-pin",
        BUNDLE_PIN,
        "--n-prompts",
        str(N_PROMPTS),
        "--run-log-output",
        request.run_log_output,
        "--output",
        request.sidecar_output,
    )
    assert ran.code == EXIT_ENVIRONMENT, ran
    assert "detserve: interrupted; nothing was written" in ran.err
    assert len(rig.fake.completions) == 2
    assert sorted(rig.out.iterdir()) == []
