"""``detserve init``: a thin layer over :func:`detserve.scaffold.init_profile`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detserve.cli.app import app
from detserve.cli.output import JsonOption, emit_json, result


@app.command("init")
def init_command(
    model: Annotated[
        str, typer.Option("--model", metavar="ORG/NAME", help="The Hugging Face model id.")
    ],
    device: Annotated[
        str, typer.Option("--device", metavar="cpu|nvidia", help="Where the engine runs.")
    ],
    name: Annotated[
        str,
        typer.Option(
            "--name", help="The profile's name: configs/NAME.json, its manifests, its container."
        ),
    ],
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus", min=1, help="GPUs to request and tensor-parallel degree (nvidia; default 1)."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", dir_okay=False, help="The profile file (default configs/NAME.json)."
        ),
    ] = None,
    hf_home: Annotated[
        Path | None,
        typer.Option(
            "--hf-home",
            file_okay=False,
            help="The snapshot's Hugging Face home (default artifacts/hf-cache on cpu, "
            "/var/lib/detserve/hf-home on nvidia).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Write an unpinned profile for a model on a device, and print what to run next.

    Defaults fit the device: on nvidia bfloat16, vLLM's batch-invariant mode, tensor parallelism
    over every GPU and the upstream vLLM image of the CPU image's version; on cpu what
    configs/tiny-cpu.json sets. Pins stay null: nothing is resolved or trusted here. An existing
    file is never replaced (exit 2). The checklist: lock-model, download, hash (or the
    publisher's signature), lock-image, bundle, run, sample, attest. Example:

        detserve init --model Qwen/Qwen3-8B --device nvidia --gpus 1 --name qwen3-8b
    """
    from detserve import api

    written = api.init_profile(
        model, device=device, name=name, gpus=gpus, output=output, hf_home=hf_home
    )
    if json_output:
        emit_json(written.as_json())
        return
    result(f"wrote {written.path}: unpinned profile {written.profile.name} for {model}")
    result("next, in order (UPPER-CASE words are yours to fill in):")
    for number, step in enumerate(written.checklist, start=1):
        result(f"{number}. {step.name}: {step.purpose}")
        for command in step.commands:
            result(f"     {command}")
        if step.instead:
            result(f"   or, where {step.instead_when}:")
            for command in step.instead:
                result(f"     {command}")
