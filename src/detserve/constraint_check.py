"""Whether an output satisfies a JSON Schema or a grammar (Lark syntax), within a time limit.

Both are someone else's input (a claimed bundle, a gateway client's request), and both can make
a check run for ever: a schema's ``pattern`` or ``patternProperties`` is matched by Python's
``re``, which backtracks without limit, and Lark's Earley parser is cubic in the text at worst
(resolving an ambiguous grammar's forest can take longer still). Python cannot stop a thread, so
the check runs in a child process (one, reused: a ``multiprocessing`` pool started with
``spawn``, which imports only this module, ``jsonschema`` and ``lark``) and is abandoned at
:data:`CHECK_TIMEOUT_S`: the child is terminated and the next check starts a new one.

Invariants: the answer is the library's own (JSON with no NaN or infinity that the schema
validates; a grammar that derives the whole text), or None with the reason when the library
failed (a ``$ref`` it cannot resolve offline); a check past the limit raises
:class:`TimeoutError`, never an answer; checks from several threads are serialised through the
one child.
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing
import threading
from multiprocessing.pool import Pool
from typing import Any, Final, Literal

#: wall-clock seconds one check may take, a new child's start-up included
CHECK_TIMEOUT_S: Final = 10.0

CheckedKind = Literal["json_schema", "grammar"]

_lock = threading.Lock()
_pool: Pool | None = None


@functools.lru_cache(maxsize=256)
def lark_parser(grammar: str) -> Any:
    """The Earley parser of a Lark grammar with a ``start`` rule (raises Lark's errors)."""
    from lark import Lark

    return Lark(grammar, start="start", parser="earley", lexer="dynamic")


@functools.lru_cache(maxsize=256)
def json_validator(schema_json: str) -> Any:
    """The validator of a JSON Schema given as JSON text, of the schema's own draft (raises
    ``SchemaError`` for a schema its metaschema refuses)."""
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check(kind: CheckedKind, argument: str, text: str) -> bool:
    if kind == "json_schema":
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except ValueError:
            return False
        return bool(json_validator(argument).is_valid(value))
    from lark.exceptions import LarkError

    try:
        lark_parser(argument).parse(text)
    except LarkError:
        return False
    return True


def _accepts_in_child(kind: CheckedKind, argument: str, text: str) -> tuple[bool | None, str]:
    # Only plain values cross back: a library's own exception may not pickle.
    try:
        return _check(kind, argument, text), ""
    except Exception as exc:  # noqa: BLE001 - a $ref that cannot be resolved, a recursion, ...
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def _child() -> Pool:
    global _pool
    if _pool is None:
        _pool = multiprocessing.get_context("spawn").Pool(1)
        atexit.register(_close, _pool)
    return _pool


def _close(pool: Pool) -> None:
    # before the interpreter's teardown: a pool left to its finaliser then fails noisily
    pool.terminate()
    pool.join()


def accepts(
    kind: CheckedKind, argument: str, text: str, timeout_s: float | None = None
) -> tuple[bool | None, str]:
    """Whether ``text`` satisfies the schema (``argument``: its canonical JSON) or the grammar,
    and why not when it could not be checked: ``(None, reason)`` when the check itself failed
    (a ``$ref`` that cannot be resolved offline, a schema that recurses). :class:`TimeoutError`
    past the limit (:data:`CHECK_TIMEOUT_S` unless given)."""
    global _pool
    limit = CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    with _lock:
        pool = _child()
        pending = pool.apply_async(_accepts_in_child, (kind, argument, text))
        try:
            return pending.get(timeout=limit)
        except multiprocessing.TimeoutError:
            pool.terminate()  # the check may never end: stop it, and start afresh next time
            _pool = None
            raise TimeoutError(f"the {kind} check took longer than {limit:g} s") from None
