"""A grammar check runs in a child process with a time limit: an ambiguous grammar cannot hang
detserve (sampling and replay stop with exit 2, the gateway records ``not_checked``)."""

from __future__ import annotations

import time

import pytest

import detserve.grammar_check as grammar_check
from detserve.gateway.output_check import check_output
from detserve.grammar_check import grammar_accepts
from detserve.requests import ConstraintUncheckable, GenerationParams, sample_record

from .test_gateway_constraints import request
from .test_requests import Answer, Sender, record

#: every binary bracketing of the text is a derivation: Earley time grows as the cube of its
#: length (120 characters take about a second here, 400 about half a minute)
AMBIGUOUS = 'start: x\nx: x x | "a"'
SLOW_TEXT = "a" * 400


def test_the_child_answers_as_lark_does() -> None:
    assert grammar_accepts('start: "yes" | "no"', "no") is True
    assert grammar_accepts('start: "yes" | "no"', "maybe") is False


def test_a_parse_past_the_limit_is_abandoned_and_the_next_check_works() -> None:
    grammar_accepts('start: "yes"', "yes")  # the child is up: the limit times the parse alone
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"took longer than 0\.5 s"):
        grammar_accepts(AMBIGUOUS, SLOW_TEXT, timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert grammar_accepts(AMBIGUOUS, "aaa") is True  # a new child


def test_sampling_stops_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar_check, "GRAMMAR_CHECK_TIMEOUT_S", 1.0)
    params = GenerationParams(max_tokens=8, seed=0, logprobs=None, model="tiny-llama")
    with pytest.raises(ConstraintUncheckable) as caught:
        sample_record(
            Sender(Answer(SLOW_TEXT)),
            3,
            record(prompt="Hi", constraint={"grammar": AMBIGUOUS}),
            params,
        )
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(
        "sample 3 (p, completion): the grammar constraint did not finish parsing a "
        "400-character output"
    )


def test_the_gateway_records_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar_check, "GRAMMAR_CHECK_TIMEOUT_S", 1.0)
    constrained = request({"grammar": AMBIGUOUS})
    assert check_output(constrained, SLOW_TEXT, "stop", None) == "not_checked"
    assert check_output(constrained, "aaaa", "stop", None) == "satisfied"
