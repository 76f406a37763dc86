"""What a run log claims, for a verifier holding only the file: runlog show, runlog validate.

Both take a sampled run log, a gateway transcript segment, or a directory of transcript
segments (``detserve serve --transcript-dir``), whose hash chain is then checked whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from detserve.cli.app import app
from detserve.cli.output import JsonOption, emit_json, result

if TYPE_CHECKING:
    from detserve.api import Evidence

runlog_app = typer.Typer(
    help="Read a run log or gateway transcript: what it claims, and whether it is a valid one.",
    no_args_is_help=True,
)
app.add_typer(runlog_app, name="runlog")

RunLogArgument = Annotated[
    Path,
    typer.Argument(
        help="The run log (*.runlog.jsonl), a gateway transcript segment (*.transcript.jsonl), "
        "or a directory of transcript segments.",
        metavar="RUN_LOG",
    ),
]
AllowCutOption = Annotated[
    bool,
    typer.Option(
        "--allow-cut",
        help="Accept a transcript whose last segment has no footer (a gateway that did not stop "
        "cleanly); its lines up to the cut are checked.",
    ),
]


def _transcripts(evidence: Evidence, json_output: bool, *, show: bool) -> None:
    """Show a directory of transcript segments, or one segment."""
    run_log = evidence.path
    if evidence.series is not None:
        series = evidence.series
        document = [
            {
                "transcript_id": one.transcript_id,
                "n_exchanges": one.n_exchanges,
                "cut": one.cut,
                "segments": [
                    {"path": str(s.path), "sha256": s.sha256, "n_exchanges": s.n_exchanges}
                    for s in one.segments
                ],
            }
            for one in series
        ]
        if json_output:
            emit_json({"ok": True, "directory": str(run_log), "transcripts": document})
            return
        result(f"{run_log}: {len(series)} gateway transcripts, every chain intact")
        for one in series:
            state = "cut (the gateway did not stop cleanly)" if one.cut else "closed"
            result(
                f"  {one.transcript_id}: {len(one.segments)} segments, {one.n_exchanges} "
                f"exchanges, {state}"
            )
            if show:
                for segment in one.segments:
                    result(f"    {segment.path.name} sha256 {segment.sha256}")
        return
    if evidence.transcript is None:
        return
    summary = evidence.transcript
    header = summary.header
    if json_output:
        document_one: dict[str, object] = {
            "ok": True,
            "transcript": str(run_log),
            "sha256": summary.sha256,
            "n_exchanges": summary.n_exchanges,
            "cut": summary.cut,
        }
        if show:
            document_one |= {
                "format_version": header.format_version,
                "transcript_id": header.transcript_id,
                "segment": header.segment,
                "previous_sha256": header.previous_sha256,
                "pins": header.pins.model_dump(mode="json"),
                "seed": header.seed,
            }
        emit_json(document_one)
        return
    cut = ", cut (no footer)" if summary.cut else ""
    result(
        f"{run_log}: valid gateway transcript segment, {summary.n_exchanges} exchanges{cut}, "
        f"sha256 {summary.sha256}"
    )
    if show:
        result(
            f"  transcript {header.transcript_id}, segment {header.segment}, previous "
            f"segment sha256 {header.previous_sha256}, format version {header.format_version}"
        )
        result("pins:")
        for name, value in sorted(header.pins.model_dump(mode="json").items()):
            result(f"  {name}: {value}")
        result(f"seed: {header.seed}")


@runlog_app.command("validate")
def runlog_validate(
    run_log: RunLogArgument, allow_cut: AllowCutOption = False, json_output: JsonOption = False
) -> None:
    """Validate a run log completely: schema, canonical form (RFC 8785), order, footer.

    A gateway transcript segment is validated the same way; a directory of them also has the
    hash chain of each gateway run's segments checked: none missing, reordered, renamed or
    substituted. Exit 0 when valid, 2 naming the line and the field when not, 1 naming the
    segment where a chain is broken. Examples:

        detserve runlog validate runs/a.runlog.jsonl
        detserve runlog validate runs/gateway
    """
    from detserve import api

    evidence = api.read_evidence(run_log, allow_cut=allow_cut)
    if evidence.run_log is None:
        _transcripts(evidence, json_output, show=False)
        return
    summary = evidence.run_log
    if json_output:
        emit_json(
            {
                "ok": True,
                "run_log": str(run_log),
                "sha256": summary.sha256,
                "n_samples": summary.n_samples,
            }
        )
        return
    result(f"{run_log}: valid run log, {summary.n_samples} samples, sha256 {summary.sha256}")


@runlog_app.command("show")
def runlog_show(
    run_log: RunLogArgument, allow_cut: AllowCutOption = False, json_output: JsonOption = False
) -> None:
    """Show what a run log claims: its pins, sampling, counts, sha256, and what a replay needs.

    The log is validated completely first (exit 2 when it is not a valid run log). The last
    section translates the pins into the profile fields and files a verifier's own profile must
    hold for `detserve replay` to accept the claim. Example:

        detserve runlog show runs/a.runlog.jsonl --json

    A transcript segment shows its pins, seed and place in its chain; a directory its gateway
    runs and their segments, each chain checked.
    """
    from detserve import api

    evidence = api.read_evidence(run_log, allow_cut=allow_cut)
    if evidence.run_log is None:
        _transcripts(evidence, json_output, show=True)
        return
    summary = evidence.run_log
    header = summary.header
    needs = evidence.replay_needs
    if json_output:
        emit_json(
            {
                "ok": True,
                "run_log": str(run_log),
                "sha256": summary.sha256,
                "format_version": header.format_version,
                "n_samples": summary.n_samples,
                "pins": header.pins.model_dump(mode="json"),
                "sampling": header.sampling.model_dump(mode="json"),
                "replay_needs": [{"field": field, "value": value} for field, value in needs],
            }
        )
        return
    result(f"run log {run_log}")
    result(f"  sha256 {summary.sha256} (the claim), format version {header.format_version}")
    result(f"  {summary.n_samples} samples")
    result("pins:")
    for name, value in sorted(header.pins.model_dump(mode="json").items()):
        result(f"  {name}: {value}")
    result("sampling:")
    for name, value in sorted(header.sampling.model_dump(mode="json").items()):
        result(f"  {name}: {value}")
    result("a replay needs, in your profile:")
    for field, value in needs:
        result(f"  {field}: {value}")
