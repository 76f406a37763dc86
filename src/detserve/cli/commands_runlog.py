"""What a run log claims, for a verifier holding only the file: runlog show, runlog validate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detserve.cli.app import app
from detserve.cli.output import JsonOption, emit_json, result

runlog_app = typer.Typer(
    help="Read a run log: what it claims, and whether it is a valid one.", no_args_is_help=True
)
app.add_typer(runlog_app, name="runlog")

RunLogArgument = Annotated[
    Path, typer.Argument(help="The run log (*.runlog.jsonl).", dir_okay=False, metavar="RUN_LOG")
]


@runlog_app.command("validate")
def runlog_validate(run_log: RunLogArgument, json_output: JsonOption = False) -> None:
    """Validate a run log completely: schema, canonical form (RFC 8785), order, footer.

    Exit 0 when valid, 2 naming the line and the field when not. Example:

        detserve runlog validate runs/a.runlog.jsonl
    """
    from detserve import api

    summary = api.show_run_log(run_log)
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
def runlog_show(run_log: RunLogArgument, json_output: JsonOption = False) -> None:
    """Show what a run log claims: its pins, sampling, counts, sha256, and what a replay needs.

    The log is validated completely first (exit 2 when it is not a valid run log). The last
    section translates the pins into the profile fields and files a verifier's own profile must
    hold for `detserve replay` to accept the claim. Example:

        detserve runlog show runs/a.runlog.jsonl --json
    """
    from detserve import api
    from detserve.replay_plan import replay_requirements

    summary = api.show_run_log(run_log)
    header = summary.header
    needs = replay_requirements(header)
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
