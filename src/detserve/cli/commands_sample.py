"""The operator's and the verifier's commands: sample, replay."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detserve.cli.app import app
from detserve.cli.options import (
    BundleOption,
    BundlePinOption,
    ConfigOption,
    DockerHostOption,
    ForceOption,
    FullVerifyOption,
    MaxTokensOption,
    NPromptsOption,
    legacy_output_option,
    logprobs_option,
    renamed,
)
from detserve.cli.output import (
    JsonOption,
    emit_json,
    raise_verdict,
    result,
    sampling_progress,
    say,
)
from detserve.errors import UsageError


def _refuse_weakening(skip_reference_hash_check: bool, temperature: float | None) -> None:
    # These options exist only to be refused by name: a strict run has no way to weaken itself.
    # (--concurrency above 1 without a certificate is the library's refusal, stated once in
    # detserve.certificate.check_certificate_options, before the engine is asked.)
    if skip_reference_hash_check:
        raise UsageError(
            "--skip-reference-hash-check is refused: the prompt bundle is always verified"
        )
    if temperature is not None and temperature != 0:
        raise UsageError(f"--temperature {temperature} is refused: strict sampling is greedy")


@app.command("sample")
def sample_command(
    config: ConfigOption,
    run_log_output: Annotated[
        Path,
        typer.Option("--run-log-output", dir_okay=False, help="The canonical run log to write."),
    ],
    sidecar_output: Annotated[
        Path | None,
        typer.Option(
            "--sidecar-output",
            dir_okay=False,
            help="The run's sidecar: what varies between faithful runs (times, host, container "
            "id) and a summary. Never compared. Required.",
        ),
    ] = None,
    legacy_output: Annotated[Path | None, legacy_output_option("--sidecar-output")] = None,
    n_prompts: NPromptsOption = None,
    max_tokens: MaxTokensOption = None,
    logprobs: Annotated[int | None, logprobs_option("Record each output token's logprob.")] = None,
    bundle: BundleOption = None,
    bundle_pin: BundlePinOption = None,
    force: ForceOption = False,
    skip_reference_hash_check: Annotated[
        bool, typer.Option("--skip-reference-hash-check", hidden=True)
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            help="Requests in flight. Above 1 only with a --certificate that covers it; the run "
            "log is the same bytes as at 1.",
        ),
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option(
            "--certificate",
            dir_okay=False,
            help="A signed concurrency certificate (`detserve check --signing-key`) for these "
            "pins and parameters; its trace.jsonl must lie beside it.",
        ),
    ] = None,
    certificate_key: Annotated[
        Path | None,
        typer.Option(
            "--certificate-key",
            dir_okay=False,
            help="The public key (PEM) the certificate must be signed with: whose word you take.",
        ),
    ] = None,
    audit: Annotated[
        float,
        typer.Option(
            "--audit",
            min=0.0,
            max=1.0,
            help="Re-sample this fraction of the prompts one at a time after the pass; any "
            "difference fails the run, nothing written.",
        ),
    ] = 0.0,
    audit_seed: Annotated[
        int, typer.Option("--audit-seed", min=0, help="Seed of the audited subset.")
    ] = 0,
    temperature: Annotated[float | None, typer.Option("--temperature", hidden=True)] = None,
    docker_host: DockerHostOption = None,
    full_verify: FullVerifyOption = False,
    json_output: JsonOption = False,
) -> None:
    """Sample the pinned prompt bundle from the running server, strictly, into a run log.

    Refuses unless the whole snapshot verifies, the prompt bundle matches its pin, and the
    running container is the pinned image serving the pinned model. Greedy, the profile's seed,
    one request at a time; no option weakens this (--temperature, --skip-reference-hash-check,
    or --concurrency 2 without a certificate exit 2). With a certificate from `detserve check
    --signing-key` that covers these pins, parameters and N, --concurrency N keeps N requests in
    flight and writes the same bytes as one at a time. The certificate is verified first: its
    signature with --certificate-key (unsigned or another key: exit 1), then the trace.jsonl
    beside it, whose sha256 it names and whose tokens must give its verdict again (exit 1);
    anything it does not cover exits 2, naming it. Any failure, Ctrl-C included, leaves nothing
    at the output paths. Examples:

        detserve sample --config configs/tiny-cpu.local.json --n-prompts 16 --max-tokens 32 \\
            --run-log-output runs/a.runlog.jsonl --sidecar-output runs/a.sidecar.json
        detserve sample --config configs/tiny-cpu.local.json --n-prompts 16 --max-tokens 32 \\
            --concurrency 16 --certificate check/certificate.json \\
            --certificate-key keys/operator.pub --audit 0.1 \\
            --run-log-output runs/b.runlog.jsonl --sidecar-output runs/b.sidecar.json
    """
    from detserve import api

    _refuse_weakening(skip_reference_hash_check, temperature)
    sidecar = renamed(sidecar_output, legacy_output, name="--sidecar-output", old="--output")
    if sidecar is None:
        raise UsageError("give --sidecar-output PATH: the run's sidecar")
    with sampling_progress() as shown:
        summary = api.sample(
            config,
            run_log=run_log_output,
            sidecar=sidecar,
            n_prompts=n_prompts,
            max_tokens=max_tokens,
            logprobs=logprobs,
            bundle=bundle,
            bundle_pin=bundle_pin,
            force=force,
            concurrency=concurrency or 1,
            certificate=certificate,
            certificate_key=certificate_key,
            audit=audit,
            audit_seed=audit_seed,
            observer=shown,
            docker_host=docker_host,
            full_verify=full_verify,
        )
    if json_output:
        emit_json(summary.as_json())
        return
    result(
        f"wrote {summary.run_log}: {summary.n_samples} samples, {summary.output_tokens} tokens, "
        f"sha256 {summary.run_log_sha256}"
    )
    say(
        f"sidecar {summary.sidecar}; {summary.tokens_per_s} tokens/s at concurrency "
        f"{summary.concurrency}"
        + (
            f" (certificate {summary.certificate_sha256}, signed by key "
            f"{summary.certificate_keyid})"
            if summary.certificate_sha256
            else ""
        )
        + (f"; audit: {len(summary.audited)} re-sampled, identical" if summary.audited else "")
    )


@app.command("replay")
def replay_command(
    claim: Annotated[
        Path, typer.Option("--claim", dir_okay=False, help="The claimed run log to replay.")
    ],
    config: ConfigOption,
    output_dir: Annotated[
        Path,
        typer.Option(
            "--output-dir",
            file_okay=False,
            help="Where the replay's run log, sidecar and report go.",
        ),
    ],
    bundle: BundleOption = None,
    bundle_pin: BundlePinOption = None,
    stop_after: Annotated[
        bool, typer.Option("--stop", help="Stop and remove the container at the end.")
    ] = False,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            dir_okay=False,
            help="The claim is a signed envelope (`detserve attest`): check it with this public "
            "key before anything else. Needs --run-log.",
        ),
    ] = None,
    run_log: Annotated[
        Path | None,
        typer.Option(
            "--run-log", dir_okay=False, help="With --public-key: the run log the envelope signs."
        ),
    ] = None,
    force: ForceOption = False,
    docker_host: DockerHostOption = None,
    full_verify: FullVerifyOption = False,
    json_output: JsonOption = False,
) -> None:
    """Re-run a claimed run log under your own pinned profile and compare, in one step.

    A gateway transcript (`detserve serve`) as the claim: every exchange is sent again, one at
    a time, and the replay's transcript compared with it the same way.

    First the claim is validated and its pins compared with the profile's (model, revision,
    manifest, image, engine args, prompt bundle, seed): other pins mean NOT A REPLAY, exit 1,
    and nothing runs. Then: run (start, wait with verification, smoke), sample with the claim's
    parameters, and eval-determinism against the claim. Example:

        detserve replay --claim claims/a.runlog.jsonl --config configs/tiny-cpu.local.json \\
            --output-dir replays/a

    A signed claim is checked first, signature then subject, and nothing runs unless both hold:

        detserve replay --claim a.claim.intoto.json --public-key detserve.pub \\
            --run-log a.runlog.jsonl --config configs/tiny-cpu.local.json --output-dir replays/a
    """
    from detserve import api

    with sampling_progress() as shown:
        replayed = api.replay_evidence(
            claim,
            config,
            output_dir=output_dir,
            bundle=bundle,
            bundle_pin=bundle_pin,
            stop_after=stop_after,
            force=force,
            public_key=public_key,
            run_log=run_log,
            on_stage=say,
            observer=shown,
            docker_host=docker_host,
            full_verify=full_verify,
        )
    report = replayed.report
    if json_output:
        emit_json(replayed.as_json())
    else:
        for line in report.summary_lines():
            result(line)
        if isinstance(replayed, api.TranscriptReplayResult):
            say(f"replay transcript {replayed.replay_transcript}; report {replayed.report_path}")
        else:
            say(f"replay run log {replayed.summary.run_log}; report {replayed.report_path}")
    raise_verdict(report.error(), json_output=json_output)
