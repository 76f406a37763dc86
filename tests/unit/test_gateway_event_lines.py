"""The engine's event stream read into lines: the same lines however its bytes arrive."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detserve.gateway.upstream import event_lines


def lines_of(chunks: list[bytes], **options: int) -> list[str]:
    async def arriving() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def read() -> list[str]:
        return [line async for line in event_lines(arriving(), **options)]

    return asyncio.run(read())


def whole(text: str) -> list[str]:
    """The lines of the stream read in one piece (the event-stream rule: CRLF, CR or LF)."""
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines[-1] == "" else lines


LINE = st.text(alphabet=st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)))


@given(
    ended=st.lists(st.tuples(LINE, st.sampled_from(["\n", "\r\n", "\r", "\n\n"])), max_size=8).map(
        lambda pairs: "".join(line + end for line, end in pairs)
    ),
    last=LINE,
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_the_lines_do_not_depend_on_where_the_bytes_are_cut(
    ended: str, last: str, cuts: list[int]
) -> None:
    """Cut anywhere: inside a UTF-8 character, between a CR and its LF; the last line may have
    no end."""
    text = ended + last
    data = text.encode("utf-8")
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert lines_of(chunks) == whole(text)


def test_a_line_of_a_megabyte_is_one_line() -> None:
    """vLLM's first chunk names every prompt token: no line-length limit cuts it."""
    payload = "data: " + "1," * 500_000
    data = (payload + "\n\n").encode()
    chunks = [data[i : i + 65_536] for i in range(0, len(data), 65_536)]
    assert lines_of(chunks) == [payload, ""]


def test_a_line_over_the_limit_is_an_error_before_it_is_whole() -> None:
    """An engine that never ends its line does not fill the gateway's memory."""
    endless = [b"data: " + b"1," * 40] * 10
    with pytest.raises(ValueError, match="over 100 bytes"):
        lines_of(endless, limit=100)
    assert lines_of([b"data: 12345\n" * 20], limit=12) == ["data: 12345"] * 20


def test_a_last_line_without_its_end_is_read() -> None:
    assert lines_of([b"data: 1\n", b"data: [DONE]"]) == ["data: 1", "data: [DONE]"]
    assert lines_of([b"data: 1\r"]) == ["data: 1"]


def test_a_line_that_is_not_utf8_is_an_error() -> None:
    with pytest.raises(ValueError, match="utf-8"):
        lines_of([b"data: \xff\n"])
