"""The verifier's command for several engines: fleet."""

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
)
from detserve.cli.output import JsonOption, emit_json, raise_verdict, result, say


@app.command("fleet")
def fleet_command(
    config: ConfigOption,
    claim: Annotated[
        Path, typer.Option("--claim", dir_okay=False, help="The claimed run log to replay.")
    ],
    output_dir: Annotated[
        Path,
        typer.Option(
            "--output-dir",
            file_okay=False,
            help="Each node's replay goes to DIR/LABEL/; the fleet's report to DIR/fleet.json.",
        ),
    ],
    nodes: Annotated[
        list[str] | None,
        typer.Option(
            "--node",
            metavar="HOST[,config=PATH][,name=LABEL]",
            help=(
                "A Docker engine to replay on (repeat it): its URL, optionally the node's own "
                "profile (same pins, e.g. another port) and a name (default node1, node2, ...)."
            ),
        ),
    ] = None,
    docker_host: DockerHostOption = None,
    bundle: BundleOption = None,
    bundle_pin: BundlePinOption = None,
    stop_after: Annotated[
        bool, typer.Option("--stop", help="Stop and remove each node's container at the end.")
    ] = False,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Replay one claim on several Docker engines at once, and print the agreement table.

    Each node replays the claim as `detserve replay` does (pins compared first, then run,
    sample and compare), all nodes in parallel. The table gives each node's verdict, its run
    log's sha256 and how its environment fingerprint (host, GPU, driver, image, vLLM, numerics
    environment) differs from the first agreeing node's, most likely cause first. Example:

        detserve fleet --config configs/tiny-cpu.local.json --claim claims/a.runlog.jsonl \\
            --node unix:///var/run/docker.sock \\
            --node unix:///run/detserve-node2/docker.sock,config=node2.json \\
            --output-dir fleet/a

    Without --node, one node: the engine --docker-host (or DOCKER_HOST, or the Docker context)
    names. Exit 0: every node is byte-identical to the claim; 1: a node diverges or is not a
    replay; 2: bad input; 3: a node could not run (named).
    """
    from detserve import api

    report = api.replay_fleet(
        claim,
        config,
        nodes=nodes or (),
        docker_host=docker_host,
        output_dir=output_dir,
        bundle=bundle,
        bundle_pin=bundle_pin,
        stop_after=stop_after,
        force=force,
        on_stage=say,
    )
    if json_output:
        emit_json(report.as_json())
    else:
        for line in report.summary_lines():
            result(line)
        say(f"report {output_dir / 'fleet.json'}")
    raise_verdict(report.error(), json_output=json_output)
