"""Trust-root commands: profiles and snapshot manifests (prompt bundles: commands_prompts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from detserve.cli.app import app
from detserve.cli.junit_option import JunitXmlOption, junit_xml_report, record_outcome
from detserve.cli.options import (
    ConfigOption,
    OptionalConfigOption,
    WorkersOption,
    legacy_output_option,
    renamed,
)
from detserve.cli.output import JsonOption, byte_progress, emit_json, result, say
from detserve.errors import UsageError
from detserve.printable import printable_json

# `hash` and `verify` run before every run, and their start-up is part of what verification
# costs: importing what only the other commands need (the Docker SDK, huggingface_hub, httpx,
# the pydantic profile models) took 0.5 s, a quarter of verifying 4 GiB. Those imports are made
# inside the commands that use them.
if TYPE_CHECKING:
    from detserve.signed_statement import SignedModel

config_app = typer.Typer(
    help="Validate profiles and print their JSON Schema.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("validate")
@junit_xml_report(
    "config validate",
    subject=lambda options: str(options["config"]),
    inputs=("config",),
    profile="config",
)
def config_validate(
    config: ConfigOption,
    allow_unpinned: Annotated[
        bool,
        typer.Option(
            "--allow-unpinned",
            help="Accept null pins (a profile waiting for lock-model / lock-image).",
        ),
    ] = False,
    junit_xml: JunitXmlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Validate a profile: one line per bad field (where, what was expected, what was found).

    Exit 0 when valid and fully pinned, 2 otherwise. Example:

        detserve config validate --config configs/tiny-cpu.json
    """
    from detserve.api import load_profile

    loaded = load_profile(config)
    if not allow_unpinned:
        loaded.require_pins()
    missing = loaded.missing_pins()
    state = f"unpinned: {', '.join(missing)}" if missing else "fully pinned"
    record_outcome([f"{config}: valid ({state})"], None)
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
        result(f"{config}: valid ({state})")


@config_app.command("schema")
def config_schema(json_output: JsonOption = False) -> None:
    """Print the profile JSON Schema (committed as docs/profile.schema.json).

    Indented for people; with --json, the same object as one line of canonical JSON (RFC 8785).
    """
    from detserve.api.profiles import profile_json_schema

    if json_output:
        emit_json(profile_json_schema())
        return
    # detserve's own schema, but escaped as every JSON document printed is (emit_json)
    schema = json.dumps(profile_json_schema(), indent=2, sort_keys=True)
    sys.stdout.write(printable_json(schema) + "\n")


@config_app.command("options")
def config_options(json_output: JsonOption = False) -> None:
    """List what a strict profile may set, and why each is safe to pin.

    Engine options (vllm.extra_args) and environment variables (runtime.environment) pass only
    by exact name from these allowlists; vLLM's parser would expand an abbreviation, so none is
    accepted. Refused options are listed with the reason. Example:

        detserve config options --json
    """
    from detserve import api

    options = api.config_options()
    if json_output:
        emit_json(options.as_json())
        return
    result("engine options (vllm.extra_args), by exact name:")
    for name, option in sorted(options.engine_options.items()):
        kind = f"one of {', '.join(option.choices)}" if option.choices else option.kind
        result(f"  {name} ({kind}): {option.why}")
    result("refused engine options:")
    for name, why in sorted(options.refused_engine_options.items()):
        result(f"  {name}: {why}")
    result(
        "set by detserve from the profile's fields: "
        f"{', '.join(sorted(options.managed_engine_options))}"
    )
    result("environment variables (runtime.environment):")
    for name, variable in sorted(options.environment.items()):
        result(f"  {name} (form {variable.pattern}): {variable.why}")
    result(f"entrypoint: omitted, or [PYTHON, '-m', '{options.server_module}']")


SnapshotOption = Annotated[
    Path | None,
    typer.Option(
        "--snapshot",
        help="Any directory to hash or verify, instead of a profile's.",
        file_okay=False,
    ),
]


ModelSignatureOption = Annotated[
    Path | None,
    typer.Option(
        "--model-signature",
        dir_okay=False,
        help=(
            "The publisher's OpenSSF model signature (model_signing's Sigstore bundle) over the "
            "snapshot; verified with --public-key or --certificate-chain."
        ),
    ),
]
SignaturePublicKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--public-key",
        dir_okay=False,
        help="The publisher's elliptic-curve public key (PEM) for --model-signature.",
    ),
]
CertificateChainOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--certificate-chain",
        dir_okay=False,
        metavar="<file>",
        help=(
            "PEM certificates (the publisher's root, and intermediates) the signing certificate "
            "of --model-signature must chain to. Repeatable."
        ),
    ),
]


def _say_signature(signature: SignedModel | None) -> None:
    if signature is not None:
        say(
            f"model signature {signature.signature} verified: signed by {signature.signer}, "
            f"{len(signature.files)} files ({signature.method}, {signature.hash_type})"
        )
        for note in signature.notes:
            say(f"model_signing: {note}")


@app.command("hash")
def hash_command(
    manifest_output: Annotated[
        Path | None,
        typer.Option("--manifest-output", help="Manifest file to write. Required.", dir_okay=False),
    ] = None,
    legacy_output: Annotated[Path | None, legacy_output_option("--manifest-output")] = None,
    config: OptionalConfigOption = None,
    snapshot: SnapshotOption = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing manifest.")] = False,
    workers: WorkersOption = None,
    model_signature: ModelSignatureOption = None,
    public_key: SignaturePublicKeyOption = None,
    certificate_chain: CertificateChainOption = None,
    json_output: JsonOption = False,
) -> None:
    """Hash every file of a snapshot into a sha256 manifest (coreutils format).

    Making a manifest creates a trust root: review it and commit it. With --model-signature the
    manifest is derived from the publisher's signature, written only once it verifies and the
    snapshot is exactly the signed files (else exit 1). Examples:

        detserve hash --config configs/tiny-cpu.json --manifest-output manifests/tiny-cpu/REV.sha256

        detserve hash --snapshot DIR --manifest-output DIR.sha256

        detserve hash --config P --manifest-output M --model-signature model.sig --public-key K
    """
    from detserve import api

    output = renamed(manifest_output, legacy_output, name="--manifest-output", old="--output")
    if output is None:
        raise UsageError("give --manifest-output PATH: the manifest to write")
    with byte_progress("hashing") as bar:
        hashed = api.hash_snapshot(
            config,
            output=output,
            snapshot=snapshot,
            force=force,
            workers=workers,
            observer=bar,
            model_signature=model_signature,
            public_key=public_key,
            certificate_chain=certificate_chain or (),
        )
    if json_output:
        emit_json(hashed.as_json())
    else:
        _say_signature(hashed.signature)
        result(f"wrote {output}: {hashed.files} files, manifest sha256 {hashed.manifest_sha256}")
        say("review this manifest before you commit it: it becomes the trust root of the snapshot")


@app.command("verify")
@junit_xml_report(
    "verify",
    subject=lambda options: str(options["config"] or options["snapshot"]),
    inputs=("config", "snapshot", "manifest", "model_signature", "public_key", "certificate_chain"),
    profile="config",
)
def verify_command(
    config: OptionalConfigOption = None,
    snapshot: SnapshotOption = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", "-m", help="Manifest to check against.", dir_okay=False),
    ] = None,
    workers: WorkersOption = None,
    model_signature: ModelSignatureOption = None,
    public_key: SignaturePublicKeyOption = None,
    certificate_chain: CertificateChainOption = None,
    junit_xml: JunitXmlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Verify every file of a snapshot against its manifest.

    Reports, sorted and by name: missing, extra and changed files, symlinks that escape the
    snapshot, and malformed, duplicate or escaping manifest lines. Any of them: exit 1. With
    --model-signature, the publisher's signature too: the snapshot, the manifest and the
    signature must agree on every file. Examples:

        detserve verify --config configs/tiny-cpu.json

        detserve verify --snapshot DIR --manifest DIR.sha256

        detserve verify --config P --model-signature model.sig --public-key K
    """
    from detserve import api
    from detserve.api.snapshots import SignedVerifyReport

    with byte_progress("verifying") as bar:
        report = api.verify(
            config,
            snapshot=snapshot,
            manifest=manifest,
            workers=workers,
            observer=bar,
            model_signature=model_signature,
            public_key=public_key,
            certificate_chain=certificate_chain or (),
        )
    rate = report.throughput_bytes_per_s / 1e9
    line = (
        f"OK: {report.files} files, {report.bytes} bytes match {report.manifest} "
        f"(manifest sha256 {report.manifest_sha256}; {rate:.2f} GB/s)"
    )
    record_outcome([line], None)
    if json_output:
        emit_json(report.as_json())
    else:
        if isinstance(report, SignedVerifyReport):
            _say_signature(report.signature)
        result(line)
