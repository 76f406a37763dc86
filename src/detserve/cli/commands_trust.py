"""Trust-root commands: profiles, manifests, locks and prompt bundles."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from detserve.canonical import refuse_overwrite
from detserve.cli.app import app
from detserve.cli.options import ConfigOption, OptionalConfigOption, WorkersOption
from detserve.cli.output import JsonOption, byte_progress, emit_json, result, say
from detserve.errors import UsageError
from detserve.profile import LoadedProfile, load_profile, profile_json_schema
from detserve.snapshot import build_manifest, verify_snapshot, write_manifest

config_app = typer.Typer(
    help="Validate profiles and print their JSON Schema.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("validate")
def config_validate(
    config: ConfigOption,
    allow_unpinned: Annotated[
        bool,
        typer.Option(
            "--allow-unpinned",
            help="Accept null pins (a profile waiting for lock-model / lock-image).",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Validate a profile: one line per bad field (where, what was expected, what was found).

    Exit 0 when valid and fully pinned, 2 otherwise. Example:

        detserve config validate --config configs/tiny-cpu.json
    """
    loaded = load_profile(config)
    if not allow_unpinned:
        loaded.require_pins()
    missing = loaded.missing_pins()
    if json_output:
        emit_json(
            {
                "ok": True,
                "profile": str(config),
                "name": loaded.name,
                "profile_sha256": loaded.content_sha256,
                "unpinned": list(missing),
            }
        )
    else:
        state = f"unpinned: {', '.join(missing)}" if missing else "fully pinned"
        result(f"{config}: valid ({state})")


@config_app.command("schema")
def config_schema() -> None:
    """Print the profile JSON Schema (committed as docs/profile.schema.json)."""
    sys.stdout.write(json.dumps(profile_json_schema(), indent=2, sort_keys=True) + "\n")


def _snapshot_and_manifest(
    config: Path | None, snapshot: Path | None, manifest: Path | None
) -> tuple[Path, Path | None, LoadedProfile | None]:
    if config is not None:
        if snapshot is not None:
            raise UsageError(
                "--snapshot and --config are exclusive: the profile names the snapshot"
            )
        loaded = load_profile(config)
        loaded.require_pins(("model.revision",))
        return loaded.snapshot_dir, manifest or loaded.manifest_path, loaded
    if snapshot is None:
        raise UsageError("give --config PROFILE, or --snapshot DIR (with --manifest PATH)")
    return snapshot, manifest, None


SnapshotOption = Annotated[
    Path | None,
    typer.Option(
        "--snapshot",
        help="Any directory to hash or verify, instead of a profile's.",
        file_okay=False,
    ),
]


@app.command("hash")
def hash_command(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Manifest file to write.", dir_okay=False)
    ],
    config: OptionalConfigOption = None,
    snapshot: SnapshotOption = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing manifest.")] = False,
    workers: WorkersOption = None,
    json_output: JsonOption = False,
) -> None:
    """Hash every file of a snapshot into a sha256 manifest (coreutils format).

    Making a manifest creates a trust root: review it and commit it. Examples:

        detserve hash --config configs/tiny-cpu.json --output manifests/tiny-cpu/REV.sha256

        detserve hash --snapshot DIR --output DIR.sha256
    """
    snapshot_dir, _, _ = _snapshot_and_manifest(config, snapshot, None)
    refuse_overwrite(output, force=force)  # before hashing, not after
    with byte_progress("hashing") as bar:
        manifest = build_manifest(
            snapshot_dir, workers=workers, progress=bar.advance, on_total=bar.set_total
        )
    write_manifest(manifest, output, force=force)
    if json_output:
        emit_json(
            {
                "ok": True,
                "manifest": str(output),
                "manifest_sha256": manifest.sha256,
                "files": manifest.total_files,
                "snapshot": str(snapshot_dir),
            }
        )
    else:
        result(f"wrote {output}: {manifest.total_files} files, manifest sha256 {manifest.sha256}")
        say("review this manifest before you commit it: it becomes the trust root of the snapshot")


@app.command("verify")
def verify_command(
    config: OptionalConfigOption = None,
    snapshot: SnapshotOption = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", "-m", help="Manifest to check against.", dir_okay=False),
    ] = None,
    workers: WorkersOption = None,
    json_output: JsonOption = False,
) -> None:
    """Verify every file of a snapshot against its manifest.

    Reports, sorted and by name: missing, extra and changed files, symlinks that escape the
    snapshot, and malformed, duplicate or escaping manifest lines. Any of them: exit 1.
    Examples:

        detserve verify --config configs/tiny-cpu.json

        detserve verify --snapshot DIR --manifest DIR.sha256
    """
    snapshot_dir, manifest_path, _ = _snapshot_and_manifest(config, snapshot, manifest)
    if manifest_path is None:
        raise UsageError("--snapshot needs --manifest PATH")
    with byte_progress("verifying") as bar:
        report = verify_snapshot(
            snapshot_dir,
            manifest_path,
            workers=workers,
            progress=bar.advance,
            on_total=bar.set_total,
        )
    if json_output:
        emit_json(report.as_json() | {"manifest": str(manifest_path)})
    else:
        rate = report.throughput_bytes_per_s / 1e9
        result(
            f"OK: {report.files} files, {report.bytes} bytes match {manifest_path} "
            f"(manifest sha256 {report.manifest_sha256}; {rate:.2f} GB/s)"
        )
