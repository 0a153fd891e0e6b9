"""Deletes store parts whose blobs are gone from the catalog (the Garbage table).

A failed delete is retried later, never forgotten: the row stays until the store confirms.
Parts still being read through an open file handle (a player holding a file that was just
deleted) are left alone until that handle is closed. After each pass the read cache drops
its copies of parts the catalog no longer has.

On a catalog several hosts share, one host at a time makes a pass (tgfs.catalog.duties). It
spares the parts its own open files read; another host's open files are not known to it,
so a file deleted on one host while another reads it (with the trash off, or once the
trash lets it go) can stop reading there, as on NFS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from tgfs.catalog import Garbage
from tgfs.catalog.duties import Duty, duty
from tgfs.store.base import BlobStore

log = logging.getLogger(__name__)

_BATCH = 100  # rows per query: the list can be long after deleting a film
_IDLE = 30.0  # seconds between passes when nothing wakes the collector
_RETRY_BACKOFF_MAX = 3600.0


class GarbageCollector:
    def __init__(
        self,
        store: BlobStore,
        in_use: Callable[[str], bool],
        after_pass: Callable[[], object] = lambda: None,
    ) -> None:
        self.store = store
        self.in_use = in_use
        self.after_pass = after_pass  # e.g. the read cache drops the parts that went
        self._wake = trio.Event()
        self.deleted = 0
        # The last pass left parts that open files were reading: the next release of an
        # open file wakes it (`released`), rather than their deletes waiting for _IDLE.
        self.spared = False

    def wake(self) -> None:
        self._wake.set()

    def released(self) -> None:
        """An open file's parts were let go of: collect what was spared for it."""
        if self.spared:
            self.wake()

    def pending(self) -> int:
        return Garbage.select().count()

    async def run(self) -> None:
        failures = 0
        while True:
            self._wake = trio.Event()
            failed = await self.collect_once()
            self.after_pass()
            failures = failures + 1 if failed else 0
            delay = min(_IDLE * 2**failures, _RETRY_BACKOFF_MAX) if failures else _IDLE
            with trio.move_on_after(delay):
                await self._wake.wait()

    async def collect_once(self) -> int:
        """One pass over the garbage list, unless another host is making one (see
        tgfs.catalog.duties); returns how many deletes failed."""
        failed = 0
        after = 0
        self.spared = False
        with duty(Duty.COLLECT) as mine:
            if not mine:
                log.info("store: another host is deleting the garbage list's parts; not here")
                return 0
            while rows := list(
                Garbage.select().where(Garbage.id > after).order_by(Garbage.id).limit(_BATCH)
            ):
                after = rows[-1].id
                failed += await self._delete(rows)
        return failed

    async def _delete(self, rows: list[Garbage]) -> int:
        free = [row for row in rows if not self.in_use(row.location)]
        self.spared = self.spared or len(free) < len(rows)
        rows = free
        try:
            failures = await self.store.delete_many([row.location for row in rows])
        except Exception as exc:  # a store bug must not lose the list: every row stays
            log.exception("store: deleting %d part(s) failed", len(rows))
            failures = {row.location: str(exc) for row in rows}
        for row in rows:
            error = failures.get(row.location)
            if error is None:
                row.delete_instance()
                self.deleted += 1
                continue
            row.attempts += 1
            row.last_error = error[:500]
            row.save()
        failed = sum(1 for row in rows if row.location in failures)
        if failed:
            log.warning(
                "store: %d part delete(s) failed, will retry: %s",
                failed,
                next(iter(failures.values())),
            )
        return failed
