"""``detserve check`` and certified concurrency against in-process servers that vary on purpose.

The real tiny CPU engine gives the same tokens at every concurrency (tests/integration/
test_check_real.py), so variance is made here: a real threaded HTTP server answering as vLLM
does (the one of test_sampling_faults.py), whose tokens depend on whether a request shared the
server with others (batch variance), on how often a prompt was asked (run variance), or whose
logprobs move by one ulp in company (logprob variance). Each verdict must be produced, with the
right first divergence, and each defence of certified sampling must refuse what it exists to
refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from detserve import api, sampling
from detserve.canonical import canonical_bytes
from detserve.certificate import (
    PAYLOAD_TYPE,
    Certificate,
    CertificateError,
    CertificateMismatch,
    CertificateUnsupported,
    Measurement,
    certificate_envelope,
    coverage_differences,
)
from detserve.diagnosis.measure import PassKey
from detserve.envelope import SignatureError, parse_envelope
from detserve.errors import DetserveError, Divergence, UsageError
from detserve.fingerprint import ContainerFacts, EngineVersion
from detserve.gateway.verification import Verified, require_gateway_coverage
from detserve.inflight import Timed, max_overlap, run_in_flight
from detserve.keys import AttestationKeyError, generate_key_pair, load_public_key, load_signer
from detserve.profile import LoadedProfile
from detserve.prompts import load_bundle
from detserve.runlog import read_run_log
from detserve.runlog.models import EnginePins

from .committed import BUNDLE_DIR, BUNDLE_PIN, CliRunner
from .conftest import TinyWorkspace
from .fake_http import serving
from .test_sampling_faults import FakeVllm, Rig, _rig

N_PROMPTS = 4
MAX_TOKENS = 6
PERTURBED_TOKEN = 2


@dataclass
class VaryingVllm(FakeVllm):
    """A fake vLLM whose answers vary in one of the ways a real engine can."""

    mode: str = "none"  # none, batch, run, logprob, null-logprob
    #: how long a request waits for company (an engine's scheduling window), then how long it
    #: stays once it has some, so that the rest of its batch finds it there
    window_s: float = 0.15
    #: the window where company changes the answer: on a loaded machine a worker can start
    #: 0.15 s late, be alone, and read as run variance (a lone request waits it out)
    varying_window_s: float = 0.6
    linger_s: float = 0.05
    in_flight: int = 0
    most_in_flight: int = 0
    asked: dict[str, int] = field(default_factory=dict)
    arrivals: threading.Condition = field(default_factory=threading.Condition)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        with self.arrivals:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.asked[prompt] = self.asked.get(prompt, 0) + 1
            times = self.asked[prompt]
            self.arrivals.notify_all()
            window = self.varying_window_s if self.mode in ("batch", "logprob") else self.window_s
            in_company = self.arrivals.wait_for(lambda: self.in_flight > 1, window)
        try:
            if in_company:
                time.sleep(self.linger_s)
            answer = super().completion(body)
        finally:
            with self.arrivals:
                self.in_flight -= 1
        choice = answer["choices"][0]
        tokens = choice["token_ids"]
        if self.mode == "batch" and in_company:
            tokens[PERTURBED_TOKEN] += 1
        # the second prompt of the bundle changes on its second asking: one run differs
        second = sorted(self.n_tokens, key=list(self.n_tokens).index)[1]
        if self.mode == "run" and prompt == second and times == 2:
            tokens[PERTURBED_TOKEN + 1] += 1
        choice["text"] = "".join(f" t{token}" for token in tokens)
        logprobs = choice.get("logprobs")
        if logprobs is not None:
            logprobs["tokens"] = [f" t{token}" for token in tokens]
            if self.mode == "logprob" and in_company:
                value = logprobs["token_logprobs"][1]
                logprobs["token_logprobs"][1] = float.fromhex(float(value).hex()) * (1 + 2**-52)
            if self.mode == "null-logprob":
                logprobs["token_logprobs"][0] = None
        return answer


def varying_rig(
    tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rig]:
    """The tiny workspace in front of a fake vLLM that varies on request (a fixture's
    ``yield from``)."""
    bundle = load_bundle(BUNDLE_DIR, BUNDLE_PIN)
    fake = VaryingVllm(n_tokens={p.prompt: p.n_tokens for p in bundle.prompts})
    with serving(fake.answer) as port:
        yield from _rig(tiny_workspace, tmp_path, monkeypatch, bundle, fake, port)


@pytest.fixture
def varying(
    tiny_workspace: TinyWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rig]:
    yield from varying_rig(tiny_workspace, tmp_path, monkeypatch)


def _fake(rig: Rig) -> VaryingVllm:
    assert isinstance(rig.fake, VaryingVllm)
    return rig.fake


def run_check(rig: Rig, name: str = "check", **options: Any) -> api.CheckOutcome:
    settings: dict[str, Any] = {
        "tier": 1,
        "runs": 2,
        "concurrency": (1, 4),
        "n_prompts": N_PROMPTS,
        "max_tokens": MAX_TOKENS,
    }
    settings.update(options)
    return api.check(
        rig.loaded,
        output_dir=rig.out / name,
        bundle=BUNDLE_DIR,
        bundle_pin=BUNDLE_PIN,
        engine=rig.engine,
        **settings,
    )


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- requests in flight ------------------------------------------------------------------------


def test_results_come_back_in_index_order_whatever_order_they_complete_in() -> None:
    seen: list[int] = []

    def call(index: int, delay: float) -> int:
        time.sleep(delay)
        return index

    delays = [0.08, 0.01, 0.05, 0.0, 0.03, 0.02]
    results = run_in_flight(delays, call, concurrency=3, on_result=lambda t: seen.append(t.result))
    assert seen == list(range(len(delays)))
    assert [t.index for t in results] == seen
    assert max_overlap([(t.started, t.finished) for t in results]) == 3


def test_a_failed_call_stops_the_pass_and_is_raised() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def call(index: int, _item: int) -> int:
        with lock:
            started.append(index)
        if index == 1:
            raise RuntimeError("boom")
        time.sleep(0.05)
        return index

    with pytest.raises(RuntimeError, match="boom"):
        run_in_flight(list(range(40)), call, concurrency=2, on_result=lambda _t: None)
    assert len(started) < 10  # no new item after the failure


def test_max_overlap_counts_touching_spans_as_apart() -> None:
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([(0, 3), (1, 2), (1.5, 4)]) == 3


# --- verdicts ----------------------------------------------------------------------------------


def test_a_batch_invariant_server_passes_and_is_certified(varying: Rig) -> None:
    outcome = run_check(varying, tier=2, logprobs=1)
    assert outcome.verdict == "PASS"
    assert outcome.passed
    assert outcome.error() is None
    assert _fake(varying).most_in_flight == 4  # truly in flight at once
    certificate = outcome.pack.certificate
    assert certificate is not None
    assert certificate.concurrency_levels == (1, 4)
    assert certificate.tier == 2
    assert certificate.measured.n_prompts == N_PROMPTS
    written = parse_envelope((outcome.pack.directory / "certificate.json").read_bytes(), "c")
    assert written.payload_type == PAYLOAD_TYPE
    assert written.payload == certificate.payload()
    assert written.signatures == ()  # no --signing-key: unsigned
    assert outcome.pack.signed_by is None
    names = sorted(str(p.relative_to(outcome.pack.directory)) for p in outcome.pack.files)
    assert names == sorted(
        [
            "certificate.json",
            "determinism_applied.json",
            "diffs/first_divergence.json",
            "env.json",
            "report.html",
            "report.json",
            "report.txt",
            "run_config.json",
            "trace.jsonl",
        ]
    )
    header, *trace = [json.loads(line) for line in (outcome.pack.directory / "trace.jsonl").open()]
    assert header["pins"] == certificate.pins.model_dump(mode="json")
    assert header["check"]["concurrency_levels"] == [1, 4]
    # 1: 2 runs; 4: 2 runs and one shuffled
    assert len(trace) == N_PROMPTS * 5
    assert {(r["concurrency"], r["run"], r["order"]) for r in trace} == {
        (1, 1, "bundle"),
        (1, 2, "bundle"),
        (4, 1, "bundle"),
        (4, 2, "bundle"),
        (4, 1, "shuffled"),
    }
    shuffled = [r for r in trace if r["order"] == "shuffled"]
    assert [r["prompt_index"] for r in shuffled] == list(range(N_PROMPTS))
    assert [r["position"] for r in shuffled] != list(range(N_PROMPTS))  # other neighbours


def test_batch_variance_is_found_with_its_first_divergence(varying: Rig) -> None:
    _fake(varying).mode = "batch"
    outcome = run_check(varying)
    assert outcome.verdict == "BATCH_VARIANCE"
    assert not outcome.passed
    error = outcome.error()
    assert isinstance(error, Divergence)
    assert error.exit_code == 1
    assert outcome.pack.certificate is None
    assert not (outcome.pack.directory / "certificate.json").exists()
    diffs = _json(outcome.pack.directory / "diffs" / "first_divergence.json")
    assert len(diffs) == N_PROMPTS
    first = diffs[0]
    assert (first["concurrency"], first["run"], first["order"]) == (4, 1, "bundle")
    assert first["token_index"] == PERTURBED_TOKEN
    assert first["kind"] == "tokens"
    assert first["baseline_tokens"][PERTURBED_TOKEN] + 1 == first["other_tokens"][PERTURBED_TOKEN]
    assert first["baseline_tokens"][:PERTURBED_TOKEN] == first["other_tokens"][:PERTURBED_TOKEN]
    assert first["baseline_text"] != first["other_text"]
    report = _json(outcome.pack.directory / "report.json")
    level4 = report["levels"][1]
    assert level4["runs_identical"] is True
    assert level4["matches_baseline"] is False
    assert level4["first_divergent_token"] == [PERTURBED_TOKEN] * N_PROMPTS


def test_run_variance_is_found_at_concurrency_1(varying: Rig) -> None:
    _fake(varying).mode = "run"
    outcome = run_check(varying)
    assert outcome.verdict == "RUN_VARIANCE"
    assert "1" in outcome.result.diagnosis.reason
    diffs = _json(outcome.pack.directory / "diffs" / "first_divergence.json")
    assert [d["prompt_index"] for d in diffs] == [1]
    assert (diffs[0]["concurrency"], diffs[0]["run"]) == (1, 2)
    assert diffs[0]["token_index"] == PERTURBED_TOKEN + 1


def test_logprob_variance_is_tier_2_only(varying: Rig) -> None:
    _fake(varying).mode = "logprob"
    outcome = run_check(varying, tier=2, logprobs=1)
    assert outcome.verdict == "LOGPROB_VARIANCE"
    diffs = _json(outcome.pack.directory / "diffs" / "first_divergence.json")
    assert diffs[0]["kind"] == "logprobs"
    assert diffs[0]["token_index"] == 1
    assert diffs[0]["baseline_logprob"] != diffs[0]["other_logprob"]
    tier1 = run_check(varying, "tier1", tier=1, logprobs=1)
    assert tier1.verdict == "PASS"
    assert "logprobs differ" in tier1.result.diagnosis.reason


def test_logprobs_the_server_did_not_give_are_named(varying: Rig) -> None:
    _fake(varying).mode = "null-logprob"
    outcome = run_check(varying, tier=2, logprobs=1)
    assert outcome.verdict == "LOGPROBS_UNAVAILABLE"
    assert "returned null as the logprob of token 0" in outcome.result.diagnosis.reason


def test_tier_0_writes_the_pack_and_promises_nothing(varying: Rig) -> None:
    _fake(varying).mode = "batch"
    outcome = run_check(varying, tier=0, runs=1)
    assert outcome.verdict == "BATCH_VARIANCE"
    assert outcome.passed
    assert outcome.pack.certificate is None


def test_a_restarted_container_is_env_changed_and_fails(varying: Rig) -> None:
    def restart(key: PassKey) -> None:
        if key == PassKey(4, 1, "bundle"):
            varying.engine.restart()

    outcome = run_check(varying, on_pass=restart)
    assert outcome.verdict == "ENV_CHANGED"
    assert not outcome.passed
    assert "the server changed during the run" in outcome.result.diagnosis.reason
    assert outcome.pack.certificate is None


class FakeProbe:
    """Fingerprint facts; the torch version changes after ``change_after`` calls."""

    def __init__(self, change_after: int | None = None) -> None:
        self.calls = 0
        self.change_after = change_after

    def engine_version(self) -> EngineVersion:
        return EngineVersion("27.0", "1.47")

    def container_facts(self, loaded: LoadedProfile) -> ContainerFacts:
        self.calls += 1
        torch = "2.9.0" if self.change_after is None or self.calls <= self.change_after else "2.9.1"
        return ContainerFacts(
            image_id="sha256:" + "b" * 64,
            environment={"VLLM_CPU_KVCACHE_SPACE": "1", "PATH": "/usr/bin"},
            versions={"python": "3.11", "vllm": "0.32.0", "torch": torch},
        )


def test_a_changed_environment_is_env_changed(varying: Rig) -> None:
    outcome = run_check(varying, probe=FakeProbe(change_after=1))
    assert outcome.verdict == "ENV_CHANGED"
    assert "fingerprint changed" in outcome.result.diagnosis.reason
    env = _json(outcome.pack.directory / "env.json")
    assert env["fingerprint"]["container"]["torch_version"] == "2.9.0"
    assert env["fingerprint"]["container"]["numerics_environment"] == {
        "VLLM_CPU_KVCACHE_SPACE": "1"
    }


def test_the_same_check_writes_the_same_bytes_but_for_the_volatile_section(varying: Rig) -> None:
    first = run_check(varying, "one", tier=2, logprobs=1, probe=FakeProbe())
    second = run_check(varying, "two", tier=2, logprobs=1, probe=FakeProbe())
    for name in ("trace.jsonl", "certificate.json", "env.json", "determinism_applied.json"):
        assert (first.pack.directory / name).read_bytes() == (
            second.pack.directory / name
        ).read_bytes(), name
    one, two = (_json(o.pack.directory / "report.json") for o in (first, second))
    assert one.pop("volatile") != two.pop("volatile")
    assert one == two


def test_determinism_applied_names_every_control_and_who_set_it(varying: Rig) -> None:
    outcome = run_check(varying)
    controls = {
        c["control"]: c
        for c in _json(outcome.pack.directory / "determinism_applied.json")["controls"]
    }
    assert controls["prefix caching"]["value"].startswith("off")
    assert controls["seed"]["value"] == "0"
    assert controls["batch-invariant kernels (VLLM_BATCH_INVARIANT)"]["value"] == "not set"
    assert controls["environment VLLM_CPU_KVCACHE_SPACE"]["value"] == "1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": (1,)}, "at least one level above 1"),
        ({"runs": 1}, "needs --runs 2"),
        ({"tier": 3}, "expected 0, 1 or 2"),
        ({"max_tokens": 100_000}, rf"{N_PROMPTS} prompt\(s\) plus --max-tokens 100000 exceed"),
    ],
    ids=["no-level-above-1", "one-run", "tier-3", "over-max-model-len"],
)
def test_a_bad_plan_is_refused_before_any_request(
    varying: Rig, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        run_check(varying, **options)
    assert varying.fake.completions == []


# --- certified sampling ------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


def _keys(rig: Rig, name: str = "operator") -> Keys:
    """The operator's key pair (made once per rig)."""
    private, public = rig.out / "keys" / f"{name}.key", rig.out / "keys" / f"{name}.pub"
    if not private.exists():
        generate_key_pair(rig.out / "keys", name=name)
    return Keys(private, public)


def _certify(rig: Rig, name: str = "certify", **options: Any) -> Path:
    options.setdefault("signing_key", _keys(rig).private)
    outcome = run_check(rig, name, **options)
    assert outcome.certificate is not None, outcome.result.diagnosis.reason
    return outcome.certificate


def _sample(rig: Rig, name: str, **options: Any) -> Path:
    if "certificate" in options:
        options.setdefault("certificate_key", _keys(rig).public)
    settings: dict[str, Any] = {"n_prompts": N_PROMPTS, "max_tokens": MAX_TOKENS, **options}
    summary = api.sample(
        rig.loaded,
        run_log=rig.out / f"{name}.runlog.jsonl",
        sidecar=rig.out / f"{name}.sidecar.json",
        bundle=BUNDLE_DIR,
        bundle_pin=BUNDLE_PIN,
        engine=rig.engine,
        **settings,
    )
    return summary.run_log


def _refused(rig: Rig, error: type[DetserveError], exit_code: int, **options: Any) -> DetserveError:
    """Sample at concurrency 4 with ``options``; expect ``error`` before any request and nothing
    written."""
    before = len(rig.fake.completions)
    options.setdefault("concurrency", 4)
    with pytest.raises(error) as raised:
        _sample(rig, "refused", **options)
    assert raised.value.exit_code == exit_code
    assert len(rig.fake.completions) == before
    assert not any(p.name.startswith("refused.") for p in rig.out.iterdir())
    return raised.value


def test_a_certified_concurrent_log_is_the_concurrency_1_bytes(varying: Rig) -> None:
    certificate = _certify(varying)
    one = _sample(varying, "c1")
    _fake(varying).most_in_flight = 0
    four = _sample(varying, "c4", concurrency=4, certificate=certificate, audit=0.5)
    assert four.read_bytes() == one.read_bytes()
    assert _fake(varying).most_in_flight == 4
    sidecar = _json(varying.out / "c4.sidecar.json")
    assert sidecar["concurrency"] == 4
    verified = api.verify_certificate(certificate, _keys(varying).public)
    assert sidecar["certificate_sha256"] == verified.sha256
    # the signer is the key that verified, its id computed from it
    assert sidecar["certificate_keyid"] == load_public_key(_keys(varying).public).keyid
    assert verified.keyid == sidecar["certificate_keyid"]
    assert len(sidecar["audit"]["indices"]) == 2
    header = next(iter(read_run_log(four)))
    assert "concurrency" not in header.model_dump()["sampling"]


def test_a_certified_sample_checks_its_request_and_certificate_once(
    varying: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # api.sample checks the request before the engine is asked; sampling must take that answer,
    # not verify the certificate (signature, trace, verdict again) a second time.
    certificate = _certify(varying)
    checks: list[Path] = []
    verifications: list[Path] = []
    real_check, real_verify = sampling.check_request, sampling.verify_certificate

    def check(loaded: Any, bundle: Any, request: sampling.SampleRequest) -> Any:
        checks.append(request.run_log_output)
        return real_check(loaded, bundle, request)

    def verify(path: Path, key: Path) -> Any:
        verifications.append(path)
        return real_verify(path, key)

    monkeypatch.setattr(sampling, "check_request", check)
    monkeypatch.setattr(sampling, "verify_certificate", verify)
    _sample(varying, "once", concurrency=4, certificate=certificate)
    assert (len(checks), verifications) == (1, [certificate])


def test_sampling_past_max_model_len_is_refused_before_any_request(varying: Rig) -> None:
    # The same budget check as `check`'s plan, and the same message.
    with pytest.raises(UsageError, match=r"prompt\(s\) plus --max-tokens 100000 exceed") as raised:
        api.sample(
            varying.loaded,
            run_log=varying.out / "long.runlog.jsonl",
            sidecar=varying.out / "long.sidecar.json",
            n_prompts=N_PROMPTS,
            max_tokens=100_000,
            bundle=BUNDLE_DIR,
            bundle_pin=BUNDLE_PIN,
            engine=varying.engine,
        )
    assert "max_model_len" in str(raised.value)
    assert varying.fake.completions == []


def test_concurrency_without_a_certificate_is_refused(varying: Rig) -> None:
    with pytest.raises(UsageError, match="--concurrency 4 is refused") as raised:
        _sample(varying, "x", concurrency=4)
    assert raised.value.exit_code == 2
    assert varying.fake.completions == []


def test_a_certificate_is_taken_only_with_the_key_that_verifies_it(varying: Rig) -> None:
    certificate = _certify(varying)
    error = _refused(varying, UsageError, 2, certificate=certificate, certificate_key=None)
    assert "--certificate needs --certificate-key PUB" in error.message
    error = _refused(varying, UsageError, 2, certificate_key=_keys(varying).public, concurrency=1)
    assert "--certificate-key verifies a --certificate" in error.message


def test_an_unsigned_certificate_is_refused_saying_so(varying: Rig) -> None:
    outcome = run_check(varying, "unsigned")  # no signing key
    assert outcome.certificate is not None
    assert outcome.pack.signed_by is None
    error = _refused(varying, SignatureError, 1, certificate=outcome.certificate)
    assert "carries no signature" in error.message
    assert "--signing-key" in (error.hint or "")


def test_a_certificate_signed_by_another_key_is_refused(varying: Rig) -> None:
    certificate = _certify(varying)
    other = _keys(varying, "someone-else")
    error = _refused(
        varying, SignatureError, 1, certificate=certificate, certificate_key=other.public
    )
    assert "does not verify with the given public key" in error.message


def test_an_edited_certificate_is_refused(varying: Rig) -> None:
    certificate = _certify(varying)
    document = json.loads(certificate.read_bytes())
    payload = json.loads(base64.b64decode(document["payload"]))
    payload["concurrency_levels"] = [1, 4, 32]
    document["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    certificate.write_text(json.dumps(document), encoding="utf-8")
    _refused(varying, SignatureError, 1, certificate=certificate)


@pytest.mark.parametrize(
    ("run", "named"),
    [
        ({"max_tokens": MAX_TOKENS - 1}, "max_tokens: certificate 6, run 5"),
        ({"concurrency": 2}, "concurrency: certificate measured 1, 4, run asks 2"),
        ({"logprobs": 1}, "logprobs: certificate None, run 1"),
    ],
    ids=["max-tokens", "level", "logprobs"],
)
def test_a_certificate_that_does_not_cover_the_run_exits_2_naming_it(
    varying: Rig, run: dict[str, Any], named: str
) -> None:
    certificate = _certify(varying)
    before = len(varying.fake.completions)
    options = {"concurrency": 4, "certificate": certificate, **run}
    with pytest.raises(CertificateMismatch) as raised:
        _sample(varying, "x", **options)
    assert raised.value.exit_code == 2
    assert any(named in line for line in raised.value.details), raised.value.details
    assert len(varying.fake.completions) == before  # refused before any request
    assert sorted(p.name for p in varying.out.iterdir() if p.name.startswith("x.")) == []


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"image": "127.0.0.1:5000/other@sha256:" + "c" * 64}, "pins.image: certificate"),
        ({"vllm_version": "0.31.0"}, "pins.vllm_version: certificate '0.32.0', run '0.31.0'"),
    ],
    ids=["image", "vllm-version"],
)
def test_a_certificate_for_other_pins_does_not_cover_the_run(
    varying: Rig, changes: dict[str, Any], named: str
) -> None:
    certificate = api.verify_certificate(_certify(varying), _keys(varying).public).certificate
    pins = certificate.pins.model_copy(update=changes)
    common = {"max_tokens": MAX_TOKENS, "logprobs": None, "concurrency": 4, "n_prompts": 4}
    assert any(
        named in line for line in coverage_differences(certificate, pins=pins, seed=0, **common)
    )
    assert coverage_differences(certificate, pins=certificate.pins, seed=5, **common) == [
        "seed: certificate 0, run 5"
    ]


def test_the_gateway_is_covered_by_the_same_comparison_as_a_run(varying: Rig) -> None:
    # serve compares the pins (the engine's: no prompt bundle), the seed and the level as
    # sample does, naming itself
    checked = api.verify_certificate(_certify(varying), _keys(varying).public)
    measured = checked.certificate.pins
    engine_fields = measured.model_fields_set - {"prompt_bundle_sha256"}
    pins = EnginePins(**{name: getattr(measured, name) for name in engine_fields})

    def served(seed: int) -> Verified:
        return Verified(
            varying.loaded,
            pins,
            seed,
            "",
            None,
            "",
            "",  # type: ignore[arg-type]
        )

    require_gateway_coverage(checked, served(0), 4)
    with pytest.raises(CertificateMismatch) as raised:
        require_gateway_coverage(checked, served(5), 2)
    assert list(raised.value.details) == [
        "concurrency: certificate measured 1, 4, gateway asks 2",
        "seed: certificate 0, gateway 5",
    ]


def test_a_certificate_with_more_prompts_than_measured_is_refused(varying: Rig) -> None:
    certificate = _certify(varying, n_prompts=2)
    with pytest.raises(CertificateMismatch, match="does not cover") as raised:
        _sample(varying, "x", concurrency=4, certificate=certificate)
    assert any("n_prompts" in line for line in raised.value.details)


# --- forged and stale certificates -------------------------------------------------------------


def _published_pins(rig: Rig) -> dict[str, Any]:
    """The pins of a run log anyone can read: the header of a published claim."""
    log = rig.out / "published.runlog.jsonl"
    if not log.exists():
        _sample(rig, "published")
    header: dict[str, Any] = json.loads(log.read_bytes().splitlines()[0])
    return dict(header["pins"])


def _hand_written(rig: Rig, **changes: Any) -> Certificate:
    """The issue's forgery: pins copied from a published header, levels 1 and 32, no trace."""
    document: dict[str, Any] = {
        "tier": 1,
        "pins": _published_pins(rig),
        "seed": 0,
        "max_tokens": MAX_TOKENS,
        "logprobs": None,
        "concurrency_levels": [1, 32],
        "measured": {
            "n_prompts": N_PROMPTS,
            "runs": 2,
            "shuffled": True,
            "verdict": "PASS",
            "trace_sha256": "0" * 64,
        },
        "trace": "trace.jsonl",
    }
    for name, value in changes.items():
        section, _, field_name = name.rpartition("__")
        (document[section] if section else document)[field_name] = value
    return Certificate.model_validate_json(json.dumps(document))


def _signed(certificate: Certificate, path: Path, keys: Keys | None) -> Path:
    signer = load_signer(keys.private) if keys is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(certificate_envelope(certificate, signer))
    return path


def test_a_hand_written_certificate_is_refused_however_it_is_dressed(varying: Rig) -> None:
    genuine = _certify(varying)  # a real check's directory, with its real trace
    keys = _keys(varying)
    forged = _hand_written(varying)
    # as the issue wrote it: bare JSON
    bare = varying.out / "bare" / "certificate.json"
    bare.parent.mkdir()
    bare.write_bytes(canonical_bytes(forged.model_dump(mode="json")))
    assert "a bare certificate" in _refused(varying, CertificateError, 2, certificate=bare).message
    # in an envelope, unsigned
    unsigned = _signed(forged, varying.out / "unsigned" / "certificate.json", None)
    _refused(varying, SignatureError, 1, certificate=unsigned)
    # signed with the very key the verifier trusts (a careless or dishonest key holder), beside
    # the genuine check's trace: the trace is not the one it names
    beside = genuine.parent / "forged.json"
    _signed(forged, beside, keys)
    error = _refused(varying, CertificateUnsupported, 1, certificate=beside)
    assert "was not measured from the trace" in error.message
    # and with the genuine trace's sha256 copied in: the trace does not support levels 1 and 32
    trace_sha256 = hashlib.sha256((genuine.parent / "trace.jsonl").read_bytes()).hexdigest()
    _signed(_hand_written(varying, measured__trace_sha256=trace_sha256), beside, keys)
    error = _refused(varying, CertificateUnsupported, 1, certificate=beside)
    assert "concurrency_levels: certificate [1, 32], trace [1, 4]" in error.details
    # alone, without any trace: bad input
    alone = _signed(forged, varying.out / "alone" / "certificate.json", keys)
    assert (
        "certificate's trace" in _refused(varying, CertificateError, 2, certificate=alone).message
    )


def test_a_signed_pass_over_a_trace_that_does_not_pass_is_refused(varying: Rig) -> None:
    _fake(varying).mode = "batch"
    failed = run_check(varying, "failed", signing_key=_keys(varying).private)
    assert failed.verdict == "BATCH_VARIANCE"
    assert failed.certificate is None
    trace = failed.pack.directory / "trace.jsonl"
    header = json.loads(trace.read_bytes().splitlines()[0])
    forged = _hand_written(
        varying,
        concurrency_levels=[1, 4],
        pins=header["pins"],
        measured__trace_sha256=hashlib.sha256(trace.read_bytes()).hexdigest(),
    )
    path = _signed(forged, failed.pack.directory / "certificate.json", _keys(varying))
    _fake(varying).mode = "none"
    error = _refused(varying, CertificateUnsupported, 1, certificate=path)
    assert any(
        line.startswith(
            "verdict: certificate PASS at tier 1, the trace's tokens give BATCH_VARIANCE"
        )
        for line in error.details
    ), error.details


def test_a_trace_changed_after_signing_is_refused(varying: Rig) -> None:
    certificate = _certify(varying)
    trace = certificate.parent / "trace.jsonl"
    lines = trace.read_bytes().splitlines(keepends=True)
    edited = [lines[0]]
    for line in lines[1:]:
        record = json.loads(line)
        record["text"] = "not what the server said"  # the same everywhere: still a PASS
        edited.append(canonical_bytes(record))
    trace.write_bytes(b"".join(edited))
    error = _refused(varying, CertificateUnsupported, 1, certificate=certificate)
    assert "was not measured from the trace" in error.message


def test_a_failing_check_removes_the_certificate_of_a_passing_one(varying: Rig) -> None:
    certificate = _certify(varying, "same")
    kept = certificate.with_name("kept-certificate.json")
    kept.write_bytes(certificate.read_bytes())  # a copy someone kept
    _fake(varying).mode = "batch"
    failed = run_check(varying, "same", signing_key=_keys(varying).private, force=True)
    assert failed.verdict == "BATCH_VARIANCE"
    assert not certificate.exists()  # removed before the check ran, and none written
    _fake(varying).mode = "none"
    assert (
        "cannot read certificate"
        in _refused(varying, CertificateError, 2, certificate=certificate).message
    )
    # the copy names the directory's trace, which is now the failing check's
    error = _refused(varying, CertificateUnsupported, 1, certificate=kept)
    assert "was not measured from the trace" in error.message


def test_an_interrupted_check_leaves_no_certificate(varying: Rig) -> None:
    certificate = _certify(varying, "same")

    def interrupt(key: PassKey) -> None:
        if key == PassKey(4, 1, "bundle"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_check(
            varying, "same", signing_key=_keys(varying).private, force=True, on_pass=interrupt
        )
    assert not certificate.exists()


def test_a_check_refused_for_its_key_leaves_no_certificate(varying: Rig) -> None:
    certificate = _certify(varying, "same")
    key = _keys(varying).private
    key.chmod(0o644)
    with pytest.raises(AttestationKeyError, match="readable by others"):
        run_check(varying, "same", signing_key=key, force=True)
    assert not certificate.exists()


def test_the_gateway_takes_only_a_verified_certificate(varying: Rig) -> None:
    unsigned = run_check(varying, "unsigned").certificate
    assert unsigned is not None
    before = len(varying.fake.completions)
    common = {"transcript_dir": varying.out / "gateway", "concurrency": 4, "engine": varying.engine}
    with pytest.raises(UsageError, match="--certificate needs --certificate-key"):
        api.build_gateway(varying.loaded.path, certificate=unsigned, **common)
    with pytest.raises(SignatureError, match="carries no signature"):
        api.build_gateway(
            varying.loaded.path,
            certificate=unsigned,
            certificate_key=_keys(varying).public,
            **common,
        )
    assert len(varying.fake.completions) == before
    assert not (varying.out / "gateway").exists()


def test_the_audit_catches_a_wrongly_certified_server_and_writes_nothing(varying: Rig) -> None:
    certificate = _certify(varying)
    _fake(varying).mode = "batch"  # the server changed its ways after the check
    with pytest.raises(Divergence, match="audit: sample") as raised:
        _sample(varying, "bad", concurrency=4, certificate=certificate, audit=0.25)
    assert raised.value.exit_code == 1
    assert not (varying.out / "bad.runlog.jsonl").exists()
    assert not (varying.out / "bad.sidecar.json").exists()
    # Without the audit the wrong log is written, and only a replay at concurrency 1 finds it.
    wrong = _sample(varying, "wrong", concurrency=4, certificate=certificate)
    right = _sample(varying, "right")
    assert wrong.read_bytes() != right.read_bytes()


def test_a_forged_measurement_still_has_to_be_a_pass() -> None:
    with pytest.raises(ValueError, match="PASS"):
        Measurement.model_validate(
            {
                "n_prompts": 1,
                "runs": 2,
                "shuffled": True,
                "verdict": "FAIL",
                "trace_sha256": "0" * 64,
            }
        )


# --- the CLI -----------------------------------------------------------------------------------


class ProbeWithEngine(FakeProbe):
    def __init__(self, rig: Rig) -> None:
        super().__init__()
        self.engine = rig.engine


def check_command(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> list[str | Path]:
    """``detserve check`` at tier 1 over the rig, its probe seeing the rig's engine (no Docker);
    the caller adds ``--output-dir`` and what it tests."""
    from detserve.runtime import probe

    monkeypatch.setattr(
        probe.DockerProbe, "from_env", classmethod(lambda cls: ProbeWithEngine(rig))
    )
    return [
        "check", "--config", rig.loaded.path, "--tier", "1", "--runs", "2",
        "--concurrency", "4", "--n-prompts", str(N_PROMPTS), "--max-tokens", str(MAX_TOKENS),
        "--bundle", BUNDLE_DIR, "--bundle-pin", BUNDLE_PIN,
    ]  # fmt: skip


def test_cli_check_exits_1_on_batch_variance_and_0_on_a_pass(
    varying: Rig, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = check_command(varying, monkeypatch)
    passed = cli(*args, "--output-dir", varying.out / "ok")
    assert passed.code == 0, passed.text
    assert "PASS at tier 1" in passed.out
    assert "certificate:" in passed.err
    assert "is UNSIGNED: sample and serve refuse it for --concurrency above 1" in passed.err
    key = _keys(varying).private
    signed = cli(*args, "--output-dir", varying.out / "signed", "--signing-key", key)
    assert signed.code == 0, signed.text
    assert f"signed by key {load_public_key(_keys(varying).public).keyid}" in signed.err
    _fake(varying).mode = "batch"
    failed = cli(*args, "--output-dir", varying.out / "bad")
    assert failed.code == 1, failed.text
    assert "BATCH_VARIANCE at tier 1" in failed.out
    bad_level = cli(*args[:-10], "--concurrency", "1,x", "--output-dir", varying.out / "x")
    assert bad_level.code == 2
    assert "'x' is not a positive integer" in bad_level.err


def test_timed_is_a_plain_record() -> None:
    assert Timed(0, "r", 1.0, 2.0).result == "r"
