"""A gateway transcript replayed is compared as the bytes that were planned: a claim swapped
after its plan (for the very answers the server gives, so that the comparison would read
IDENTICAL) is refused, never a verdict."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from detserve.errors import EvidenceChanged, RunLogError, UnsafeOutputError, UsageError
from detserve.evaluation import Verdict
from detserve.gateway import replay as replay_module

from .committed import TinyWorkspace
from .gateway_rig import StreamingFakeVllm
from .test_gateway_replay import claim, replay  # noqa: F401 -- the transcript claim fixture


class Other(StreamingFakeVllm):
    """A server that answers one exchange otherwise."""

    def answer(self, method: str, path: str, body: Any) -> Any:
        if isinstance(body, dict) and body.get("prompt") == "two":
            body = body | {"prompt": "deux"}
        return super().answer(method, path, body)


def test_a_transcript_claim_swapped_after_its_plan_is_refused(
    claim: Path,  # noqa: F811
    tiny_workspace: TinyWorkspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answered = tmp_path / "answered.transcript.jsonl"
    assert replay(claim, tiny_workspace, Other(), answered).verdict is Verdict.DIVERGENT
    read = replay_module.read_exchanges

    def read_then_swap(path: Path, **kwargs: Any) -> Any:
        exchanges = read(path, **kwargs)
        shutil.copyfile(answered, path)  # the server's own answers, over the claim
        return exchanges

    monkeypatch.setattr(replay_module, "read_exchanges", read_then_swap)
    with pytest.raises(EvidenceChanged, match="changed while detserve read it"):
        replay(claim, tiny_workspace, Other(), tmp_path / "replay.transcript.jsonl")


@pytest.mark.parametrize("option", ["bundle", "bundle_pin", "run_log"])
def test_a_transcript_replayed_with_options_it_records_itself_is_refused(
    claim: Path,  # noqa: F811
    tiny_workspace: TinyWorkspace,
    tmp_path: Path,
    option: str,
) -> None:
    from detserve import api

    with pytest.raises(UsageError, match="gateway transcript, which records its own requests"):
        api.replay_evidence(
            claim,
            tiny_workspace.config,
            output_dir=tmp_path / "out",
            **{option: tmp_path / "anything"},
        )
    assert not (tmp_path / "out").exists()


def test_evidence_is_read_as_what_it_is(
    claim: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from detserve import api

    segment = api.read_evidence(claim)
    assert segment.transcript is not None
    assert segment.run_log is segment.series is None
    directory = api.read_evidence(claim.parent)
    assert directory.series is not None
    assert len(directory.series) == 1
    not_a_log = tmp_path / "x.runlog.jsonl"
    not_a_log.write_text("{}\n")
    with pytest.raises(RunLogError):
        api.read_evidence(not_a_log)


def test_a_replay_is_never_written_among_a_gateway_s_segments(
    claim: Path,  # noqa: F811
    tiny_workspace: TinyWorkspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from detserve import api

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # none is asked

    transcripts = claim.parent  # the gateway's live directory
    before = sorted(path.name for path in transcripts.iterdir())
    with pytest.raises(UnsafeOutputError, match="it holds a gateway's transcript segments"):
        api.replay_transcript(claim, tiny_workspace.config, output_dir=transcripts, force=True)
    assert sorted(path.name for path in transcripts.iterdir()) == before
    api.validate_transcripts(transcripts)  # still only the gateway's own segments
