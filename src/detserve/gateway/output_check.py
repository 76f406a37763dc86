"""The gateway's check of an output against its request's constraint, after the engine answered.

vLLM enforces a constraint while it generates; the gateway checks the result, so that an
engine that did not enforce it is caught rather than trusted. :func:`check_output` is a function
of the canonical request and the output only (text, ``finish_reason``, whether the exchange is
incomplete), so a faithful replay of the exchange reproduces it byte for byte:

* ``json_schema``: the text is JSON (no NaN or infinity) and validates against the schema
  (``jsonschema``, the schema's own draft, its references resolved inside it);
* ``json_object``: the text is one JSON object;
* ``choice``: the text is one of the choices, exactly;
* ``regex``: the whole text matches (the ``regex`` package);
* ``grammar``: ``lark`` parses the whole text (a grammar in Lark syntax: admission refuses any
  other).

Admission compiled the constraint before the request was sent
(:mod:`~detserve.gateway.admission`), so every constraint here can be checked; what cannot be
finished is said, never guessed: a check that ran out of time (a pattern that backtracks, an
ambiguous grammar) or whose library failed on the output is ``not_checked``. That depends on
the machine's speed, so a replay on a faster one can differ there. An unsatisfied output whose
generation was cut (``finish_reason`` ``length``, or a stream that ended early) is ``cut``, not a
violation; any other unsatisfied output is ``violated``, and the gateway withholds it (502)
after recording it.

Every check of a schema, a regex or a grammar runs in the checker's child process with a time
limit (:mod:`detserve.constraint_check`); these functions block, and the gateway awaits them in
a worker thread, never on its event loop.
"""

from __future__ import annotations

import json
from typing import Any

from detserve.constraint_check import accepts
from detserve.constraints import SentConstraint
from detserve.runlog.models import ConstraintCheck, ExchangeRequest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(text: str) -> bool:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict)


def satisfies(constraint: SentConstraint, text: str) -> bool | None:
    """Whether ``text`` satisfies ``constraint`` (a request's); None when the check could not
    finish. Blocking: the gateway calls it in a worker (:func:`~detserve.constraint_check.
    in_worker`)."""
    kind, argument = constraint.kind, constraint.argument
    if kind is None:
        return True
    if kind == "json_object":
        return _json_object(text)
    if kind == "choice":
        return text in (argument or ())
    assert isinstance(argument, str)
    try:
        verdict, _ = accepts(kind, argument, text)
    except TimeoutError:
        return None
    return verdict


def check_output(
    request: ExchangeRequest, text: str, finish_reason: str | None, incomplete: str | None
) -> ConstraintCheck | None:
    """The exchange's ``constraint_check``; None when the request has no constraint."""
    constraint = request.constraint
    if constraint is None:
        return None
    verdict = satisfies(constraint, text)
    if verdict is None:
        return "not_checked"
    if verdict:
        return "satisfied"
    if incomplete is not None or finish_reason == "length":
        return "cut"
    return "violated"
