"""The snapshot watch's share of one core: its work spaced and slowed by its own measured CPU time.

A check of the record costs O(files) system calls (about 40 us a file here) and the paced pass
costs per byte and per file (an open, an ``fstat``, ``O_DIRECT`` set up, a digest finished): a
pace in bytes alone bounds neither for a snapshot of many files. So :class:`WatchShare` holds
what the watch spends, measured, to :attr:`WatchShare.share` of one core over wall time:

* a check of the record begins only once its last one's CPU time over :attr:`record_share`
  (half the share) has passed since that one began. A check of a few files costs well under a
  millisecond, so it runs at every call (every ``--reverify-interval``) as before; one of 20,000
  files is spaced to tens of seconds, and the bound on catching a change through the file system
  is then that spacing (:meth:`record_bound_s`), not the interval;
* the paced pass spends a credit of CPU time that grows at :attr:`share` a second (at most
  :data:`MAX_CREDIT_S` seconds' worth), less what the record's checks spent: it stops, whatever
  its byte budget, once the credit is spent. Record checks take at most half the share, so the
  paced pass keeps at least the other half.

The time is the calling thread's CPU time (``time.thread_time``: user and system time, hashing
with the GIL released included): the gateway runs each check in a worker thread while its event
loop answers requests, and the process's CPU time would count those answers as verification,
spacing the checks out (and so weakening the bound) under load a client controls. Each check is
measured within one call, so a pool handing calls to different threads measures each right.
The watch's start (its first check of the record, listing the files) is charged as a check of
the record is; the lifetime's full passes (at start without a record, once past the racy
margin) are not: they are what ``serve`` does before it trusts a record, at full speed, once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: the watch's own measured CPU over wall time, of one core: issue 24 allows 5 % for the
#: gateway's verification; the point left is for what runs outside a check (the watcher's ticks,
#: the hand-off to its thread) and a check's overshoot of its credit
DEFAULT_CPU_SHARE = 0.04
#: the part of the share checks of the record may take; the paced pass keeps the rest
RECORD_PART = 0.5
#: the most credit the paced pass may bank, in seconds of wall time at the share
MAX_CREDIT_S = 10.0


class WatchShare:
    """Spaces a watch's checks of the record and meters its paced pass by measured CPU time."""

    def __init__(
        self,
        share: float = DEFAULT_CPU_SHARE,
        *,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("the watch's share of a core is in (0, 1]")
        self.share = share
        self.record_share = share * RECORD_PART
        self._cpu = cpu_clock
        #: seconds of CPU the paced pass may still spend (below zero: owed)
        self.credit = 0.0
        #: when (the watch's clock) the last check of the record began, and its CPU time
        self._record_at: float | None = None
        self.record_cpu_s = 0.0
        #: CPU seconds spent on checks of the record (and the watch's start) and on the paced
        #: pass, in all
        self.record_cpu_total_s = 0.0
        self.paced_cpu_total_s = 0.0
        #: CPU seconds of full passes, which are not paced
        self.exempt_cpu_s = 0.0

    def accrue(self, elapsed: float) -> None:
        """``elapsed`` seconds of wall time have passed: the paced pass's credit grows."""
        ceiling = self.share * MAX_CREDIT_S
        self.credit = min(ceiling, self.credit + self.share * max(elapsed, 0.0))

    def record_spacing_s(self) -> float:
        """The least time from one check of the record to the next: its last cost over its
        share."""
        return self.record_cpu_s / self.record_share

    def record_due(self, now: float, interval_s: float) -> bool:
        """Whether a check of the record may begin at ``now``, the watch being called every
        ``interval_s``: always while its spacing is within one interval (every call, as the
        interval alone keeps it to its share), else once the spacing has passed."""
        spacing = self.record_spacing_s()
        return self._record_at is None or spacing <= interval_s or now - self._record_at >= spacing

    def record_bound_s(self, interval_s: float) -> float:
        """How long after a change through the file system the check that sees it begins, at
        most, when the watch is called every ``interval_s``: the spacing rounded up to a call."""
        calls = max(1, math.ceil(self.record_spacing_s() / interval_s - 1e-9))
        return calls * interval_s

    @contextmanager
    def record_check(self, now: float) -> Iterator[None]:
        """Measure a check of the record begun at ``now``; its cost is charged to the credit.
        One that raised is not a check done: the next call checks again, whatever the spacing
        (an unexpected error is a doubt, lifted only by a check that completes)."""
        self._record_at = now
        began = self._cpu()
        try:
            yield
        except BaseException:
            self._record_at = None
            raise
        finally:
            spent = max(self._cpu() - began, 0.0)
            self.record_cpu_s = spent
            self.record_cpu_total_s += spent
            self.credit -= spent

    @contextmanager
    def charged(self) -> Iterator[None]:
        """Measure the watch's start (its first check of the record, its listing: O(files)),
        charged to the credit as a check of the record is, less what ran :meth:`exempt`."""
        began, exempt = self._cpu(), self.exempt_cpu_s
        try:
            yield
        finally:
            spent = max(self._cpu() - began - (self.exempt_cpu_s - exempt), 0.0)
            self.record_cpu_total_s += spent
            self.credit -= spent

    @contextmanager
    def exempt(self) -> Iterator[None]:
        """Measure a full pass, which is not paced: what ``serve`` does once before it trusts a
        record."""
        began = self._cpu()
        try:
            yield
        finally:
            self.exempt_cpu_s += max(self._cpu() - began, 0.0)

    @contextmanager
    def paced_step(self) -> Iterator[Callable[[], bool]]:
        """Measure a step of the paced pass; it yields what the pass asks before each read:
        whether credit is left."""
        began = self._cpu()
        allowance = self.credit

        def within() -> bool:
            return self._cpu() - began < allowance

        try:
            yield within
        finally:
            spent = max(self._cpu() - began, 0.0)
            self.paced_cpu_total_s += spent
            self.credit -= spent
