"""A gateway's transcript directory, checked whole: the hash chain across rotated segments, and
the provenance of earlier gateway runs, indexed when the gateway starts.

A rotated series validates, by the library and by ``detserve runlog validate DIR`` (exit 0); a
segment missing (first, middle or last), reordered, renamed or substituted breaks the chain
(exit 1, naming the segment); a segment that does not validate is bad input (exit 2). A gateway
started on a directory answers ``/v1/provenance/{id}`` for the exchanges of earlier runs, and
refuses to start on a directory holding a segment that does not validate.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from detserve import api
from detserve.errors import ChainBroken, RunLogError
from detserve.gateway.transcript_segments import Transcript, index_earlier
from detserve.runlog.models import ExchangeRequest
from detserve.runlog.series import validate_transcript_dir
from detserve.runlog.transcript import TranscriptWriter, validate_transcript

from .committed import CliRunner, TinyWorkspace
from .gateway_rig import Fixture, StreamingFakeVllm, gateway_profile, gateway_running
from .test_transcript import HEADER, exchange

MODEL = "tiny-llama"


def series(directory: Path, count: int, *, rotate: int = 2, close: bool = True) -> list[Path]:
    """A gateway run's segments, ``rotate`` exchanges each, written as the gateway writes them."""
    first = 100 * len(list(directory.iterdir())) if directory.exists() else 0  # distinct ids
    transcript = Transcript(directory, HEADER, pins_sha256="0" * 64, rotate_exchanges=rotate)
    for number in range(first, first + count):
        fields = exchange(number)
        request = ExchangeRequest.model_validate_json(json.dumps(fields.pop("request")))
        transcript.record(fields.pop("id"), request, fields)
    if close:
        transcript.close("stopped")
    return sorted(directory.iterdir())


def test_a_rotated_series_validates(tmp_path: Path, cli: CliRunner) -> None:
    paths = series(tmp_path, 5)
    assert [path.name[-24:] for path in paths] == [f".{n:06d}.transcript.jsonl" for n in range(3)]
    (one,) = validate_transcript_dir(tmp_path)
    assert (len(one.segments), one.n_exchanges, one.cut) == (3, 5, False)
    assert [s.footer.reason for s in one.segments if s.footer] == ["rotated", "rotated", "stopped"]
    ran = cli("runlog", "validate", tmp_path)
    assert ran.code == 0, ran
    assert "every chain intact" in ran.out
    ran = cli("runlog", "validate", paths[1], "--json")
    assert ran.code == 0, ran
    assert json.loads(ran.out)["n_exchanges"] == 2
    ran = cli("runlog", "show", paths[1])
    assert ran.code == 0, ran
    assert "segment 1, previous segment sha256" in ran.out


def test_a_rotated_gateway_leaves_a_valid_chain(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    fixture = Fixture(tiny_workspace, tmp_path / "t", options={"rotate_exchanges": 2})
    with gateway_running(fixture, StreamingFakeVllm()) as rig:
        for number in range(5):
            rig.client().completions.create(model=MODEL, prompt=f"p{number}", max_tokens=2)
    (one,) = api.validate_transcripts(fixture.transcripts)
    assert (len(one.segments), one.n_exchanges, one.closed) == (3, 5, True)


def _broken(directory: Path, cli: CliRunner, match: str) -> None:
    with pytest.raises(ChainBroken, match=match):
        validate_transcript_dir(directory)
    ran = cli("runlog", "validate", directory)
    assert ran.code == 1, ran
    assert "chain" in ran.err or "missing" in ran.err or "renamed" in ran.err


@pytest.mark.parametrize("missing", [0, 1])
def test_a_missing_segment_breaks_the_chain(tmp_path: Path, cli: CliRunner, missing: int) -> None:
    paths = series(tmp_path, 5)
    paths[missing].unlink()
    _broken(tmp_path, cli, f"segment {missing} of transcript {'d' * 32} is missing")


def test_a_missing_last_segment_is_seen(tmp_path: Path, cli: CliRunner) -> None:
    paths = series(tmp_path, 5)
    paths[2].unlink()
    _broken(tmp_path, cli, "closed 'rotated', but segment 2 .* is missing")


def test_reordered_segments_break_the_chain(tmp_path: Path, cli: CliRunner) -> None:
    paths = series(tmp_path, 5)
    spare = tmp_path / "spare"
    paths[0].rename(spare)
    paths[1].rename(paths[0])
    spare.rename(paths[1])
    _broken(tmp_path, cli, "renamed or reordered")


def test_a_substituted_segment_breaks_the_chain(tmp_path: Path, cli: CliRunner) -> None:
    paths = series(tmp_path, 5)
    # another valid segment 1, chained to segment 0, with other exchanges in it
    (one,) = validate_transcript_dir(tmp_path)
    header = HEADER.model_copy(update={"segment": 1, "previous_sha256": one.segments[0].sha256})
    other = tmp_path / "other"
    other.mkdir()
    writer = TranscriptWriter(other / paths[1].name, header)
    writer.append(exchange(42))
    writer.append(exchange(43))
    writer.close("rotated")
    shutil.copyfile(other / paths[1].name, paths[1])
    shutil.rmtree(other)
    validate_transcript(paths[1])  # valid by itself
    _broken(tmp_path, cli, f"{paths[2]}: the chain is broken")


def test_a_changed_segment_is_bad_input(tmp_path: Path, cli: CliRunner) -> None:
    paths = series(tmp_path, 5)
    data = paths[1].read_bytes().replace(b'"text":" a b c d"', b'"text":" a b c e"', 1)
    paths[1].write_bytes(data)
    with pytest.raises(RunLogError, match="the footer does not match"):
        validate_transcript_dir(tmp_path)
    ran = cli("runlog", "validate", tmp_path)
    assert ran.code == 2, ran
    assert paths[1].name in ran.err


def test_a_cut_last_segment_is_accepted_only_when_allowed(tmp_path: Path, cli: CliRunner) -> None:
    series(tmp_path, 5, close=False)
    with pytest.raises(RunLogError, match="cut after 1 exchanges"):
        validate_transcript_dir(tmp_path)
    (one,) = validate_transcript_dir(tmp_path, allow_cut=True)
    assert one.cut
    assert one.n_exchanges == 5
    assert cli("runlog", "validate", tmp_path).code == 2
    ran = cli("runlog", "validate", tmp_path, "--allow-cut")
    assert ran.code == 0, ran
    assert "cut (the gateway did not stop cleanly)" in ran.out


def test_two_gateway_runs_are_two_series(tmp_path: Path) -> None:
    series(tmp_path, 3)
    second = Transcript(
        tmp_path, HEADER.model_copy(update={"transcript_id": "e" * 32}), pins_sha256="0" * 64
    )
    fields = exchange(7)
    request = ExchangeRequest.model_validate_json(json.dumps(fields.pop("request")))
    second.record(fields.pop("id"), request, fields)
    second.close()
    assert [one.n_exchanges for one in validate_transcript_dir(tmp_path)] == [3, 1]
    assert len(index_earlier(tmp_path).index) == 4


# --- the provenance index, across restarts ---------------------------------------------------


def test_provenance_of_an_earlier_run_resolves_after_a_restart(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    fixture = Fixture(tiny_workspace, tmp_path / "t", options={"rotate_exchanges": 2})
    fake = StreamingFakeVllm()
    with gateway_running(fixture, fake) as rig:
        first = [
            rig.client().completions.create(model=MODEL, prompt=f"p{n}", max_tokens=2)
            for n in range(3)
        ]
    # a crash of a second run: its segment is cut, and what it recorded still resolves
    cut = series(fixture.transcripts, 0, close=False)
    assert len(cut) == 3
    with gateway_running(fixture, fake) as rig:
        for answer in first:
            provenance = answer.model_extra["detserve"]
            resolved = httpx.get(f"{rig.url}/v1/provenance/{provenance['id']}")
            assert resolved.status_code == 200
            assert resolved.json() == provenance
        assert httpx.get(f"{rig.url}/v1/provenance/{'f' * 32}").status_code == 404
        assert len(rig.gateway.transcript.earlier.series) == 2


def test_the_gateway_refuses_to_start_on_a_segment_that_does_not_validate(
    tiny_workspace: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    directory = tmp_path / "t"
    directory.mkdir(mode=0o700)
    paths = series(directory, 3)
    paths[0].write_bytes(paths[0].read_bytes().replace(b'"prompt 0"', b'"prompt!0"'))
    config = gateway_profile(tiny_workspace, 9)  # pinned; no engine is reached
    with pytest.raises(RunLogError, match=paths[0].name):
        api.build_gateway(config, transcript_dir=directory)
    ran = cli("serve", "--config", config, "--transcript-dir", directory)
    assert ran.code == 2, ran
    assert paths[0].name in ran.err
    assert sorted(directory.iterdir()) == paths  # nothing was opened


def test_the_gateway_refuses_to_start_on_a_broken_chain(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    directory = tmp_path / "t"
    directory.mkdir(mode=0o700)
    paths = series(directory, 5)
    paths[1].unlink()
    config = gateway_profile(tiny_workspace, 9)
    with pytest.raises(ChainBroken, match="segment 1 of transcript"):
        api.build_gateway(config, transcript_dir=directory)
