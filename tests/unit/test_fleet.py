"""The fleet: nodes parsed, replayed in parallel (a fake replay here), the table and the exit
code; which node is the reference, and that every node's own verdict stands."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from detserve.errors import EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_VERIFICATION, UsageError
from detserve.fleet import FleetNode, NodeResult, check_nodes, parse_node, run_fleet

from .committed import CliRunner
from .fingerprints import make_fingerprint

CLAIM = Path("claim.runlog.jsonl")
SHA = "a" * 64
SAME = make_fingerprint()
PERTURBED = make_fingerprint(
    container__numerics_environment={"VLLM_BATCH_INVARIANT": "1", "OMP_NUM_THREADS": "1"}
)


def identical(fingerprint: object = SAME) -> NodeResult:
    return NodeResult("IDENTICAL", 0, "byte-identical", SHA, None, fingerprint)  # type: ignore[arg-type]


def test_a_node_is_a_host_with_optional_profile_and_name() -> None:
    assert parse_node("unix:///run/n2.sock", 2) == FleetNode("node2", "unix:///run/n2.sock")
    assert parse_node("tcp://h:2376,config=n2.json,name=gpu-a", 1) == FleetNode(
        "gpu-a", "tcp://h:2376", Path("n2.json")
    )


@pytest.mark.parametrize(
    "text",
    [
        "unix:///s.sock,port=1",
        "unix:///s.sock,config=",
        "unix:///s.sock,name=a,name=b",
        "unix:///s.sock,name=../up",
        ",name=a",
    ],
)
def test_a_malformed_node_is_bad_input(text: str) -> None:
    with pytest.raises(UsageError):
        parse_node(text, 1)


def test_node_names_must_be_unique_and_there_must_be_one() -> None:
    with pytest.raises(UsageError, match="two nodes are named"):
        check_nodes([FleetNode("a", "unix:///1"), FleetNode("a", "unix:///2")])
    with pytest.raises(UsageError, match="at least one"):
        check_nodes([])


def test_nodes_replay_in_parallel() -> None:
    # Two nodes that each wait for the other: only a parallel fleet finishes.
    barrier = threading.Barrier(2, timeout=10)

    def replay(node: FleetNode) -> NodeResult:
        barrier.wait()
        return identical()

    nodes = [FleetNode("n1", "unix:///1"), FleetNode("n2", "unix:///2")]
    report = run_fleet(CLAIM, SHA, nodes, replay)
    assert report.ok
    assert report.error() is None
    assert report.summary_lines()[-1] == "AGREEMENT: all 2 nodes replay the claim byte for byte"


def test_the_perturbed_node_is_named_with_its_fingerprint_difference() -> None:
    results = {
        "n1": identical(),
        "n2": NodeResult("NOT A REPLAY", EXIT_VERIFICATION, "other pins", None, None, PERTURBED),
    }
    nodes = [FleetNode("n1", "unix:///1"), FleetNode("n2", "unix:///2")]
    report = run_fleet(CLAIM, SHA, nodes, lambda node: results[node.label])
    assert not report.ok
    assert report.reference == "n1"
    row = report.table()[2]
    assert row[:3] == ("n2", "unix:///2", "NOT A REPLAY")
    assert row[4] == (
        "numerics settings: container.numerics_environment.OMP_NUM_THREADS: (unset) -> '1'"
    )
    error = report.error()
    assert error is not None
    assert error.exit_code == EXIT_VERIFICATION
    assert "n2 (unix:///2): NOT A REPLAY" in error.details


def test_the_reference_is_the_first_agreeing_node_not_the_first_node() -> None:
    results = {
        "n1": NodeResult("DIVERGENT", EXIT_VERIFICATION, "sample 0", "b" * 64, None, PERTURBED),
        "n2": identical(),
    }
    nodes = [FleetNode("n1", "unix:///1"), FleetNode("n2", "unix:///2")]
    report = run_fleet(CLAIM, SHA, nodes, lambda node: results[node.label])
    assert report.reference == "n2"
    assert [d.field for d in report.outcomes[0].differences] == [
        "container.numerics_environment.OMP_NUM_THREADS"
    ]


def test_a_node_that_could_not_run_fails_the_fleet_with_its_own_code() -> None:
    results = {
        "n1": identical(),
        "n2": NodeResult("FAILED", EXIT_ENVIRONMENT, "the container engine at x does not answer"),
    }
    nodes = [FleetNode("n1", "unix:///1"), FleetNode("n2", "unix:///2")]
    report = run_fleet(CLAIM, SHA, nodes, lambda node: results[node.label])
    error = report.error()
    assert error is not None
    assert error.exit_code == EXIT_ENVIRONMENT
    assert "n2: the container engine at x does not answer" in error.details
    assert report.table()[2][4] == "(no fingerprint)"


def test_a_disagreement_outranks_a_node_that_could_not_run() -> None:
    results = {
        "n1": identical(),
        "n2": NodeResult("FAILED", EXIT_ENVIRONMENT, "engine gone"),
        "n3": NodeResult("DIVERGENT", EXIT_VERIFICATION, "sample 1", "c" * 64, None, SAME),
    }
    nodes = [FleetNode(label, f"unix:///{label}") for label in results]
    error = run_fleet(CLAIM, SHA, nodes, lambda node: results[node.label]).error()
    assert error is not None
    assert error.exit_code == EXIT_VERIFICATION


def test_an_agreeing_node_alone_is_not_enough_when_another_is_within_threshold() -> None:
    results = {
        "n1": identical(),
        "n2": NodeResult("WITHIN THRESHOLD", EXIT_VERIFICATION, "tolerated", "d" * 64),
    }
    nodes = [FleetNode("n1", "unix:///1"), FleetNode("n2", "unix:///2")]
    assert not run_fleet(CLAIM, SHA, nodes, lambda node: results[node.label]).ok


def test_fleet_options_are_checked_before_any_engine(cli: CliRunner, tmp_path: Path) -> None:
    ran = cli(
        "fleet",
        "--config",
        tmp_path / "none.json",
        "--claim",
        tmp_path / "claim",
        "--output-dir",
        tmp_path / "out",
        "--node",
        "unix:///1,name=a",
        "--node",
        "unix:///2,name=a",
    )
    assert ran.code == EXIT_INPUT, ran.text
    assert "two nodes are named 'a'" in ran.err
