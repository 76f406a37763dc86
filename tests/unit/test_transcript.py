"""Gateway transcripts: the run-log family's lines, appended durably, read back strictly.

A segment that was closed validates; one that was cut (a crash: no footer) validates up to its
last complete line only when the cut is allowed, and says so; any change to a line, a partial
last line, a line out of order or a transcript read as a sampled run log is refused by name.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from detserve.canonical import canonical_bytes
from detserve.errors import EnvironmentFault, OutputExistsError, RunLogError
from detserve.runlog import DevicePins, validate_run_log
from detserve.runlog import transcript as transcript_module
from detserve.runlog.kinds import is_transcript
from detserve.runlog.lines import _fast_line
from detserve.runlog.models import (
    ChatMessage,
    EnginePins,
    ExchangeRequest,
    TranscriptExchange,
    TranscriptHeader,
)
from detserve.runlog.transcript import (
    TranscriptWriter,
    output_sha256,
    read_exchanges,
    request_sha256,
    validate_transcript,
    written_digests,
)

PINS = EnginePins(
    model_id="detserve/tiny-llama",
    model_revision="b" * 40,
    manifest_sha256="c" * 64,
    image="127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a" * 64,
    engine_args=("--model", "/m"),
    entrypoint=None,
    environment={"HF_HUB_OFFLINE": "1"},
    device=DevicePins(kind="cpu", gpus=0),
    served_model_name="tiny-llama",
    vllm_version="0.32.0",
)
HEADER = TranscriptHeader(
    pins=PINS, previous_sha256=None, seed=0, segment=0, transcript_id="d" * 32
)


def exchange(number: int, **changes: Any) -> dict[str, Any]:
    return {
        "constraint_check": None,
        "id": f"{number:032x}",
        "request": {
            "kind": "completion",
            "max_tokens": 4,
            "messages": None,
            "prompt": f"prompt {number}",
            "response_format": None,
            "stop": None,
            "structured_outputs": None,
        },
        "prompt_token_ids": [1, 2, 3],
        "output_token_ids": [5, 6, 7, 8],
        "text": " a b c d",
        "finish_reason": "length",
        "incomplete": None,
        "delivery": "delivered",
    } | changes


def written(path: Path, count: int, *, close: bool = True) -> Path:
    writer = TranscriptWriter(path, HEADER)
    for number in range(count):
        writer.append(exchange(number))
    if close:
        writer.close("stopped")
    return path


def test_a_closed_segment_validates_and_names_its_hashes(tmp_path: Path) -> None:
    path = written(tmp_path / "t.transcript.jsonl", 3)
    summary = validate_transcript(path)
    assert summary.n_exchanges == 3
    assert not summary.cut
    assert summary.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert is_transcript(path)
    first = read_exchanges(path)[0]
    assert (
        request_sha256(first.request)
        == hashlib.sha256(
            b'{"kind":"completion","max_tokens":4,"messages":null,"prompt":"prompt 0",'
            b'"response_format":null,"stop":null,"structured_outputs":null}'
        ).hexdigest()
    )
    assert (
        output_sha256((5, 6, 7, 8), " a b c d")
        == hashlib.sha256(b'{"output_token_ids":[5,6,7,8],"text":" a b c d"}').hexdigest()
    )


def test_every_line_is_on_disk_when_append_returns(tmp_path: Path) -> None:
    path = tmp_path / "t.transcript.jsonl"
    writer = TranscriptWriter(path, HEADER)
    writer.append(exchange(0))
    # read by another reader while the writer is open: the line is there, whole
    assert [e.id for e in read_exchanges(path, allow_cut=True)] == [f"{0:032x}"]
    writer.close("stopped")


def test_a_cut_segment_is_refused_unless_allowed_and_then_says_so(tmp_path: Path) -> None:
    path = written(tmp_path / "t.transcript.jsonl", 2, close=False)
    with pytest.raises(RunLogError, match="cut after 2 exchanges: no footer"):
        validate_transcript(path)
    summary = validate_transcript(path, allow_cut=True)
    assert summary.cut
    assert summary.n_exchanges == 2


def test_a_partial_last_line_is_a_cut_read_up_to_its_last_whole_line(tmp_path: Path) -> None:
    """A crash can kill a write mid-line; that line's answer was never given (answers wait for
    the sync), so a cut segment is read up to its last whole line, and says what was torn."""
    path = written(tmp_path / "t.transcript.jsonl", 2, close=False)
    whole = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"finish_reason":"len')
    with pytest.raises(RunLogError, match="truncated: the last line has no newline"):
        validate_transcript(path)
    summary = validate_transcript(path, allow_cut=True)
    assert (summary.cut, summary.n_exchanges, summary.torn_bytes) == (True, 2, 21)
    assert summary.sha256 == hashlib.sha256(whole).hexdigest()
    assert len(read_exchanges(path, allow_cut=True)) == 2


def test_a_torn_header_is_no_transcript_even_cut(tmp_path: Path) -> None:
    path = tmp_path / "t.transcript.jsonl"
    path.write_bytes(b'{"format":"detserve-run-log","form')
    with pytest.raises(RunLogError, match="truncated"):
        validate_transcript(path, allow_cut=True)


def test_an_over_long_line_is_refused_without_parsing_it(tmp_path: Path) -> None:
    from detserve.runlog.models import MAX_LINE_BYTES

    path = written(tmp_path / "t.transcript.jsonl", 1, close=False)
    with path.open("ab") as handle:
        handle.write(b"x" * (MAX_LINE_BYTES + 1) + b"\n")
    with pytest.raises(RunLogError, match=f"line 3: longer than {MAX_LINE_BYTES} bytes$"):
        validate_transcript(path, allow_cut=True)


def test_a_version_4_transcript_is_refused_by_name(tmp_path: Path) -> None:
    # Version 4 requests held a canonical constraint; its header is refused before them.
    import json

    from detserve.canonical import canonical_bytes

    path = written(tmp_path / "t.transcript.jsonl", 1)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0] = canonical_bytes(json.loads(lines[0]) | {"format_version": 4})
    path.write_bytes(b"".join(lines))
    with pytest.raises(
        RunLogError, match="line 1: run-log format version 4; this detserve reads version 5 only"
    ) as raised:
        validate_transcript(path)
    assert raised.value.hint is not None
    assert "constraint field as sent" in raised.value.hint
    assert "what the client was sent" in raised.value.hint


def test_a_changed_line_is_refused_by_the_footer(tmp_path: Path) -> None:
    path = written(tmp_path / "t.transcript.jsonl", 2)
    data = path.read_bytes().replace(b'"text":" a b c d"', b'"text":" a b c e"', 1)
    path.write_bytes(data)
    with pytest.raises(RunLogError, match="the footer does not match"):
        validate_transcript(path)


def test_a_write_that_fails_is_cut_off_and_breaks_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.transcript.jsonl"
    writer = TranscriptWriter(path, HEADER)
    writer.append(exchange(0))
    real = transcript_module._write

    def half(fd: int, data: bytes) -> int:
        real(fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transcript_module, "_write", half)
    with pytest.raises(EnvironmentFault, match="No space left on device"):
        writer.append(exchange(1))
    monkeypatch.setattr(transcript_module, "_write", real)
    with pytest.raises(EnvironmentFault):
        writer.append(exchange(2))  # broken for good: no gap in the indices either
    writer.close("stopped")
    summary = validate_transcript(path, allow_cut=True)
    assert summary.cut
    assert summary.n_exchanges == 1


@pytest.mark.parametrize("how", ["removed", "replaced", "directory-removed"])
def test_a_segment_removed_or_replaced_while_written_breaks_the_writer(
    tmp_path: Path, how: str
) -> None:
    # a line synced into a file no path names is a record nobody can read: never an answer
    folder = tmp_path / "transcripts"
    path = folder / "t.transcript.jsonl"
    writer = TranscriptWriter(path, HEADER)
    writer.append(exchange(0))
    assert writer.unreachable() is None
    if how == "replaced":
        other = folder / "other"
        other.write_bytes(path.read_bytes())
        other.replace(path)
    elif how == "removed":
        path.unlink()
    else:
        path.unlink()
        folder.rmdir()
    assert writer.unreachable() is not None
    with pytest.raises(EnvironmentFault, match="no file a reader can find"):
        writer.append(exchange(1))
    assert writer.broken is not None
    with pytest.raises(EnvironmentFault):
        writer.append(exchange(2))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"finish_reason": None}, "finish_reason exactly when it is not incomplete"),
        ({"incomplete": "client_disconnected"}, "finish_reason exactly when"),
        ({"output_token_ids": [1] * 5}, "exceed the request's max_tokens"),
        ({"prompt_token_ids": []}, "does not match the run-log schema"),
    ],
)
def test_an_invalid_exchange_is_never_written(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = tmp_path / "t.transcript.jsonl"
    writer = TranscriptWriter(path, HEADER)
    with pytest.raises(RunLogError, match=message):
        writer.append(exchange(0, **changes))
    # nothing of it reached the file, and the writer goes on at the same index
    assert path.read_bytes().count(b"\n") == 1
    writer.append(exchange(0))
    writer.close("stopped")
    assert validate_transcript(path).n_exchanges == 1


@pytest.mark.parametrize(
    "request_changes",
    [
        {"kind": "chat"},
        {"structured_outputs": '{"regex":"a","choice":["b"]}'},
        {"structured_outputs": '{"json":{}}', "response_format": '{"type":"json_object"}'},
        {"structured_outputs": '{"choice":[1]}'},
        {"structured_outputs": '{"regex": "a"}'},  # not the compact form it was sent in
        {"response_format": '{"type":"json_schema","json_schema":{"schema":{}}}'},  # no name
        {"constraint": None},
    ],
)
def test_a_request_that_is_not_canonical_is_refused(
    tmp_path: Path, request_changes: dict[str, Any]
) -> None:
    writer = TranscriptWriter(tmp_path / "t.transcript.jsonl", HEADER)
    base = exchange(0)
    with pytest.raises(RunLogError, match="does not match the run-log schema"):
        writer.append(base | {"request": base["request"] | request_changes})


def test_a_transcript_is_not_read_as_a_sampled_run_log(tmp_path: Path) -> None:
    path = written(tmp_path / "t.transcript.jsonl", 1)
    with pytest.raises(RunLogError, match="a gateway transcript, not a sampled run log"):
        validate_run_log(path)


def test_an_existing_segment_is_never_overwritten(tmp_path: Path) -> None:
    path = written(tmp_path / "t.transcript.jsonl", 1)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        TranscriptWriter(path, HEADER)
    assert path.read_bytes() == before


def test_the_request_form_is_the_canonical_one() -> None:
    request = ExchangeRequest.model_validate_json(
        '{"kind":"chat","max_tokens":3,"messages":[{"content":"hi","role":"user"}],'
        '"prompt":null,"response_format":null,"stop":["\\n"],'
        '"structured_outputs":"{\\"json\\":{\\"type\\":\\"object\\",\\"b\\":1.0}}"}'
    )
    constraint = request.constraint
    assert constraint is not None
    assert (constraint.kind, constraint.argument) == ("json_schema", '{"type":"object","b":1.0}')


# --- the line drafted in C, rfc8785 deciding -------------------------------------------------

#: every character UTF-8 holds (no lone surrogate), controls and the escaped ones weighted in
_TEXTS = st.text(
    alphabet=st.characters(exclude_categories=["Cs"])
    | st.sampled_from(['"', "\\", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", "\x7f"])
    | st.sampled_from(["\u2028", "\u2029", "\ufeff", "\U0001f600", "/", "<", "é"]),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    prompt=_TEXTS.filter(bool),
    text=_TEXTS,
    stop=st.lists(_TEXTS.filter(bool), max_size=3),
    chat=st.booleans(),
)
def test_an_exchange_line_and_its_digests_are_rfc8785s(
    tmp_path_factory: pytest.TempPathFactory, prompt: str, text: str, stop: list[str], chat: bool
) -> None:
    """The writer drafts a line with the standard library's encoder, and the reader's fast check
    writes it with pydantic: for every text, both are the line rfc8785 writes for the same
    exchange, and the digests drafted alike are rfc8785's."""
    base = exchange(0)
    request = base["request"] | {"prompt": prompt, "stop": stop or None}
    if chat:
        messages = [{"content": text, "role": "system"}, {"content": prompt, "role": "user"}]
        request |= {"kind": "chat", "messages": messages, "prompt": None}
    document = base | {"text": text, "request": request}
    path = tmp_path_factory.mktemp("draft") / "t.transcript.jsonl"
    with TranscriptWriter(path, HEADER) as writer:
        record = writer.append(document)
    line = path.read_bytes().split(b"\n")[1] + b"\n"
    assert line == canonical_bytes(document | {"index": 0, "record": "exchange"})
    assert _fast_line(record) == line
    # and so the digests an answer names, drafted the same way, are rfc8785's
    assert written_digests(record) == (
        request_sha256(record.request),
        output_sha256(record.output_token_ids, record.text),
    )


@pytest.mark.parametrize("model", [TranscriptExchange, ExchangeRequest, ChatMessage])
def test_an_exchanges_fields_are_declared_in_canonical_order(model: type[BaseModel]) -> None:
    # pydantic serialises fields in declaration order (the reader's fast check of an exchange
    # line); JCS sorts them by UTF-16 code units.
    names = list(model.model_fields)
    assert names == sorted(names, key=lambda name: name.encode("utf-16-be"))


def test_a_draft_that_is_not_rfc8785s_line_is_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draft is checked as a reader checks a line: one rfc8785 would not write (here, keys
    out of order) is refused, and nothing of it reaches the file."""
    path = tmp_path / "t.transcript.jsonl"
    writer = TranscriptWriter(path, HEADER)
    unsorted = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    monkeypatch.setattr(transcript_module, "_DRAFT", unsorted)
    with pytest.raises(RunLogError, match="not canonical JSON"):
        writer.append(exchange(0))
    assert path.read_bytes().count(b"\n") == 1
    monkeypatch.undo()
    writer.append(exchange(0))  # the writer goes on at the same index
    writer.close("stopped")
    assert validate_transcript(path).n_exchanges == 1


def test_a_text_no_utf8_holds_is_refused_by_name(tmp_path: Path) -> None:
    writer = TranscriptWriter(tmp_path / "t.transcript.jsonl", HEADER)
    with pytest.raises(RunLogError, match="exchange 0: not representable as canonical JSON"):
        writer.append(exchange(0, text="a lone \ud800 surrogate"))
