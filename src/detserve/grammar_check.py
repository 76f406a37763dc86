"""Whether a grammar (Lark syntax) accepts a whole output, within a time limit.

Lark's Earley parser is cubic in the text at worst, and resolving an ambiguous grammar's forest
can take longer still: a grammar is someone else's input (a claimed bundle, a gateway client's
request), so a parse must not be able to hang detserve. Python cannot stop a thread, so the
parse runs in a child process (one, reused: a ``multiprocessing`` pool started with ``spawn``,
which imports only this module and ``lark``) and is abandoned at
:data:`GRAMMAR_CHECK_TIMEOUT_S`: the child is terminated and the next check starts a new one.

Invariants: the answer is the parse's own (True: the grammar derives the whole text; False:
Lark refuses it); a parse past the limit raises :class:`TimeoutError`, never an answer; checks
from several threads are serialised through the one child.
"""

from __future__ import annotations

import functools
import multiprocessing
import threading
from multiprocessing.pool import Pool
from typing import Any, Final

#: wall-clock seconds one grammar check may take, the child's start-up included
GRAMMAR_CHECK_TIMEOUT_S: Final = 10.0

_lock = threading.Lock()
_pool: Pool | None = None


@functools.lru_cache(maxsize=256)
def lark_parser(grammar: str) -> Any:
    """The Earley parser of a Lark grammar with a ``start`` rule (raises Lark's errors)."""
    from lark import Lark

    return Lark(grammar, start="start", parser="earley", lexer="dynamic")


def _accepts_in_child(grammar: str, text: str) -> bool:
    from lark.exceptions import LarkError

    try:
        lark_parser(grammar).parse(text)
    except LarkError:
        return False
    return True


def _child() -> Pool:
    global _pool
    if _pool is None:
        _pool = multiprocessing.get_context("spawn").Pool(1)
    return _pool


def grammar_accepts(grammar: str, text: str, timeout_s: float | None = None) -> bool:
    """Whether ``grammar`` derives the whole of ``text``; :class:`TimeoutError` past the limit
    (:data:`GRAMMAR_CHECK_TIMEOUT_S` unless given)."""
    global _pool
    limit = GRAMMAR_CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    with _lock:
        pool = _child()
        pending = pool.apply_async(_accepts_in_child, (grammar, text))
        try:
            return bool(pending.get(timeout=limit))
        except multiprocessing.TimeoutError:
            pool.terminate()  # the parse may never end: stop it, and start afresh next time
            _pool = None
            raise TimeoutError(f"the grammar check took longer than {limit:g} s") from None
