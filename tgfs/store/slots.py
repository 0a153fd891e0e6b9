"""Transfer slots shared by reads someone waits for and by prefetch.

A player that waits for a segment must never wait behind bytes fetched for later. A plain
semaphore serves whoever came first, so a burst of prefetch would sit in front of the
player's read; `Slots` serves in two classes instead:

- an *urgent* request (a reader waits for these bytes) takes any free slot, and waiting
  urgent requests are always granted before waiting prefetches;
- a *prefetch* takes a slot only while no urgent request waits and fewer than
  `prefetch_max` prefetches hold one. The slots above `prefetch_max` are never filled by
  prefetch, so an urgent request finds one free without queueing, and on a link whose
  transfers share one bandwidth (a bot) it competes with at most `prefetch_max`
  prefetches in flight.

With `yield_to_urgent` (a bot: its transfers share one link), a prefetch also waits while
any urgent transfer holds a slot, so a read someone waits for gets the whole link instead
of sharing it with bytes for later; prefetch then runs in the gaps between reads.

A request's `Priority` can be raised while it waits (a reader starts waiting for a chunk
that a prefetch was going to fetch): it is then served as urgent. A transfer already
holding a slot is not interrupted; its bytes are on the way.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@dataclasses.dataclass(eq=False)
class Priority:
    """How a fetch is wanted. Shared by all the chunk fetches of one request, so raising
    it raises them all."""

    urgent: bool = True
    # Slots where requests of this priority wait, with how many (several chunk fetches of
    # one request may wait in the same Slots).
    _waiting_in: collections.Counter[Slots] = dataclasses.field(
        default_factory=collections.Counter, repr=False
    )

    def raise_to_urgent(self) -> None:
        if self.urgent:
            return
        self.urgent = True
        for slots in list(self._waiting_in):
            slots._dispatch()


URGENT = Priority()  # for callers that have nothing to prefetch: never lowered


@dataclasses.dataclass(eq=False)
class _Waiter:
    priority: Priority
    granted: trio.Event = dataclasses.field(default_factory=trio.Event)
    as_prefetch: bool = False  # counted against prefetch_max once granted


class Slots:
    def __init__(self, size: int, prefetch_max: int, yield_to_urgent: bool = False) -> None:
        self.size = size
        self.prefetch_max = max(1, min(prefetch_max, size))
        self.yield_to_urgent = yield_to_urgent
        self.busy = 0
        self.busy_prefetch = 0
        self._waiters: list[_Waiter] = []  # in arrival order

    @asynccontextmanager
    async def hold(self, priority: Priority = URGENT) -> AsyncIterator[None]:
        waiter = _Waiter(priority)
        self._waiters.append(waiter)
        priority._waiting_in[self] += 1
        self._dispatch()
        try:
            await waiter.granted.wait()
        except BaseException:
            if waiter.granted.is_set():  # granted as we were cancelled: give it back
                self._release(waiter)
            else:
                self._waiters.remove(waiter)
            raise
        finally:
            priority._waiting_in[self] -= 1
            if not priority._waiting_in[self]:
                del priority._waiting_in[self]
        try:
            yield
        finally:
            self._release(waiter)

    def _release(self, waiter: _Waiter) -> None:
        self.busy -= 1
        if waiter.as_prefetch:
            self.busy_prefetch -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self.busy < self.size and self._waiters:
            waiter = next((w for w in self._waiters if w.priority.urgent), None)
            if waiter is None:
                if self.busy_prefetch >= self.prefetch_max or (
                    self.yield_to_urgent and self.busy > self.busy_prefetch
                ):
                    return
                waiter = self._waiters[0]
                waiter.as_prefetch = True
                self.busy_prefetch += 1
            self._waiters.remove(waiter)
            self.busy += 1
            waiter.granted.set()
