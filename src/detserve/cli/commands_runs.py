"""Run commands: sample, eval-determinism, replay."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from detserve.cli.app import app
from detserve.cli.junit_option import JunitXmlOption, junit_xml_report, record_outcome
from detserve.cli.options import legacy_output_option, renamed
from detserve.cli.output import (
    JsonOption,
    count_progress,
    emit_json,
    raise_verdict,
    result,
    say,
)

if TYPE_CHECKING:
    pass

# --- eval-determinism ---------------------------------------------------------------------------


@contextmanager
def _sample_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    with count_progress(description, None) as (progress, task):

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield advance


def _compared(options: Mapping[str, Any]) -> str:
    """What eval-determinism compares, for its JUnit report's case name."""
    if options["runs"]:
        return ", ".join(str(path) for path in options["runs"])
    if options["expected_hash"] is not None:
        return f"{options['run_a']} against sha256 {options['expected_hash']}"
    return f"{options['run_b']} against {options['run_a']}"


@app.command("eval-determinism")
@junit_xml_report(
    "eval-determinism",
    subject=_compared,
    inputs=("run_a", "run_b", "runs", "sidecars"),
    outputs=("report_output", "legacy_output"),
)
def eval_determinism(
    run_a: Annotated[
        Path | None,
        typer.Option("--run-a", help="The reference run log.", dir_okay=False, metavar="PATH"),
    ] = None,
    run_b: Annotated[
        Path | None,
        typer.Option(
            "--run-b", help="The run log to compare with it.", dir_okay=False, metavar="PATH"
        ),
    ] = None,
    expected_hash: Annotated[
        str | None,
        typer.Option(
            "--expected-hash",
            help="Check --run-a against this published sha256 instead of comparing two logs.",
            metavar="SHA256",
        ),
    ] = None,
    runs: Annotated[
        list[Path] | None,
        typer.Option(
            "--run",
            help="A run log for the majority mode; repeat it, once per node (three or more).",
            dir_okay=False,
            metavar="PATH",
        ),
    ] = None,
    sidecars: Annotated[
        list[Path] | None,
        typer.Option(
            "--sidecar",
            help=(
                "A run's sidecar (it names its run log's sha256), once per run log in their "
                "order (--expected-hash: --run-a's, then the published log's): each log that "
                "disagrees is explained by its environment differences, ranked by cause."
            ),
            dir_okay=False,
            metavar="PATH",
        ),
    ] = None,
    report_output: Annotated[
        Path | None,
        typer.Option(
            "--report-output", help="Write the JSON report here (atomically).", dir_okay=False
        ),
    ] = None,
    legacy_output: Annotated[Path | None, legacy_output_option("--report-output")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing report.")] = False,
    min_exact_match_ratio: Annotated[
        float | None,
        typer.Option(
            "--min-exact-match-ratio",
            help=(
                "Accept run B when at least this fraction of samples match exactly "
                "(default 1: every sample). Verdict: within-threshold, exit 0."
            ),
            metavar="RATIO",
        ),
    ] = None,
    logprob_tolerance: Annotated[
        float | None,
        typer.Option(
            "--logprob-tolerance",
            help=(
                "A sample whose tokens, text and finish reason are identical matches when its "
                "logprobs differ by at most this much (default: they must be identical)."
            ),
            metavar="ABS",
        ),
    ] = None,
    max_reported: Annotated[
        int,
        typer.Option(
            "--max-reported",
            min=0,
            help="Divergent samples described in full; all are counted.",
        ),
    ] = 20,
    junit_xml: JunitXmlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Compare run logs byte for byte, and say where they part.

    Two logs (is B a faithful replay of A?):

        detserve eval-determinism --run-a runs/a.runlog.jsonl --run-b runs/b.runlog.jsonl \\
            --report-output runs/a-vs-b.report.json

    Identical bytes: IDENTICAL. Otherwise different pins, sampling parameters or prompts: NOT A
    REPLAY, each differing field with both values. Otherwise DIVERGENT, each divergent sample with
    its first divergent output token, 8 tokens either side, the texts around the first differing
    character, both finish reasons and the largest logprob difference. Thresholds relax the
    strict default, and the report records them:

        detserve eval-determinism --run-a A --run-b B --min-exact-match-ratio 0.99

    One log against its published sha256:

        detserve eval-determinism --run-a runs/a.runlog.jsonl --expected-hash 3f5a...

    One log per node, grouped by sha256 (a majority is more than half; a tie is none):

        detserve eval-determinism --run n1.runlog.jsonl --run n2.runlog.jsonl --run n3.runlog.jsonl

    With a sidecar per log (`--sidecar`, in the logs' order), every log that disagrees is also
    explained: its first divergence and how its environment fingerprint differs from the
    reference's (image, vLLM, GPU, driver, numerics environment), most likely cause first
    (hardware, software version, numerics settings, model files, concurrency):

        detserve eval-determinism --run n1.runlog.jsonl --run n2.runlog.jsonl \\
            --run n3.runlog.jsonl --sidecar n1.sidecar.json --sidecar n2.sidecar.json \\
            --sidecar n3.sidecar.json

    Every log is validated completely first. Exit 0: identical, within the thresholds, the
    expected hash, or unanimous; 1: divergent, not a replay, another hash, or any dissent;
    2: an invalid log or bad options. With --junit-xml PATH the verdict is also written as a
    JUnit report for CI, pass or fail.
    """
    from detserve import api

    output = renamed(report_output, legacy_output, name="--report-output", old="--output")
    compares_two = run_a is not None and run_b is not None and not runs and expected_hash is None
    with _sample_progress("comparing") if compares_two else nullcontext(None) as advance:
        report = api.eval_determinism(
            run_a=run_a,
            run_b=run_b,
            runs=runs or (),
            expected_hash=expected_hash,
            sidecars=sidecars or (),
            min_exact_match_ratio=min_exact_match_ratio,
            logprob_tolerance=logprob_tolerance,
            max_reported=max_reported,
            report=output,
            force=force,
            progress=advance,
            on_validating=lambda path: say(f"validating {path}"),
        )
    if json_output:
        emit_json(report.as_json())
    else:
        for line in report.summary_lines():
            result(line)
        if output is not None:
            say(f"report written to {output}")
    record_outcome(report.summary_lines(), report.error())
    raise_verdict(report.error(), json_output=json_output)
