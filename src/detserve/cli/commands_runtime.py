"""Container commands: start, wait, smoke, stop, run, status, logs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from detserve import api
from detserve.cli import commands_cluster
from detserve.cli.app import app
from detserve.cli.options import ConfigOption, DockerHostOption, FullVerifyOption
from detserve.cli.output import JsonOption, emit_json, result, say, stderr
from detserve.errors import EXIT_VERIFICATION
from detserve.printable import printable

if TYPE_CHECKING:
    # an annotation only: importing the runtime's readiness imports the Docker SDK, which the
    # commands registered after these (`env --host-only`, `doctor --host-only`) must not need
    from detserve.runtime.readiness import WaitProgress

SecretsFileOption = Annotated[
    Path | None,
    typer.Option(
        "--secrets-file",
        help=(
            "A .env file of credentials for the container (KEY=VALUE lines, no shell "
            "expansion); names only are ever shown. Settings belong in the profile instead."
        ),
        dir_okay=False,
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=1,
        help="Seconds to wait for the server (default: the profile's runtime.startup_timeout_s).",
    ),
]

_PHASES = {
    "verifying": "verifying the snapshot",
    "starting": "waiting for the server to answer /health",
    "loading": "server up, waiting for the model in /v1/models",
    "ready": "server ready",
}


class _WaitDisplay:
    """A spinner line for the server and one for the snapshot verification, on stderr."""

    def __init__(self, progress: Progress, label: str) -> None:
        self._progress = progress
        self._label = printable(label)  # a task's description is shown as it is
        self._server: TaskID = progress.add_task(f"{label}: starting", detail="")
        self._verify: TaskID | None = None

    def __call__(self, update: WaitProgress) -> None:
        if update.phase != "verifying":
            description = f"{self._label}: {_PHASES[update.phase]}"
            self._progress.update(self._server, description=description)
        if update.verify_total_bytes is None and update.phase != "verifying":
            return
        if self._verify is None:
            self._verify = self._progress.add_task("snapshot sha256", detail="")
        total = update.verify_total_bytes
        done = "done" if update.verify_done else "verifying"
        shown = f"{update.verified_bytes / 1e6:,.1f}"
        shown += f" / {total / 1e6:,.1f} MB" if total is not None else " MB"
        self._progress.update(self._verify, detail=f"{shown} ({done})")


@contextmanager
def _wait_display(label: str) -> Iterator[_WaitDisplay]:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        TextColumn("{task.fields[detail]}", markup=False),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as progress:
        yield _WaitDisplay(progress, label)


@app.command("start")
def start_command(
    config: ConfigOption,
    secrets_file: SecretsFileOption = None,
    docker_host: DockerHostOption = None,
    json_output: JsonOption = False,
) -> None:
    """Start the profile's pinned vLLM container (or find it already running).

    Refuses before anything starts unless every pin is set and the manifest of the pinned
    revision exists. The image is run by digest only; the Hugging Face home is mounted read-only
    and the server is published on runtime.host:runtime.port. A container of the same name with
    other pins is never reused (exit 1). Follow with `detserve wait`. Example:

        detserve start --config configs/tiny-cpu.json
    """
    loaded = api.load_profile(config)
    started = api.start(loaded, secrets_file=secrets_file, docker_host=docker_host)
    if json_output:
        emit_json(started.as_json())
        return
    container = started.container
    if started.already_running:
        result(f"already running: {container.name} ({container.short_id}), same pins")
    else:
        result(f"started {container.name} ({container.short_id}) on {started.base_url}")
        if started.replaced:
            say(f"removed the stopped container {started.replaced[:12]} of the same pins")
    say("engine args: " + " ".join(started.engine_args))
    say(f"next: detserve wait --config {config}")


@app.command("wait")
def wait_command(
    config: ConfigOption,
    timeout: TimeoutOption = None,
    verify_manifest: Annotated[
        bool,
        typer.Option(
            "--verify-manifest",
            help=(
                "Verify the whole snapshot against its manifest while waiting; a mismatch fails "
                "(exit 1) and stops and removes the container."
            ),
        ),
    ] = False,
    docker_host: DockerHostOption = None,
    json_output: JsonOption = False,
) -> None:
    """Wait until the started server answers with the pinned model name.

    Polls /health, then /v1/models. If the container exits or restarts meanwhile, fails at once
    (exit 3) with its last log lines. Progress goes to stderr. Example:

        detserve wait --config configs/tiny-cpu.json --verify-manifest --timeout 300
    """
    loaded = api.load_profile(config)
    with _wait_display(loaded.container_name) as display:
        waited = api.wait(
            loaded,
            timeout_s=timeout,
            verify_manifest=verify_manifest,
            on_progress=display,
            docker_host=docker_host,
        )
    if json_output:
        emit_json(waited.as_json())
        return
    took = (
        "" if waited.start_to_ready_s is None else f", {waited.start_to_ready_s:.1f} s after start"
    )
    result(
        f"ready: {waited.base_url} serves {loaded.profile.vllm.served_model_name!r} "
        f"(vLLM {waited.version}{took})"
    )
    if waited.verify is not None:
        result(
            f"snapshot verified: {waited.verify.files} files, {waited.verify.bytes} bytes "
            f"(manifest sha256 {waited.verify.manifest_sha256})"
        )


@app.command("smoke")
def smoke_command(
    config: ConfigOption,
    docker_host: DockerHostOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check the running server serves the pinned model and answers deterministically.

    The served name must be in /v1/models with its root the pinned model; each of a few short
    greedy prompts is asked twice and must come back identical (tokens, text, logprobs), else
    exit 1. Example:

        detserve smoke --config configs/tiny-cpu.json
    """
    loaded = api.load_profile(config)
    smoked = api.smoke(loaded, docker_host=docker_host)
    if json_output:
        emit_json(smoked.as_json())
        return
    result(
        f"smoke OK: {smoked.served_model!r} from {smoked.root} (vLLM {smoked.version}); "
        f"{len(smoked.samples)} prompts x 2 identical"
    )
    for sample in smoked.samples:
        say(f"  {sample.prompt!r} -> {list(sample.token_ids)} {sample.text!r}")


@app.command("stop")
def stop_command(
    config: ConfigOption,
    docker_host: DockerHostOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop and remove the profile's container.

    None running is not an error (exit 0). A container of that name that detserve did not start
    for this profile is never removed. Example:

        detserve stop --config configs/tiny-cpu.json
    """
    loaded = api.load_profile(config)
    if loaded.profile.cluster is not None:
        commands_cluster.stop(loaded, docker_host=docker_host, json_output=json_output)
        return
    stopped = api.stop(loaded, docker_host=docker_host)
    if json_output:
        emit_json(stopped.as_json())
    elif stopped.removed is None:
        result(f"no container {stopped.name}: nothing to stop")
    else:
        result(f"stopped and removed {stopped.name} ({stopped.removed.short_id})")


@app.command("run")
def run_command(
    config: ConfigOption,
    secrets_file: SecretsFileOption = None,
    hash_first: Annotated[
        bool,
        typer.Option(
            "--hash",
            help="Also verify the whole snapshot before the container starts (slow if big).",
        ),
    ] = False,
    stop_after: Annotated[
        bool,
        typer.Option("--stop", help="Stop and remove the container at the end, pass or fail (CI)."),
    ] = False,
    timeout: TimeoutOption = None,
    docker_host: DockerHostOption = None,
    full_verify: FullVerifyOption = False,
    json_output: JsonOption = False,
) -> None:
    """Start, wait (verifying the whole snapshot meanwhile) and smoke-test, in one command.

    Refuses before anything starts when the manifest of the pinned revision is missing. Exit 0
    only when the server is up, the snapshot matches its manifest and the smoke test passed.
    Examples:

        detserve run --config configs/tiny-cpu.json

        detserve run --config configs/tiny-cpu.json --hash --stop   # CI: verify first, clean up
    """
    loaded = api.load_profile(config)
    if loaded.profile.cluster is not None:
        commands_cluster.run(
            loaded,
            secrets_file=secrets_file,
            hash_first=hash_first,
            stop_after=stop_after,
            timeout=timeout,
            docker_host=docker_host,
            json_output=json_output,
        )
        return
    with _wait_display(loaded.container_name) as display:
        ran = api.run(
            loaded,
            secrets_file=secrets_file,
            hash_first=hash_first,
            stop_after=stop_after,
            timeout_s=timeout,
            on_stage=say,
            on_progress=display,
            docker_host=docker_host,
            full_verify=full_verify,
        )
    if json_output:
        emit_json(ran.as_json())
        return
    waited = ran.wait
    took = (
        "" if waited.start_to_ready_s is None else f" {waited.start_to_ready_s:.1f} s after start"
    )
    result(
        f"ready: {waited.base_url} serves {ran.smoke.served_model!r} (vLLM {waited.version}){took}"
    )
    if waited.verify is not None:
        result(f"snapshot verified: {waited.verify.files} files match {loaded.manifest_path}")
    result(f"smoke OK: {len(ran.smoke.samples)} prompts x 2 identical")
    if ran.stopped:
        result(f"stopped and removed {ran.start.container.name}")


@app.command("status")
def status_command(
    config: ConfigOption,
    docker_host: DockerHostOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show the profile's container, the pins on its labels and its health.

    Exit 1 when a container runs with other pins than the profile's. Example:

        detserve status --config configs/tiny-cpu.json --json
    """
    loaded = api.load_profile(config)
    if loaded.profile.cluster is not None:
        commands_cluster.status(loaded, docker_host=docker_host, json_output=json_output)
        return
    state = api.status(loaded, docker_host=docker_host)
    if json_output:
        emit_json(state.as_json())  # one object: "ok": false and the mismatches, then exit 1
        if state.mismatches:
            raise typer.Exit(EXIT_VERIFICATION)
        return
    if state.container is None:
        result(f"{state.name}: no container")
    else:
        container = state.container
        result(f"{state.name}: {container.describe()} ({container.short_id}), {state.base_url}")
        result(f"  started at {container.started_at}, restarts {container.restart_count}")
        for label, value in state.pins.items():
            result(f"  {label} = {value}")
        result(f"  pins: {'MISMATCH' if state.mismatches else 'match the profile'}")
        result(f"  health: {state.health}")
        for model in state.served:
            result(f"  serves {model.id!r} from {model.root}")
    state.check()


@app.command("logs")
def logs_command(
    config: ConfigOption,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until interrupted.")
    ] = False,
    tail: Annotated[int, typer.Option("--tail", min=0, help="Lines from the end to show.")] = 100,
    docker_host: DockerHostOption = None,
    json_output: JsonOption = False,
) -> None:
    """Print the container's log lines (stdout and stderr of the server).

    Examples:

    detserve logs --config configs/tiny-cpu.json --tail 30

    detserve logs --config configs/tiny-cpu.json --follow
    """
    loaded = api.load_profile(config)
    lines = api.logs(loaded, follow=follow, tail=tail, docker_host=docker_host)
    if json_output and not follow:
        emit_json({"ok": True, "name": loaded.container_name, "lines": list(lines)})
        return
    for line in lines:
        if json_output:
            emit_json({"line": line})
        else:
            # Written, not printed through rich (a log line is not markup), and escaped: the
            # container's output is received text, and may hold any control sequence.
            sys.stdout.write(printable(line) + "\n")
            sys.stdout.flush()
