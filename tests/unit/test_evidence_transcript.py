"""A gateway transcript replayed is compared as the bytes that were planned: a claim swapped
after its plan (for the very answers the server gives, so that the comparison would read
IDENTICAL) is refused, never a verdict."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from detserve.errors import EvidenceChanged
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
