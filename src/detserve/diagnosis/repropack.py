"""The repro pack of a check: everything needed to see, and to reproduce, what it measured.

Files (in ``--output-dir``):

* ``env.json``: the environment fingerprint (host and container: CPU model and flags, GPUs,
  driver and CUDA versions when present, kernel, vLLM and torch in the image, the variables that
  affect numerics), or why there is none;
* ``run_config.json``: the profile, the run pins and the check's parameters;
* ``determinism_applied.json``: every determinism control in force and who set it;
* ``trace.jsonl``: every request (run, concurrency, order, position, prompt, tokens, logprobs),
  canonical JSON lines in pass then prompt order;
* ``report.json``, ``report.txt``, ``report.html``: the verdict, the levels and the first
  divergences;
* ``diffs/first_divergence.json``: per divergent prompt, where it first parts from the baseline;
* ``certificate.json``: only for a PASS at tier 1 or 2: the certificate
  (:mod:`detserve.certificate`) in a DSSE envelope, signed when the check was given a key.

Invariants: every file is written atomically, and all of them are checked before the first is
written (no file is replaced without ``force``, none is an input). A certificate already in the
directory is removed before the check runs (:func:`clear_certificate`) and a new one is written
last, after the trace it names, only for a pass: a check that fails or is interrupted leaves
none. Everything but ``report.json``'s ``volatile`` section (and the HTML's, which shows it) is
a function of the pins, the parameters and the tokens: the same check on the same pins writes the
same bytes (but for an ECDSA signature of the certificate, which is randomised; Ed25519's is not).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# securesystemslib.signer's public names, re-exported without __all__ (mypy's strict view).
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from detserve.canonical import canonical_bytes
from detserve.certificate import (
    CERTIFICATE_FILE,
    Certificate,
    Measurement,
    certificate_envelope,
)
from detserve.diagnosis.check import CheckResult
from detserve.diagnosis.report_html import render_report_html
from detserve.diagnosis.trace import TRACE_FILE, trace_bytes
from detserve.diagnosis.verdict import Verdict
from detserve.engine_policy import BATCH_INVARIANT_ENVIRONMENT
from detserve.errors import InputError, bounded
from detserve.fileio import atomic_write_bytes, check_output_dir, check_outputs
from detserve.keys import signer_public_key
from detserve.profile import LoadedProfile

REPORT_FORMAT: Final = "detserve-check-report"
REPORT_FORMAT_VERSION: Final = 1

PACK_FILES: Final = (
    "env.json",
    "run_config.json",
    "determinism_applied.json",
    TRACE_FILE,
    "report.json",
    "report.txt",
    "report.html",
    "diffs/first_divergence.json",
    CERTIFICATE_FILE,
)


@dataclass(frozen=True)
class ReproPack:
    """Where a check's files went, and its certificate when it issued one."""

    directory: Path
    files: tuple[Path, ...]
    report: dict[str, object]
    certificate: Certificate | None
    #: the id of the key that signed the certificate, computed from it; None when unsigned
    signed_by: str | None = None

    @property
    def certificate_path(self) -> Path | None:
        return self.directory / CERTIFICATE_FILE if self.certificate is not None else None


def determinism_controls(loaded: LoadedProfile, result: CheckResult) -> list[dict[str, str]]:
    """Every control in force and who set it, in a fixed order."""
    profile = loaded.profile
    vllm = profile.vllm
    env = result.pins.environment

    def from_env(name: str, what: str) -> dict[str, str]:
        if name in env:
            who = (
                "detserve, for vllm.batch_invariant: true"
                if vllm.batch_invariant and name in BATCH_INVARIANT_ENVIRONMENT
                else "profile runtime.environment"
            )
            return {"control": what, "value": env[name], "set_by": who}
        return {"control": what, "value": "not set", "set_by": "nobody (the image's default)"}

    controls = [
        {
            "control": "greedy decoding",
            "value": "temperature 0, n 1, no streaming",
            "set_by": "detserve (every request; any other temperature is refused)",
        },
        {
            "control": "seed",
            "value": str(result.seed),
            "set_by": "profile sampling.seed (engine --seed and every request's seed)",
        },
        {
            "control": "prefix caching",
            "value": "off (--no-enable-prefix-caching)",
            "set_by": "detserve (always; --enable-prefix-caching is refused)",
        },
        {"control": "dtype", "value": vllm.dtype, "set_by": "profile vllm.dtype"},
        {
            "control": "max_num_seqs",
            "value": str(vllm.max_num_seqs) if vllm.max_num_seqs is not None else "engine default",
            "set_by": "profile vllm.max_num_seqs" if vllm.max_num_seqs is not None else "vLLM",
        },
        {
            "control": "enforce_eager",
            "value": str(vllm.enforce_eager).lower(),
            "set_by": "profile vllm.enforce_eager",
        },
        from_env("VLLM_BATCH_INVARIANT", "batch-invariant kernels (VLLM_BATCH_INVARIANT)"),
        from_env("CUBLAS_WORKSPACE_CONFIG", "cuBLAS workspace (CUBLAS_WORKSPACE_CONFIG)"),
        {
            "control": "attention backend",
            "value": str(vllm.extra_args.get("--attention-backend", "engine default")),
            "set_by": (
                "profile vllm.extra_args"
                if "--attention-backend" in vllm.extra_args
                else "vLLM (chosen for the device)"
            ),
        },
        {
            "control": "speculative decoding, async scheduling, LoRA, remote code",
            "value": "refused",
            "set_by": "detserve's engine-option allowlist",
        },
        {
            "control": "image",
            "value": result.pins.image,
            "set_by": "profile runtime.image (by digest; the container is bound to it)",
        },
        {
            "control": "model snapshot",
            "value": f"manifest sha256 {result.pins.manifest_sha256}",
            "set_by": "detserve (verified before and after the check)",
        },
    ]
    shown = {"VLLM_BATCH_INVARIANT", "CUBLAS_WORKSPACE_CONFIG"}
    controls += [
        {"control": f"environment {name}", "value": value, "set_by": "profile / detserve"}
        for name, value in sorted(env.items())
        if name not in shown
    ]
    return controls


def _batch_evidence(result: CheckResult) -> list[dict[str, object]]:
    if result.measurements is None:
        return []
    return [timing.as_json() for timing in result.measurements.timings]


def build_report(
    loaded: LoadedProfile, result: CheckResult, trace_sha256: str
) -> dict[str, object]:
    """report.json: deterministic fields, then ``volatile`` (times, throughput, batch evidence)."""
    diagnosis = result.diagnosis
    return {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "verdict": diagnosis.verdict.value,
        "tier": diagnosis.tier,
        "passed": diagnosis.passed,
        "reason": diagnosis.reason,
        "logprobs_note": diagnosis.logprobs_note,
        "pins": result.pins.model_dump(mode="json"),
        "seed": result.seed,
        "check": result.plan.as_json(),
        "prompt_ids": list(result.measurements.prompt_ids) if result.measurements else [],
        "levels": [level.as_json() for level in diagnosis.levels],
        "n_divergent_prompts": len(diagnosis.divergences),
        "first_divergences": [d.as_json() for d in diagnosis.divergences],
        "trace_sha256": trace_sha256,
        "volatile": {
            "note": "varies between faithful checks; never compared",
            "profile": str(loaded.path),
            "container_id": result.container_id,
            "started_at": result.started_at,
            "finished_at": result.finished_at,
            "seconds": round(result.seconds, 3),
            "passes": _batch_evidence(result),
        },
    }


def report_text(report: dict[str, object], result: CheckResult) -> str:
    """report.txt: the verdict first, then each level, the batches seen and the divergences."""
    diagnosis = result.diagnosis
    plan = result.plan
    lines = [
        f"{diagnosis.verdict.value} at tier {plan.tier}: {diagnosis.reason}",
        f"exit {'0 (pass)' if diagnosis.passed else '1 (not a pass at this tier)'}",
        f"prompts {plan.n_prompts} x {plan.max_tokens} tokens; runs {plan.runs}; levels "
        + ", ".join(str(level) for level in plan.levels)
        + ("; each level above 1 also shuffled" if plan.shuffle else "")
        + f"; logprobs {plan.logprobs}",
        f"model {result.pins.model_id}@{result.pins.model_revision}; image {result.pins.image}",
        f"vLLM {result.pins.vllm_version}; trace sha256 {report['trace_sha256']}",
    ]
    if diagnosis.logprobs_note:
        lines.append(f"logprobs: {diagnosis.logprobs_note}")
    for level in diagnosis.levels:
        divergent = sum(t is not None for t in level.first_divergent_token)
        lines.append(
            f"  concurrency {level.concurrency:>4}: runs identical {level.runs_identical}; "
            f"= concurrency 1 {level.matches_baseline}"
            + (
                f"; shuffled = concurrency 1 {level.shuffled_matches_baseline}"
                if level.shuffled_matches_baseline is not None
                else ""
            )
            + "; logprobs identical "
            + str(level.logprobs_runs_identical and level.logprobs_match_baseline)
            + f"; divergent prompts {divergent}"
        )
    if result.measurements is not None:
        lines.append(
            "batches (volatile): pass, tokens/s, most requests in flight, server tokens/step"
        )
        for timing in result.measurements.timings:
            rate = timing.output_tokens / timing.seconds if timing.seconds else 0.0
            per_step = timing.server_tokens_per_step
            lines.append(
                f"  {timing.key.label():<22} {rate:>9.1f} {timing.max_in_flight:>5} "
                f"{per_step if per_step is not None else 'n/a':>7}"
            )
    for d in diagnosis.divergences[:20]:
        lines.append(
            f"first divergence: {d.prompt_id} at {d.key.label()}, token {d.token_index} "
            f"({d.kind}): baseline {list(d.baseline_window)} vs {list(d.other_window)}"
        )
    if len(diagnosis.divergences) > 20:
        lines.append(f"... and {len(diagnosis.divergences) - 20} more divergent prompts")
    return "\n".join(lines) + "\n"


def make_certificate(result: CheckResult, trace_sha256: str) -> Certificate | None:
    """A certificate for a PASS at tier 1 or 2; None otherwise."""
    diagnosis = result.diagnosis
    plan = result.plan
    if diagnosis.verdict is not Verdict.PASS or plan.tier == 0:
        return None
    return Certificate(
        tier=2 if plan.tier == 2 else 1,
        pins=result.pins,
        seed=result.seed,
        max_tokens=plan.max_tokens,
        logprobs=plan.logprobs,
        concurrency_levels=plan.levels,
        measured=Measurement(
            n_prompts=plan.n_prompts,
            runs=plan.runs,
            shuffled=plan.shuffle,
            verdict="PASS",
            trace_sha256=trace_sha256,
        ),
        trace=TRACE_FILE,
    )


def check_pack_outputs(directory: Path, *, force: bool, inputs: tuple[Path, ...]) -> None:
    """Refuse the output directory before the check runs (nothing replaced without force)."""
    check_output_dir(directory, force=True, inputs=inputs)
    check_outputs([directory / name for name in PACK_FILES], force=force, inputs=inputs)


def clear_certificate(directory: Path) -> None:
    """Remove the certificate of an earlier check from ``directory``, before this one runs.

    :func:`check_pack_outputs` has refused anything there that is not a regular file, and a file
    at all without ``force``.
    """
    path = directory / CERTIFICATE_FILE
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot remove the earlier certificate {bounded(str(path))}: {exc.strerror}",
            hint="a check never leaves a certificate it did not issue beside its files",
        ) from exc


def write_repro_pack(
    loaded: LoadedProfile,
    result: CheckResult,
    directory: Path,
    *,
    force: bool,
    signer: CryptoSigner | None = None,
) -> ReproPack:
    """Write every file of the pack; the certificate, signed by ``signer`` when given, only for a
    pass at tier 1 or 2, and last."""
    trace = trace_bytes(result.pins, result.seed, result.plan, result.measurements)
    trace_sha256 = hashlib.sha256(trace).hexdigest()
    report = build_report(loaded, result, trace_sha256)
    certificate = make_certificate(result, trace_sha256)
    env = (
        result.fingerprint.as_json()
        if result.fingerprint is not None
        else {"fingerprint": None, "reason": "no container engine probe was given"}
    )
    run_config = {
        "profile": str(loaded.path),
        "profile_sha256": loaded.content_sha256,
        "pins": result.pins.model_dump(mode="json"),
        "seed": result.seed,
        "check": result.plan.as_json(),
    }
    files: dict[str, bytes] = {
        "env.json": canonical_bytes(env),
        "run_config.json": canonical_bytes(run_config),
        "determinism_applied.json": canonical_bytes(
            {"controls": determinism_controls(loaded, result)}
        ),
        TRACE_FILE: trace,
        "report.json": canonical_bytes(report),
        "report.txt": report_text(report, result).encode("utf-8"),
        "report.html": render_report_html(report, result).encode("utf-8"),
        "diffs/first_divergence.json": canonical_bytes(
            [d.as_json() for d in result.diagnosis.divergences]
        ),
    }
    signed_by = None
    if certificate is not None:
        # after every other file: the trace it names is written first
        files[CERTIFICATE_FILE] = certificate_envelope(certificate, signer)
        signed_by = signer_public_key(signer).keyid if signer is not None else None
    (directory / "diffs").mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        atomic_write_bytes(directory / name, data, force=force)
        written.append(directory / name)
    return ReproPack(
        directory=directory,
        files=tuple(written),
        report=report,
        certificate=certificate,
        signed_by=signed_by,
    )
