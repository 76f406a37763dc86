"""Compiling a constraint and checking an output against it, in a child process, within a time
limit, reaching nothing outside the constraint.

A constraint is someone else's input (a claimed bundle, a gateway client's request), and each
step of its check can run for ever: a Lark grammar's compile, a regex's match (the ``regex``
package) or a schema's ``pattern`` (Python's ``re``, which backtracks without limit), and Lark's
Earley parse (cubic in the text at worst, and worse to resolve an ambiguous grammar's forest).
Python cannot stop a thread, so every compile and check runs in a child process (one, reused: a
``multiprocessing`` pool started with ``spawn``, which imports only this module and the
libraries) and is abandoned at :data:`CHECK_TIMEOUT_S`: the child is terminated and the next
call starts a new one. The gateway awaits these calls in a worker thread
(:func:`in_worker`), never on its event loop. The child runs :data:`CHILD_NICENESS` steps below
its parent's CPU priority: a compile or check may take a whole core for the whole limit, and on a
machine with few cores it must yield the CPU to the process that started it (the gateway's event
loop, its ``/health``), never compete with it as an equal.

A Lark grammar is self-contained: an ``%import`` (which Lark resolves by reading a file) fails
the compile. A JSON Schema's references resolve only inside the schema: its ``$ref``
(``$dynamicRef``, ``$recursiveRef``) are all looked up when it compiles, in a ``referencing``
registry whose ``retrieve`` refuses, so a reference to anything else (``http``, ``https``,
``file``, a ``urn`` the schema does not define, even a metaschema) fails the compile, and
nothing is ever fetched (``jsonschema``'s default registry would fetch it). A ``$schema`` names
a draft ``jsonschema`` knows, or the compile fails.

Invariants: the answer is the library's own (JSON with no NaN or infinity that the schema
validates; a grammar that derives the whole text; a regex that matches the whole text), or
None with the reason when the library failed; a compile or a check past its limit raises
:class:`TimeoutError`, never an answer; calls from several threads are serialised through the
one child.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import Pool
from typing import Any, Final, Literal, ParamSpec, TypeVar

#: wall-clock seconds one compile or check may take, a new child's start-up included
CHECK_TIMEOUT_S: Final = 10.0
#: how many steps of CPU priority (``nice``) the child runs below its parent: a hostile check is
#: background work, never the event loop's equal for a core (benchmarks/bench_gateway_hostile.py)
CHILD_NICENESS: Final = 10
#: wall-clock seconds one regex match may take (the ``regex`` package's own limit, inside the
#: child's): a pattern that backtracks on an output is reported, not waited for
REGEX_CHECK_TIMEOUT_S: Final = 2.0

CheckedKind = Literal["json_schema", "grammar", "regex"]

_lock = threading.Lock()
_pool: Pool | None = None
_workers: ThreadPoolExecutor | None = None
_P = ParamSpec("_P")
_T = TypeVar("_T")


class ReferenceOutside(Exception):
    """A schema reference that does not resolve inside the schema."""


# --- in the child ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def lark_parser(grammar: str) -> Any:
    """The Earley parser of a self-contained Lark grammar with a ``start`` rule (raises Lark's
    errors; ``ValueError`` for an ``%import``, which Lark resolves by reading files: ``.name``
    next to the working directory, ``common`` from its own package)."""
    from lark import Lark

    if "%import" in grammar:
        raise ValueError("%import reads grammar files outside the request: write it out whole")
    return Lark(grammar, start="start", parser="earley", lexer="dynamic")


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> Any:
    import regex

    return regex.compile(pattern)


def _refuse_retrieval(uri: str) -> Any:
    from referencing.exceptions import NoSuchResource

    raise NoSuchResource(uri)


def _offline_registry() -> Any:
    from referencing import Registry

    return Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def _check_references(schema: dict[str, Any]) -> None:
    """Look up every reference of the schema, each from where it is; raise
    :class:`ReferenceOutside` for one that does not resolve inside the schema."""
    from referencing import Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    root = Resource.from_contents(schema, default_specification=DRAFT202012)
    pending = [(root, _offline_registry().resolver_with_root(root))]
    while pending:
        resource, resolver = pending.pop()
        contents = resource.contents
        if isinstance(contents, dict):
            for keyword in ("$ref", "$dynamicRef", "$recursiveRef"):
                reference = contents.get(keyword)
                if isinstance(reference, str):
                    try:
                        resolver.lookup(reference)
                    except Unresolvable:
                        raise ReferenceOutside(
                            f"{keyword} {reference[:200]!r} does not resolve inside the schema "
                            "(references to anything else are refused, never fetched)"
                        ) from None
        pending.extend((sub, resolver.in_subresource(sub)) for sub in resource.subresources())


@functools.lru_cache(maxsize=256)
def json_validator(schema_json: str) -> Any:
    """The validator of a JSON Schema given as JSON text, of the schema's own draft, its
    references resolved inside it (raises ``SchemaError`` for a schema its metaschema refuses,
    :class:`ReferenceOutside`, ``ValueError``)."""
    from jsonschema.validators import validator_for
    from referencing.jsonschema import UnknownDialect, specification_with

    schema = json.loads(schema_json, parse_constant=_refuse_constant)
    if not isinstance(schema, dict):
        raise ValueError("a JSON Schema here is an object")
    if "$schema" in schema:
        try:
            specification_with(schema["$schema"])
        except (UnknownDialect, TypeError):
            raise ValueError(
                f"$schema {str(schema['$schema'])[:200]!r} is no draft jsonschema knows"
            ) from None
    cls = validator_for(schema)
    cls.check_schema(schema)
    _check_references(schema)
    return cls(schema, registry=_offline_registry())


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _compile(kind: CheckedKind, argument: str) -> Any:
    if kind == "json_schema":
        return json_validator(argument)
    if kind == "grammar":
        return lark_parser(argument)
    return _regex(argument)


def _check(kind: CheckedKind, argument: str, text: str, regex_timeout_s: float) -> bool:
    compiled = _compile(kind, argument)
    if kind == "json_schema":
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except ValueError:
            return False
        return bool(compiled.is_valid(value))
    if kind == "regex":
        return compiled.fullmatch(text, timeout=regex_timeout_s) is not None
    from lark.exceptions import LarkError

    try:
        compiled.parse(text)
    except LarkError:
        return False
    return True


def _reason(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message[:300]}" if message else type(exc).__name__


def _compile_in_child(kind: CheckedKind, argument: str) -> str | None:
    # Only plain values cross back: a library's own exception may not pickle.
    try:
        _compile(kind, argument)
    except Exception as exc:  # noqa: BLE001 - a grammar lark refuses, a schema its metaschema, ...
        return _reason(exc)
    return None


def _accepts_in_child(
    kind: CheckedKind, argument: str, text: str, regex_timeout_s: float
) -> tuple[bool | None, str, bool]:
    try:
        return _check(kind, argument, text, regex_timeout_s), "", False
    except TimeoutError:
        return None, f"the regex did not finish matching in {regex_timeout_s:g} s", True
    except Exception as exc:  # noqa: BLE001 - an unresolvable reference, a recursion, ...
        return None, _reason(exc), False


# --- in the parent --------------------------------------------------------------------------


def _lower_priority(steps: int) -> None:
    # In the child, before any work: it inherited its parent's priority.
    os.nice(steps)


def _child() -> Pool:
    global _pool
    if _pool is None:
        _pool = multiprocessing.get_context("spawn").Pool(
            1, initializer=_lower_priority, initargs=(CHILD_NICENESS,)
        )
        atexit.register(_close, _pool)
    return _pool


def _close(pool: Pool) -> None:
    # before the interpreter's teardown: a pool left to its finaliser then fails noisily
    pool.terminate()
    pool.join()


def _in_child(what: str, function: Callable[..., _T], *args: Any, timeout_s: float | None) -> _T:
    global _pool
    limit = CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    with _lock:
        pool = _child()
        pending = pool.apply_async(function, args)
        try:
            return pending.get(timeout=limit)
        except multiprocessing.TimeoutError:
            pool.terminate()  # it may never end: stop it, and start afresh next time
            _pool = None
            raise TimeoutError(f"the {what} took longer than {limit:g} s") from None


def compile_problem(kind: CheckedKind, argument: str, timeout_s: float | None = None) -> str | None:
    """Why the constraint (a schema's JSON text, a Lark grammar, a regex) does not compile, or
    None when it does. :class:`TimeoutError` past the limit (:data:`CHECK_TIMEOUT_S` unless
    given)."""
    return _in_child(f"{kind} compile", _compile_in_child, kind, argument, timeout_s=timeout_s)


def accepts(
    kind: CheckedKind, argument: str, text: str, timeout_s: float | None = None
) -> tuple[bool | None, str]:
    """Whether ``text`` satisfies the schema (``argument``: its JSON text), the grammar or the
    regex (a full match), and why not when it could not be checked: ``(None, reason)`` when the
    check itself failed (a reference outside the schema, a schema that recurses).
    :class:`TimeoutError` past the limit (:data:`CHECK_TIMEOUT_S` unless given, or the regex's
    own :data:`REGEX_CHECK_TIMEOUT_S`)."""
    verdict, reason, timed_out = _in_child(
        f"{kind} check",
        _accepts_in_child,
        kind,
        argument,
        text,
        REGEX_CHECK_TIMEOUT_S,
        timeout_s=timeout_s,
    )
    if timed_out:
        raise TimeoutError(reason)
    return verdict, reason


async def in_worker(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run a blocking compile or check in a worker thread and await it: the event loop keeps
    answering while the child works (or is stopped at its limit)."""
    global _workers
    if _workers is None:
        # its own threads: waiting checks never hold the ones asyncio.to_thread shares
        _workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="detserve-check")
    call = functools.partial(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_workers, call)
