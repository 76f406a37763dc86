"""The gateway's queue: places for requests being read or waiting, and slots at the engine.

A request takes a *place* before the first byte of its body is read, and keeps it until it is
answered; at most ``concurrency + queue_size`` places exist, and a request that finds none is
refused (429) at once. Within its place a request takes a *slot* to talk to the engine; at most
``concurrency`` slots exist, and a request waits for one in its place. A client that stalls its
upload therefore holds a place (bounded by the gateway's body timeout), never more than the
queue allows.

Both are async context managers, so they are given back on every way out of the ``async with``
block: an answer, a refusal, an exception, a cancelled task (the client left, the gateway
stopped). Within the block a slot may be given back early, once (:meth:`Slot.release`: the
engine's answer is read, and what follows, the output's check and record, needs no engine);
the block's end gives it back unless it was. Nothing else takes or gives them back.
``on_wait`` is told how long each slot was waited for (the metrics' queue wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable


class QueueFull(Exception):
    """No place is free: the request is refused (429)."""


class RequestSlots:
    """``concurrency`` slots at the engine, ``queue_size`` more places to wait in."""

    def __init__(
        self,
        concurrency: int,
        queue_size: int,
        on_wait: Callable[[float], None] = lambda _seconds: None,
    ) -> None:
        if concurrency < 1 or queue_size < 0:
            raise ValueError("concurrency must be at least 1 and queue_size at least 0")
        self.concurrency = concurrency
        self.on_wait = on_wait
        self.capacity = concurrency + queue_size
        self._slots = asyncio.Semaphore(concurrency)
        self._pending = 0
        self._in_flight = 0
        #: requests refused because every place was taken
        self.refused = 0

    @property
    def pending(self) -> int:
        """Requests holding a place (reading, waiting or at the engine)."""
        return self._pending

    @property
    def in_flight(self) -> int:
        """Requests holding a slot."""
        return self._in_flight

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[Place]:
        """A place in the queue for the block, or :class:`QueueFull` at once."""
        if self._pending >= self.capacity:
            self.refused += 1
            raise QueueFull
        self._pending += 1
        try:
            yield Place(self)
        finally:
            self._pending -= 1


class Place:
    """One request's place; :meth:`slot` waits for the engine within it."""

    def __init__(self, slots: RequestSlots) -> None:
        self._slots = slots
        self._holding = False

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """A slot at the engine for the block (one per place), given back at the block's end
        unless :meth:`Slot.release` gave it back before."""
        if self._holding:
            raise RuntimeError("a place holds one slot at a time")
        slots = self._slots
        began = time.perf_counter()
        await slots._slots.acquire()
        waited_s = time.perf_counter() - began
        self._holding = True
        slots._in_flight += 1
        slot = Slot(self)
        try:
            slots.on_wait(waited_s)
            yield slot
        finally:
            slot.release()

    def _give_back(self) -> None:
        slots = self._slots
        slots._in_flight -= 1
        self._holding = False
        slots._slots.release()


class Slot:
    """A slot at the engine, held within :meth:`Place.slot`'s block."""

    def __init__(self, place: Place) -> None:
        self._place = place
        self._held = True

    @property
    def held(self) -> bool:
        """Whether the slot is still held."""
        return self._held

    def release(self) -> None:
        """Give the slot back now (once the engine is done); again, or at the block's end, it
        does nothing."""
        if self._held:
            self._held = False
            self._place._give_back()
