"""Attestation vectors of docs/spec/run-log.md sections 9.3 to 9.6: signed statements that are
not claims, claims about another or an invalid run log, and predicates that are not the log's."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Final

from spec_vectors_base import Record, VectorSet, jcs, replace_once, sha

STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://detserve.invalid/attestation/run-log/v1"

FINGERPRINT: Final[Record] = {
    "container": {
        "image": "localhost:5000/detserve/vllm-cpu@sha256:" + sha("image"),
        "image_id": "sha256:" + sha("image configuration"),
        "numerics_environment": {"OMP_NUM_THREADS": "2", "VLLM_BATCH_INVARIANT": "1"},
        "python_version": "3.12.3",
        "torch_version": "2.5.1+cpu",
        "vllm_version": "0.6.3",
    },
    "format": "detserve-environment",
    "format_version": 1,
    "host": {
        "cpu_count": 2,
        "cpu_flags": ["avx2", "fma", "sse4_2"],
        "cpu_model": "Example CPU @ 2.10GHz",
        "cuda_version": None,
        "docker_api_version": "1.47",
        "docker_engine_version": "27.3.1",
        "gpu_driver_version": None,
        "gpu_reason": "nvidia-smi is not on PATH: no NVIDIA driver here",
        "gpus": None,
        "kernel": "6.8.0-45-generic",
        "machine": "x86_64",
        "memory_bytes": 8589934592,
        "os": "Linux",
    },
}


def statement(run_log: bytes, change: Callable[[Record], None] | None = None) -> Record:
    header = json.loads(run_log.split(b"\n", 1)[0])
    document: Record = {
        "_type": STATEMENT_TYPE,
        "predicate": {
            "detserve_version": "0.1.0",
            "environment": copy.deepcopy(FINGERPRINT),
            "environment_sha256": sha(jcs(FINGERPRINT) + b"\n"),
            "n_samples": header["n_samples"],
            "pins": header["pins"],
            "sampling": header["sampling"],
            "sidecar_sha256": sha("sidecar"),
        },
        "predicateType": PREDICATE_TYPE,
        "subject": [{"digest": {"sha256": sha(run_log)}, "name": "run.runlog.jsonl"}],
    }
    if change is not None:
        change(document)
    return document


def add_statements(
    vs: VectorSet,
    add: Callable[..., None],
    run: bytes,
    signed: Callable[..., bytes],
    by_ed: Callable[[bytes, str], tuple[str, bytes]],
) -> None:
    not_claim = ("not-a-claim", 1)

    def claim(change: Callable[[Record], None]) -> bytes:
        return signed(jcs(statement(run, change)), by_ed)

    add(
        "statement-payload-type",
        signed(jcs(statement(run)), by_ed, kind="application/json"),
        *not_claim,
        "statement.type",
        "9.3",
        "a signed payload of type application/json",
    )
    add(
        "statement-not-json",
        signed(b"not json", by_ed),
        *not_claim,
        "statement.json",
        "9.3",
        "a signed payload that is not JSON",
    )
    doubled = replace_once(jcs(statement(run)), b'{"_type":', b'{"_type":"x","_type":')
    add(
        "statement-duplicate-key",
        signed(doubled, by_ed),
        *not_claim,
        "statement.json",
        "9.3",
        "a signed statement with _type twice",
    )
    add(
        "statement-not-object",
        signed(b"[]", by_ed),
        *not_claim,
        "statement.json",
        "9.3",
        "a signed JSON array",
    )
    shape = (*not_claim, "statement.shape", "9.3")
    add(
        "statement-predicate-type",
        claim(lambda s: s.update(predicateType="https://slsa.dev/provenance/v1")),
        *shape,
        "another predicate type",
    )
    add(
        "statement-two-subjects",
        claim(lambda s: s["subject"].append(s["subject"][0])),
        *shape,
        "two subjects",
    )
    add(
        "statement-extra-member",
        claim(lambda s: s.update(note="x")),
        *shape,
        "a member in-toto's statement does not define",
    )
    add(
        "statement-digest-extra",
        claim(lambda s: s["subject"][0]["digest"].update(sha512="0" * 128)),
        *shape,
        "a subject digest with sha512 beside sha256",
    )
    add(
        "statement-subject-no-name",
        claim(lambda s: s["subject"][0].pop("name")),
        *shape,
        "a subject without its name",
    )
    add(
        "predicate-missing-member",
        claim(lambda s: s["predicate"].pop("sidecar_sha256")),
        *shape,
        "a predicate without sidecar_sha256",
    )
    add(
        "predicate-extra-member",
        claim(lambda s: s["predicate"].update(note="x")),
        *shape,
        "a predicate member the format does not define",
    )
    add(
        "predicate-pins-invalid",
        claim(lambda s: s["predicate"]["pins"].update(image="vllm:latest")),
        *shape,
        "predicate pins with an image by tag",
    )
    add(
        "fingerprint-missing-format",
        claim(lambda s: s["predicate"]["environment"].pop("format")),
        *shape,
        "an environment fingerprint without 'format'",
    )
    big = replace_once(
        jcs(statement(run)), b'"memory_bytes":8589934592', b'"memory_bytes":1152921504606846976'
    )
    add(
        "fingerprint-integer-past-2-53",
        signed(big, by_ed),
        *shape,
        "a fingerprint's memory_bytes of 2^60",
    )
    add(
        "subject-mismatch",
        signed(jcs(statement(run)), by_ed),
        "subject-mismatch",
        1,
        "claim.subject",
        "9.6",
        "the claim names another run log",
        log="other",
    )
    add(
        "subject-mismatch-invalid-log",
        signed(jcs(statement(run)), by_ed),
        "subject-mismatch",
        1,
        "claim.subject",
        "9.6",
        "another run log, itself invalid: the subject is compared before the log is read",
        log="invalid",
    )
    invalid = vs.files["claim/invalid.runlog.jsonl"]
    add(
        "attested-invalid-log",
        signed(jcs(statement(invalid)), by_ed),
        "invalid",
        2,
        "log.footer-hash",
        "9.6",
        "a signed claim about an invalid run log",
        log="invalid",
    )
    pins = ("pin-mismatch", 1, "claim.pins", "9.6")
    add(
        "pins-differ",
        claim(lambda s: s["predicate"]["pins"].update(vllm_version="0.6.4")),
        *pins,
        "the predicate's vLLM version is not the header's",
    )
    add(
        "sampling-differs",
        claim(lambda s: s["predicate"]["sampling"].update(seed=1)),
        *pins,
        "the predicate's seed is not the header's",
    )
    add(
        "n-samples-differs",
        claim(lambda s: s["predicate"].update(n_samples=5)),
        *pins,
        "the predicate counts 5 samples of 4",
    )
    add(
        "environment-sha256-wrong",
        claim(lambda s: s["predicate"].update(environment_sha256=sha("x"))),
        *pins,
        "environment_sha256 is not the fingerprint's",
    )
