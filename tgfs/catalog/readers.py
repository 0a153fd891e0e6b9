"""Catalog reads off the FUSE thread, when the catalog is across a network (PostgreSQL).

pyfuse3 answers every request on one trio thread. A catalog statement made on it is a round
trip to the database server, and while it is out that thread answers nothing else: a
player's read served from the cache would wait behind someone's `ls -lR`, and lookups from
several clients would wait on the network one after the other. SQLite's file answers in
microseconds, so there the statements stay on the thread (a hop to another thread would
cost more than the query), as in S3QL.

On PostgreSQL the handlers that only read the catalog (lookup, getattr, opendir, readdir,
and the node open reads first) hand their queries to a few threads of their own
(TGFS_CATALOG_READERS), each with its own connection (peewee keeps one per thread): the
trio thread goes on answering, and several lookups wait on the network at once. Threads of
our own, not trio.to_thread's: those come and go, and each new one would open a
connection (across a network, a TLS handshake).

A reader's connection sees what is committed (read committed). Every change the daemon
makes is committed before its reply reaches the kernel, so a lookup that follows a create
finds it. Writes stay on the trio thread and its connection: one writer per daemon, as on
SQLite. What a reader returns is plain rows; a lazy relation touched later (a node's
video) is read on the trio thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

from tgfs.catalog.schema import READER_THREAD, close_catalog

log = logging.getLogger(__name__)

T = TypeVar("T")


class Readers:
    def __init__(self, count: int) -> None:
        """`count` threads (0: every read on the calling thread)."""
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{READER_THREAD}-{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, read: Callable[..., T], *args: Any) -> T:
        """`read(*args)` on a reader thread, awaited; on this thread if there is none."""
        if not self._threads:
            return read(*args)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        result: list[outcome.Outcome] = []

        def work() -> None:
            result.append(outcome.capture(read, *args))
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        self._work.put(work)
        await done.wait()  # (cancelled: the read ends on its own; its result is dropped)
        return result[0].unwrap()

    def _serve(self) -> None:
        try:
            while (work := self._work.get()) is not None:
                work()
        finally:
            with contextlib.suppress(Exception):
                close_catalog()  # this thread's connection

    def close(self) -> None:
        """Stop the threads (each closes its connection)."""
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(10)
        self._threads = []
