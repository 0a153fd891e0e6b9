"""Write sessions: a file open for writing, from its first writer to its last release.

The promise (README, "Nothing accepted is lost"): once close() or fsync() on a file has
returned 0, its bytes survive a kill -9, a crash or a power cut, and a failure never
destroys what was already there. How:

- A file's content is, in this order: the working file of its open write session, its
  accepted spool file (`Node.spool`, waiting for ingest), its stored blob (`Node.blob`).
- New content goes to a working spool file of its own, never over the content the file
  already has. A failed session can therefore go back to that content, and an ingest job
  running on the accepted spool file is not disturbed.
- The working file gets a `writing` job row as soon as it holds the new content, so a
  crash finds it: start-up keeps what reached it under the file's name and says so in
  status (jobs.recover_writes). Before that row exists (the copy of a stored file back to
  the spool), a crash leaves the old version, and the start-up sweep deletes the copy.
- close() (FUSE FLUSH, which close() waits for) and fsync() *accept* the working file:
  fdatasync, then one durable transaction points the node at it with its size and times
  and queues its ingest job. An unchanged session accepts nothing.
- The blob of the previous version is freed only once the new version is stored (in the
  ingest runner's transaction), so a crash at any point leaves a whole version.
- A failed write (EFBIG, ENOSPC, EIO …) poisons the session: later writes, close() and
  fsync() report the same error, and at the last release the file goes back to its last
  accepted version; a new file that was never accepted goes away. The rollback is written
  to the catalog at the moment of the failure, so a crash cannot undo it. After an
  fsync() in the same session, what was written before the error is kept instead, as a
  local file system would.
- Opening for writing costs nothing until the first write or truncate: `touch` on a
  stored file changes its times and never copies it back from the store or re-stores it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Callable

import pyfuse3
import trio

from tgfs.cache import PartCache
from tgfs.catalog import Node, NodeKind, blobs, db, jobs, library, now_ns, tree
from tgfs.catalog.schema import is_sqlite
from tgfs.spool import Spool

log = logging.getLogger(__name__)

_COPY_STEP = 4 * 2**20  # bytes per step when stored content is copied back to the spool


@dataclasses.dataclass
class Session:
    node_id: int
    base_size: int  # bytes of the content the session started from
    new_file: bool  # created by this session: removed if it is never accepted
    writers: int = 0
    path: str | None = None  # the working spool file, once it has the new content
    fd: int | None = None  # one descriptor on it, shared by the session's handles
    job_id: int | None = None  # its `writing` job row
    size: int = 0
    mtime_ns: int | None = None  # set by a write (now) or by setattr; None = unchanged
    dirty: bool = False  # changed since the last accept
    accepted: bool = False  # a close()/fsync() of this session accepted the working file
    error: int | None = None  # errno of a failed write: the session is poisoned
    copying: bool = False  # the working file is being made (the base copied into it)
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)

    @property
    def current_size(self) -> int:
        return self.size if self.path is not None else self.base_size


class Writes:
    """The open write sessions, by inode."""

    def __init__(
        self,
        spool: Spool,
        cache: PartCache,
        max_size: int,
        on_accepted: Callable[[], None],
        on_removed: Callable[[int, list[str]], None],
    ) -> None:
        self.spool = spool
        self.cache = cache
        self.max_size = max_size  # MAX_UPLOAD_SIZE; 0 = no limit
        self._on_accepted = on_accepted  # wake the ingest runner
        self._on_removed = on_removed  # (parent, names) left the tree: tell the kernel
        self._sessions: dict[int, Session] = {}

    def get(self, inode: int) -> Session | None:
        return self._sessions.get(inode)

    def busy(self) -> set[int]:
        """Inodes with new content on its way (a working file, or one being made): their
        accepted version is about to be superseded, so its job waits for the last release,
        and a running one is dropped rather than finished (it would publish old content,
        or remove the file from under the writer)."""
        return {i for i, s in self._sessions.items() if s.path is not None or s.copying}

    # ---- opening ------------------------------------------------------------------------

    async def open(self, node: Node, truncate: bool) -> Session:
        session = self._sessions.get(node.id)
        if session is None:
            session = self._sessions[node.id] = Session(node.id, node.size, new_file=False)
        session.writers += 1
        if truncate:
            try:
                await self.truncate(session, 0)
            except BaseException:
                await self.release(session)
                raise
        return session

    def create(
        self, parent_id: int, name: str, mode: int, uid: int, gid: int, or_free_name: bool
    ) -> tuple[Node, Session]:
        """A new empty file, open for writing, in one transaction with its working file's
        job row (close() accepts it even if nothing is written). For a name taken
        meanwhile, see tree.create."""
        path, fd = self.spool.new_file()
        try:
            with db.atomic():
                node = tree.create(
                    parent_id, name, NodeKind.FILE, mode, uid, gid, or_free_name=or_free_name
                )
                job = jobs.start_version(node, tree.path_of(node), path)
                tree.touch_dir(parent_id)
        except BaseException:
            os.close(fd)
            Spool.discard(path)
            raise
        session = Session(
            node.id,
            0,
            new_file=True,
            writers=1,
            path=path,
            fd=fd,
            job_id=job.id,
            mtime_ns=node.mtime_ns,
            dirty=True,
        )
        self._sessions[node.id] = session
        return node, session

    async def _materialise(self, session: Session, keep: int) -> int:
        """Give the session its working file with the first `keep` bytes of the content it
        started from (copied back from the spool or the store), then its job row. Returns
        the working file's descriptor."""
        async with session.lock:
            if session.fd is not None:
                return session.fd
            node = tree.get(session.node_id)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            path, fd = self.spool.new_file()
            session.copying = True
            try:
                keep = min(keep, session.base_size)
                if keep:
                    await self._copy_base(node, fd, keep)
                    # The job row below makes this file the version a crash keeps: its
                    # bytes must be on disk first.
                    await trio.to_thread.run_sync(os.fdatasync, fd)
                job = jobs.start_version(node, tree.path_of(node), path)
            except BaseException:
                os.close(fd)
                Spool.discard(path)
                raise
            finally:
                session.copying = False
            session.path, session.fd, session.job_id, session.size = path, fd, job.id, keep
            return fd

    async def _copy_base(self, node: Node, fd: int, length: int) -> None:
        if node.spool is not None:
            # Opened here, on the trio thread: a job finishing meanwhile may delete the
            # accepted spool file, and an open descriptor keeps it readable.
            src = open_spool(node.spool)
            try:
                await trio.to_thread.run_sync(_copy_file, src, fd, length)
            finally:
                os.close(src)
            return
        parts = blobs.parts_of(node.blob_id) if node.blob_id is not None else []
        for offset in range(0, length, _COPY_STEP):
            data = await self.cache.read(parts, offset, min(_COPY_STEP, length - offset))
            await Spool.pwrite(fd, data, offset)

    # ---- changing -----------------------------------------------------------------------

    async def write(self, session: Session, offset: int, data: bytes) -> int:
        self._check(session)
        end = offset + len(data)
        if self.max_size and end > self.max_size:
            self._fail(session, errno.EFBIG)
        try:
            fd = await self._materialise(session, session.base_size)
            written = await Spool.pwrite(fd, data, offset)
        except OSError as exc:
            self._fail(session, exc.errno or errno.EIO)
        self._changed(session)
        session.size = max(session.size, offset + written)
        return written

    async def truncate(self, session: Session, size: int) -> None:
        self._check(session)
        if self.max_size and size > self.max_size:
            raise pyfuse3.FUSEError(errno.EFBIG)  # nothing changed: not a failed session
        if session.path is None and size == session.base_size and not session.new_file:
            return  # the same length: no change to the content
        try:
            fd = await self._materialise(session, size)
            await trio.to_thread.run_sync(os.ftruncate, fd, size)
        except OSError as exc:
            self._fail(session, exc.errno or errno.EIO)
        self._changed(session)
        session.size = size

    def set_mtime(self, session: Session, mtime_ns: int) -> None:
        """setattr's times win over the write that came before (cp -p, touch -d, rsync -t)."""
        session.mtime_ns = mtime_ns

    def _changed(self, session: Session) -> None:
        if not session.dirty and session.accepted and session.job_id is not None:
            jobs.reopen(session.job_id)  # accepted, now changing again: not ready for ingest
        session.dirty = True
        session.mtime_ns = now_ns()

    def _check(self, session: Session) -> None:
        if session.error is not None:
            raise pyfuse3.FUSEError(session.error)

    def _fail(self, session: Session, err: int) -> None:
        """Poison the session and write its rollback to the catalog now; raises `err`."""
        session.error = err
        node = tree.get(session.node_id)
        name = tree.path_of(node) if node else f"inode {session.node_id}"
        if session.accepted:
            log.warning(
                "write to %s failed (%s); it keeps what was written before", name, os.strerror(err)
            )
        else:
            if session.job_id is not None:
                jobs.drop(session.job_id)
            if session.new_file and node is not None:
                entry = node.entry  # None if it was unlinked meanwhile
                library.remove_file(node)
                if entry is not None:
                    tree.touch_dir(entry.parent_id)
                    self._on_removed(entry.parent_id, [entry.name])
                log.warning(
                    "write to new file %s failed (%s); it was removed", name, os.strerror(err)
                )
            else:
                log.warning(
                    "write to %s failed (%s); it keeps its previous content", name, os.strerror(err)
                )
        raise pyfuse3.FUSEError(err)

    # ---- accepting and closing --------------------------------------------------------------

    async def flush(self, session: Session) -> None:
        """close() and fsync(): report a failed session, or accept the new content."""
        self._check(session)
        await self._accept(session)

    async def _accept(self, session: Session) -> None:
        if not session.dirty or session.path is None or session.fd is None:
            return
        node = tree.get(session.node_id)
        if node is None or node.links == 0:
            return  # unlinked while open: nothing to accept
        await trio.to_thread.run_sync(os.fdatasync, session.fd)
        assert session.job_id is not None
        unused = jobs.accept(session.job_id, node, session.path, session.size, session.mtime_ns)
        for path in unused:
            Spool.discard(path)
        session.dirty, session.accepted = False, True

    async def release(self, session: Session) -> None:
        """One writer fewer; the last one ends the session."""
        session.writers -= 1
        if session.writers > 0:
            return
        self._sessions.pop(session.node_id, None)
        try:
            if session.error is None or session.accepted:
                # close() normally did this; here for writers that never called it. If it
                # fails, the working file and its job row stay: start-up recovers them.
                await self._accept(session)
        finally:
            if session.fd is not None:
                os.close(session.fd)
        rolled_back = session.error is not None and not session.accepted
        node = tree.get(session.node_id)
        if session.path is not None and (rolled_back or node is None or node.links == 0):
            Spool.discard(session.path)  # rolled back, or its file was unlinked meanwhile
            if session.job_id is not None:
                jobs.drop(session.job_id)
        if session.accepted:
            self._on_accepted()

    async def read(self, session: Session, offset: int, size: int) -> bytes | None:
        """Bytes of the session's new content; None if it has none yet (read the file's
        current content instead)."""
        if session.fd is None:
            return None
        return await Spool.pread(session.fd, size, offset)


def _copy_file(src: int, fd: int, length: int) -> None:
    offset = 0
    while offset < length:
        copied = os.copy_file_range(src, fd, length - offset, offset, offset)
        if copied == 0:
            break  # the source is shorter than its recorded size: keep what is there
        offset += copied


def open_spool(path: str) -> int:
    """A descriptor for reading a file's spooled content. EAGAIN if that content is not on
    this host: on a catalog several hosts share, a file written on another host is read
    from there until its job has stored it (a spool file name is a random UUID, so another
    host's is never found here by chance)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if is_sqlite():  # one host: the file went from under tgfs
            log.error("%s: the spooled content of a file is missing", path)
            raise pyfuse3.FUSEError(errno.EIO) from None
        log.info("%s: content not stored yet and not on this host: EAGAIN until it is", path)
        raise pyfuse3.FUSEError(errno.EAGAIN) from None
