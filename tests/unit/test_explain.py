"""``eval-determinism --sidecar``: each log that disagrees is explained by its first divergence
and its environment differences, ranked; sidecars that do not belong are refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from detserve.canonical import canonical_bytes
from detserve.errors import EXIT_INPUT, EXIT_OK, EXIT_VERIFICATION
from detserve.fingerprint import EnvironmentFingerprint

from .committed import CliRunner
from .fingerprints import make_fingerprint
from .runlog_builders import make_sample, write_log

PERTURBED = make_fingerprint(
    container__numerics_environment={"VLLM_BATCH_INVARIANT": "1", "OMP_NUM_THREADS": "1"}
)


def _sidecar(path: Path, log: Path, fingerprint: EnvironmentFingerprint, **extra: Any) -> Path:
    document: dict[str, Any] = {
        "run_log": str(log),
        "run_log_sha256": hashlib.sha256(log.read_bytes()).hexdigest(),
        "environment": fingerprint.model_dump(mode="json"),
    } | extra
    path.write_bytes(canonical_bytes(document))
    return path


@pytest.fixture
def nodes(tmp_path: Path) -> list[tuple[Path, Path]]:
    """Three nodes' (run log, sidecar): node 3 diverges at sample 2 under OMP_NUM_THREADS=1."""
    logs = [write_log(tmp_path / f"n{i}.runlog.jsonl") for i in (1, 2)]
    samples = [make_sample(i) for i in range(5)]
    samples[2] = make_sample(2, output=[7] * 12)
    logs.append(write_log(tmp_path / "n3.runlog.jsonl", samples=samples))
    fingerprints = [make_fingerprint(), make_fingerprint(), PERTURBED]
    return [
        (log, _sidecar(tmp_path / f"n{i}.sidecar.json", log, fp))
        for i, (log, fp) in enumerate(zip(logs, fingerprints, strict=True), start=1)
    ]


def _majority_args(nodes: list[tuple[Path, Path]]) -> list[str | Path]:
    args: list[str | Path] = ["eval-determinism"]
    for log, _ in nodes:
        args += ["--run", log]
    for _, sidecar in nodes:
        args += ["--sidecar", sidecar]
    return args


def test_the_dissenting_node_is_named_with_its_numerics_difference(
    nodes: list[tuple[Path, Path]], cli: CliRunner, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    ran = cli(*_majority_args(nodes), "--report-output", report)
    assert ran.code == EXIT_VERIFICATION, ran.text
    text = ran.out
    assert f"{nodes[2][0]} against {nodes[0][0]}:" in text
    assert "first divergence: sample 2" in text
    assert (
        "numerics settings: container.numerics_environment.OMP_NUM_THREADS: (unset) -> '1'" in text
    )
    document = json.loads(report.read_text())
    (explanation,) = document["explanations"]
    assert explanation["run"] == str(nodes[2][0])
    assert explanation["environment_differences"] == [
        {
            "field": "container.numerics_environment.OMP_NUM_THREADS",
            "category": "numerics settings",
            "reference": None,
            "actual": "1",
        }
    ]
    assert document["verdict"] == "majority"


def test_a_unanimous_set_needs_no_explanation(
    nodes: list[tuple[Path, Path]], cli: CliRunner
) -> None:
    ran = cli(*_majority_args(nodes[:2]), "--json")
    assert ran.code == EXIT_OK, ran.text
    assert json.loads(ran.out)["explanations"] == []


def test_two_logs_not_a_replay_ranks_the_header_difference(tmp_path: Path, cli: CliRunner) -> None:
    a = write_log(tmp_path / "a.runlog.jsonl")
    b = write_log(tmp_path / "b.runlog.jsonl", manifest_sha256="e" * 64)
    sa = _sidecar(tmp_path / "a.sidecar.json", a, make_fingerprint())
    sb = _sidecar(tmp_path / "b.sidecar.json", b, make_fingerprint(host__kernel="6.12.0"))
    ran = cli("eval-determinism", "--run-a", a, "--run-b", b, "--sidecar", sa, "--sidecar", sb)
    assert ran.code == EXIT_VERIFICATION, ran.text
    assert "first divergence: not a replay: model files: pins.manifest_sha256" in ran.out
    assert "software version: host.kernel: '6.1.0' -> '6.12.0'" in ran.out


def test_expected_hash_explains_against_the_published_logs_sidecar(
    nodes: list[tuple[Path, Path]], cli: CliRunner, tmp_path: Path
) -> None:
    (published, published_sidecar), _, (mine, my_sidecar) = nodes
    expected = hashlib.sha256(published.read_bytes()).hexdigest()
    ran = cli(
        "eval-determinism",
        "--run-a",
        mine,
        "--expected-hash",
        expected,
        "--sidecar",
        my_sidecar,
        "--sidecar",
        published_sidecar,
    )
    assert ran.code == EXIT_VERIFICATION, ran.text
    assert "container.numerics_environment.OMP_NUM_THREADS: (unset) -> '1'" in ran.out


def test_a_fingerprint_bound_to_no_run_log_is_refused(
    nodes: list[tuple[Path, Path]], cli: CliRunner, tmp_path: Path
) -> None:
    """A `detserve env` file names no run log: it could describe any host, so it explains none."""
    env = tmp_path / "n3.env.json"
    env.write_bytes(PERTURBED.canonical())
    args = _majority_args(nodes)
    args[-1] = env
    ran = cli(*args)
    assert ran.code == EXIT_INPUT, ran.text
    assert "an environment fingerprint bound to no run log" in ran.err
    assert "OMP_NUM_THREADS" not in ran.out


@pytest.mark.parametrize(
    "run_log_sha256", [None, 7, "", "0" * 64], ids=["absent", "not-text", "empty", "another"]
)
def test_a_sidecar_not_naming_its_run_log_is_refused(
    nodes: list[tuple[Path, Path]], cli: CliRunner, tmp_path: Path, run_log_sha256: object
) -> None:
    loose = tmp_path / "loose.sidecar.json"
    document: dict[str, Any] = {"environment": PERTURBED.model_dump(mode="json")}
    if run_log_sha256 is not None:
        document["run_log_sha256"] = run_log_sha256
    loose.write_text(json.dumps(document))
    args = _majority_args(nodes)
    args[-1] = loose
    ran = cli(*args)
    assert ran.code == EXIT_INPUT, ran.text
    assert "OMP_NUM_THREADS" not in ran.out


def test_a_sidecar_of_another_run_log_is_refused(
    nodes: list[tuple[Path, Path]], cli: CliRunner
) -> None:
    args = _majority_args(nodes)
    args[-1], args[-3] = args[-3], args[-1]  # node 2's and node 3's sidecars swapped
    ran = cli(*args)
    assert ran.code == EXIT_INPUT, ran.text
    assert "is the sidecar of another run log" in ran.err


def test_a_sidecar_without_a_fingerprint_is_refused(
    nodes: list[tuple[Path, Path]], cli: CliRunner, tmp_path: Path
) -> None:
    old = tmp_path / "old.sidecar.json"
    old.write_text(json.dumps({"run_log_sha256": "0" * 64}))
    args = _majority_args(nodes)
    args[-1] = old
    ran = cli(*args)
    assert ran.code == EXIT_INPUT, ran.text
    assert "records no environment fingerprint" in ran.err


@pytest.mark.parametrize("how", ["utf-16", "bom", "duplicate-environment", "overflow"])
def test_a_sidecar_read_loosely_is_refused(
    nodes: list[tuple[Path, Path]], cli: CliRunner, tmp_path: Path, how: str
) -> None:
    # node 3's sidecar as a loose reader (json.loads of bytes) would still read it: UTF-16, a
    # byte order mark, a second "environment" that hides the first from json.loads, 1e400
    text = nodes[2][1].read_text(encoding="utf-8")
    clean = make_fingerprint().model_dump(mode="json")
    loose = tmp_path / "loose.sidecar.json"
    loose.write_bytes(
        text.encode("utf-16")
        if how == "utf-16"
        else b"\xef\xbb\xbf" + text.encode()
        if how == "bom"
        else ('{"environment":' + json.dumps(clean) + "," + text[1:]).encode()
        if how == "duplicate-environment"
        else ('{"padding":1e400,' + text[1:]).encode()
    )
    args = _majority_args(nodes)
    args[-1] = loose
    ran = cli(*args)
    assert ran.code == EXIT_INPUT, ran.text
    assert "loose.sidecar.json" in ran.err


def test_one_sidecar_per_log(nodes: list[tuple[Path, Path]], cli: CliRunner) -> None:
    ran = cli(*_majority_args(nodes)[:-2])
    assert ran.code == EXIT_INPUT, ran.text
    assert "give one --sidecar per run log" in ran.err
