"""Transcript vectors of docs/spec/run-log.md section 6.7: the request and its constraint fields,
each a JSON text as it was sent (its members' order and its numbers' spellings kept)."""

from __future__ import annotations

from collections.abc import Callable

from spec_vectors_base import Lines, Record, VectorSet, replace_once
from spec_vectors_segments import segment_vector
from spec_vectors_transcripts import changed, reclosed

#: the lines of the valid segment whose requests hold each field (spec_vectors_transcripts)
_SCHEMA_LINE = 3  # response_format json_schema, "minimum":0.5
_REGEX_LINE = 4  # structured_outputs {"regex":"[0-9]+"}


def _fields(fields: Record) -> Callable[[Record], None]:
    return lambda record: record["request"].update(fields)


def _field(name: str, text: str | None) -> Callable[[Record], None]:
    return _fields({name: text})


def add_requests(vs: VectorSet, good: Lines) -> None:
    """Section 6.7: the request, its constraint fields' texts and values."""
    bad = "invalid"

    def request(change: Callable[[Record], None]) -> Callable[[Record], None]:
        return lambda record: change(record["request"])

    segment_vector(
        vs,
        "chat-with-prompt",
        changed(good, 2, request(lambda r: r.update(prompt="x"))),
        bad,
        2,
        "request.kind",
        "6.7",
        "a chat holding a prompt",
    )
    segment_vector(
        vs,
        "completion-without-prompt",
        changed(good, 1, request(lambda r: r.update(prompt=None))),
        bad,
        2,
        "request.kind",
        "6.7",
        "a completion holding neither prompt nor messages",
    )
    # [request.constraint]: the values a field may hold
    values = [
        ("both-fields", "response_format", '{"type":"json_object"}', "both constraint fields"),
        ("two-constraints", "structured_outputs", '{"regex":"[0-9]+","choice":["1"]}',
         "structured_outputs of two kinds"),
        ("no-constraint", "structured_outputs", "{}", "structured_outputs holding nothing"),
        ("unknown-constraint", "structured_outputs", '{"ebnf":"x"}',
         "a constraint kind the format does not define"),
        ("json-object-false", "structured_outputs", '{"json_object":false}', "json_object false"),
        ("empty-regex", "structured_outputs", '{"regex":""}', "an empty regex"),
        ("regex-too-long", "structured_outputs", '{"regex":"' + "a" * 4097 + '"}',
         "a regex of 4,097 characters"),
        ("choice-not-strings", "structured_outputs", '{"choice":["yes",1]}',
         "a choice holding a number"),
        ("choice-twice", "structured_outputs", '{"choice":["yes","yes"]}',
         "a choice offered twice"),
        ("schema-not-object", "structured_outputs", '{"json":[]}', "a JSON Schema array"),
        ("schema-too-deep", "structured_outputs", '{"json":' + '{"a":' * 32 + "{}" + "}" * 32 + "}",
         "a JSON Schema 33 levels deep"),
        ("schema-too-many-values", "structured_outputs",
         '{"json":{"enum":[' + ",".join(["0"] * 4095) + "]}}",
         "a JSON Schema of 4,097 values"),
        ("response-format-xml", "response_format", '{"type":"xml"}', "a response_format type the "
         "format does not define"),
        ("response-format-extra", "response_format", '{"type":"text","seed":1}',
         "a response_format member the format does not define"),
        ("response-format-no-name", "response_format",
         '{"type":"json_schema","json_schema":{"schema":{}}}', "a json_schema without its name"),
        ("response-format-strict-false", "response_format",
         '{"type":"json_schema","json_schema":{"name":"n","schema":{},"strict":false}}',
         "a json_schema that need not be followed (strict false)"),
    ]  # fmt: skip
    for name, field, text, what in values:
        # the regex line's structured_outputs replaced (both-fields: response_format added)
        fields: Record = {field: text}
        if name != "both-fields":
            fields = {"response_format": None, "structured_outputs": None} | fields
        segment_vector(
            vs,
            name,
            changed(good, _REGEX_LINE, _fields(fields)),
            bad,
            2,
            "request.constraint",
            "6.7",
            what,
        )
    # [request.constraint-text]: one JSON text, in its compact form
    texts = [
        ("constraint-not-json", '{"regex":"[0-9]+"', "a constraint field that is not JSON"),
        ("constraint-not-compact", '{"regex": "[0-9]+"}', "white space between tokens"),
        ("constraint-escaped-letter", '{"regex":"[\\u0030-9]+"}',
         "an escape the compact form does not write (\\u0030 for 0)"),
        ("constraint-escaped-slash", '{"regex":"a\\/b"}', "a solidus escaped"),
        ("constraint-upper-hex", '{"regex":"a\\u001Fb"}', "a control character in upper-case hex"),
        ("constraint-name-twice", '{"regex":"a","regex":"b"}', "a member name twice"),
        ("constraint-lone-surrogate", '{"regex":"\\ud800"}', "an escaped lone surrogate"),
        ("constraint-nan", '{"json":{"maximum":NaN}}', "NaN in a JSON Schema"),
        ("constraint-number-overflow", '{"json":{"maximum":1e400}}', "1e400 in a JSON Schema"),
    ]  # fmt: skip
    for name, text, what in texts:
        segment_vector(
            vs,
            name,
            changed(good, _REGEX_LINE, _field("structured_outputs", text)),
            bad,
            2,
            "request.constraint-text",
            "6.7",
            what,
        )
    # what the compact form keeps: numbers as written, members in their order
    for name, new, what in [
        ("schema-number-as-written", b'\\"minimum\\":0.50', "0.50 in a JSON Schema, kept"),
        ("schema-integer-past-2-53", b'\\"minimum\\":9007199254740993',
         "2^53 + 1 in a JSON Schema: a text, not an integer member"),
        ("schema-exponent", b'\\"minimum\\":5e-1', "5e-1 in a JSON Schema, kept"),
    ]:  # fmt: skip
        kept = [*good]
        kept[_SCHEMA_LINE] = replace_once(good[_SCHEMA_LINE], b'\\"minimum\\":0.5', new)
        segment_vector(vs, name, reclosed(kept), "valid", 0, None, "6.7", what)
    segment_vector(
        vs,
        "control-character-escaped",
        changed(good, _REGEX_LINE, _field("structured_outputs", '{"regex":"a\\u001fb\\tc"}')),
        "valid",
        0,
        None,
        "6.7",
        "control characters written as the compact form writes them",
    )
    segment_vector(
        vs,
        "stop-empty-list",
        changed(good, 1, request(lambda r: r.update(stop=[]))),
        bad,
        2,
        "line.schema",
        "6.7",
        "an empty stop list (null when none)",
    )
    segment_vector(
        vs,
        "constraint-over-max-chars",
        changed(
            good, _REGEX_LINE, _field("structured_outputs", '{"grammar":"' + "a" * 65523 + '"}')
        ),
        bad,
        2,
        "line.schema",
        "2.4",
        "a constraint field of 65,537 characters",
    )
    segment_vector(
        vs,
        "bad-exchange-id",
        changed(good, 1, lambda e: e.update(id="Z" * 32)),
        bad,
        2,
        "line.schema",
        "6.3",
        "an exchange id that is not hex",
    )
