"""runlog show and runlog validate: what a verifier holding only a run log can learn from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detserve.errors import EXIT_INPUT
from detserve.runlog import run_log_sha256

from .committed import CliRunner
from .runlog_builders import lines_of, write_log


def test_show_lists_pins_sampling_and_what_a_replay_needs(tmp_path: Path, cli: CliRunner) -> None:
    log = write_log(tmp_path / "a.runlog.jsonl", 3)
    shown = cli("runlog", "show", log, "--json")
    assert shown.code == 0, shown.text
    document = json.loads(shown.out)
    assert document["sha256"] == run_log_sha256(log)
    assert document["n_samples"] == 3
    assert document["format_version"] == 5
    assert document["pins"]["model_revision"] == "b" * 40
    assert document["sampling"]["seed"] == 0
    needs = {row["field"]: row["value"] for row in document["replay_needs"]}
    assert needs["model.revision"] == "b" * 40
    assert needs["runtime.image"].endswith("@sha256:" + "c" * 64)
    assert needs["runtime.environment"] == "{}"  # detserve's own variables are not asked for
    assert needs["sampling.seed"] == "0"
    text = cli("runlog", "show", log)
    assert text.code == 0
    assert "a replay needs, in your profile:" in text.out
    assert run_log_sha256(log) in text.out


def test_validate_accepts_a_valid_log_and_names_the_line_of_a_broken_one(
    tmp_path: Path, cli: CliRunner
) -> None:
    log = write_log(tmp_path / "a.runlog.jsonl", 2)
    assert cli("runlog", "validate", log).code == 0
    broken = tmp_path / "broken.runlog.jsonl"
    broken.write_bytes(b"".join(lines_of(log)[:-1]))  # the footer cut off
    for command in ("validate", "show"):
        refused = cli("runlog", command, broken)
        assert refused.code == EXIT_INPUT, refused.text
        assert str(broken) in refused.err


def test_outputs_are_named_for_what_they_are_and_the_old_spelling_still_works(
    tmp_path: Path, cli: CliRunner
) -> None:
    log = write_log(tmp_path / "a.runlog.jsonl", 2)
    other = write_log(tmp_path / "b.runlog.jsonl", 2)
    named = cli(
        "eval-determinism",
        "--run-a",
        log,
        "--run-b",
        other,
        "--report-output",
        tmp_path / "new.json",
    )
    assert named.code == 0, named.text
    assert "deprecated" not in named.err
    assert (tmp_path / "new.json").is_file()
    old = cli(
        "eval-determinism", "--run-a", log, "--run-b", other, "--output", tmp_path / "old.json"
    )
    assert old.code == 0, old.text
    assert "--output is deprecated here; use --report-output" in old.err
    assert (tmp_path / "old.json").is_file()
    both = cli(
        "eval-determinism",
        "--run-a",
        log,
        "--run-b",
        other,
        "--report-output",
        tmp_path / "x.json",
        "--output",
        tmp_path / "y.json",
    )
    assert both.code == EXIT_INPUT
    assert "--output is the old spelling of --report-output" in both.err
    assert not (tmp_path / "x.json").exists()
    assert not (tmp_path / "y.json").exists()


@pytest.mark.parametrize("command", ["validate", "show"])
@pytest.mark.parametrize("content", ["nothing", "other files", "json"])
def test_a_directory_with_nothing_to_validate_is_bad_input(
    tmp_path: Path, cli: CliRunner, command: str, content: str
) -> None:
    directory = tmp_path / "transcripts"
    directory.mkdir()
    if content == "other files":
        write_log(directory / "a.runlog.jsonl", 2)
        (directory / "notes.txt").write_text("not a segment")
    ran = cli("runlog", command, directory, *(["--json"] if content == "json" else []))
    assert ran.code == EXIT_INPUT, ran.text
    assert "no transcript segment (*.transcript.jsonl) to validate" in ran.err
    assert '"ok": true' not in ran.out
