"""eval-determinism: verdicts, what a divergence report names, exit codes, and bad logs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from detserve.canonical import canonical_bytes
from detserve.errors import EXIT_INPUT, EXIT_OK, EXIT_VERIFICATION, UsageError
from detserve.evaluation import (
    TOKEN_WINDOW,
    Verdict,
    check_expected_hash,
    compare_many,
    evaluate,
    first_difference,
)

from .committed import CliRunner, sha256_hex
from .runlog_builders import lines_of, make_sample, with_footer, write_log

N = 20


def _log(path: Path, n: int = N, **kwargs: Any) -> Path:
    return write_log(path, n, **kwargs)


def _changed(
    path: Path, n: int = N, *, index: int, token: int | None = None, **changes: Any
) -> Path:
    samples = [make_sample(i) for i in range(n)]
    sample = samples[index]
    if token is not None:
        sample["output_token_ids"][token] += 1
    sample.update(changes)
    return write_log(path, n, samples=samples)


@pytest.fixture
def run_a(tmp_path: Path) -> Path:
    return _log(tmp_path / "a.runlog.jsonl")


# --- the core ----------------------------------------------------------------------------------


def test_identical_logs(run_a: Path, tmp_path: Path) -> None:
    run_b = _log(tmp_path / "b.runlog.jsonl")
    report = evaluate(run_a, run_b)
    assert report.verdict is Verdict.IDENTICAL
    assert report.ok
    assert report.identical_samples == N
    assert report.run_a.sha256 == report.run_b.sha256 == sha256_hex(run_a.read_bytes())
    assert report.error() is None


def test_one_changed_token_is_found(run_a: Path, tmp_path: Path) -> None:
    run_b = _changed(tmp_path / "b.runlog.jsonl", index=7, token=10)
    report = evaluate(run_a, run_b)
    assert report.verdict is Verdict.DIVERGENT
    assert (report.identical_samples, report.divergent_samples) == (N - 1, 1)
    divergence = report.divergences[0]
    assert divergence.index == 7
    assert divergence.prompt_id == "prompt-0007"
    assert divergence.first_divergence == 10
    assert divergence.fields == ("output_token_ids",)
    window = divergence.window
    assert window is not None
    tokens_a = make_sample(7)["output_token_ids"]
    assert window.start == 10 - TOKEN_WINDOW
    assert list(window.run_a) == tokens_a[10 - TOKEN_WINDOW : 10 + TOKEN_WINDOW + 1]
    assert window.run_b[TOKEN_WINDOW] == tokens_a[10] + 1
    assert divergence.finish_reasons == ("length", "length")
    error = report.error()
    assert error is not None
    assert error.exit_code == EXIT_VERIFICATION
    assert "output token 10" in error.diagnostics()


def test_text_and_finish_and_logprobs_are_reported(run_a: Path, tmp_path: Path) -> None:
    sample = make_sample(3)
    logprobs = list(sample["logprobs"])
    logprobs[4] -= 0.25
    tokens = sample["output_token_ids"][:8]
    run_b = _changed(
        tmp_path / "b.runlog.jsonl",
        index=3,
        output_token_ids=tokens,
        logprobs=logprobs[:8],
        text=sample["text"][:12] + "!",
        finish_reason="stop",
    )
    divergence = evaluate(run_a, run_b).divergences[0]
    assert divergence.fields == ("output_token_ids", "text", "finish_reason", "logprobs")
    assert divergence.first_divergence == 8  # run B's output is a prefix of run A's
    assert divergence.output_lengths == (12, 8)
    assert divergence.finish_reasons == ("length", "stop")
    assert divergence.text is not None
    assert divergence.text.first_divergence == 12
    assert divergence.logprobs is not None
    assert divergence.logprobs.position == 4
    assert divergence.logprobs.max_abs_diff == pytest.approx(0.25)
    assert divergence.logprobs.first_difference == 4


def test_other_pins_are_not_a_replay(run_a: Path, tmp_path: Path) -> None:
    run_b = _log(tmp_path / "b.runlog.jsonl", vllm_version="0.7.0", served_model_name="other")
    report = evaluate(run_a, run_b)
    assert report.verdict is Verdict.NOT_A_REPLAY
    differences = {d.field: (d.run_a, d.run_b) for d in report.header_differences}
    assert differences == {
        "pins.served_model_name": ("tiny", "other"),
        "pins.vllm_version": ("0.6.3", "0.7.0"),
    }
    error = report.error()
    assert error is not None
    assert error.exit_code == EXIT_VERIFICATION
    assert "pins.vllm_version" in error.diagnostics()


def test_other_prompts_are_not_a_replay(run_a: Path, tmp_path: Path) -> None:
    run_b = _changed(tmp_path / "b.runlog.jsonl", index=2, prompt_sha256="f" * 64)
    report = evaluate(run_a, run_b)
    assert report.verdict is Verdict.NOT_A_REPLAY
    assert report.prompt_mismatch_count == 1
    assert report.prompt_mismatches[0].index == 2
    assert report.header_differences == ()


def test_different_lengths_are_not_a_replay(run_a: Path, tmp_path: Path) -> None:
    run_b = _log(tmp_path / "b.runlog.jsonl", N + 3)
    report = evaluate(run_a, run_b)
    assert report.verdict is Verdict.NOT_A_REPLAY
    assert report.unpaired_samples == 3
    assert [d.field for d in report.header_differences] == ["n_samples"]


def test_ratio_threshold(run_a: Path, tmp_path: Path) -> None:
    run_b = _changed(tmp_path / "b.runlog.jsonl", index=0, token=0)
    within = evaluate(run_a, run_b, min_exact_match_ratio=0.95)
    assert within.verdict is Verdict.WITHIN_THRESHOLD
    assert within.ok
    assert within.exact_match_ratio == pytest.approx(0.95)
    assert within.as_json()["thresholds"] == {
        "min_exact_match_ratio": 0.95,
        "logprob_tolerance": None,
        "strict": False,
    }
    assert evaluate(run_a, run_b, min_exact_match_ratio=0.96).verdict is Verdict.DIVERGENT


def test_logprob_tolerance(run_a: Path, tmp_path: Path) -> None:
    logprobs = [x - 1e-7 for x in make_sample(5)["logprobs"]]
    run_b = _changed(tmp_path / "b.runlog.jsonl", index=5, logprobs=logprobs)
    assert evaluate(run_a, run_b).verdict is Verdict.DIVERGENT
    report = evaluate(run_a, run_b, logprob_tolerance=1e-6)
    assert report.verdict is Verdict.WITHIN_THRESHOLD
    assert report.tolerated_samples == 1
    assert evaluate(run_a, run_b, logprob_tolerance=1e-8).verdict is Verdict.DIVERGENT


def test_negative_zero_is_written_as_zero(tmp_path: Path) -> None:
    # RFC 8785 writes -0.0 and 0.0 alike (``0``): the same log, byte for byte.
    first = make_sample(0)
    assert first["logprobs"][0] == 0.0
    run_a = _log(tmp_path / "a.runlog.jsonl", 2)
    run_b = _changed(
        tmp_path / "b.runlog.jsonl", 2, index=0, logprobs=[-0.0, *first["logprobs"][1:]]
    )
    assert run_a.read_bytes() == run_b.read_bytes()
    assert evaluate(run_a, run_b).verdict is Verdict.IDENTICAL


def test_a_logprob_one_ulp_apart_is_a_difference(tmp_path: Path) -> None:
    first = make_sample(0)
    nudged = math.nextafter(first["logprobs"][3], 0.0)
    run_a = _log(tmp_path / "a.runlog.jsonl", 2)
    run_b = _changed(
        tmp_path / "b.runlog.jsonl",
        2,
        index=0,
        logprobs=[*first["logprobs"][:3], nudged, *first["logprobs"][4:]],
    )
    report = evaluate(run_a, run_b)
    assert report.verdict is Verdict.DIVERGENT
    assert report.divergences[0].fields == ("logprobs",)
    assert report.divergences[0].logprobs is not None
    assert report.divergences[0].logprobs.first_difference == 3


def test_report_is_bounded(run_a: Path, tmp_path: Path) -> None:
    samples = [make_sample(i) for i in range(N)]
    for sample in samples:
        sample["output_token_ids"][0] += 1
    run_b = write_log(tmp_path / "b.runlog.jsonl", N, samples=samples)
    report = evaluate(run_a, run_b, max_reported=3)
    assert report.divergent_samples == N
    assert [d.index for d in report.divergences] == [0, 1, 2]
    assert "... 17 more" in "\n".join(report.summary_lines())


@pytest.mark.parametrize(
    ("ratio", "tolerance"), [(0.0, None), (1.5, None), (float("nan"), None), (1.0, -1.0)]
)
def test_bad_thresholds(run_a: Path, ratio: float, tolerance: float | None) -> None:
    with pytest.raises(UsageError):
        evaluate(run_a, run_a, min_exact_match_ratio=ratio, logprob_tolerance=tolerance)


def test_a_log_is_not_compared_with_itself(run_a: Path) -> None:
    with pytest.raises(UsageError, match="same file"):
        evaluate(run_a, run_a)


def test_expected_hash(run_a: Path) -> None:
    digest = sha256_hex(run_a.read_bytes())
    assert check_expected_hash(run_a, digest).ok
    assert check_expected_hash(run_a, "sha256:" + digest.upper()).ok
    mismatch = check_expected_hash(run_a, "0" * 64)
    assert not mismatch.ok
    error = mismatch.error()
    assert error is not None
    assert error.exit_code == EXIT_VERIFICATION
    with pytest.raises(UsageError):
        check_expected_hash(run_a, "abc")


def test_majority_of_three(tmp_path: Path) -> None:
    logs = [_log(tmp_path / f"n{i}.runlog.jsonl") for i in range(2)]
    odd = _changed(tmp_path / "n2.runlog.jsonl", index=4, token=2)
    report = compare_many([logs[0], odd, logs[1]])
    assert report.verdict == "majority"
    assert not report.ok
    assert report.majority is not None
    assert report.majority.paths == (logs[0], logs[1])
    assert report.dissenters == (odd,)
    assert report.comparisons[0].divergences[0].index == 4
    assert report.comparisons[0].divergences[0].first_divergence == 2
    document = report.as_json()
    assert document["agree"] == [str(logs[0]), str(logs[1])]
    assert document["disagree"] == [str(odd)]


def test_unanimous_and_no_majority(tmp_path: Path) -> None:
    same = [_log(tmp_path / f"n{i}.runlog.jsonl") for i in range(3)]
    assert compare_many(same).verdict == "unanimous"
    odd = _changed(tmp_path / "odd.runlog.jsonl", index=1, token=1)
    tie = compare_many([same[0], odd])
    assert tie.verdict == "no-majority"
    assert tie.majority is None
    error = tie.error()
    assert error is not None
    assert error.exit_code == EXIT_VERIFICATION


def test_majority_needs_two_distinct_logs(run_a: Path) -> None:
    with pytest.raises(UsageError):
        compare_many([run_a])
    with pytest.raises(UsageError, match="same file"):
        compare_many([run_a, run_a, run_a])


# --- the command -------------------------------------------------------------------------------


def test_cli_identical(cli: CliRunner, run_a: Path, tmp_path: Path) -> None:
    run_b = _log(tmp_path / "b.runlog.jsonl")
    report_path = tmp_path / "report.json"
    result = cli("eval-determinism", "--run-a", run_a, "--run-b", run_b, "--output", report_path)
    assert result.code == EXIT_OK, result.text
    assert "IDENTICAL" in result.out
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "identical"
    assert report["thresholds"]["strict"] is True


def test_cli_divergent_names_sample_and_token(cli: CliRunner, run_a: Path, tmp_path: Path) -> None:
    run_b = _changed(tmp_path / "b.runlog.jsonl", index=7, token=10)
    report_path = tmp_path / "report.json"
    result = cli("eval-determinism", "--run-a", run_a, "--run-b", run_b, "-o", report_path)
    assert result.code == EXIT_VERIFICATION, result.text
    assert "DIVERGENT" in result.out
    assert "sample 7 (prompt-0007, completion): output token 10 differs" in result.out
    assert "detserve: error:" in result.err
    report = json.loads(report_path.read_text())
    assert report["ok"] is False
    assert report["counts"]["divergent"] == 1
    assert report["divergences"][0]["index"] == 7
    assert report["divergences"][0]["first_divergence"] == 10


def test_cli_json_is_one_object(cli: CliRunner, run_a: Path, tmp_path: Path) -> None:
    run_b = _changed(tmp_path / "b.runlog.jsonl", index=1, token=0)
    result = cli("eval-determinism", "--run-a", run_a, "--run-b", run_b, "--json")
    assert result.code == EXIT_VERIFICATION
    document = json.loads(result.out)
    assert document["verdict"] == "divergent"


def test_cli_not_a_replay(cli: CliRunner, run_a: Path, tmp_path: Path) -> None:
    run_b = _log(tmp_path / "b.runlog.jsonl", image="localhost:5000/other@sha256:" + "d" * 64)
    result = cli("eval-determinism", "--run-a", run_a, "--run-b", run_b)
    assert result.code == EXIT_VERIFICATION, result.text
    assert "NOT A REPLAY" in result.out
    assert "pins.image" in result.out


def test_cli_threshold(cli: CliRunner, run_a: Path, tmp_path: Path) -> None:
    run_b = _changed(tmp_path / "b.runlog.jsonl", index=1, token=0)
    args = ("eval-determinism", "--run-a", run_a, "--run-b", run_b)
    assert cli(*args, "--min-exact-match-ratio", "0.95").code == EXIT_OK
    assert cli(*args, "--min-exact-match-ratio", "0.99").code == EXIT_VERIFICATION


def test_cli_expected_hash(cli: CliRunner, run_a: Path) -> None:
    digest = sha256_hex(run_a.read_bytes())
    ok = cli("eval-determinism", "--run-a", run_a, "--expected-hash", digest)
    assert ok.code == EXIT_OK, ok.text
    assert "MATCH" in ok.out
    bad = cli("eval-determinism", "--run-a", run_a, "--expected-hash", "e" * 64)
    assert bad.code == EXIT_VERIFICATION
    assert digest in bad.out


def test_cli_majority(cli: CliRunner, tmp_path: Path) -> None:
    logs = [_log(tmp_path / f"n{i}.runlog.jsonl") for i in range(2)]
    odd = _changed(tmp_path / "n2.runlog.jsonl", index=4, token=2)
    result = cli("eval-determinism", "--run", logs[0], "--run", logs[1], "--run", odd, "--json")
    assert result.code == EXIT_VERIFICATION, result.text
    document = json.loads(result.out)
    assert document["verdict"] == "majority"
    assert document["disagree"] == [str(odd)]
    unanimous = cli("eval-determinism", "--run", logs[0], "--run", logs[1])
    assert unanimous.code == EXIT_OK


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-mode"),
        pytest.param(["--run-a", "a"], id="only-a"),
        pytest.param(["--run-a", "a", "--run-b", "b", "--run", "c"], id="modes-mixed"),
        pytest.param(["--run-a", "a", "--run-b", "b", "--expected-hash", "0" * 64], id="hash+b"),
        pytest.param(["--run", "a", "--run", "b", "--min-exact-match-ratio", "0.5"], id="thr"),
        pytest.param(["--run-a", "a", "--expected-hash", "xyz"], id="bad-hash"),
        pytest.param(["--run-a", "a", "--run-b", "b", "--max-reported", "-1"], id="max"),
    ],
)
def test_cli_usage_errors(cli: CliRunner, tmp_path: Path, args: list[str]) -> None:
    _log(tmp_path / "a")
    _log(tmp_path / "b")
    result = cli("eval-determinism", *[str(tmp_path / a) if a in "abc" else a for a in args])
    assert result.code == EXIT_INPUT, result.text


def test_cli_refuses_to_overwrite_a_report(cli: CliRunner, run_a: Path, tmp_path: Path) -> None:
    run_b = _log(tmp_path / "b.runlog.jsonl")
    report_path = tmp_path / "report.json"
    report_path.write_text("keep")
    args = ("eval-determinism", "--run-a", run_a, "--run-b", run_b, "-o", report_path)
    assert cli(*args).code == EXIT_INPUT
    assert report_path.read_text() == "keep"
    assert cli(*args, "--force").code == EXIT_OK


def _break(lines: list[bytes], how: str) -> bytes:
    sample = json.loads(lines[1])
    if how == "truncated":
        return b"".join(lines[:-1])
    if how == "invalid-json":
        lines[1] = b"{not json}\n"
    elif how == "schema":
        sample["prompt_token_ids"] = []
        lines[1] = canonical_bytes(sample)
    elif how == "non-canonical":
        lines[1] = (json.dumps(sample, sort_keys=True) + "\n").encode()
    elif how == "invalid-utf8":
        lines[1] = lines[1].replace("é".encode(), b"\xe9")
    elif how == "huge-field":
        sample["text"] = "x" * (1 << 22 | 1)
        lines[1] = canonical_bytes(sample)
    elif how == "after-footer":
        return b"".join([*lines, b"{}\n"])
    elif how == "header-pin":
        # one pin edited in a canonical header line, the footer left as written: invalid, not
        # "not a replay", though the pins now differ from the other log's
        header = json.loads(lines[0])
        header["pins"]["image"] = header["pins"]["image"].replace("c" * 64, "d" * 64)
        lines[0] = canonical_bytes(header)
        return b"".join(lines)
    return b"".join(with_footer(lines[:-1]))


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "invalid-json",
        "schema",
        "non-canonical",
        "invalid-utf8",
        "huge-field",
        "after-footer",
        "header-pin",
    ],
)
@pytest.mark.parametrize("side", ["run-a", "run-b"])
def test_cli_invalid_log_exits_2(
    cli: CliRunner, run_a: Path, tmp_path: Path, how: str, side: str
) -> None:
    bad = tmp_path / "bad.runlog.jsonl"
    bad.write_bytes(_break(lines_of(run_a), how))
    good = _log(tmp_path / "good.runlog.jsonl")
    pair = (bad, good) if side == "run-a" else (good, bad)
    result = cli("eval-determinism", "--run-a", pair[0], "--run-b", pair[1], "--json")
    assert result.code == EXIT_INPUT, result.text
    assert str(bad) in result.err
    assert json.loads(result.out)["error"] == "invalid-run-log"


def test_cli_invalid_log_in_hash_and_majority_modes(
    cli: CliRunner, run_a: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.runlog.jsonl"
    bad.write_bytes(_break(lines_of(run_a), "truncated"))
    digest = sha256_hex(bad.read_bytes())
    assert cli("eval-determinism", "--run-a", bad, "--expected-hash", digest).code == EXIT_INPUT
    others = [_log(tmp_path / f"n{i}.runlog.jsonl") for i in range(2)]
    result = cli("eval-determinism", "--run", others[0], "--run", others[1], "--run", bad)
    assert result.code == EXIT_INPUT


def test_cli_help_teaches_by_example(cli: CliRunner) -> None:
    result = cli("eval-determinism", "--help")
    assert result.code == EXIT_OK
    for text in ("--run-a", "--expected-hash", "--run n1.runlog.jsonl", "--min-exact-match-ratio"):
        assert text in result.out


@given(
    a=st.lists(st.integers(0, 2), max_size=10) | st.text(alphabet="ab", max_size=10),
    b=st.lists(st.integers(0, 2), max_size=10) | st.text(alphabet="ab", max_size=10),
)
def testfirst_difference(a: Any, b: Any) -> None:
    assume(type(a) is type(b))
    expected = None
    if a != b:
        expected = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
    assert first_difference(a, b) == expected
