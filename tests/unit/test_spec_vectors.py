"""detserve against the run-log specification's test vectors (docs/spec/run-log.md section 11).

Every vector gets the verdict and exit status its manifest names, and, where it fails, for the
reason the manifest's rule names (detserve's message for that rule); a verified claim names the
key id the specification computes. The committed vectors are what ``make_spec_vectors.py``
writes, and every rule of the specification is exercised by some vector.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .spec_vectors import MANIFEST, SCRIPTS, SPEC, detserve_outcome, vectors

#: what detserve says when a line or a file breaks each rule of the specification
RULE_MESSAGES: dict[str, str] = {
    "line.utf8": r"invalid UTF-8",
    "line.json": r"not valid JSON",
    "line.newline": r"truncated: the last line has no newline",
    "line.version": r"run-log format version \d+; this detserve reads version 5 only",
    "line.schema": r"does not match the run-log schema",
    "line.canonical": r"not canonical JSON",
    "line.integer-range": r"not representable as canonical JSON \(RFC 8785\)",
    "request.kind": r"a completion holds a prompt and no messages",
    "request.constraint": r"Value error, (response_format|structured_outputs)[\w.\[\]]*: "
    r"(?!not JSON text|not in its compact form|a string holds a lone surrogate)|"
    r"response_format or structured_outputs, not both",
    "request.constraint-text": r"Value error, (response_format|structured_outputs)[\w.\[\]]*: "
    r"(not JSON text|not in its compact form|a string holds a lone surrogate)",
    "log.header": r"empty file: not a run log|expected the header record|a gateway transcript, "
    r"not a sampled run log",
    "log.record": r"a second header|record in a sampled run log",
    "log.index": r"sample index \d+ out of order",
    "log.count": r"more samples than the header's n_samples|footer after \d+ samples; the "
    r"header announces",
    "log.footer-count": r"the footer's n_samples",
    "log.footer-hash": r"do(es)? not match the footer's hash",
    "log.truncated": r"truncated: no footer",
    "log.end": r"data after the footer",
    "log.logprobs": r"logprobs",
    "log.max-tokens": r"output tokens exceed the header's max_tokens",
    "log.constraint": r"constraint, constraint_sha256 and constraint_satisfied|violates its "
    r"constraint is only a sample",
    "segment.header": r"empty file: not a transcript|expected a transcript header",
    "segment.record": r"record in a transcript",
    "segment.index": r"exchange index \d+ out of order",
    "segment.footer": r"the footer does not match the lines above it",
    "segment.end": r"data after the footer",
    "segment.cut": r"cut after \d+ exchanges: no footer",
    "exchange.max-tokens": r"output tokens exceed the request's max_tokens",
    "exchange.finish": r"finish_reason exactly when",
    "exchange.check": r"constraint_check exactly when",
    "exchange.cut": r"an output is cut exactly when",
    "exchange.delivery": r"delivery '\w+' with",
    "chain.number": r"is missing|twice",
    "chain.name": r"its header says segment \d+",
    "chain.previous": r"the chain is broken",
    "chain.pins": r"other pins or seed",
    "chain.rotated": r"yet segment \d+ follows it",
    "chain.last": r"closed 'rotated', but segment \d+",
    "pair.usage": r"a gateway transcript is compared with a transcript",
    "key.pem": r"PEM",
    "key.type": r"not a valid Ed25519 public key|Ed25519 or ECDSA P-256 only",
    "envelope.json": r"byte-order mark|duplicate keys|not JSON|not UTF-8",
    "envelope.shape": r"not a DSSE envelope|not a JSON object|not base64|signatures?|key id",
    "envelope.signature": r"no signature|does not verify with the given public key",
    "statement.type": r"the signed payload is '[^']*', not an in-toto statement",
    "statement.json": r"not a detserve claim",
    "statement.shape": r"not a detserve claim",
    "claim.subject": r"the claim is about another run log",
    "claim.pins": r"does not match the run log's header",
}
#: vectors for which detserve finds the defect by another of its checks than the rule's own:
#: the verdict and exit status are the same (section 2.3 lets a verifier report either)
OTHER_CHECK: dict[str, str] = {
    "run-log/missing-format": "line.canonical",  # the record's default fills it in: not canonical
    "run-log/nan": "line.schema",  # pydantic's JSON reader takes NaN; the schema refuses it
    "run-log/number-overflow": "line.schema",  # and reads 1e400 as infinity
}

VECTORS = vectors()


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_detserve_gives_each_vector_its_verdict(vector: dict[str, object]) -> None:
    expect = vector["expect"]
    assert isinstance(expect, dict)
    outcome = detserve_outcome(vector)  # type: ignore[arg-type]
    assert (outcome.verdict, outcome.exit) == (expect["verdict"], expect["exit"]), outcome.message
    if "keyid" in expect:
        assert outcome.keyid == expect["keyid"]
    rule = OTHER_CHECK.get(str(vector["name"]), expect["rule"])
    if rule in RULE_MESSAGES:
        assert re.search(RULE_MESSAGES[str(rule)], outcome.message), (rule, outcome.message)
    report = outcome.report
    if report is not None and rule is not None and rule.endswith((".header", ".request")):
        # a pair that is not a replay, for the reason the rule names
        found = (
            bool(report.header_differences)
            if rule.endswith(".header")
            else bool(report.prompt_mismatch_count or report.unpaired_samples)
        )
        assert found, report.summary_lines()


def test_every_failing_vector_names_a_rule_of_the_specification() -> None:
    text = SPEC.read_text(encoding="utf-8")
    defined = set(re.findall(r"\*\*\[([a-z0-9.-]+)\]\*\*", text))
    used = {v["expect"]["rule"] for v in VECTORS} - {None}
    assert used <= defined, sorted(used - defined)
    # Every rule the specification defines is broken by some vector, but for the line length
    # (its vector would be 8 MiB: test_spec_checker.py generates it) and three rules that say
    # what passes: a torn line after a cut (segment/valid-cut-torn), every segment read before
    # any chain (directory/invalid-and-broken), identical bytes (pair/*-identical). And the
    # integer range, which the schema's bounds imply: no line that passed the schema breaks it,
    # so no vector names it first (a request's constraint, where any integer may be written, is
    # a string since the constraint is recorded as the text sent).
    passing = {"line.length", "segment.torn", "chain.read", "pair.identical"}
    passing.add("line.integer-range")
    assert defined - used <= passing, sorted(defined - used)
    for rule in used - {
        "pair.header",
        "pair.request",
        "pair.divergent",
        "replay.header",
        "replay.request",
        "replay.divergent",
        "replay.cut",
    }:
        assert rule in RULE_MESSAGES, rule


def test_the_vectors_are_what_the_script_writes() -> None:
    """``python scripts/make_spec_vectors.py`` regenerates the committed files byte for byte."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "make_spec_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert MANIFEST.is_file()


def test_there_are_vectors_of_every_kind_and_verdict() -> None:
    kinds = {v["kind"] for v in VECTORS}
    assert kinds == {"run-log", "segment", "directory", "pair", "claim"}
    verdicts = {v["expect"]["verdict"] for v in VECTORS}
    assert verdicts >= {
        "valid",
        "invalid",
        "cut",
        "chain-broken",
        "identical",
        "incomplete",
        "divergent",
        "not-a-replay",
        "usage",
        "verified",
        "bad-signature",
        "not-a-claim",
        "subject-mismatch",
        "pin-mismatch",
    }
    assert len([v for v in VECTORS if v["expect"]["exit"] != 0]) >= 25


def test_the_specifications_links_resolve() -> None:
    """Its anchors are its headings' (as Python-Markdown's toc and GitHub spell them) and its
    relative links name files, so that the documentation site builds it strictly."""
    text = SPEC.read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())
        for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)
    }
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        if target:
            assert (SPEC.parent / target).is_file(), link
        else:
            assert anchor in anchors, link
