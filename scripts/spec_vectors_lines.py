"""Run-log vectors of docs/spec/run-log.md section 2: lines that break one rule of a line
(canonical form, the schema, the version, UTF-8, JSON, the final newline), each in an otherwise
valid run log whose footer matches its lines."""

from __future__ import annotations

from spec_vectors_base import (
    Lines,
    Record,
    VectorSet,
    edited,
    log_vector,
    refooted,
    replace_once,
    with_header,
    with_sample,
)


def add_line_defects(vs: VectorSet, base: Lines) -> None:
    """``base`` is a valid run log of a header, two samples with logprobs and a footer."""
    sample0 = base[1]
    # --- [line.canonical] -----------------------------------------------------------------
    log_vector(
        vs,
        "space-after-colon",
        edited(base, 1, b'"index":0', b'"index": 0'),
        "line.canonical",
        "2.2",
        "white space outside a string",
    )
    moved = replace_once(sample0, b'"index":0,', b"")
    moved = b'{"index":0,' + moved[1:]
    log_vector(
        vs,
        "reordered-keys",
        refooted([base[0], moved, *base[2:]]),
        "line.canonical",
        "2.2",
        "the member 'index' written first: members not in UTF-16 code-unit order",
    )
    log_vector(
        vs,
        "escaped-non-ascii",
        edited(base, 1, "“".encode(), b"\\u201c"),
        "line.canonical",
        "2.2",
        "a non-ASCII character written as a \\u escape",
    )
    log_vector(
        vs,
        "long-escape-newline",
        edited(base, 1, b"Paris.\\n", b"Paris.\\u000a"),
        "line.canonical",
        "2.2",
        "a newline written as \\u000a, not \\n",
    )
    log_vector(
        vs,
        "escaped-solidus",
        edited(base, 0, b'"localhost:5000/', b'"localhost:5000\\/'),
        "line.canonical",
        "2.2",
        "'/' written as '\\/'",
    )
    log_vector(
        vs,
        "float-not-shortest",
        edited(base, 1, b",-0.1,", b",-0.10000000000000001,"),
        "line.canonical",
        "2.2",
        "a logprob not in its shortest round-trip digits",
    )
    log_vector(
        vs,
        "float-exponent-form",
        edited(base, 1, b"-0.000001,", b"-1e-6,"),
        "line.canonical",
        "2.2",
        "-1e-6, which ECMAScript writes -0.000001",
    )
    log_vector(
        vs,
        "float-trailing-zero",
        edited(base, 1, b"-2.5,", b"-2.50,"),
        "line.canonical",
        "2.2",
        "-2.50 for -2.5",
    )
    log_vector(
        vs,
        "logprob-integer-past-2-53",
        edited(base, 1, b"-2.5,", b"-9007199254740993,"),
        "line.canonical",
        "2.2",
        "the logprob -9007199254740993, whose nearest double is -9007199254740992",
    )
    log_vector(
        vs,
        "negative-zero",
        edited(base, 1, b'"index":0,', b'"index":-0,'),
        "line.canonical",
        "2.2",
        "the integer -0 (canonically 0)",
    )
    dup = replace_once(sample0, b'"index":0,', b'"index":0,"index":0,')
    log_vector(
        vs,
        "duplicate-key",
        refooted([base[0], dup, *base[2:]]),
        "line.canonical",
        "2.2",
        "a member name twice",
    )
    log_vector(
        vs,
        "crlf",
        [ln[:-1] + b"\r\n" for ln in base],
        "line.canonical",
        "2.1",
        "lines ended by CR LF",
    )

    # --- [line.schema] and [line.version] -------------------------------------------------
    log_vector(
        vs,
        "integral-float",
        edited(base, 0, b'"n_samples":2,', b'"n_samples":2.0,'),
        "line.schema",
        "2.2",
        "an integer member written 2.0",
    )
    log_vector(
        vs,
        "float-for-int",
        edited(base, 0, b'"max_tokens":8,', b'"max_tokens":8.5,'),
        "line.schema",
        "2.2",
        "a fraction where an integer is required",
    )
    log_vector(
        vs,
        "exponent-int",
        edited(base, 0, b'"seed":0,', b'"seed":1e3,'),
        "line.schema",
        "2.2",
        "an integer member written with an exponent",
    )
    log_vector(
        vs,
        "seed-past-2-53",
        edited(base, 0, b'"seed":0,', b'"seed":9007199254740992,'),
        "line.schema",
        "2.2",
        "a seed of 2^53, past the largest exact integer",
    )
    log_vector(
        vs,
        "token-past-2-31",
        edited(base, 1, b'"output_token_ids":[0,', b'"output_token_ids":[2147483648,'),
        "line.schema",
        "3.4",
        "a token id of 2^31",
    )
    log_vector(
        vs,
        "bool-for-int",
        edited(base, 1, b'"index":0,', b'"index":true,'),
        "line.schema",
        "2.2",
        "true where an integer is required",
    )
    log_vector(
        vs,
        "string-for-int",
        edited(base, 1, b'"index":0,', b'"index":"0",'),
        "line.schema",
        "2.2",
        "a string where an integer is required",
    )
    log_vector(
        vs,
        "unknown-member",
        with_sample(base, 1, lambda s: s.update(comment="x")),
        "line.schema",
        "2.2",
        "a member the schema does not name",
    )
    log_vector(
        vs,
        "missing-member",
        with_sample(base, 1, lambda s: s.pop("text")),
        "line.schema",
        "2.2",
        "a sample without 'text'",
    )
    log_vector(
        vs,
        "null-member",
        with_sample(base, 1, lambda s: s.update(text=None)),
        "line.schema",
        "2.2",
        "'text' null",
    )
    log_vector(
        vs,
        "missing-format",
        with_header(base, lambda h: h.pop("format")),
        "line.schema",
        "2.2",
        "a header without 'format' (every member is required)",
    )
    log_vector(
        vs,
        "unknown-record",
        with_sample(base, 1, lambda s: s.update(record="note")),
        "line.schema",
        "2.2",
        "a record type the format does not define",
    )
    log_vector(
        vs,
        "not-an-object",
        refooted([base[0], b"[]\n", *base[2:]]),
        "line.schema",
        "2.2",
        "a line holding an array",
    )
    log_vector(
        vs,
        "pattern-newline",
        with_sample(base, 2, lambda s: s.update(finish_reason="stop\n")),
        "line.schema",
        "2.2",
        "finish_reason 'stop\\n': ECMA-262's $ does not match before a final newline",
    )
    log_vector(
        vs,
        "temperature",
        with_header(base, lambda h: h["sampling"].update(temperature=0.7)),
        "line.schema",
        "3.3",
        "temperature 0.7: only greedy decoding is a run log",
    )
    log_vector(
        vs,
        "uppercase-hex",
        with_sample(base, 1, lambda s: s.update(prompt_sha256=s["prompt_sha256"].upper())),
        "line.schema",
        "3.4",
        "a sha256 in upper-case hex",
    )
    log_vector(
        vs,
        "image-tag",
        with_header(base, lambda h: h["pins"].update(image="localhost:5000/vllm:latest")),
        "line.schema",
        "3.3",
        "an image named by tag, not digest",
    )
    log_vector(
        vs,
        "environment-name",
        with_header(base, lambda h: h["pins"]["environment"].update({"1BAD": "x"})),
        "line.schema",
        "3.3",
        "an environment variable name starting with a digit",
    )
    log_vector(
        vs,
        "other-version",
        with_header(base, lambda h: h.update(format_version=4)),
        "line.version",
        "2.2",
        "a version 4 header",
    )

    def version_3(header: Record) -> None:
        header.update(format_version=3)
        header["sampling"]["concurrency"] = 1

    log_vector(
        vs,
        "version-3-shape",
        with_header(base, version_3),
        "line.version",
        "2.2",
        "a version 3 header, with sampling.concurrency: refused as another version, not as a "
        "schema failure",
    )

    # --- [line.utf8], [line.json], [line.newline] -----------------------------------------
    log_vector(
        vs,
        "invalid-utf8",
        edited(base, 1, "🙂".encode(), b"\xff"),
        "line.utf8",
        "2.1",
        "the byte 0xFF",
    )
    log_vector(
        vs,
        "overlong-utf8",
        edited(base, 1, b"Paris", b"\xc1\x90aris"),
        "line.utf8",
        "2.1",
        "an overlong two-byte form of 'P'",
    )
    log_vector(
        vs,
        "encoded-surrogate",
        edited(base, 1, "🙂".encode(), b"\xed\xa0\xbd\xed\xb9\x82"),
        "line.utf8",
        "2.1",
        "a surrogate pair encoded as two three-byte sequences (CESU-8)",
    )
    log_vector(
        vs,
        "lone-surrogate-escape",
        edited(base, 1, "🙂".encode(), b"\\ud83d"),
        "line.json",
        "2.1",
        "an escaped lone surrogate",
    )
    log_vector(
        vs,
        "bom",
        [b"\xef\xbb\xbf" + base[0], *base[1:]],
        "line.json",
        "2.1",
        "a UTF-8 byte-order mark before the header",
    )
    log_vector(
        vs, "nan", edited(base, 1, b"-2.5,", b"NaN,"), "line.json", "2.1", "NaN as a logprob"
    )
    log_vector(
        vs,
        "number-overflow",
        edited(base, 1, b"-2.5,", b"-1e400,"),
        "line.json",
        "2.1",
        "-1e400, beyond a double",
    )
    log_vector(
        vs,
        "blank-line",
        [base[0], base[1], b"\n", *base[2:]],
        "line.json",
        "2.1",
        "an empty line between two samples",
    )
    log_vector(
        vs,
        "trailing-comma",
        [base[0], sample0[:-2] + b",}\n", *base[2:]],
        "line.json",
        "2.1",
        "a comma before '}'",
    )
    log_vector(
        vs,
        "no-final-newline",
        [*base[:-1], base[-1][:-1]],
        "line.newline",
        "2.1",
        "the footer without its LF",
    )
