"""``detserve download``: the model files of the pinned commit, fetched and verified."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress

from detserve.api.snapshots import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, DEFAULT_WORKERS
from detserve.cli.app import app
from detserve.cli.options import ConfigOption
from detserve.cli.output import JsonOption, byte_columns, emit_json, result, say, stderr
from detserve.errors import bounded

if TYPE_CHECKING:
    from detserve.download import DownloadPlan, DownloadResult

#: names of left-out files shown before "... and N more"
_SHOWN = 20


def _mib(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB"


class DownloadProgress:
    """One live display: the bytes fetched, then the bytes verified (a DownloadObserver)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._fetch = progress.add_task("downloading", total=None, visible=False)
        self._verify = progress.add_task("verifying", total=None, visible=False)

    def planned(self, plan: DownloadPlan) -> None:
        _show_plan(plan)
        self._progress.update(self._fetch, total=plan.fetch_bytes, visible=bool(plan.to_fetch))

    def fetched(self, count: int) -> None:
        self._progress.advance(self._fetch, count)

    def verifying(self, total: int) -> None:
        self._progress.update(self._verify, total=total, visible=True)

    def verified(self, count: int) -> None:
        self._progress.advance(self._verify, count)


@contextmanager
def download_progress() -> Iterator[DownloadProgress]:
    with Progress(
        *byte_columns(), console=stderr, transient=True, refresh_per_second=4
    ) as progress:
        yield DownloadProgress(progress)


def _show_plan(plan: DownloadPlan) -> None:
    """The plan, on stderr: what was asked, the patterns, what they leave out, what is fetched."""
    say(
        f"{plan.repo_id}@{plan.revision} from {plan.endpoint}: {len(plan.files)} files chosen, "
        f"{len(plan.skipped)} left out"
    )
    say(f"  include: {' '.join(plan.include)}")
    say(f"  exclude: {' '.join(plan.exclude) or '(none)'}")
    if plan.skipped:
        more = len(plan.skipped) - _SHOWN
        names = " ".join(plan.skipped[:_SHOWN]) + (f" ... and {more} more" if more > 0 else "")
        say(f"  left out: {names}")
    present = len(plan.files) - len(plan.to_fetch)
    say(
        f"  to fetch: {len(plan.to_fetch)} files, {_mib(plan.fetch_bytes)}; already here: "
        f"{present}; free: {_mib(plan.free_bytes)}"
    )
    if plan.removed_partials:
        say(f"  removed {plan.removed_partials} partial file(s) of an interrupted download")


def _show_result(done: DownloadResult) -> None:
    plan = done.plan
    if plan.to_fetch:
        rate = done.fetched_bytes / done.seconds / 1e6 if done.seconds > 0 else 0.0
        result(
            f"downloaded {len(plan.to_fetch)} files ({done.fetched_bytes} bytes in "
            f"{done.seconds:.1f} s, {rate:.1f} MB/s) to {plan.snapshot_dir}"
        )
    else:
        result(f"nothing to fetch: all {len(plan.files)} files are in {plan.snapshot_dir}")
    if done.verified is not None:
        report = done.verified
        result(
            f"OK: {report.files} files, {report.bytes} bytes match {done.manifest} "
            f"(manifest sha256 {report.manifest_sha256})"
        )
        return
    result(f"NOT TRUSTED: there is no manifest {done.manifest}; nothing downloaded is trusted yet.")
    result("Review these files, then pin them (the manifest becomes their trust root) with:")
    result(f"  {done.next_command}")


IncludeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        metavar="PATTERN",
        help=(
            "Fetch the files whose path matches (glob; repeat it). Replaces the defaults, the "
            f"files vLLM loads: {' '.join(DEFAULT_INCLUDE)}"
        ),
    ),
]
ExcludeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        metavar="PATTERN",
        help=(
            "Leave out the files whose path matches (glob; repeat it). Replaces the defaults: "
            f"{' '.join(DEFAULT_EXCLUDE)}"
        ),
    ),
]


@app.command("download")
def download_command(
    config: ConfigOption,
    secrets_file: Annotated[
        Path | None,
        typer.Option(
            "--secrets-file",
            dir_okay=False,
            help="A .env file holding HF_TOKEN=... for a gated or private model. The only "
            "source of a token: without it none is sent (HF_TOKEN in the environment is not "
            "used). Its values are never shown.",
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            metavar="URL",
            help="Hub address, e.g. a mirror (default: HF_ENDPOINT, else huggingface.co).",
        ),
    ] = None,
    include: IncludeOption = None,
    exclude: ExcludeOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help=f"Files fetched at once (default {DEFAULT_WORKERS})."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Only list what would be fetched; fetch nothing."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Fetch the model files of the pinned commit into the profile's Hugging Face home.

    The hub is asked for `model.revision` (a 40-hex commit; pin it first with `detserve
    lock-model --write`) and nothing else, through huggingface_hub. The files land where
    `detserve run` mounts them: `snapshot.hf_home/hub/models--ORG--NAME/snapshots/REVISION/`.
    Only what vLLM loads is fetched (weights, configurations, tokenizer, chat template): the
    patterns are printed, and --include / --exclude replace them.

    The token is HF_TOKEN of --secrets-file, and only that. Free disk space is checked against
    the hub's sizes first. An interrupted download leaves no unfinished file in the snapshot:
    run the same command again, and only what is missing is fetched.

    Then the files are verified against the committed manifest
    (`manifest_dir/NAME/REVISION.sha256`): exit 1 naming every file that differs. Without a
    manifest nothing is trusted yet, and the `detserve hash` command that pins the files is
    printed: review them first. `download` never writes a manifest.

    Exit 0 ok; 1 the files differ from the manifest, or the hub answered another commit; 2 bad
    input (an unpinned revision, a bad profile, pattern or secrets file); 3 the hub could not be
    reached, or too little disk space. Examples:

        detserve download --config configs/qwen3-8b.json --secrets-file .env

        detserve download --config configs/qwen3-8b.json --dry-run

        detserve download --config P --endpoint http://127.0.0.1:8090 \\
            --include '*.safetensors' --include config.json --include 'tokenizer*'
    """
    from detserve import api

    if dry_run:
        plan = api.plan_download(
            config, secrets_file=secrets_file, endpoint=endpoint, include=include, exclude=exclude
        )
        if json_output:
            emit_json({"ok": True, "dry_run": True, **plan.as_json()})
            return
        _show_plan(plan)
        for remote in plan.files:
            # a path is the hub's text: escaped like every line from outside
            result(bounded(f"{remote.state:<7} {remote.size:>14} {remote.path}"))
        return
    with download_progress() as display:
        done = api.download_snapshot(
            config,
            secrets_file=secrets_file,
            endpoint=endpoint,
            include=include,
            exclude=exclude,
            workers=workers,
            observer=display,
        )
    if json_output:
        emit_json(done.as_json())
    else:
        _show_result(done)
