"""Requests in flight: N at once against one server, results handed back in index order.

Used by strict sampling at a certified concurrency and by ``detserve check``'s batch-variance
passes. Invariants:

* at most ``concurrency`` calls run at once, and, while enough work remains, exactly that many:
  each of ``concurrency`` workers takes the next item as soon as it is done with one, so the
  server holds ``concurrency`` requests at a time and can batch them;
* ``on_result`` sees results in index order (0, 1, 2, ...) on the calling thread, whatever order
  they complete in, so what a caller writes from them cannot depend on timing;
* at concurrency 1 everything runs in lock-step on the calling thread (a failure in
  ``on_result`` stops the very next request);
* the first failure stops the pass: no new item is started, and the error is raised on the
  calling thread once the calls already in flight have returned (nothing keeps running behind a
  raised error); ``between`` runs on the calling thread while waiting, so a caller can check
  the server's identity and fail the pass early;
* each call's start and end (``time.perf_counter``) are kept, so that how many requests really
  overlapped is measured (:func:`max_overlap`), not assumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: how often, in seconds, ``between`` runs while requests are in flight
POLL_S = 0.1


@dataclass(frozen=True)
class Timed(Generic[ResultT]):
    """One call's result and when it ran (``time.perf_counter`` seconds)."""

    index: int
    result: ResultT
    started: float
    finished: float


def max_overlap(spans: Sequence[tuple[float, float]]) -> int:
    """The most calls that were running at one instant, from their (start, end) spans."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in events:  # at a tie an end sorts first: touching spans do not overlap
        running += step
        most = max(most, running)
    return most


def _one_at_a_time(
    items: Sequence[ItemT],
    call: Callable[[int, ItemT], ResultT],
    on_result: Callable[[Timed[ResultT]], None],
) -> list[Timed[ResultT]]:
    # In lock-step on the calling thread: a failure in on_result stops the very next request.
    ordered = []
    for index, item in enumerate(items):
        started = time.perf_counter()
        result = call(index, item)
        timed = Timed(index, result, started, time.perf_counter())
        ordered.append(timed)
        on_result(timed)
    return ordered


def run_in_flight(
    items: Sequence[ItemT],
    call: Callable[[int, ItemT], ResultT],
    *,
    concurrency: int,
    on_result: Callable[[Timed[ResultT]], None],
    between: Callable[[], None] | None = None,
) -> list[Timed[ResultT]]:
    """``call(index, item)`` for every item, ``concurrency`` at a time; results in index order."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if concurrency == 1:
        return _one_at_a_time(items, call, on_result)
    done: dict[int, Timed[ResultT]] = {}
    ordered: list[Timed[ResultT]] = []
    stop = threading.Event()
    cursor = iter(range(len(items)))
    cursor_lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with cursor_lock:
                index = next(cursor, None)
            if index is None:
                return
            started = time.perf_counter()
            try:
                result = call(index, items[index])
            except BaseException:
                stop.set()
                raise
            finished = time.perf_counter()
            with cursor_lock:
                done[index] = Timed(index, result, started, finished)

    def drain() -> None:
        with cursor_lock:
            ready: list[Timed[ResultT]] = []
            while len(ordered) + len(ready) in done:
                ready.append(done.pop(len(ordered) + len(ready)))
        for timed in ready:
            ordered.append(timed)
            on_result(timed)

    workers = min(concurrency, len(items)) or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detserve-inflight") as pool:
        futures: set[Future[None]] = {pool.submit(worker) for _ in range(workers)}
        try:
            while futures:
                finished, futures = wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()  # re-raises a worker's failure here
                drain()
                if between is not None and futures:
                    between()
        except BaseException:
            stop.set()
            raise
    drain()
    return ordered
