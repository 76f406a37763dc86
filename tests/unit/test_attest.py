"""Signed claims: keygen, attest, verify-claim, and every tampering failing closed.

Offline: run logs from ``runlog_builders``, fingerprints built here, keys made by ``keygen``.
Each tamper case goes through the command line and checks the exit code and what it names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.dsse import Envelope

from detserve.attestation import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    ClaimPinMismatch,
    SubjectMismatch,
    verify_claim,
)
from detserve.canonical import canonical_bytes
from detserve.envelope import SignatureError
from detserve.fingerprint import (
    ContainerFingerprint,
    EnvironmentFingerprint,
    HostFingerprint,
)
from detserve.keys import load_signer

from .committed import CliRunner
from .runlog_builders import write_log

IMAGE = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "c" * 64


def fingerprint(image: str = IMAGE) -> EnvironmentFingerprint:
    return EnvironmentFingerprint(
        host=HostFingerprint(
            os="Linux",
            kernel="6.1.0",
            machine="x86_64",
            cpu_model="Test CPU",
            cpu_flags=("avx2", "sse4_2"),
            cpu_count=2,
            memory_bytes=25 * 2**30,
            gpus=None,
            gpu_driver_version=None,
            cuda_version=None,
            gpu_reason="nvidia-smi is not on PATH: no NVIDIA driver here",
            docker_engine_version="20.10.24",
            docker_api_version="1.41",
        ),
        container=ContainerFingerprint(
            image=image,
            image_id="sha256:" + "d" * 64,
            python_version="3.11.2",
            vllm_version="0.32.0",
            torch_version="2.13.0+cpu",
            numerics_environment={"VLLM_CPU_KVCACHE_SPACE": "1"},
        ),
    )


@dataclass(frozen=True)
class Claim:
    run_log: Path
    sidecar: Path
    environment: Path
    private_key: Path
    public_key: Path
    envelope: Path

    def verify_args(self, **override: Path) -> list[str | Path]:
        paths = {
            "envelope": self.envelope,
            "public_key": self.public_key,
            "run_log": self.run_log,
        } | override
        return [
            "verify-claim",
            "--envelope",
            paths["envelope"],
            "--public-key",
            paths["public_key"],
            "--run-log",
            paths["run_log"],
        ]


def make_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    run_log = write_log(tmp_path / "a.runlog.jsonl", image=IMAGE)
    digest = hashlib.sha256(run_log.read_bytes()).hexdigest()
    sidecar = tmp_path / "a.sidecar.json"
    sidecar.write_bytes(canonical_bytes({"run_log_sha256": digest, "host": "h"}))
    environment = tmp_path / "a.env.json"
    environment.write_bytes(fingerprint().canonical())
    return run_log, sidecar, environment


def keygen(cli: CliRunner, directory: Path, algorithm: str = "ed25519") -> tuple[Path, Path]:
    ran = cli("keygen", "--output-dir", directory, "--algorithm", algorithm)
    assert ran.code == 0, ran
    return directory / "detserve.key", directory / "detserve.pub"


@pytest.fixture(params=["ed25519", "ecdsa-p256"])
def claim(request: pytest.FixtureRequest, tmp_path: Path, cli: CliRunner) -> Claim:
    return make_claim(tmp_path, cli, request.param)


def make_claim(tmp_path: Path, cli: CliRunner, algorithm: str) -> Claim:
    """A genuine signed claim: run log, sidecar, fingerprint, a key pair and the envelope."""
    run_log, sidecar, environment = make_inputs(tmp_path)
    private_key, public_key = keygen(cli, tmp_path / "keys", algorithm)
    envelope = tmp_path / "a.claim.intoto.json"
    ran = cli(
        "attest",
        "--run-log",
        run_log,
        "--sidecar",
        sidecar,
        "--environment",
        environment,
        "--key",
        private_key,
        "--envelope-output",
        envelope,
    )
    assert ran.code == 0, ran
    return Claim(run_log, sidecar, environment, private_key, public_key, envelope)


def envelope_document(claim: Claim) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(claim.envelope.read_bytes())
    return document


def statement_of(claim: Claim) -> dict[str, Any]:
    statement: dict[str, Any] = json.loads(base64.b64decode(envelope_document(claim)["payload"]))
    return statement


def write_envelope(claim: Claim, document: dict[str, Any]) -> None:
    claim.envelope.write_bytes(canonical_bytes(document))


def resign(claim: Claim, statement: dict[str, Any]) -> None:
    """Sign ``statement`` with the claim's own key: a signature that verifies."""
    envelope = Envelope(canonical_bytes(statement).rstrip(b"\n"), PAYLOAD_TYPE, {})
    envelope.sign(load_signer(claim.private_key))
    write_envelope(claim, envelope.to_dict())


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_prints_it(
    tmp_path: Path, cli: CliRunner, algorithm: str
) -> None:
    ran = cli("keygen", "--output-dir", tmp_path, "--algorithm", algorithm, "--json")
    assert ran.code == 0, ran
    private, public = tmp_path / "detserve.key", tmp_path / "detserve.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_pem_private_key(private.read_bytes(), password=None)
    expected = ed25519.Ed25519PrivateKey if algorithm == "ed25519" else ec.EllipticCurvePrivateKey
    assert isinstance(key, expected)
    assert (
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        == public.read_bytes()
    )
    body = b"".join(private.read_bytes().splitlines()[1:-1]).decode()
    assert body not in ran.text
    assert "PRIVATE KEY" not in ran.text
    assert json.loads(ran.out)["algorithm"] == algorithm


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path, cli: CliRunner) -> None:
    private, _ = keygen(cli, tmp_path)
    before = private.read_bytes()
    ran = cli("keygen", "--output-dir", tmp_path)
    assert ran.code == 2, ran
    assert f"refusing to overwrite {private}" in ran.err
    assert private.read_bytes() == before


def test_keygen_refuses_an_unknown_algorithm(tmp_path: Path, cli: CliRunner) -> None:
    ran = cli("keygen", "--output-dir", tmp_path, "--algorithm", "rsa")
    assert ran.code == 2, ran
    assert "choose ed25519 or ecdsa-p256" in ran.err
    assert not any(tmp_path.iterdir())


def test_attest_refuses_a_private_key_others_can_read(tmp_path: Path, cli: CliRunner) -> None:
    run_log, sidecar, environment = make_inputs(tmp_path)
    private, _ = keygen(cli, tmp_path / "keys")
    private.chmod(0o644)
    output = tmp_path / "claim.json"
    ran = cli(
        "attest", "--run-log", run_log, "--sidecar", sidecar, "--environment", environment,
        "--key", private, "--envelope-output", output,
    )  # fmt: skip
    assert ran.code == 2, ran
    assert "is readable by others (mode 0644)" in ran.err
    assert not output.exists()


# --- a genuine claim ----------------------------------------------------------------------------


def test_a_genuine_envelope_verifies(claim: Claim, cli: CliRunner) -> None:
    ran = cli(*claim.verify_args(), "--json")
    assert ran.code == 0, ran
    verdict = json.loads(ran.out)
    assert verdict["ok"] is True
    assert verdict["run_log_sha256"] == hashlib.sha256(claim.run_log.read_bytes()).hexdigest()
    assert verdict["pins"]["image"] == IMAGE
    assert verdict["environment_sha256"] == fingerprint().sha256


def test_the_statement_is_in_toto_v1_with_one_subject_and_the_predicate(claim: Claim) -> None:
    document = envelope_document(claim)
    assert document["payloadType"] == "application/vnd.in-toto+json"
    statement = statement_of(claim)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"] == [
        {
            "name": "a.runlog.jsonl",
            "digest": {"sha256": hashlib.sha256(claim.run_log.read_bytes()).hexdigest()},
        }
    ]
    predicate = statement["predicate"]
    header = json.loads(claim.run_log.read_bytes().splitlines()[0])
    assert predicate["pins"] == header["pins"]
    assert predicate["sampling"] == header["sampling"]
    assert predicate["sidecar_sha256"] == hashlib.sha256(claim.sidecar.read_bytes()).hexdigest()
    assert predicate["environment"] == json.loads(fingerprint().canonical())
    # The payload is RFC 8785, so any JCS library re-derives the signed bytes.
    payload = base64.b64decode(document["payload"])
    assert canonical_bytes(statement).rstrip(b"\n") == payload


def test_the_signature_is_over_dsse_pae_as_cosign_checks_it(claim: Claim) -> None:
    # Independent of securesystemslib: DSSE v1's PAE by its specification, checked with
    # cryptography, as cosign and any other DSSE verifier does.
    document = envelope_document(claim)
    payload = base64.b64decode(document["payload"])
    kind = document["payloadType"].encode()
    pae = b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)
    signature = base64.b64decode(document["signatures"][0]["sig"])
    public = load_pem_public_key(claim.public_key.read_bytes())
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, pae)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        from cryptography.hazmat.primitives import hashes

        public.verify(signature, pae, ec.ECDSA(hashes.SHA256()))


def test_a_signature_with_an_empty_key_id_verifies(claim: Claim, cli: CliRunner) -> None:
    # cosign writes "keyid": ""; the public key given is the trust root, the id only a hint.
    document = envelope_document(claim)
    document["signatures"][0]["keyid"] = ""
    write_envelope(claim, document)
    ran = cli(*claim.verify_args())
    assert ran.code == 0, ran


# --- tampering: each fails closed with exit 1, naming what failed -------------------------------


def test_a_changed_run_log_fails_on_the_subject(claim: Claim, cli: CliRunner) -> None:
    data = bytearray(claim.run_log.read_bytes())
    data[len(data) // 2] ^= 1
    claim.run_log.write_bytes(bytes(data))
    ran = cli(*claim.verify_args())
    assert ran.code == 1, ran
    assert "the claim is about another run log" in ran.err
    assert "claim subject: a.runlog.jsonl sha256" in ran.err


def test_another_valid_run_log_fails_on_the_subject(
    claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    other = write_log(tmp_path / "other.runlog.jsonl", n_samples=4, image=IMAGE)
    ran = cli(*claim.verify_args(run_log=other))
    assert ran.code == 1, ran
    assert "the claim is about another run log" in ran.err


def _tamper_payload(document: dict[str, Any]) -> None:
    statement = json.loads(base64.b64decode(document["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    document["payload"] = base64.b64encode(canonical_bytes(statement).rstrip(b"\n")).decode()


def _tamper_signature(document: dict[str, Any]) -> None:
    signature = bytearray(base64.b64decode(document["signatures"][0]["sig"]))
    signature[-1] ^= 1
    document["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()


def _tamper_payload_type(document: dict[str, Any]) -> None:
    document["payloadType"] = "application/json"


def _drop_signatures(document: dict[str, Any]) -> None:
    document["signatures"] = []


def _one_more_payload_byte(document: dict[str, Any]) -> None:
    document["payload"] = base64.b64encode(base64.b64decode(document["payload"]) + b" ").decode()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_tamper_payload, "signature does not verify"),
        (_one_more_payload_byte, "signature does not verify"),
        (_tamper_signature, "signature does not verify"),
        (_tamper_payload_type, "signature does not verify"),
        (_drop_signatures, "the envelope carries no signature"),
    ],
    ids=["payload", "payload-plus-a-byte", "signature", "payload-type", "no-signature"],
)
def test_a_changed_envelope_fails_on_the_signature(
    claim: Claim, cli: CliRunner, tamper: Any, message: str
) -> None:
    document = envelope_document(claim)
    tamper(document)
    write_envelope(claim, document)
    ran = cli(*claim.verify_args(), "--json")
    assert ran.code == 1, ran
    assert message in ran.err
    assert json.loads(ran.out)["error"] == "bad-signature"
    with pytest.raises(SignatureError):
        verify_claim(claim.envelope, claim.public_key, claim.run_log)


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_another_key_fails_on_the_signature(
    claim: Claim, cli: CliRunner, tmp_path: Path, algorithm: str
) -> None:
    _, other = keygen(cli, tmp_path / f"other-{algorithm}", algorithm)
    ran = cli(*claim.verify_args(public_key=other))
    assert ran.code == 1, ran
    assert "signature does not verify with the given public key" in ran.err


def test_the_signature_is_checked_before_the_run_log_is_read(
    claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    document = envelope_document(claim)
    _tamper_signature(document)
    write_envelope(claim, document)
    ran = cli(*claim.verify_args(run_log=tmp_path / "absent.runlog.jsonl"))
    assert ran.code == 1, ran
    assert "signature does not verify" in ran.err


def test_signed_pins_other_than_the_run_logs_fail(claim: Claim, cli: CliRunner) -> None:
    # The key holder signs a statement whose subject is right but whose pins are not the log's.
    statement = statement_of(claim)
    statement["predicate"]["pins"]["model_revision"] = "e" * 40
    statement["predicate"]["sampling"]["seed"] = 7
    resign(claim, statement)
    ran = cli(*claim.verify_args())
    assert ran.code == 1, ran
    assert "the signed predicate does not match the run log's header" in ran.err
    assert f"pins.model_revision: claim '{'e' * 40}', run log '{'b' * 40}'" in ran.err
    assert "sampling.seed: claim 7, run log 0" in ran.err
    with pytest.raises(ClaimPinMismatch):
        verify_claim(claim.envelope, claim.public_key, claim.run_log)


def test_a_signed_fingerprint_that_is_not_its_recorded_hash_fails(
    claim: Claim, cli: CliRunner
) -> None:
    statement = statement_of(claim)
    statement["predicate"]["environment"]["host"]["kernel"] = "6.2.0"
    resign(claim, statement)
    ran = cli(*claim.verify_args())
    assert ran.code == 1, ran
    assert "environment_sha256: claim" in ran.err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(predicateType="https://slsa.dev/provenance/v1"), "predicateType"),
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "Wrong statement type"),
        (lambda s: s.update(subject=[]), "subject"),
        (lambda s: s["subject"].append(dict(s["subject"][0], name="b")), "subject"),
        (lambda s: s["predicate"].update(note="x"), "predicate.note"),
    ],
    ids=["predicate-type", "statement-type", "no-subject", "two-subjects", "extra-field"],
)
def test_a_signed_statement_that_is_not_a_detserve_claim_fails(
    claim: Claim, cli: CliRunner, edit: Any, message: str
) -> None:
    statement = statement_of(claim)
    edit(statement)
    resign(claim, statement)
    ran = cli(*claim.verify_args(), "--json")
    assert ran.code == 1, ran
    assert "the signed statement is not a detserve claim" in ran.err
    assert message in ran.err
    assert json.loads(ran.out)["error"] == "not-a-claim"


def test_a_signed_payload_of_another_type_fails(claim: Claim, cli: CliRunner) -> None:
    envelope = Envelope(canonical_bytes(statement_of(claim)), "application/json", {})
    envelope.sign(load_signer(claim.private_key))
    write_envelope(claim, envelope.to_dict())
    ran = cli(*claim.verify_args())
    assert ran.code == 1, ran
    assert "not an in-toto statement" in ran.err


def test_the_subject_is_checked_before_the_pins(claim: Claim) -> None:
    statement = statement_of(claim)
    statement["predicate"]["pins"]["model_revision"] = "e" * 40
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    resign(claim, statement)
    with pytest.raises(SubjectMismatch):
        verify_claim(claim.envelope, claim.public_key, claim.run_log)


# --- not a key, not an envelope: bad input, exit 2 ----------------------------------------------


def test_a_file_that_is_not_a_public_key_is_bad_input(
    claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    ran = cli(*claim.verify_args(public_key=garbage))
    assert ran.code == 2, ran
    assert "not a strict PUBLIC KEY PEM block" in ran.err


def test_an_rsa_key_is_refused(claim: Claim, cli: CliRunner, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    path = tmp_path / "rsa.pub"
    path.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    ran = cli(*claim.verify_args(public_key=path))
    assert ran.code == 2, ran
    assert "Ed25519 or ECDSA P-256 only" in ran.err


def test_the_private_key_in_place_of_the_public_key_is_refused_without_showing_it(
    claim: Claim, cli: CliRunner
) -> None:
    ran = cli(*claim.verify_args(public_key=claim.private_key))
    assert ran.code == 2, ran
    body = b"".join(claim.private_key.read_bytes().splitlines()[1:-1]).decode()
    assert body not in ran.text


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "not JSON"),
        (lambda data: b'{"payload": "a", "payload": "b"}', "duplicate keys payload"),
        (lambda data: b'{"payload": "!!", "payloadType": "x", "signatures": []}', "not base64"),
        (lambda data: b"[]", "not a JSON object"),
        (lambda data: b'{"payload": ""}', "missing: payloadType"),
    ],
    ids=["truncated", "duplicate-keys", "not-base64", "array", "missing-fields"],
)
def test_a_file_that_is_not_an_envelope_is_bad_input(
    claim: Claim, cli: CliRunner, damage: Any, message: str
) -> None:
    claim.envelope.write_bytes(damage(claim.envelope.read_bytes()))
    ran = cli(*claim.verify_args())
    assert ran.code == 2, ran
    assert message in ran.err


# --- attest's own refusals ----------------------------------------------------------------------


def _attest(cli: CliRunner, tmp_path: Path, **override: Path) -> Any:
    run_log, sidecar, environment = make_inputs(tmp_path)
    private_key, _ = keygen(cli, tmp_path / "keys")
    paths = {
        "run_log": run_log,
        "sidecar": sidecar,
        "environment": environment,
        "key": private_key,
    } | override
    output = tmp_path / "out.claim.json"
    args: list[str | Path] = ["attest", "--run-log", paths["run_log"], "--sidecar"]
    args += [paths["sidecar"], "--key", paths["key"], "--envelope-output", output]
    if paths["environment"] != Path("-"):
        args += ["--environment", paths["environment"]]
    return cli(*args), output


def test_attest_refuses_a_sidecar_of_another_run(tmp_path: Path, cli: CliRunner) -> None:
    sidecar = tmp_path / "other.sidecar.json"
    sidecar.write_bytes(canonical_bytes({"run_log_sha256": "0" * 64}))
    ran, output = _attest(cli, tmp_path, sidecar=sidecar)
    assert ran.code == 1, ran
    assert "is not the run log's: it names another run" in ran.err
    assert not output.exists()


def test_attest_refuses_a_fingerprint_of_another_image(tmp_path: Path, cli: CliRunner) -> None:
    environment = tmp_path / "other.env.json"
    environment.write_bytes(fingerprint(image=IMAGE.replace("c" * 64, "f" * 64)).canonical())
    ran, output = _attest(cli, tmp_path, environment=environment)
    assert ran.code == 1, ran
    assert "the environment fingerprint is of another image" in ran.err
    assert not output.exists()


def test_attest_refuses_without_a_fingerprint(tmp_path: Path, cli: CliRunner) -> None:
    ran, output = _attest(cli, tmp_path, environment=Path("-"))
    assert ran.code == 2, ran
    assert "holds no environment fingerprint" in ran.err
    assert not output.exists()


def test_attest_takes_the_fingerprint_from_the_sidecar(tmp_path: Path, cli: CliRunner) -> None:
    (tmp_path / "same").mkdir()
    run_log, _, _ = make_inputs(tmp_path / "same")  # the same bytes as _attest's run log
    sidecar = tmp_path / "with-env.sidecar.json"
    digest = hashlib.sha256(run_log.read_bytes()).hexdigest()
    document = {"run_log_sha256": digest, "environment": json.loads(fingerprint().canonical())}
    sidecar.write_bytes(canonical_bytes(document))
    ran, output = _attest(cli, tmp_path, sidecar=sidecar, environment=Path("-"))
    assert ran.code == 0, ran
    assert output.exists()


def test_attest_refuses_an_invalid_run_log(tmp_path: Path, cli: CliRunner) -> None:
    run_log, _, _ = make_inputs(tmp_path)
    run_log.write_bytes(run_log.read_bytes()[:-10])
    ran, output = _attest(cli, tmp_path / "x", run_log=run_log)
    assert ran.code == 2, ran
    assert "truncated" in ran.err
    assert not output.exists()


def test_attest_refuses_to_overwrite_an_envelope(claim: Claim, cli: CliRunner) -> None:
    before = claim.envelope.read_bytes()
    ran = cli(
        "attest", "--run-log", claim.run_log, "--sidecar", claim.sidecar, "--environment",
        claim.environment, "--key", claim.private_key, "--envelope-output", claim.envelope,
    )  # fmt: skip
    assert ran.code == 2, ran
    assert claim.envelope.read_bytes() == before


def test_two_signatures_with_one_key_id_are_bad_input(claim: Claim, cli: CliRunner) -> None:
    # Which of two same-id signatures counts would be the parser's choice, not the signer's.
    document = envelope_document(claim)
    document["signatures"].append(dict(document["signatures"][0]))
    write_envelope(claim, document)
    ran = cli(*claim.verify_args())
    assert ran.code == 2, ran
    assert "two signatures with key id" in ran.err


def test_a_signature_entry_with_other_fields_is_bad_input(claim: Claim, cli: CliRunner) -> None:
    document = envelope_document(claim)
    document["signatures"][0]["cert"] = "x"
    write_envelope(claim, document)
    ran = cli(*claim.verify_args())
    assert ran.code == 2, ran
    assert "signature 0 is not {keyid, sig}" in ran.err


def test_a_huge_envelope_is_refused_unread(claim: Claim, cli: CliRunner) -> None:
    claim.envelope.write_bytes(b" " * (4 * 1024 * 1024 + 1))
    ran = cli(*claim.verify_args())
    assert ran.code == 2, ran
    assert "over the limit of 4194304 (refused unread)" in ran.err


def test_a_signed_claim_replays_only_after_its_signature_verifies(
    claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    _, other_public = keygen(cli, tmp_path / "other-keys")
    args = ["replay", "--claim", claim.envelope, "--run-log", claim.run_log]
    args += ["--config", tmp_path / "no-such-profile.json", "--output-dir", tmp_path / "replay"]
    refused = cli(*args, "--public-key", other_public)
    assert refused.code == 1, refused
    assert "signature does not verify" in refused.err
    assert not (tmp_path / "replay").exists()  # nothing read or made after the signature
    # with the right key, the next thing checked is the profile (which does not exist: exit 2)
    checked = cli(*args, "--public-key", claim.public_key)
    assert checked.code == 2, checked
    assert "no-such-profile.json" in checked.err


def test_a_signed_replay_needs_the_key_and_the_log(
    claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    ran = cli(
        "replay", "--claim", claim.envelope, "--public-key", claim.public_key,
        "--config", tmp_path / "p.json", "--output-dir", tmp_path / "replay",
    )  # fmt: skip
    assert ran.code == 2, ran
    assert "needs both --public-key KEY and --run-log LOG" in ran.err
