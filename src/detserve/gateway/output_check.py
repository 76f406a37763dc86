"""The gateway's check of an output against its request's constraint, after the engine answered.

vLLM enforces a constraint while it generates; the gateway checks the result, so that an
engine that did not enforce it is caught rather than trusted. :func:`check_output` is a function
of the canonical request and the output only (text, ``finish_reason``, whether the exchange is
incomplete), so a faithful replay of the exchange reproduces it byte for byte:

* ``json_schema``: the text is JSON (no NaN or infinity) and validates against the schema
  (``jsonschema``, the schema's own draft);
* ``json_object``: the text is one JSON object;
* ``choice``: the text is one of the choices, exactly;
* ``regex``: the whole text matches (the ``regex`` package, within
  :data:`~detserve.requests.REGEX_CHECK_TIMEOUT_S`);
* ``grammar``: ``lark`` parses the whole text, when the grammar is in Lark syntax.

What cannot be checked is said, never guessed: a grammar ``lark`` does not read (vLLM also
takes GBNF), a regex the ``regex`` package does not compile (vLLM's engines have their own
dialects) or does not finish matching within the time limit (it backtracks catastrophically), or a
schema ``jsonschema`` cannot use (invalid, or with a ``$ref`` it cannot resolve) is
``not_checked``. An unsatisfied output whose generation was cut (``finish_reason`` ``length``,
or a stream that ended early) is ``cut``, not a violation; any other unsatisfied output is
``violated``, and the gateway withholds it (502) after recording it.

The constraint is the client's: a regex is matched with a time limit, and a schema (whose
``pattern`` Python's ``re`` matches) or a grammar is checked in a child process with one
(:mod:`detserve.constraint_check`), so none can stall the gateway for longer. A check that ran
out of time is ``not_checked``; that depends on the machine's speed, so a replay on a faster one
can differ there.
"""

from __future__ import annotations

import json
from typing import Any, Final

import regex
from pydantic import ValidationError

from detserve.requests import Constraint, ConstraintUncheckable, regex_fullmatch
from detserve.runlog.models import ConstraintCheck, ExchangeRequest

#: what each outcome means, for a client reading its provenance
MEANING: Final[dict[str, str]] = {
    "satisfied": "the output satisfies the constraint",
    "violated": "the output violates the constraint: the engine did not enforce it",
    "cut": "the output does not satisfy the constraint because its generation was cut "
    "(max_tokens, or a stream that ended early)",
    "not_checked": "detserve cannot check this constraint (a grammar not in Lark syntax, a "
    "regex that does not compile or whose match ran out of time, or a JSON Schema jsonschema "
    "cannot use)",
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(text: str) -> bool:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return False
    return isinstance(value, dict)


def satisfies(constraint: dict[str, Any], text: str) -> bool | None:
    """Whether ``text`` satisfies ``constraint`` (a canonical request's); None when detserve
    cannot check it."""
    ((kind, argument),) = constraint.items()
    if kind == "json_object":
        return _json_object(text)
    if kind == "choice":
        return text in argument
    if kind == "regex":
        try:
            regex.compile(argument)
            return regex_fullmatch(argument, text)
        except (regex.error, ConstraintUncheckable):
            return None
    try:
        # the bundle's own check: a schema against its metaschema, a grammar by lark
        checked = Constraint.model_validate({kind: argument})
    except ValidationError:
        return None
    try:
        return checked.satisfied_by(text)
    except ConstraintUncheckable:
        # a $ref that cannot be resolved offline, a schema that recurses, a check that did not
        # end in time
        return None


def check_output(
    request: ExchangeRequest, text: str, finish_reason: str | None, incomplete: str | None
) -> ConstraintCheck | None:
    """The exchange's ``constraint_check``; None when the request has no constraint."""
    if request.constraint is None:
        return None
    verdict = satisfies(request.constraint, text)
    if verdict is None:
        return "not_checked"
    if verdict:
        return "satisfied"
    if incomplete is not None or finish_reason == "length":
        return "cut"
    return "violated"


def constraint_kind(request: ExchangeRequest) -> str:
    """The name of the request's constraint (``json_schema``, ``regex``, ...)."""
    return next(iter(request.constraint or {"none": None}))
