"""Claim and environment commands: keygen, attest, verify-claim, env, doctor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from detserve.cli.app import app
from detserve.cli.options import ConfigOption, DockerHostOption
from detserve.cli.output import JsonOption, emit_json, result, say
from detserve.errors import EXIT_ENVIRONMENT, EXIT_VERIFICATION, bounded

if TYPE_CHECKING:
    from detserve.api import HostOnlyEnvironment

ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
HostOnlyOption = Annotated[
    bool,
    typer.Option(
        "--host-only",
        help="Only this host's half: no container engine is asked (a GPU machine without "
        "Docker). Exits 3, or 1 for doctor when a host item fails: the engine half was not run.",
    ),
]


@app.command("keygen")
def keygen_command(
    output_dir: Annotated[
        Path,
        typer.Option("--output-dir", file_okay=False, help="Where NAME.key and NAME.pub go."),
    ],
    algorithm: Annotated[
        str,
        typer.Option("--algorithm", help="ed25519 (default) or ecdsa-p256.", metavar="ALG"),
    ] = "ed25519",
    name: Annotated[
        str, typer.Option("--name", help="File name stem of the pair.", metavar="NAME")
    ] = "detserve",
    json_output: JsonOption = False,
) -> None:
    """Make a signing key pair for `detserve attest`.

    Writes NAME.key (PKCS#8 PEM, mode 0600: keep it secret) and NAME.pub (PEM: publish it).
    Never overwrites either; the key itself is never printed. Example:

        detserve keygen --output-dir keys/
        detserve keygen --output-dir keys/ --algorithm ecdsa-p256 --name operator
    """
    from detserve import api

    pair = api.keygen(output_dir, algorithm=algorithm, name=name)
    if json_output:
        emit_json(pair.as_json())
        return
    result(f"public key {pair.public_key} ({pair.algorithm}, key id {pair.keyid})")
    say(f"private key {pair.private_key} (mode 0600; never share it)")


@app.command("attest")
def attest_command(
    run_log: Annotated[
        Path, typer.Option("--run-log", dir_okay=False, help="The run log to claim.")
    ],
    sidecar: Annotated[
        Path,
        typer.Option(
            "--sidecar", dir_okay=False, help="The sidecar `sample --sidecar-output` wrote."
        ),
    ],
    key: Annotated[
        Path, typer.Option("--key", dir_okay=False, help="The private key (`detserve keygen`).")
    ],
    output: Annotated[
        Path,
        typer.Option("--envelope-output", dir_okay=False, help="The envelope to write."),
    ],
    environment: Annotated[
        Path | None,
        typer.Option(
            "--environment",
            dir_okay=False,
            help="An environment fingerprint (`detserve env --fingerprint-output`), for a sidecar "
            "that "
            "holds none.",
        ),
    ] = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
) -> None:
    """Sign a claim about a run log: an in-toto Statement in a DSSE envelope.

    The subject is the run log (file name and sha256); the predicate holds its pins, sampling
    parameters, the detserve version, the environment fingerprint and the sidecar's sha256. The
    run log is validated completely, the sidecar must name its sha256, and the fingerprint must
    be of the run log's image. `sample` writes the fingerprint into the sidecar; for a sidecar
    without one, take it with `detserve env --fingerprint-output` and pass --environment.
    Example:

        detserve attest --run-log runs/a.runlog.jsonl --sidecar runs/a.sidecar.json \\
            --key keys/detserve.key --envelope-output runs/a.claim.intoto.json

    Publish the envelope, the run log and the public key; a verifier runs `detserve
    verify-claim`. Exit 0 written; 1 the sidecar or fingerprint is another run's; 2 bad input.
    """
    from detserve import api

    signed = api.attest(run_log, sidecar, key, output, environment=environment, force=force)
    if json_output:
        emit_json(signed.as_json())
        return
    result(
        f"wrote {signed.envelope}: claim on {signed.run_log} sha256 {signed.run_log_sha256}, "
        f"signed {signed.algorithm} key id {signed.keyid}"
    )


@app.command("verify-claim")
def verify_claim_command(
    envelope: Annotated[
        Path, typer.Option("--envelope", dir_okay=False, help="The DSSE envelope received.")
    ],
    public_key: Annotated[
        Path,
        typer.Option("--public-key", dir_okay=False, help="The signer's public key (PEM)."),
    ],
    run_log: Annotated[
        Path, typer.Option("--run-log", dir_okay=False, help="The run log it claims.")
    ],
    json_output: JsonOption = False,
) -> None:
    """Check a signed claim without replaying it: signature, statement, subject, pins.

    In this order, stopping at the first failure (exit 1, naming it): the signature with the
    public key you trust (no signature, another key or any changed byte of the envelope fail
    here, before its content is read); the statement (in-toto v1, detserve's predicate); the
    subject's sha256 against the run log's bytes; the predicate's pins and sampling against
    the run log's header. Example:

        detserve verify-claim --envelope a.claim.intoto.json --public-key operator.pub \\
            --run-log a.runlog.jsonl

    Exit 0 verified; 1 verification failed; 2 a file that is not a key, envelope or run log.
    """
    from detserve import api

    claim = api.verify_claim(envelope, public_key, run_log)
    if json_output:
        emit_json(claim.as_json())
        return
    pins = claim.predicate.pins
    result(
        f"VERIFIED: {claim.run_log} (sha256 {claim.run_log_sha256}) is claimed by key "
        f"{claim.keyid} ({claim.algorithm})"
    )
    result(
        f"  {claim.predicate.n_samples} samples of {pins.model_id}@{pins.model_revision} on "
        f"{pins.image}; environment sha256 {claim.predicate.environment_sha256}"
    )


@app.command("env")
def env_command(
    config: ConfigOption,
    output: Annotated[
        Path | None,
        typer.Option("--fingerprint-output", dir_okay=False, help="Write the fingerprint here."),
    ] = None,
    force: ForceOption = False,
    docker_host: DockerHostOption = None,
    host_only: HostOnlyOption = False,
    json_output: JsonOption = False,
) -> None:
    """Fingerprint this host and the pinned container: canonical JSON and its sha256.

    Host: kernel, CPU model and flags, memory, GPUs with driver and CUDA versions (null with a
    reason where there are none), Docker engine version. Container: image digest and id,
    Python, vLLM and torch versions, numerics-relevant environment (never a secret). From the
    profile's running container when it is bound to the pins, else from a short-lived
    container of the pinned image. Example:

        detserve env --config configs/tiny-cpu.local.json --fingerprint-output runs/a.env.json

    With --host-only, no engine is asked and no fingerprint is made: this host's facts only
    (OS, CPU, memory; NVIDIA driver, CUDA version, each GPU's name, memory and compute
    capability, from nvidia-smi), and exit 3, saying the engine half was not run:

        detserve env --config configs/qwen3-8b.json --host-only --json

    Exit 0; 1 the running container is not the pinned one; 2 bad input; 3 the engine does not
    answer, or was not asked (--host-only).
    """
    from detserve import api

    found = api.env(
        config,
        fingerprint_output=output,
        force=force,
        docker_host=docker_host,
        host_only=host_only,
    )
    if isinstance(found, api.HostOnlyEnvironment):
        _say_host_only(found, json_output)
        return
    fingerprint = found
    if json_output:
        emit_json(fingerprint.as_json())
        return
    host, container = fingerprint.host, fingerprint.container
    gpus = (
        ", ".join(gpu.name for gpu in host.gpus)
        if host.gpus
        else f"none ({host.gpu_reason or 'none listed'})"
    )
    for line in (
        f"environment sha256 {fingerprint.sha256}",
        f"host: {host.os} {host.kernel} {host.machine}; {host.cpu_model}, {host.cpu_count} CPUs, "
        f"{len(host.cpu_flags)} flags; memory {host.memory_bytes} bytes",
        f"gpus: {gpus}; driver {host.gpu_driver_version}; CUDA {host.cuda_version}",
        f"docker engine {host.docker_engine_version} (API {host.docker_api_version})",
        f"container: {container.image} ({container.image_id})",
        f"  python {container.python_version}, vllm {container.vllm_version}, "
        f"torch {container.torch_version}",
        "  numerics environment: "
        + (", ".join(f"{k}={v}" for k, v in container.numerics_environment.items()) or "(none)"),
    ):
        result(line)
    if output is not None:
        say(f"fingerprint written to {output}")


def _say_host_only(found: HostOnlyEnvironment, json_output: bool) -> None:
    """This host's facts, without any engine; exit 3: the engine half was not run."""
    if json_output:
        emit_json(found.as_json())
    else:
        host = found.host
        gpu = host.gpu
        for line in (
            f"host: {host.os} {host.kernel} {host.machine}; {host.cpu_model}, "
            f"{host.cpu_count} CPUs, {len(host.cpu_flags)} flags; memory {host.memory_bytes} bytes",
            f"nvidia driver {gpu.driver_version}; CUDA {gpu.cuda_version}; {gpu.count} GPU(s)"
            + (f" ({gpu.reason})" if gpu.reason else ""),
            *(
                f"  gpu {d.index}: {d.name}, {d.memory_mib} MiB, compute capability "
                f"{d.compute_capability_text}, driver {d.driver_version}"
                for d in gpu.gpus or ()
            ),
            f"engine: {found.engine_reason}; no fingerprint was made",
        ):
            result(bounded(line))  # names and versions as nvidia-smi printed them: escaped
    say("detserve env: the engine half was not run (--host-only): exit 3")
    raise typer.Exit(EXIT_ENVIRONMENT)


@app.command("doctor")
def doctor_command(
    config: ConfigOption,
    docker_host: DockerHostOption = None,
    host_only: HostOnlyOption = False,
    json_output: JsonOption = False,
) -> None:
    """A determinism checklist for a profile on this host: PASS or FAIL, and the fix.

    Items: pins filled; manifest present and the snapshot verifying; engine reachable; image
    present by digest; the running container bound to the pins (what `sample` checks); prefix
    caching off and the profile's seed, as the server's parser reads its command; batch-invariant
    mode on for GPU profiles that may batch; GPU compute capability 8.0 or higher when it is
    on; no NVIDIA GPU under a CPU profile; numerics environment as the profile and image give
    it; host clock sane. An item that cannot be checked (no pins, no engine) fails. Example:

        detserve doctor --config configs/tiny-cpu.local.json
        detserve doctor --config configs/tiny-cpu.local.json --json    # for CI
        detserve doctor --config configs/qwen3-8b.json --host-only    # no engine asked

    Exit 0 every item passes; 1 any FAIL (an unreachable engine is a FAIL here); 2 bad
    profile; 3 with --host-only when no host item fails: the engine items were NOT RUN.
    """
    from detserve import api

    report = api.doctor(config, docker_host=docker_host, host_only=host_only)
    if json_output:
        emit_json(report.as_json())
    else:
        for item in report.items:
            result(f"{item.status} {item.name}: {item.detail}")
            if item.fix is not None:
                result(f"     fix: {item.fix}")
        passed = len(report.items) - report.failed - report.not_run
        say(
            f"{passed} passed, {report.failed} failed"
            + (f", {report.not_run} not run (--host-only)" if report.not_run else "")
        )
    if report.failed:
        raise typer.Exit(EXIT_VERIFICATION)
    if report.not_run:
        raise typer.Exit(EXIT_ENVIRONMENT)
