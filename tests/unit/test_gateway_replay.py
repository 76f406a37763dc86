"""A gateway transcript verified like any run log: eval-determinism compares two, and a replay
sends every exchange again and reports IDENTICAL for a faithful server, DIVERGENT for another,
NOT A REPLAY for other pins, before anything is sent. What is incomplete is replayed as what it
is: an exchange that ended early as its recorded start (INCOMPLETE, never IDENTICAL), a segment
cut by a crash up to its cut (CUT, exit 1)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from detserve.errors import UsageError
from detserve.evaluation import Verdict
from detserve.evaluation.transcript_pair import evaluate_transcripts
from detserve.gateway.replay import plan_transcript_replay, replay_transcript
from detserve.profile import load_profile
from detserve.replay_plan import NotAReplay
from detserve.runlog.transcript import TranscriptWriter, read_exchanges, validate_transcript
from detserve.runtime.container_spec import build_container_spec

from .committed import CliRunner, TinyWorkspace
from .containers import faithful_container, pinned_image
from .fake_http import serving
from .gateway_rig import Fixture, StreamingFakeVllm, gateway_profile, gateway_running
from .test_sampling_faults import FakeEngine
from .test_transcript import HEADER, exchange

MODEL = "tiny-llama"


@pytest.fixture
def claim(tiny_workspace: TinyWorkspace, tmp_path: Path) -> Path:
    """A closed transcript of five exchanges: whole and streamed, completions and chats, and
    one stream the client left."""
    fixture = Fixture(workspace=tiny_workspace, transcripts=tmp_path / "claim")
    fake = StreamingFakeVllm()
    with gateway_running(fixture, fake) as rig:
        client = rig.client()
        client.completions.create(model=MODEL, prompt="one", max_tokens=4)
        list(client.completions.create(model=MODEL, prompt="two", max_tokens=5, stream=True))
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "three"}], max_tokens=3
        )
        list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "four"}],
                max_tokens=3,
                stream=True,
                stop=["\n"],
            )
        )
        fake.event_delay_s = 0.1
        body = {"model": MODEL, "prompt": "five", "max_tokens": 30, "stream": True}
        with httpx.stream("POST", f"{rig.url}/v1/completions", json=body) as response:
            next(line for line in response.iter_lines() if line.startswith("data:"))
        deadline = time.monotonic() + 10
        while rig.gateway.transcript.provenance(response.headers["X-Detserve-Id"]) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    (path,) = fixture.transcripts.iterdir()
    return path


def replay(claim: Path, workspace: TinyWorkspace, fake: StreamingFakeVllm, out: Path) -> Any:
    with serving(fake.answer) as port:
        loaded = load_profile(gateway_profile(workspace, port))
        spec = build_container_spec(loaded)
        engine = FakeEngine(faithful_container(spec), pinned_image(spec))
        plan = plan_transcript_replay(claim, loaded)
        return replay_transcript(plan, loaded, out, engine=engine)


def test_the_claim_holds_what_was_asked(claim: Path) -> None:
    exchanges = read_exchanges(claim)
    kinds = ["completion", "completion", "chat", "chat", "completion"]
    assert [e.request.kind for e in exchanges] == kinds
    assert exchanges[3].request.stop == ("\n",)
    assert exchanges[4].incomplete == "client_disconnected"
    assert validate_transcript(claim).footer is not None


def test_a_faithful_replay_of_an_incomplete_exchange_is_incomplete_never_identical(
    claim: Path, tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    fake = StreamingFakeVllm()
    out = tmp_path / "replay.transcript.jsonl"
    report = replay(claim, tiny_workspace, fake, out)
    assert report.verdict is Verdict.INCOMPLETE, report.summary_lines()
    assert report.ok
    assert report.error() is None
    assert (report.identical_samples, report.incomplete_samples) == (5, 1)
    assert "INCOMPLETE" in report.summary_lines()[2]
    assert out.read_bytes() == claim.read_bytes()
    # sent whole, never streamed; the incomplete exchange with the tokens it had
    assert all(body["stream"] is False for _, body in fake.requests)
    n_partial = len(read_exchanges(claim)[4].output_token_ids)
    assert fake.requests[4][1]["max_tokens"] == n_partial


def test_a_faithful_replay_of_complete_exchanges_is_identical(
    claim: Path, tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    complete = tmp_path / "complete.transcript.jsonl"
    writer = TranscriptWriter(complete, validate_transcript(claim).header)
    for answered in read_exchanges(claim)[:4]:
        writer.append(_fields(answered))
    writer.close("stopped")
    out = tmp_path / "replay.transcript.jsonl"
    report = replay(complete, tiny_workspace, StreamingFakeVllm(), out)
    assert report.verdict is Verdict.IDENTICAL, report.summary_lines()
    assert out.read_bytes() == complete.read_bytes()


def _fields(exchange: Any) -> dict[str, Any]:
    document: dict[str, Any] = exchange.model_dump(mode="json")
    del document["index"], document["record"]
    return document


def test_a_chat_stream_cut_after_its_role_chunk_replays_as_incomplete(
    tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    """It recorded the prompt's tokens and none of the output: its replay is that empty start
    (it replayed DIVERGENT: the replay's text of one token against none)."""
    fixture = Fixture(workspace=tiny_workspace, transcripts=tmp_path / "claim")
    fake = StreamingFakeVllm(drop_after=1)  # the engine dies after the role chunk
    with gateway_running(fixture, fake) as rig:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "cut"}],
            "max_tokens": 5,
            "stream": True,
        }
        with httpx.stream("POST", f"{rig.url}/v1/chat/completions", json=body) as response:
            assert "the engine failed mid-stream" in response.read().decode()
    (claim,) = fixture.transcripts.iterdir()
    (cut,) = read_exchanges(claim)
    assert (cut.incomplete, cut.output_token_ids, cut.text) == ("engine_failed", (), "")
    assert cut.delivery == "undelivered"
    report = replay(claim, tiny_workspace, StreamingFakeVllm(), tmp_path / "r.transcript.jsonl")
    assert report.verdict is Verdict.INCOMPLETE, report.summary_lines()
    assert report.incomplete_samples == 1


def test_an_incomplete_exchange_whose_start_differs_is_divergent(
    claim: Path, tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    class Other(StreamingFakeVllm):
        def answer(self, method: str, path: str, body: Any) -> Any:
            if isinstance(body, dict) and body.get("prompt") == "five":
                body = body | {"prompt": "cinq"}
            return super().answer(method, path, body)

    report = replay(claim, tiny_workspace, Other(), tmp_path / "replay.transcript.jsonl")
    assert report.verdict is Verdict.DIVERGENT
    assert report.divergences[0].index == 4
    assert "output_token_ids" in report.divergences[0].fields


def test_another_server_is_divergent(
    claim: Path, tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    class Other(StreamingFakeVllm):
        def answer(self, method: str, path: str, body: Any) -> Any:
            if isinstance(body, dict) and body.get("prompt") == "two":
                body = body | {"prompt": "deux"}
            return super().answer(method, path, body)

    report = replay(claim, tiny_workspace, Other(), tmp_path / "replay.transcript.jsonl")
    assert report.verdict is Verdict.DIVERGENT
    assert report.divergent_samples == 1
    assert report.divergences[0].index == 1
    assert report.error() is not None


def test_other_pins_are_not_a_replay_and_nothing_is_sent(
    claim: Path, tiny_workspace: TinyWorkspace
) -> None:
    document = json.loads(tiny_workspace.config.read_text(encoding="utf-8"))
    document["sampling"]["seed"] = 7
    document["runtime"]["image"] = "127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a" * 64
    tiny_workspace.config.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(NotAReplay) as raised:
        plan_transcript_replay(claim, load_profile(tiny_workspace.config))
    assert any(detail.startswith("seed: claim 0, local 7") for detail in raised.value.details)


def test_a_claim_cut_by_a_crash_replays_its_prefix_and_reports_the_cut(
    claim: Path, tiny_workspace: TinyWorkspace, tmp_path: Path, cli: CliRunner
) -> None:
    cut = tmp_path / "cut.transcript.jsonl"
    lines = claim.read_bytes().splitlines(keepends=True)
    # no footer, and a line a killed write left unfinished
    cut.write_bytes(b"".join(lines[:-2]) + lines[-2][:40])
    plan = plan_transcript_replay(cut, load_profile(tiny_workspace.config))
    assert (plan.cut, plan.n_exchanges) == (True, 4)
    out = tmp_path / "replay.transcript.jsonl"
    report = replay(cut, tiny_workspace, StreamingFakeVllm(), out)
    assert report.verdict is Verdict.CUT, report.summary_lines()
    assert (report.identical_samples, report.cut_after) == (4, 4)
    assert not report.ok
    error = report.error()
    assert error is not None
    assert error.exit_code == 1
    assert "cut after 4 exchanges" in error.message
    assert out.read_bytes() == b"".join(lines[:-2])  # cut at the same place
    # eval-determinism says the same of the pair
    ran = cli("eval-determinism", "--run-a", cut, "--run-b", out)
    assert ran.code == 1, ran
    assert "CUT: the segment was cut after 4 exchanges" in ran.out


def test_a_cut_claim_that_diverges_is_divergent_and_names_the_cut(
    claim: Path, tiny_workspace: TinyWorkspace, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.transcript.jsonl"
    cut.write_bytes(b"".join(claim.read_bytes().splitlines(keepends=True)[:-1]))

    class Other(StreamingFakeVllm):
        def answer(self, method: str, path: str, body: Any) -> Any:
            if isinstance(body, dict) and body.get("prompt") == "one":
                body = body | {"prompt": "un"}
            return super().answer(method, path, body)

    report = replay(cut, tiny_workspace, Other(), tmp_path / "replay.transcript.jsonl")
    assert report.verdict is Verdict.DIVERGENT
    assert "the segment was cut after 5 exchanges (no footer)" in report.summary_lines()


def test_eval_determinism_compares_two_transcripts(
    claim: Path, tmp_path: Path, cli: CliRunner
) -> None:
    copy = tmp_path / "copy.transcript.jsonl"
    shutil.copyfile(claim, copy)
    ran = cli("eval-determinism", "--run-a", claim, "--run-b", copy)
    assert ran.code == 0, ran
    assert "INCOMPLETE" in ran.out  # one exchange was left mid-stream
    changed = tmp_path / "changed.transcript.jsonl"
    lines = claim.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"text":" t', b'"text":" T', 1)
    changed.write_bytes(b"".join(lines))
    ran = cli("eval-determinism", "--run-a", claim, "--run-b", changed)
    assert ran.code == 2, ran  # the footer no longer matches: invalid, not a verdict
    assert "the footer does not match" in ran.err


def test_a_transcript_is_not_compared_with_a_sampled_run_log(claim: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="compared with a transcript"):
        evaluate_transcripts(claim, Path(__file__))


def _transcript(
    path: Path, exchanges: list[dict[str, Any]], reason: Literal["rotated", "stopped"] = "stopped"
) -> Path:
    writer = TranscriptWriter(path, HEADER)
    for item in exchanges:
        writer.append(item)
    writer.close(reason)
    return path


@pytest.mark.parametrize("n_exchanges", [0, 2])
def test_segments_closed_otherwise_are_not_a_replay(tmp_path: Path, n_exchanges: int) -> None:
    # the footer's reason is part of the bytes; with no exchange this divided by zero
    exchanges = [exchange(n) for n in range(n_exchanges)]
    a = _transcript(tmp_path / "a.transcript.jsonl", exchanges)
    b = _transcript(tmp_path / "b.transcript.jsonl", exchanges, reason="rotated")
    report = evaluate_transcripts(a, b)
    assert report.verdict is Verdict.NOT_A_REPLAY
    assert [d.as_json() for d in report.header_differences] == [
        {"field": "transcript-end.reason", "run_a": "stopped", "run_b": "rotated"}
    ]
    assert report.identical_samples == n_exchanges


def test_an_exchange_left_incomplete_on_one_side_is_not_a_replay(tmp_path: Path) -> None:
    a = _transcript(tmp_path / "a.transcript.jsonl", [exchange(0), exchange(1)])
    left = exchange(1, incomplete="client_disconnected", finish_reason=None, delivery="partial")
    b = _transcript(tmp_path / "b.transcript.jsonl", [exchange(0), left])
    report = evaluate_transcripts(a, b)
    assert report.verdict is Verdict.NOT_A_REPLAY
    assert (report.prompt_mismatch_count, report.divergent_samples) == (1, 0)
    assert report.prompt_mismatches[0].index == 1


def test_other_exchanges_are_not_a_replay_and_other_outputs_diverge(tmp_path: Path) -> None:
    a = _transcript(tmp_path / "a.transcript.jsonl", [exchange(n) for n in range(4)])
    other_id = exchange(1, id="e" * 32)
    b = _transcript(
        tmp_path / "b.transcript.jsonl", [exchange(0), other_id, *map(exchange, (2, 3))]
    )
    report = evaluate_transcripts(a, b, max_reported=0)
    assert report.verdict is Verdict.NOT_A_REPLAY
    assert (report.prompt_mismatch_count, report.prompt_mismatches) == (1, ())
    texts = [exchange(0), exchange(1), exchange(2, text=" a b c e"), exchange(3)]
    c = _transcript(tmp_path / "c.transcript.jsonl", texts)
    report = evaluate_transcripts(a, c)
    assert report.verdict is Verdict.DIVERGENT
    assert (report.identical_samples, report.divergent_samples) == (3, 1)
    assert report.divergences[0].fields == ("text",)
    tolerant = evaluate_transcripts(a, c, min_exact_match_ratio=0.75)
    assert tolerant.verdict is Verdict.WITHIN_THRESHOLD
    assert tolerant.tolerated_samples == 0
