"""Evidence is acted on as the bytes that were verified, however often its path is opened.

A run log is hashed (``verify-claim``'s subject), validated (``replay``'s plan), then read again
at the end (the comparison). Each test swaps the file between two of those steps, through a hook
on the step before, the way an attacker who can write the path would, and the command must
refuse (:class:`~detserve.errors.EvidenceChanged`, exit 1) instead of vouching for a file it
never verified: ``verify-claim`` printed VERIFIED for a log whose header it read from another
file, ``replay`` reported IDENTICAL against a claim swapped for the replay's own bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from detserve import api, attestation, fleet_replay, sampling_session
from detserve.errors import EXIT_VERIFICATION, EvidenceChanged, PinMismatch
from detserve.fleet import FAILED
from detserve.runlog import write_run_log
from detserve.runtime import connect, lifecycle
from detserve.sampling import SampleRequest, SampleSummary

from .committed import BUNDLE_DIR, BUNDLE_PIN, CliRunner, TinyWorkspace, sha256_hex
from .runlog_builders import make_sample
from .test_attest import Claim, claim, fingerprint  # noqa: F401 -- the signed claim fixture
from .test_docker_host_honoured import IMAGE, run_log_claim


def _another_log_with_the_same_header(log: Path, target: Path) -> Path:
    """A valid log whose header (pins, sampling, count) is ``log``'s and whose tokens are not."""
    header = json.loads(log.read_bytes().splitlines()[0])
    header = {key: value for key, value in header.items() if key not in {"record", "format"}}
    samples = [
        make_sample(i, logprobs=header["sampling"]["logprobs"] is not None, output=[7] * 12)
        for i in range(header["n_samples"])
    ]
    header.pop("format_version", None)
    write_run_log(target, header, samples)
    return target


def test_a_header_read_from_another_file_than_the_one_hashed_is_refused(
    claim: Claim,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: CliRunner,
) -> None:
    forged = _another_log_with_the_same_header(claim.run_log, tmp_path / "forged.runlog.jsonl")
    hashed = attestation.run_log_sha256

    def hash_then_swap(path: Path) -> str:
        digest = hashed(path)
        shutil.copyfile(forged, path)  # after the subject's hash matched, before the header
        return digest

    monkeypatch.setattr(attestation, "run_log_sha256", hash_then_swap)
    ran = cli(*claim.verify_args())
    assert ran.code == EXIT_VERIFICATION, ran.text
    assert "VERIFIED" not in ran.out
    assert "changed while detserve read it" in ran.err


# --- replay -------------------------------------------------------------------------------------


@pytest.fixture
def config(tiny_workspace: TinyWorkspace) -> Path:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["runtime"]["image"] = IMAGE
    tiny_workspace.config.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return tiny_workspace.config


class NoEngine:
    """An engine nothing is asked of: the lifecycle and the sampler are replaced below."""


def _replay_sampling(
    monkeypatch: pytest.MonkeyPatch, sampled: Path, after: Any = None
) -> list[SampleRequest]:
    """``replay`` with the server run skipped and a sampler that writes ``sampled``'s bytes,
    then calls ``after(request)``."""
    requests: list[SampleRequest] = []
    monkeypatch.setattr(lifecycle, "run", lambda *args, **kwargs: None)

    def sample(loaded: Any, prompts: Any, request: SampleRequest, *args: Any) -> SampleSummary:
        requests.append(request)
        request.run_log_output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sampled, request.run_log_output)
        request.sidecar_output.write_text("{}")
        summary = SampleSummary(
            run_log=request.run_log_output,
            run_log_sha256=sha256_hex(sampled.read_bytes()),
            sidecar=request.sidecar_output,
            n_samples=1,
            output_tokens=12,
            seconds=1.0,
        )
        if after is not None:
            after(request)
        return summary

    monkeypatch.setattr(sampling_session, "sample_observed", sample)
    return requests


def _replay(claim_path: Path, config: Path, out: Path, **kw: Any) -> api.ReplayResult:
    return api.replay(
        claim_path,
        config,
        output_dir=out,
        bundle=BUNDLE_DIR,
        bundle_pin=BUNDLE_PIN,
        engine=NoEngine(),  # type: ignore[arg-type]
        **kw,
    )


def test_the_rig_replays_a_faithful_server_identical(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim_log = run_log_claim(config, tmp_path / "claim.runlog.jsonl")
    _replay_sampling(monkeypatch, claim_log)
    assert _replay(claim_log, config, tmp_path / "out").report.ok


def test_a_claim_swapped_during_the_replay_is_refused(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers otherwise than the claim; someone then writes the server's answer
    over the claim, so that the comparison would read IDENTICAL."""
    claim_log = run_log_claim(config, tmp_path / "claim.runlog.jsonl")
    answered = _another_log_with_the_same_header(claim_log, tmp_path / "answered.runlog.jsonl")
    _replay_sampling(monkeypatch, answered, after=lambda _: shutil.copyfile(answered, claim_log))
    with pytest.raises(EvidenceChanged, match="changed while detserve read it"):
        _replay(claim_log, config, tmp_path / "out")
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_replay_log_swapped_before_the_comparison_is_refused(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim_log = run_log_claim(config, tmp_path / "claim.runlog.jsonl")
    answered = _another_log_with_the_same_header(claim_log, tmp_path / "answered.runlog.jsonl")

    def swap(request: SampleRequest) -> None:
        shutil.copyfile(claim_log, request.run_log_output)  # the claim's bytes as the replay's

    _replay_sampling(monkeypatch, answered, after=swap)
    with pytest.raises(EvidenceChanged):
        _replay(claim_log, config, tmp_path / "out")


def test_a_claim_given_with_its_sha256_is_those_bytes_or_nothing_runs(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim_log = run_log_claim(config, tmp_path / "claim.runlog.jsonl")
    requests = _replay_sampling(monkeypatch, claim_log)
    with pytest.raises(EvidenceChanged):
        _replay(claim_log, config, tmp_path / "out", claim_sha256="0" * 64)
    assert requests == []


def test_a_signed_claim_swapped_after_its_signature_is_refused_before_anything_runs(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: CliRunner
) -> None:
    claim_log = run_log_claim(config, tmp_path / "claim.runlog.jsonl")
    forged = _another_log_with_the_same_header(claim_log, tmp_path / "forged.runlog.jsonl")
    requests = _replay_sampling(monkeypatch, claim_log)
    verified = attestation.verify_claim

    def verify_then_swap(envelope: Path, key: Path, run_log: Path) -> Any:
        attested = verified(envelope, key, run_log)
        shutil.copyfile(forged, run_log)  # between the signature's check and the plan
        return attested

    monkeypatch.setattr(attestation, "verify_claim", verify_then_swap)
    sidecar = tmp_path / "claim.sidecar.json"
    sidecar.write_text(json.dumps({"run_log_sha256": sha256_hex(claim_log.read_bytes())}))
    environment = tmp_path / "claim.env.json"
    environment.write_bytes(fingerprint(IMAGE).canonical())
    keys = tmp_path / "keys"
    assert cli("keygen", "--output-dir", keys).code == 0
    envelope = tmp_path / "claim.intoto.json"
    signed = cli(
        "attest",
        "--run-log",
        claim_log,
        "--sidecar",
        sidecar,
        "--environment",
        environment,
        "--key",
        keys / "detserve.key",
        "--envelope-output",
        envelope,
    )
    assert signed.code == 0, signed.text
    with pytest.raises(EvidenceChanged):
        _replay(
            envelope, config, tmp_path / "out", public_key=keys / "detserve.pub", run_log=claim_log
        )
    assert requests == []


def test_every_fleet_node_requires_the_claim_the_fleet_validated(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim_log = run_log_claim(config, tmp_path / "claim.runlog.jsonl")
    asked: list[str | None] = []

    def node_replay(*args: Any, claim_sha256: str | None = None, **kwargs: Any) -> Any:
        asked.append(claim_sha256)
        raise PinMismatch("stopped here: only what the node was asked matters")

    def no_fingerprint(*args: Any) -> Any:
        raise PinMismatch("no fingerprint in this test")

    monkeypatch.setattr(fleet_replay, "replay_claim", node_replay)
    monkeypatch.setattr("detserve.fingerprint.environment_fingerprint", no_fingerprint)
    monkeypatch.setattr(
        "detserve.runtime.docker_engine.DockerEngine.from_env",
        classmethod(lambda cls, host=None: cls(None, host)),  # type: ignore[arg-type]
    )
    report = api.replay_fleet(
        claim_log,
        config,
        nodes=["unix:///n1.sock,name=n1", "unix:///n2.sock,name=n2"],
        output_dir=tmp_path / "fleet",
        bundle=BUNDLE_DIR,
        bundle_pin=BUNDLE_PIN,
    )
    assert [o.result.verdict for o in report.outcomes] == [FAILED, FAILED]
    assert asked == [sha256_hex(claim_log.read_bytes())] * 2


def test_the_swap_is_refused_through_the_command_line_as_exit_1(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: CliRunner
) -> None:
    claim_log = run_log_claim(config, tmp_path / "claim.runlog.jsonl")
    answered = _another_log_with_the_same_header(claim_log, tmp_path / "answered.runlog.jsonl")
    _replay_sampling(monkeypatch, answered, after=lambda _: shutil.copyfile(answered, claim_log))
    monkeypatch.setattr(connect, "engine_for", lambda engine, host=None: NoEngine())
    ran = cli(
        "replay",
        "--claim",
        claim_log,
        "--config",
        config,
        "--bundle",
        BUNDLE_DIR,
        "--bundle-pin",
        BUNDLE_PIN,
        "--output-dir",
        tmp_path / "out",
    )
    assert ran.code == EXIT_VERIFICATION, ran.text
    assert "IDENTICAL" not in ran.out
