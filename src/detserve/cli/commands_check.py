"""Determinism diagnosis: detserve check (a thin layer over :func:`detserve.api.check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detserve.api import DEFAULT_CHECK_LEVELS
from detserve.cli.app import app
from detserve.cli.junit_option import JunitXmlOption, junit_xml_report, record_outcome
from detserve.cli.options import (
    BundleOption,
    BundlePinOption,
    ConfigOption,
    DockerHostOption,
    ForceOption,
    FullVerifyOption,
    MaxTokensOption,
    NPromptsOption,
    logprobs_option,
)
from detserve.cli.output import JsonOption, emit_json, raise_verdict, result, say
from detserve.errors import UsageError


def parse_levels(text: str) -> tuple[int, ...]:
    """``1,4,16`` -> (1, 4, 16); anything else is a usage error naming the item."""
    levels = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise UsageError(f"--concurrency {text!r}: {item!r} is not a positive integer")
        levels.append(int(item))
    return tuple(levels)


@app.command("check")
@junit_xml_report(
    "check",
    subject=lambda options: str(options["config"]),
    inputs=("config", "bundle", "bundle_pin", "signing_key"),
    output_dirs=("output_dir",),
    profile="config",
)
def check_command(
    config: ConfigOption,
    output_dir: Annotated[
        Path,
        typer.Option("--output-dir", file_okay=False, help="Where the repro pack is written."),
    ],
    tier: Annotated[
        int,
        typer.Option(
            "--tier",
            min=0,
            max=2,
            help="0: artifacts only, no promise; 1: identical tokens; 2: and logprobs, bit for "
            "bit.",
        ),
    ] = 1,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Runs at each concurrency level.")] = 3,
    concurrency: Annotated[
        str,
        typer.Option(
            "--concurrency",
            help="Levels of requests in flight, comma-separated; 1 (the baseline) is always "
            "measured.",
        ),
    ] = ",".join(str(level) for level in DEFAULT_CHECK_LEVELS),
    n_prompts: NPromptsOption = None,
    max_tokens: MaxTokensOption = None,
    logprobs: Annotated[
        int | None, logprobs_option("Request logprobs (tier 2 default: 1).")
    ] = None,
    no_shuffle: Annotated[
        bool,
        typer.Option("--no-shuffle", help="Do not also sample each level in a shuffled order."),
    ] = False,
    shuffle_seed: Annotated[
        int, typer.Option("--shuffle-seed", min=0, help="Seed of the shuffled orders.")
    ] = 0,
    bundle: BundleOption = None,
    bundle_pin: BundlePinOption = None,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            dir_okay=False,
            help="Sign the certificate with this private key (`detserve keygen`); without one it "
            "is written unsigned and no --concurrency above 1 accepts it.",
        ),
    ] = None,
    force: ForceOption = False,
    full_verify: FullVerifyOption = False,
    docker_host: DockerHostOption = None,
    junit_xml: JunitXmlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Diagnose non-determinism against the running, verified server; write a repro pack.

    The same checks as `sample` first (pins, snapshot, bundle, the bound container). Then the
    same prompts at each concurrency level, --runs times in the bundle's order and once
    shuffled, with that many requests truly in flight, all compared with concurrency 1.
    Verdicts: PASS, RUN_VARIANCE, BATCH_VARIANCE, LOGPROB_VARIANCE, LOGPROBS_UNAVAILABLE,
    ENV_CHANGED. A PASS at tier 1 or 2 writes certificate.json beside trace.jsonl, signed with
    --signing-key: `sample`/`serve --concurrency N --certificate C --certificate-key PUB` accept
    it; an unsigned one they refuse. A certificate already in the directory is removed first:
    a check that fails or is interrupted leaves none. Exit 0 pass at the tier; 1 otherwise; 2
    bad input; 3 environment. Example:

        detserve check --config configs/tiny-cpu.local.json --tier 2 --runs 3 \\
            --concurrency 1,4,16 --n-prompts 16 --output-dir checks/tiny \\
            --signing-key keys/operator.key
    """
    from detserve import api

    outcome = api.check(
        config,
        output_dir=output_dir,
        tier=tier,
        runs=runs,
        concurrency=parse_levels(concurrency),
        n_prompts=n_prompts,
        max_tokens=max_tokens,
        logprobs=logprobs,
        shuffle=not no_shuffle,
        shuffle_seed=shuffle_seed,
        bundle=bundle,
        bundle_pin=bundle_pin,
        force=force,
        signing_key=signing_key,
        on_pass=lambda key: say(f"pass {key.label()}"),
        full_verify=full_verify,
        docker_host=docker_host,
    )
    if json_output:
        emit_json(outcome.as_json())
    else:
        text = (outcome.pack.directory / "report.txt").read_text(encoding="utf-8")
        for line in text.splitlines():
            result(line)
        say(f"repro pack: {outcome.pack.directory}")
        certificate = outcome.pack.certificate
        if certificate is not None and outcome.pack.signed_by is not None:
            say(
                f"certificate: {outcome.certificate} (sha256 {certificate.sha256}), signed by "
                f"key {outcome.pack.signed_by}"
            )
        elif certificate is not None:
            say(
                f"certificate: {outcome.certificate} (sha256 {certificate.sha256}) is UNSIGNED: "
                "sample and serve refuse it for --concurrency above 1; run check with "
                "--signing-key KEY for one they accept"
            )
    report_text = (outcome.pack.directory / "report.txt").read_text(encoding="utf-8")
    record_outcome(report_text.splitlines(), outcome.error())
    raise_verdict(outcome.error(), json_output=json_output)
