"""The fleet's replay: one claim replayed on several Docker engines at once.

Every node of ``--node HOST[,config=PATH][,name=LABEL]`` (:func:`~detserve.fleet.parse_node`)
replays the claim as ``replay`` does (:func:`~detserve.claim_replay.replay_claim`), against its
own engine, into ``output_dir/LABEL/``; :func:`~detserve.fleet.run_fleet` runs them in threads
and tells who agrees. Before any node is asked anything: every node's profile is loaded and its
bundle checked against its model, the outputs checked against every input, and the claim
validated; every node then requires the claim's bytes the fleet validated. A node's failure
becomes its FAILED (or NOT A REPLAY) result, fingerprinted where its engine answers, so that one
node cannot stop the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from detserve.bundle_binding import load_profile_bundle
from detserve.claim_replay import replay_claim
from detserve.errors import DetserveError, UsageError
from detserve.fileio import check_output_dir, check_outputs, write_json_report
from detserve.fingerprint import EnvironmentFingerprint
from detserve.fleet import (
    FleetNode,
    FleetReport,
    NodeResult,
    check_nodes,
    failed,
    parse_node,
    run_fleet,
)
from detserve.profile import LoadedProfile, load_profile
from detserve.replay_plan import NotAReplay
from detserve.runlog import validate_run_log

#: told each stage as it begins
StageSink = Callable[[str], None]


def replay_node(
    claim: Path,
    claim_sha256: str,
    loaded: LoadedProfile,
    node: FleetNode,
    output_dir: Path,
    *,
    bundle: Path | str | None,
    bundle_pin: Path | str | None,
    stop_after: bool,
    force: bool,
    on_stage: StageSink,
) -> NodeResult:
    """Replay ``claim`` on one node's engine; every failure becomes a FAILED result."""
    # looked up when a node runs (tests stand in for the engine and the fingerprint)
    from detserve.evaluation.explain import read_node_environment
    from detserve.fingerprint import environment_fingerprint
    from detserve.runtime.docker_engine import DockerEngine
    from detserve.runtime.probe import DockerProbe

    def stage(message: str) -> None:
        on_stage(f"{node.label}: {message}")

    try:
        engine = DockerEngine.from_env(node.docker_host)
    except DetserveError as exc:
        return failed(exc)

    def fingerprint() -> EnvironmentFingerprint | None:
        # Best effort beside a failure: the failure is the result, the fingerprint its context.
        try:
            return environment_fingerprint(loaded, DockerProbe(engine.client, engine.address))
        except DetserveError as exc:
            stage(f"no fingerprint: {exc.message}")
            return None

    try:
        replayed = replay_claim(
            claim,
            loaded,
            output_dir=output_dir / node.label,
            bundle=bundle,
            bundle_pin=bundle_pin,
            stop_after=stop_after,
            force=force,
            on_stage=stage,
            engine=engine,
            claim_sha256=claim_sha256,
        )
    except NotAReplay as exc:
        detail = "; ".join([exc.message, *exc.details[:3]])
        return NodeResult("NOT A REPLAY", exc.exit_code, detail, fingerprint=fingerprint())
    except DetserveError as exc:
        return replace(failed(exc), fingerprint=fingerprint())
    report = replayed.report
    first = report.first_divergence
    detail = (
        "byte-identical to the claim"
        if report.ok
        else str(first)
        if first is not None
        else "; ".join(report.summary_lines()[2:4])
    )
    return NodeResult(
        verdict=report.verdict.value.replace("-", " ").upper(),
        exit_code=0 if report.verdict.value == "identical" else 1,
        detail=detail,
        run_log_sha256=replayed.summary.run_log_sha256,
        run_log=replayed.summary.run_log,
        fingerprint=read_node_environment(
            replayed.summary.sidecar,
            run_log_sha256=replayed.summary.run_log_sha256,
            log=str(replayed.summary.run_log),
        ).fingerprint,
    )


def replay_fleet(
    claim: Path | str,
    config: LoadedProfile | Path | str,
    *,
    nodes: Sequence[str],
    output_dir: Path | str,
    bundle: Path | str | None = None,
    bundle_pin: Path | str | None = None,
    stop_after: bool = False,
    force: bool = False,
    on_stage: StageSink | None = None,
    docker_host: str | None = None,
) -> FleetReport:
    """One claim replayed on every node at once (:func:`detserve.api.replay_fleet`); without
    ``nodes``, one node: the engine ``docker_host`` (or ``DOCKER_HOST``, or the context) names."""
    if nodes and docker_host is not None:
        raise UsageError("--docker-host names the one node of a fleet without --node: give one")
    if not nodes:
        from detserve.runtime.docker_engine import docker_address

        nodes = [docker_address(docker_host)]
    parsed = [parse_node(text, index) for index, text in enumerate(nodes, start=1)]
    check_nodes(parsed)
    claim = Path(claim)
    output_dir = Path(output_dir)
    profiles = {
        node.label: load_profile(node.config if node.config is not None else config)
        for node in parsed
    }
    bundle_files: list[Path] = []
    for loaded in profiles.values():
        loaded.require_pins()
        # each node's bundle (the flags', else its profile's) measured on its model, up front
        bundle_files.extend(load_profile_bundle(loaded, bundle, bundle_pin).files)
    report_path = output_dir / "fleet.json"
    inputs = (
        claim,
        *bundle_files,
        *(
            path
            for loaded in profiles.values()
            for path in (loaded.path, loaded.manifest_path, loaded.snapshot_dir)
        ),
    )
    check_output_dir(output_dir, force=True, inputs=inputs)
    check_outputs([report_path], force=force, inputs=inputs)
    # an invalid claim is bad input before any node is asked anything
    claim_sha256 = validate_run_log(claim).sha256
    output_dir.mkdir(parents=True, exist_ok=True)
    stage = on_stage or (lambda _message: None)
    report = run_fleet(
        claim,
        claim_sha256,
        parsed,
        lambda node: replay_node(
            claim,
            claim_sha256,
            profiles[node.label],
            node,
            output_dir,
            bundle=bundle,
            bundle_pin=bundle_pin,
            stop_after=stop_after,
            force=force,
            on_stage=stage,
        ),
    )
    write_json_report(report_path, report.as_json(), force=force)
    return report
