"""Trust-root commands: profiles, manifests, locks and prompt bundles."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from detserve.cli.app import app
from detserve.cli.options import (
    BundleOption,
    BundlePinOption,
    ConfigOption,
    ForceOption,
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
    from detserve.profile import load_profile

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
    from detserve.profile import profile_json_schema

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
    from detserve import engine_policy as policy

    if json_output:
        emit_json(
            {
                "engine_options": {
                    name: {"kind": o.kind, "choices": list(o.choices), "why": o.why}
                    for name, o in sorted(policy.ENGINE_OPTIONS.items())
                },
                "refused_engine_options": dict(sorted(policy.NONDETERMINISTIC_OPTIONS.items())),
                "managed_engine_options": sorted(policy.MANAGED_OPTIONS),
                "environment": {
                    name: {"form": v.pattern, "why": v.why}
                    for name, v in sorted(policy.ENVIRONMENT_VARIABLES.items())
                },
                "entrypoint": ["PYTHON", "-m", policy.SERVER_MODULE],
            }
        )
        return
    result("engine options (vllm.extra_args), by exact name:")
    for name, option in sorted(policy.ENGINE_OPTIONS.items()):
        kind = f"one of {', '.join(option.choices)}" if option.choices else option.kind
        result(f"  {name} ({kind}): {option.why}")
    result("refused engine options:")
    for name, why in sorted(policy.NONDETERMINISTIC_OPTIONS.items()):
        result(f"  {name}: {why}")
    result(
        f"set by detserve from the profile's fields: {', '.join(sorted(policy.MANAGED_OPTIONS))}"
    )
    result("environment variables (runtime.environment):")
    for name, variable in sorted(policy.ENVIRONMENT_VARIABLES.items()):
        result(f"  {name} (form {variable.pattern}): {variable.why}")
    result(f"entrypoint: omitted, or [PYTHON, '-m', '{policy.SERVER_MODULE}']")


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
    from detserve.signed_snapshot import SignedVerifyReport

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
    manifest_path = report.manifest
    if json_output:
        emit_json(report.as_json())
    else:
        if isinstance(report, SignedVerifyReport):
            _say_signature(report.signature)
        rate = report.throughput_bytes_per_s / 1e9
        result(
            f"OK: {report.files} files, {report.bytes} bytes match {manifest_path} "
            f"(manifest sha256 {report.manifest_sha256}; {rate:.2f} GB/s)"
        )


# --- prompt bundles --------------------------------------------------------------------------

prompts_app = typer.Typer(help="Build and verify pinned prompt bundles.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("verify")
def prompts_verify(
    config: OptionalConfigOption = None,
    bundle: BundleOption = None,
    bundle_pin: BundlePinOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check a prompt bundle against its pinned hash, then parse every prompt.

    With --config: the profile's bundle (prompts.bundle, prompts.manifest) unless --bundle or
    --bundle-pin says otherwise, and it must have been measured on the profile's model (model
    id, revision and tokenizer files as the model's manifest pins them; exit 1 otherwise).
    Without: artifacts/reference_prompts, unless --bundle and --bundle-pin say otherwise.

        detserve prompts verify --config configs/tiny-cpu.json

        detserve prompts verify --bundle artifacts/chat_prompts \\
            --bundle-pin manifests/chat_prompts/chat_prompts.sha256
    """
    from detserve import api

    loaded_bundle = api.load_prompts(bundle, bundle_pin, config=config)
    tokenizer = loaded_bundle.info.tokenizer
    if json_output:
        emit_json(
            {
                "ok": True,
                "bundle": str(loaded_bundle.path),
                "bundle_sha256": loaded_bundle.sha256,
                "n_prompts": len(loaded_bundle.prompts),
                "model_id": tokenizer.model_id if config is not None else None,
                "model_revision": tokenizer.model_revision if config is not None else None,
            }
        )
    else:
        result(
            f"OK: {loaded_bundle.path}: {len(loaded_bundle.prompts)} prompts, "
            f"bundle sha256 {loaded_bundle.sha256}"
            + (
                f"; measured on {tokenizer.model_id} at {tokenizer.model_revision}, the "
                "profile's model"
                if config is not None
                else ""
            )
        )


@prompts_app.command("bootstrap")
def prompts_bootstrap(
    config: ConfigOption,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", file_okay=False, help="Bundle directory to write.")
    ],
    n_prompts: Annotated[int, typer.Option("--n-prompts", min=1, help="Prompts to take.")],
    dataset_file: Annotated[
        Path | None, typer.Option("--dataset-file", dir_okay=False, help="A local dataset file.")
    ] = None,
    dataset_sha256: Annotated[
        str | None, typer.Option("--dataset-sha256", help="Expected sha256 of --dataset-file.")
    ] = None,
    hf_dataset: Annotated[
        str | None, typer.Option("--hf-dataset", help="Hugging Face dataset id ORG/NAME.")
    ] = None,
    dataset_revision: Annotated[
        str | None, typer.Option("--dataset-revision", help="40-hex commit of --hf-dataset.")
    ] = None,
    dataset_filename: Annotated[
        str | None, typer.Option("--dataset-filename", help="File inside --hf-dataset.")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="'jsonl' (one object a line; --field holds a prompt string, or a list of chat "
            "messages), 'text' (a prompt a line) or 'requests' (a bundle line a line without id "
            "and n_tokens: prompt or messages, optional stop and constraint).",
        ),
    ] = "jsonl",
    field: Annotated[
        str, typer.Option("--field", help="JSONL field holding the prompt or conversation.")
    ] = "text",
    name: Annotated[
        str, typer.Option("--name", help="The bundle's name, written in bundle.json.")
    ] = "reference_prompts",
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-prompt-tokens", min=1, help="Skip longer prompts (default: fits the model)."
        ),
    ] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="Hub address.")] = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Build a prompt bundle from a dataset whose content is pinned.

    Either a local file with its sha256, or a Hugging Face dataset file at a pinned commit.
    Prompts are measured with the profile's model tokenizer, whose files must match the model's
    manifest. The bundle is not trusted until you pin it with `detserve hash`:

        detserve prompts bootstrap --config configs/tiny-cpu.json --dataset-file data.jsonl \\
            --dataset-sha256 SHA --n-prompts 32 --output-dir artifacts/reference_prompts

        detserve hash --snapshot artifacts/reference_prompts \\
            --manifest-output manifests/reference_prompts/reference_prompts.sha256
    """
    from detserve import api

    info = api.bootstrap_prompts(
        config,
        output_dir=output_dir,
        n_prompts=n_prompts,
        dataset_file=dataset_file,
        dataset_sha256=dataset_sha256,
        hf_dataset=hf_dataset,
        dataset_revision=dataset_revision,
        dataset_filename=dataset_filename,
        fmt=fmt,
        field=field,
        max_prompt_tokens=max_prompt_tokens,
        name=name,
        endpoint=endpoint,
        force=force,
    )
    if json_output:
        emit_json({"ok": True, "bundle": str(output_dir), "n_prompts": info.n_prompts})
    else:
        result(f"wrote {output_dir}: {info.n_prompts} prompts")
        say(
            "not trusted yet: review it, then pin it with `detserve hash --snapshot "
            f"{output_dir} --manifest-output manifests/{name}/{name}.sha256`"
        )
