"""What ``run``, ``stop`` and ``status`` print for a cluster profile (one container each node).

The commands are the single-container ones (:mod:`detserve.cli.commands_runtime`); they hand a
profile with a ``cluster`` section to these functions, which call :mod:`detserve.api`'s
``run_cluster``, ``stop_cluster`` and ``status_cluster`` and print the outcome node by node. A
node's name and engine come from the profile; what came from the engines (container names and
ids, states, served names) is escaped by the output functions like everything else printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from detserve import api
from detserve.cli.output import emit_json, result, say
from detserve.errors import EXIT_VERIFICATION, UsageError

if TYPE_CHECKING:
    from detserve.profile import LoadedProfile


def _refuse_single_options(loaded: LoadedProfile, **given: object) -> None:
    named = sorted(option for option, value in given.items() if value)
    if named:
        raise UsageError(
            f"profile {loaded.path} is a cluster: {', '.join(named)} is for one container",
            hint="each node's engine is cluster.nodes[].docker_host; the snapshot is verified "
            "inside every node's container",
        )


def run(
    loaded: LoadedProfile,
    *,
    secrets_file: Path | None,
    hash_first: bool,
    stop_after: bool,
    timeout: float | None,
    docker_host: str | None,
    json_output: bool,
) -> None:
    _refuse_single_options(loaded, **{"--hash": hash_first, "--docker-host": docker_host})
    ran = api.run_cluster(
        loaded, secrets_file=secrets_file, stop_after=stop_after, timeout_s=timeout, on_stage=say
    )
    if json_output:
        emit_json(ran.as_json())
        return
    for bound in ran.start.nodes:
        node = bound.node
        result(f"{node.describe()}: {bound.container.name} ({bound.container.short_id})")
    result(
        f"ready: {ran.ready.base_url} serves {ran.smoke.served_model!r} (vLLM "
        f"{ran.ready.version}) on {len(ran.start.nodes)} nodes, {ran.ready.waited_s:.1f} s"
    )
    for name, files in ran.verified.items():
        result(f"snapshot verified in node {name}'s container: {files} files")
    result(f"smoke OK: {len(ran.smoke.samples)} prompts x 2 identical")
    if ran.stopped:
        result(f"stopped and removed the cluster's {len(ran.start.nodes)} containers")


def stop(loaded: LoadedProfile, *, docker_host: str | None, json_output: bool) -> None:
    _refuse_single_options(loaded, **{"--docker-host": docker_host})
    stopped = api.stop_cluster(loaded)
    if json_output:
        emit_json(stopped.as_json())
    elif not stopped.removed:
        result("no container of the cluster on any node: nothing to stop")
    for node, name in stopped.removed:
        result(f"node {node}: stopped and removed {name}")


def status(loaded: LoadedProfile, *, docker_host: str | None, json_output: bool) -> None:
    _refuse_single_options(loaded, **{"--docker-host": docker_host})
    state = api.status_cluster(loaded)
    if json_output:
        emit_json(state.as_json())
        if state.mismatches:
            raise typer.Exit(EXIT_VERIFICATION)
        return
    for item in state.nodes:
        where = item.node.describe()
        if item.container is None:
            result(f"{where}: no container")
            continue
        container = item.container
        result(f"{where}: {container.name} {container.describe()} ({container.short_id})")
        result(f"  pins and layout: {'MISMATCH' if item.mismatches else 'match the profile'}")
        for line in item.mismatches:
            result(f"    {line}")
    result(f"head {state.base_url}: {state.health}")
    for model in state.served:
        result(f"  serves {model.id!r} from {model.root}")
    state.check()
