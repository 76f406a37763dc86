"""One claim replayed on several engines at once, and the table of who agrees.

A node is a Docker engine (``--node unix:///run/node2/docker.sock``, ``tcp://host:2376``,
``ssh://user@host``), optionally with its own profile (``,config=PATH``: the same pins under
another port or path) and name (``,name=LABEL``). Each node replays the claim in its own thread
(:func:`detserve.claim_replay.replay_claim` against that engine); the fleet then says, per
node, whether its run log is the claim byte for byte, and how its environment fingerprint
differs from the reference node's (the first that replayed the claim identically), ranked by
root-cause category (:mod:`detserve.root_causes`).

Invariants: every node replays the same claim; the verdict of each node is its own replay's
(nothing here relaxes it); only a fleet whose every node is IDENTICAL is ok. A node that
disagrees is a verification failure (exit 1) even when another node failed to run; a node that
could not run at all (its engine unreachable, its container failed) fails the fleet with that
node's own exit code, naming it. A node whose replay was refused before it ran (NOT A REPLAY)
is still fingerprinted, so that the difference that refused it is shown.

Nothing here prints, connects or starts anything: :func:`run_fleet` is given the function that
replays one node (:mod:`detserve.fleet_replay`'s, or a test's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from detserve.errors import (
    EXIT_ENVIRONMENT,
    EXIT_OK,
    EXIT_VERIFICATION,
    DetserveError,
    Divergence,
    EnvironmentFault,
    UsageError,
)
from detserve.fingerprint import EnvironmentFingerprint
from detserve.root_causes import Difference, fingerprint_differences
from detserve.runtime.docker_host import check_docker_host

IDENTICAL: Final = "IDENTICAL"
FAILED: Final = "FAILED"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class FleetNode:
    """One engine of the fleet."""

    label: str
    docker_host: str
    #: the node's own profile; None: the fleet's
    config: Path | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "docker_host": self.docker_host,
            "config": str(self.config) if self.config is not None else None,
        }


def parse_node(text: str, index: int) -> FleetNode:
    """``HOST[,config=PATH][,name=LABEL]``; the label defaults to ``node<index>``."""
    host, *options = text.split(",")
    values: dict[str, str] = {}
    for option in options:
        key, separator, value = option.partition("=")
        if not separator or key not in {"config", "name"} or not value or key in values:
            raise UsageError(
                f"--node {text!r}: {option!r} is not config=PATH or name=LABEL (each once)",
                hint="e.g. --node unix:///run/node2/docker.sock,config=node2.json,name=node2",
            )
        values[key] = value
    label = values.get("name", f"node{index}")
    if not _LABEL.match(label):
        raise UsageError(f"--node {text!r}: name {label!r} is not a plain name ([A-Za-z0-9_.-])")
    # the same check as every --docker-host: a node is an engine address like any other
    check_docker_host(host, option="--node")
    config = Path(values["config"]) if "config" in values else None
    return FleetNode(label=label, docker_host=host, config=config)


def check_nodes(nodes: Sequence[FleetNode]) -> None:
    """At least one node; labels (they name output directories) unique."""
    if not nodes:
        raise UsageError("give at least one --node HOST")
    seen: set[str] = set()
    for node in nodes:
        if node.label in seen:
            raise UsageError(f"two nodes are named {node.label!r}: give each its own name=")
        seen.add(node.label)


@dataclass(frozen=True)
class NodeResult:
    """What one node's replay gave."""

    #: IDENTICAL, WITHIN THRESHOLD, DIVERGENT, NOT A REPLAY or FAILED
    verdict: str
    exit_code: int
    #: the first divergence, why it is not a replay, or the error
    detail: str
    run_log_sha256: str | None = None
    run_log: Path | None = None
    fingerprint: EnvironmentFingerprint | None = None


@dataclass(frozen=True)
class NodeOutcome:
    """A node, its result, and how its environment differs from the reference node's."""

    node: FleetNode
    result: NodeResult
    differences: tuple[Difference, ...] = field(default=())

    @property
    def identical(self) -> bool:
        return self.result.verdict == IDENTICAL

    def as_json(self) -> dict[str, object]:
        result = self.result
        return {
            "node": self.node.as_json(),
            "verdict": result.verdict,
            "exit_code": result.exit_code,
            "detail": result.detail,
            "run_log": str(result.run_log) if result.run_log is not None else None,
            "run_log_sha256": result.run_log_sha256,
            "environment_sha256": result.fingerprint.sha256 if result.fingerprint else None,
            "environment_differences": [d.as_json() for d in self.differences],
        }


@dataclass(frozen=True)
class FleetReport:
    """Every node's replay of one claim."""

    claim: Path
    claim_sha256: str
    outcomes: tuple[NodeOutcome, ...]
    #: the label of the node the others' environments are compared with
    reference: str | None

    @property
    def ok(self) -> bool:
        return all(outcome.identical for outcome in self.outcomes)

    @property
    def agreeing(self) -> tuple[str, ...]:
        return tuple(o.node.label for o in self.outcomes if o.identical)

    def table(self) -> list[tuple[str, ...]]:
        """Rows: node, Docker host, verdict, run log sha256, environment against the reference."""
        rows: list[tuple[str, ...]] = [
            ("node", "docker host", "verdict", "run log sha256", f"environment vs {self.reference}")
        ]
        for outcome in self.outcomes:
            result = outcome.result
            if outcome.node.label == self.reference:
                environment = "(reference)"
            elif result.fingerprint is None:
                environment = "(no fingerprint)"
            elif not outcome.differences:
                environment = "same"
            else:
                environment = "; ".join(str(d) for d in outcome.differences)
            rows.append(
                (
                    outcome.node.label,
                    outcome.node.docker_host,
                    result.verdict,
                    result.run_log_sha256[:16] + "…" if result.run_log_sha256 else "-",
                    environment,
                )
            )
        return rows

    def summary_lines(self) -> list[str]:
        rows = self.table()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = [f"claim {self.claim} (sha256 {self.claim_sha256})"]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        n = len(self.outcomes)
        if self.ok:
            lines.append(f"AGREEMENT: all {n} nodes replay the claim byte for byte")
        else:
            lines.append(f"DISAGREEMENT: {len(self.agreeing)} of {n} nodes replay the claim")
            for outcome in self.outcomes:
                if not outcome.identical:
                    lines.append(f"  {outcome.node.label}: {outcome.result.detail}")
                    lines.extend(f"    {d}" for d in outcome.differences)
        return lines

    def error(self) -> DetserveError | None:
        if self.ok:
            return None
        failing = [o for o in self.outcomes if not o.identical]
        details = [f"{o.node.label} ({o.node.docker_host}): {o.result.verdict}" for o in failing]
        if any(o.result.exit_code == EXIT_VERIFICATION for o in failing):
            return Divergence(
                f"{len(failing)} of {len(self.outcomes)} nodes do not replay the claim",
                details=details,
            )
        worst = max(o.result.exit_code for o in failing)
        error_class = EnvironmentFault if worst == EXIT_ENVIRONMENT else UsageError
        return error_class(
            f"{len(failing)} of {len(self.outcomes)} nodes could not replay the claim",
            details=[f"{o.node.label}: {o.result.detail}" for o in failing],
        )

    def as_json(self) -> dict[str, object]:
        return {
            "report": "detserve-fleet",
            "report_version": 1,
            "ok": self.ok,
            "claim": str(self.claim),
            "claim_sha256": self.claim_sha256,
            "reference": self.reference,
            "agree": list(self.agreeing),
            "nodes": [outcome.as_json() for outcome in self.outcomes],
        }


def _differences(
    reference: EnvironmentFingerprint | None, actual: EnvironmentFingerprint | None
) -> tuple[Difference, ...]:
    if reference is None or actual is None:
        return ()
    return fingerprint_differences(reference, actual)


#: replays the claim on one node; raises nothing (failures are a FAILED result)
NodeReplay = Callable[[FleetNode], NodeResult]


def failed(exc: DetserveError) -> NodeResult:
    """A node that raised: FAILED with the error's exit code and one-line message."""
    code = exc.exit_code if exc.exit_code != EXIT_OK else EXIT_ENVIRONMENT
    return NodeResult(verdict=FAILED, exit_code=code, detail=exc.message)


def run_fleet(
    claim: Path, claim_sha256: str, nodes: Sequence[FleetNode], replay_node: NodeReplay
) -> FleetReport:
    """Replay on every node at once (one thread each) and compare their environments."""
    check_nodes(nodes)
    with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="fleet") as pool:
        results = list(pool.map(replay_node, nodes))
    with_fingerprint = [
        (node, result) for node, result in zip(nodes, results, strict=True) if result.fingerprint
    ]
    # The reference environment: the first node that replayed the claim, else the first known.
    reference = next(
        ((n, r.fingerprint) for n, r in with_fingerprint if r.verdict == IDENTICAL),
        (with_fingerprint[0][0], with_fingerprint[0][1].fingerprint) if with_fingerprint else None,
    )
    outcomes = []
    for node, result in zip(nodes, results, strict=True):
        differences: tuple[Difference, ...] = ()
        if reference is not None and node != reference[0]:
            differences = _differences(reference[1], result.fingerprint)
        outcomes.append(NodeOutcome(node, result, differences))
    return FleetReport(
        claim=claim,
        claim_sha256=claim_sha256,
        outcomes=tuple(outcomes),
        reference=reference[0].label if reference is not None else None,
    )
