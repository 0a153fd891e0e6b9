"""Changes other hosts make to a shared catalog, told to this host's kernel at once.

The kernel caches names and attributes (a second for anything that can change, an hour
for segments: tgfs.fs.attrs). Another host's rename, delete or new file is invisible to
it until then. PostgreSQL's triggers (tgfs.catalog.schema, NOTICES_CHANNEL) notify every
change at commit; this loop listens on a connection of its own and has the kernel forget
the names and attributes they name, so a change shows on every host within the time a
notification takes (milliseconds), not the cache's.

A notification is only a hint: one missed (this daemon reconnecting, the server
restarting) costs at most the cache's second, never a wrong answer past it. So failures
here are logged and retried, never fatal. Notices this daemon's own connection sent are
skipped: its handlers already told the kernel what they changed.

psycopg's blocking `notifies()` runs in a worker thread (trio has no psycopg driver); it
hands each batch to the trio thread, which asks the kernel through pyfuse3.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from collections.abc import Callable

import psycopg
import pyfuse3
import trio

from tgfs.catalog.schema import JOBS_NOTICE, NOTICES_CHANNEL, own_backend_pid

log = logging.getLogger(__name__)

_WAIT = 0.5  # s a listening call blocks for: how soon the thread notices the mount ending
_DRAIN = 0.01  # s to wait for the rest of a batch once its first notice came
_BATCH = 1000  # notices handed over at once, at most
_RETRY = 5.0  # s between attempts to listen again after a failure


class Notices:
    def __init__(
        self,
        url: str,
        forget_inodes: Callable[[list[int]], None],
        jobs_waiting: Callable[[], None] = lambda: None,
    ) -> None:
        """`forget_inodes`: drop what the daemon keeps of these nodes (rendered files);
        `jobs_waiting`: another host has a job any host may claim (store-first ingest)."""
        self.url = url
        self.forget_inodes = forget_inodes
        self.jobs_waiting = jobs_waiting
        self.received = 0  # notices from other hosts acted on, for tests and status

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; started once listening (or once the first attempt
        failed: the mount does not wait for a hint)."""
        stop = threading.Event()
        token = trio.lowlevel.current_trio_token()
        started = False

        def listening() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            while True:
                try:
                    await trio.to_thread.run_sync(
                        self._listen, stop, token, listening, abandon_on_cancel=True
                    )
                except (psycopg.Error, OSError) as exc:
                    # (psycopg's message names no password: libpq leaves it out)
                    log.warning("catalog notices: %s; listening again in %.0f s", exc, _RETRY)
                listening()
                await trio.sleep(_RETRY)
        finally:
            stop.set()

    def _listen(
        self,
        stop: threading.Event,
        token: trio.lowlevel.TrioToken,
        listening: Callable[[], None],
    ) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"LISTEN {NOTICES_CHANNEL}")
            log.info("catalog notices: listening for other hosts' changes")
            trio.from_thread.run_sync(listening, trio_token=token)
            while not stop.is_set():
                # The first notice as soon as it comes, then what came with it (a
                # transaction's notices arrive together).
                got = list(conn.notifies(timeout=_WAIT, stop_after=1))
                if got:
                    got += conn.notifies(timeout=_DRAIN, stop_after=_BATCH)
                    batch = [(n.pid, n.payload) for n in got]
                    try:
                        trio.from_thread.run_sync(self._apply, batch, trio_token=token)
                    except trio.RunFinishedError:
                        return

    def _apply(self, batch: list[tuple[int, str]]) -> None:
        mine = own_backend_pid()
        names: set[tuple[int, bytes]] = set()
        inodes: set[int] = set()
        for pid, payload in batch:
            if pid == mine:
                continue
            if payload == JOBS_NOTICE:
                self.jobs_waiting()
                continue
            kind, _, rest = payload.partition(" ")
            with contextlib.suppress(ValueError):
                if kind == "e":
                    folder, _, hex_name = rest.partition(" ")
                    names.add((int(folder), bytes.fromhex(hex_name)))
                elif kind == "n":
                    inodes.add(int(rest))
        if not (names or inodes):
            return
        self.received += len(names) + len(inodes)
        log.debug("catalog notices: %d name(s), %d node(s) changed", len(names), len(inodes))
        self.forget_inodes(sorted(inodes))
        for folder_id, name in names:
            pyfuse3.invalidate_entry_async(folder_id, name, ignore_enoent=True)
        for inode in inodes:
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError as exc:  # not known to the kernel: nothing cached
                if exc.errno != errno.ENOENT:
                    log.debug("catalog notices: invalidate_inode(%d): %s", inode, exc)
