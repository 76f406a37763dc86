"""Prompt bundles: ``prompts verify`` and ``prompts bootstrap``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detserve.cli.app import app
from detserve.cli.junit_option import JunitXmlOption, junit_xml_report, record_outcome
from detserve.cli.options import (
    BundleOption,
    BundlePinOption,
    ConfigOption,
    ForceOption,
    OptionalConfigOption,
)
from detserve.cli.output import JsonOption, emit_json, result, say

prompts_app = typer.Typer(help="Build and verify pinned prompt bundles.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("verify")
@junit_xml_report(
    "prompts verify",
    subject=lambda options: str(
        options["bundle"] or options["config"] or "artifacts/reference_prompts"
    ),
    inputs=("bundle", "bundle_pin", "config"),
)
def prompts_verify(
    config: OptionalConfigOption = None,
    bundle: BundleOption = None,
    bundle_pin: BundlePinOption = None,
    junit_xml: JunitXmlOption = None,
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
    line = (
        f"OK: {loaded_bundle.path}: {len(loaded_bundle.prompts)} prompts, "
        f"bundle sha256 {loaded_bundle.sha256}"
        + (
            f"; measured on {tokenizer.model_id} at {tokenizer.model_revision}, the profile's model"
            if config is not None
            else ""
        )
    )
    record_outcome([line], None)
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
        result(line)


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
