"""The gateway command: serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detserve.cli.app import app
from detserve.cli.options import ConfigOption, DockerHostOption, FullVerifyOption
from detserve.cli.output import JsonOption, emit_json, result, say


@app.command("serve")
def serve_command(
    config: ConfigOption,
    transcript_dir: Annotated[
        Path,
        typer.Option(
            "--transcript-dir",
            file_okay=False,
            help="Where the transcript segments go (canonical run-log lines, one per exchange).",
        ),
    ],
    host: Annotated[
        str,
        typer.Option("--host", help="Address to bind; not loopback only with --secrets-file."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to bind.")] = 8088,
    secrets_file: Annotated[
        Path | None,
        typer.Option(
            "--secrets-file",
            dir_okay=False,
            help="A .env file holding DETSERVE_API_KEY; clients must then send it as a bearer "
            "token.",
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            min=1,
            help="Requests in flight to the engine; above 1 only with --certificate.",
        ),
    ] = 1,
    certificate: Annotated[
        Path | None,
        typer.Option(
            "--certificate",
            dir_okay=False,
            help="A signed concurrency certificate (`detserve check --signing-key`) for these pins "
            "and that level; its trace.jsonl must lie beside it.",
        ),
    ] = None,
    certificate_key: Annotated[
        Path | None,
        typer.Option(
            "--certificate-key",
            dir_okay=False,
            help="The public key (PEM) the certificate must be signed with.",
        ),
    ] = None,
    queue_size: Annotated[
        int,
        typer.Option("--queue-size", min=0, help="Requests that may wait; beyond, 429."),
    ] = 32,
    reverify_interval: Annotated[
        float,
        typer.Option(
            "--reverify-interval",
            min=0.001,
            help="Seconds between two checks of the snapshot's record while serving (a change "
            "through the file system is caught within it; on a snapshot of many files, within "
            "the longer spacing that keeps the checks to 4 % of a core, which /health states); "
            "each also advances the paced full pass.",
        ),
    ] = 2.0,
    reverify_rate: Annotated[
        float,
        typer.Option(
            "--reverify-rate",
            min=0.001,
            metavar="MIB_PER_S",
            help="Pace of the periodic full pass that reads every byte again, in MiB/s (about "
            "2 % of a core at the default); a ceiling: the checks' 4 % of a core, measured, "
            "slows it where files are many and small.",
        ),
    ] = 32.0,
    rotate_exchanges: Annotated[
        int | None,
        typer.Option("--rotate-exchanges", min=1, help="Close a segment after N exchanges."),
    ] = None,
    full_verify: FullVerifyOption = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A Host header value clients may send besides the bound address and port "
            "(NAME or NAME:PORT, matched exactly; repeatable): the names clients reach a "
            "non-loopback or proxied gateway by. Any other Host, and any request from a web page "
            "of another origin, is refused (403).",
        ),
    ] = None,
    docker_host: DockerHostOption = None,
    json_output: JsonOption = False,
) -> None:
    """Serve a verified, OpenAI-compatible gateway in front of the pinned server.

    Verifies as `sample` does (pins, the whole snapshot, the bound container, the served model),
    then answers /v1/completions and /v1/chat/completions (streamed or not), /v1/models,
    /health and /v1/provenance/ID. Requests are admitted strictly (greedy, the profile's seed,
    no chat-template override; anything else is a 400 naming the field); every answer carries
    its provenance (X-Detserve-* headers and a `detserve` field) and is recorded in a transcript
    before it is given. More than one request in flight (--concurrency N) needs --certificate
    FILE --certificate-key PUB: a certificate signed with that key, supported by the trace
    beside it and covering these pins and N. Requests whose Host is not the gateway's, or that
    come from a web page of another origin, are refused; slow and idle connections are dropped.
    The transcript directory is made 0700 (an existing one others may enter is refused). Stop it
    with Ctrl-C; the transcript is then closed. Examples:

        detserve serve --config configs/tiny-cpu.local.json --transcript-dir runs/gateway
        detserve serve --config configs/tiny-cpu.local.json --transcript-dir runs/gateway \\
            --host 0.0.0.0 --secrets-file gateway.env --allowed-host gateway.example:8088
    """
    from detserve import api

    outcome = api.serve(
        config,
        transcript_dir=transcript_dir,
        host=host,
        port=port,
        secrets_file=secrets_file,
        concurrency=concurrency,
        certificate=certificate,
        certificate_key=certificate_key,
        queue_size=queue_size,
        reverify_interval_s=reverify_interval,
        reverify_bytes_per_s=round(reverify_rate * 1024 * 1024),
        full_verify=full_verify,
        rotate_exchanges=rotate_exchanges,
        allowed_hosts=allowed_host or (),
        on_ready=lambda url: say(f"gateway ready at {url} (Ctrl-C stops it)"),
        on_warning=lambda message: say(f"warning: {message}"),
        docker_host=docker_host,
    )
    if json_output:
        emit_json(outcome.as_json())
        return
    for path, sha256 in outcome.segments:
        result(f"transcript {path} (sha256 {sha256})")
