"""Run-log test vectors (docs/spec/run-log.md sections 3 and 4): valid logs, one near-miss per
rule across lines, and pairs of logs with their replay verdicts (a line's own defects are
``spec_vectors_lines``')."""

from __future__ import annotations

from spec_vectors_base import (
    MAX_EXACT_INTEGER,
    Lines,
    Record,
    VectorSet,
    bundle_sample,
    edited,
    log_vector,
    refooted,
    run_header,
    run_log_lines,
    valid_run_log,
    with_header,
    with_sample,
)
from spec_vectors_lines import add_line_defects


def add_run_logs(vs: VectorSet, segment: bytes) -> None:
    """Every run-log vector; ``segment`` is a valid transcript segment (not a run log)."""
    log_vector(vs, "valid-minimal", valid_run_log(1), None, "3", "one completion, no logprobs")
    log_vector(
        vs,
        "valid-full",
        valid_run_log(4, logprobs=True, seed=MAX_EXACT_INTEGER),
        None,
        "3",
        "completion, chat, regex (unsatisfied, cut by length) and JSON Schema samples; logprobs "
        "whose canonical forms are 0, -0.000001234, -1.5e-7, -0.000001; control characters, "
        "non-ASCII and astral text; the seed 2^53 - 1",
    )
    base = valid_run_log(2, logprobs=True)
    log_vector(
        vs,
        "valid-logprob-integer",
        edited(base, 1, b"-2.5,", b"-10000000000000000000,"),
        None,
        "2.2",
        "the logprob -10000000000000000000: the canonical spelling of the double "
        "-1e19, although past 2^53",
    )
    four = valid_run_log(4)
    add_line_defects(vs, base)
    _add_layouts(vs, base)

    # --- the rules across lines -----------------------------------------------------------
    log_vector(vs, "empty", b"", "log.header", "3.6", "an empty file")
    log_vector(vs, "first-line-sample", base[1:], "log.header", "3.6", "no header")
    log_vector(
        vs,
        "segment-not-run-log",
        segment,
        "log.header",
        "3.6",
        "a transcript segment read as a run log",
    )
    log_vector(
        vs, "second-header", [base[0], base[0], *base[1:]], "log.record", "3.6", "the header twice"
    )
    exchange = segment.split(b"\n")[1] + b"\n"
    log_vector(
        vs,
        "exchange-in-run-log",
        refooted([base[0], exchange, *base[1:]]),
        "log.record",
        "3.6",
        "a transcript exchange among the samples",
    )
    log_vector(
        vs,
        "index-gap",
        edited(base, 2, b'"index":1,', b'"index":2,'),
        "log.index",
        "3.6",
        "indices 0, 2",
    )
    log_vector(
        vs,
        "index-repeat",
        edited(base, 2, b'"index":1,', b'"index":0,'),
        "log.index",
        "3.6",
        "indices 0, 0",
    )
    log_vector(
        vs,
        "index-swapped",
        refooted([base[0], base[2], base[1], base[3]]),
        "log.index",
        "3.6",
        "samples 1 and 0 swapped",
    )
    more = run_log_lines(run_header(2), [bundle_sample(i) for i in range(3)])
    log_vector(
        vs,
        "too-many-samples",
        refooted(more, 2),
        "log.count",
        "3.6",
        "three samples after a header announcing two",
    )
    fewer = run_log_lines(run_header(3), [bundle_sample(i) for i in range(2)])
    log_vector(
        vs,
        "too-few-samples",
        refooted(fewer, 3),
        "log.count",
        "3.6",
        "the footer after two samples of three (its hashes match)",
    )
    log_vector(
        vs,
        "footer-count",
        refooted(base, 3),
        "log.footer-count",
        "3.6",
        "a footer announcing 3 samples after a header announcing 2",
    )
    log_vector(
        vs,
        "footer-header-hash",
        with_header(base, lambda h: h["sampling"].update(seed=1), refoot=False),
        "log.footer-hash",
        "3.6",
        "the seed changed after the footer was written",
    )
    log_vector(
        vs,
        "footer-samples-hash",
        edited(base, 2, b'"output_token_ids":[37,', b'"output_token_ids":[38,', refoot=False),
        "log.footer-hash",
        "3.6",
        "an output token changed after the footer was written",
    )
    log_vector(
        vs, "missing-footer", base[:-1], "log.truncated", "3.6", "the file ends after the samples"
    )
    log_vector(
        vs, "trailing-newline", [*base, b"\n"], "log.end", "3.6", "an empty line after the footer"
    )
    log_vector(vs, "trailing-byte", [*base, b"x"], "log.end", "3.6", "one byte after the footer")

    def unrequested(header: Record) -> None:
        header["sampling"]["logprobs"] = None

    log_vector(
        vs,
        "logprobs-unrequested",
        with_header(base, unrequested),
        "log.logprobs",
        "3.6",
        "logprobs in samples, null in the header",
    )
    log_vector(
        vs,
        "logprobs-missing",
        with_sample(base, 1, lambda s: s.update(logprobs=None)),
        "log.logprobs",
        "3.6",
        "a sample without the logprobs the header asks for",
    )
    log_vector(
        vs,
        "logprobs-count",
        with_sample(base, 1, lambda s: s["logprobs"].pop()),
        "log.logprobs",
        "3.6",
        "one logprob fewer than output tokens",
    )

    def one_more(sample: Record) -> None:
        sample["output_token_ids"].append(5)
        sample["logprobs"].append(-1.0)

    log_vector(
        vs,
        "too-many-tokens",
        with_sample(base, 1, one_more),
        "log.max-tokens",
        "3.6",
        "9 output tokens under max_tokens 8",
    )
    log_vector(
        vs,
        "constraint-partial",
        with_sample(four, 3, lambda s: s.update(constraint_sha256=None)),
        "log.constraint",
        "3.6",
        "a constraint without its sha256",
    )
    log_vector(
        vs,
        "violation-not-length",
        with_sample(four, 3, lambda s: s.update(finish_reason="stop")),
        "log.constraint",
        "3.6",
        "constraint_satisfied false with finish_reason 'stop'",
    )
    log_vector(
        vs,
        "satisfied-unconstrained",
        with_sample(four, 1, lambda s: s.update(constraint_satisfied=True)),
        "log.constraint",
        "3.6",
        "constraint_satisfied set without a constraint",
    )


#: a cluster's layout pin (section 3.3): two nodes, one pipeline stage each, vLLM's own executor
LAYOUT: Record = {
    "executor": "mp",
    "nodes": 2,
    "pipeline_parallel_size": 2,
    "ray_version": None,
    "tensor_parallel_size": 1,
}


def with_layout(lines: Lines, layout: object) -> Lines:
    """``lines`` whose header's pins hold ``layout``; the footer recomputed."""
    return with_header(lines, lambda h: h["pins"].update(layout=layout))


def _add_layouts(vs: VectorSet, base: Lines) -> None:
    """A cluster's run log: ``pins.layout`` present and valid, or present and not a layout."""
    log_vector(
        vs,
        "valid-cluster-layout",
        with_layout(base, LAYOUT),
        None,
        "3.3",
        "the pins of a cluster: two nodes, pipeline parallel 2, no Ray",
    )
    log_vector(
        vs,
        "layout-null",
        with_layout(base, None),
        "line.schema",
        "3.3",
        "pins.layout null: one container's pins leave the member out",
    )
    log_vector(
        vs,
        "layout-one-node",
        with_layout(base, {**LAYOUT, "nodes": 1, "pipeline_parallel_size": 1}),
        "line.schema",
        "3.3",
        "a layout of one node",
    )


def _pair(
    vs: VectorSet,
    name: str,
    a: Lines | bytes,
    b: Lines | bytes,
    verdict: str,
    code: int,
    rule: str | None,
    section: str,
    what: str,
    suffix: str = "runlog",
) -> None:
    files = {}
    for role, data in (("run_a", a), ("run_b", b)):
        blob = data if isinstance(data, bytes) else b"".join(data)
        files[role] = vs.file(f"pair/{name}/{role[-1]}.{suffix}.jsonl", blob)
    vs.add(
        f"pair/{name}",
        "pair",
        files,
        verdict=verdict,
        exit_code=code,
        rule=rule,
        section=section,
        description=what,
    )


def add_run_log_pairs(vs: VectorSet, segment: bytes) -> None:
    claim = valid_run_log(4, logprobs=True)
    _pair(
        vs,
        "run-log-identical",
        claim,
        claim,
        "identical",
        0,
        None,
        "4",
        "a replay with the same bytes (another file)",
    )
    _pair(
        vs,
        "run-log-divergent-token",
        claim,
        edited(claim, 2, b'"output_token_ids":[37,', b'"output_token_ids":[38,'),
        "divergent",
        1,
        "pair.divergent",
        "4",
        "one output token differs",
    )
    _pair(
        vs,
        "run-log-divergent-logprob",
        claim,
        edited(claim, 1, b"-2.5,", b"-2.4,"),
        "divergent",
        1,
        "pair.divergent",
        "4",
        "one logprob differs (strict comparison)",
    )
    _pair(
        vs,
        "run-log-seed",
        claim,
        with_header(claim, lambda h: h["sampling"].update(seed=1)),
        "not-a-replay",
        1,
        "pair.header",
        "4",
        "another seed",
    )
    _pair(
        vs,
        "run-log-image",
        claim,
        with_header(claim, lambda h: h["pins"].update(image=h["pins"]["image"][:-1] + "0")),
        "not-a-replay",
        1,
        "pair.header",
        "4",
        "another image digest",
    )
    _pair(
        vs,
        "run-log-other-prompt",
        claim,
        with_sample(claim, 2, lambda s: s.update(prompt_id="p9999")),
        "not-a-replay",
        1,
        "pair.request",
        "4",
        "sample 1 is for another prompt id",
    )
    _pair(
        vs,
        "run-log-layout",
        claim,
        with_layout(claim, LAYOUT),
        "not-a-replay",
        1,
        "pair.header",
        "4",
        "one container's claim against a cluster's run (pins.layout on one side only)",
    )
    _pair(
        vs,
        "run-log-fewer-samples",
        claim,
        valid_run_log(3, logprobs=True),
        "not-a-replay",
        1,
        "pair.header",
        "4",
        "three samples against four (n_samples differs)",
    )
    _pair(
        vs,
        "run-log-invalid-b",
        claim,
        edited(claim, 2, b'"output_token_ids":[37,', b'"output_token_ids":[38,', refoot=False),
        "invalid",
        2,
        "log.footer-hash",
        "4",
        "run B is not a valid run log",
    )
    _pair(
        vs,
        "run-log-vs-segment",
        claim,
        segment,
        "usage",
        2,
        "pair.usage",
        "4",
        "a run log compared with a transcript segment",
    )
