"""pyfuse3 handlers: translate kernel requests into catalog, spool and cache calls.

Each handler is thin: a debug log line, a lookup, a call into a helper or another module,
and `FUSEError(errno)` for everything the caller did wrong. `@_guarded` turns anything
else into EIO with a log line, because any non-FUSEError exception escaping a handler
would end the whole filesystem, and one bad file must never do that.

Rules of the tree (see README "Using the mount"):
- ordinary directories and files behave like on a local disk;
- a released file is queued for ingest; it stays visible (and readable from the spool)
  under its own name until its video folder replaces it, or it is stored as it is;
- a video folder appears while the video is still being made (EVENT playlists that grow),
  beside the dropped file, which goes away when the video is complete;
- a video folder and everything in it is read-only (EROFS). `rm -r` works: unlinking an
  entry inside a video folder only hides it from this mount session, and removing the
  emptied folder deletes the video and its blobs. Entries hidden but not followed by the
  folder's removal come back at the next mount; nothing is lost by a stray `rm`;
- `/.tgfs/` is the read-only control folder (status.json).
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from tgfs.cache import PartCache
from tgfs.catalog import ROOT_ID, Node, NodeKind, blobs, db, jobs, library, now_ns, tree
from tgfs.config import Settings
from tgfs.fs import attrs
from tgfs.fs.handles import BlobHandle, BytesHandle, Handle, SpoolHandle
from tgfs.ingest.runner import IngestRunner
from tgfs.media import playlists
from tgfs.spool import Spool
from tgfs.status import bots_snapshot, snapshot, to_bytes
from tgfs.store.base import BlobStore, StoreError
from tgfs.store.collector import GarbageCollector

log = logging.getLogger(__name__)

_COPY_STEP = 4 * 2**20  # bytes per step when a stored file is copied back to the spool
_READDIR_PAGE = 500

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _guarded(handler: F) -> F:
    @functools.wraps(handler)
    async def wrapper(self, *args):
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except StoreError as exc:
            log.error("%s: store error: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            log.warning("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class Filesystem(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, settings: Settings, spool: Spool, cache: PartCache, store: BlobStore,
                 runner: IngestRunner, collector: GarbageCollector) -> None:
        super().__init__()
        self.settings = settings
        self.spool = spool
        self.cache = cache
        self.store = store
        self.runner = runner
        self.collector = collector
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._writers: collections.Counter[int] = collections.Counter()  # inode → open writers
        self._write_size: dict[int, int] = {}  # inode → size while open for writing
        self._write_error: dict[int, int] = {}  # inode → errno of a failed write
        self._hidden: set[int] = set()  # entries of video folders unlinked this session
        self._open_parts: collections.Counter[str] = collections.Counter()  # location → readers
        self._rendered: dict[int, bytes] = {}  # playlists of published (immutable) videos
        self.store_health: dict[str, Any] = {"kind": store.kind, "up": True}

    # ---- helpers -------------------------------------------------------------------------

    def part_in_use(self, location: str) -> bool:
        """For the garbage collector: is an open handle still reading this part?"""
        return self._open_parts[location] > 0

    def invalidate(self, parent_id: int, names: list[str]) -> None:
        """Make the kernel (and our playlist renders) forget names after the catalog
        changed under them."""
        for name in names:
            if (node := tree.child(parent_id, name)) is not None:
                self._rendered.pop(node.id, None)
            pyfuse3.invalidate_entry_async(parent_id, os.fsencode(name), ignore_enoent=True)

    def _node(self, inode: int) -> Node:
        node = tree.get(inode)
        if node is None or node.id in self._hidden:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _child(self, parent_id: int, name: str) -> Node:
        node = tree.child(parent_id, name)
        if node is None or node.id in self._hidden:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _changeable_dir(self, inode: int) -> Node:
        """A directory the user may add to, remove from or rename in."""
        node = self._node(inode)
        kind = node.node_kind
        if kind is NodeKind.DIR:
            return node
        if kind in (NodeKind.VIDEO, NodeKind.RENDITION):
            raise pyfuse3.FUSEError(errno.EROFS)
        if kind is NodeKind.CONTROL_DIR:
            raise pyfuse3.FUSEError(errno.EPERM)
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    def _render(self, node: Node) -> bytes:
        kind = node.node_kind
        if kind is NodeKind.STATUS:
            encoder = {"name": self.runner.encoder, "note": self.runner.encoder_note}
            return to_bytes(snapshot(self.runner.progress, self.cache.stats(),
                                     self.store_health, self.collector.pending(), encoder))
        if kind is NodeKind.BOTS:
            return to_bytes({"bots": bots_snapshot(self.store_health)})
        if node.id in self._rendered:
            return self._rendered[node.id]
        video = node.video
        if kind is NodeKind.MASTER:
            text = playlists.master(*library.master_entries(node.video_id))
        else:
            text = playlists.media(video.target_duration, node.rendition.init_name or None,
                                   library.segments(node.rendition_id), video.complete)
        data = text.encode()
        if video.complete:  # a video still being made has playlists that grow
            self._rendered[node.id] = data
        return data

    def _size(self, node: Node) -> int:
        kind = node.node_kind
        if kind is NodeKind.FILE:
            return self._write_size.get(node.id, node.size)
        if kind in (NodeKind.MASTER, NodeKind.PLAYLIST) or kind.is_live:
            return len(self._render(node))
        return node.size

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        return attrs.entry(node, self._size(node))

    def _add_handle(self, handle: Handle) -> int:
        fh = next(self._fh)
        self._handles[fh] = handle
        if isinstance(handle, BlobHandle):
            for part in handle.parts:
                self._open_parts[part.location] += 1
        return fh

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    # ---- writing: spool sessions ---------------------------------------------------------

    async def _begin_write(self, node: Node, truncate: bool) -> int:
        """Open `node`'s spool file for writing (creating it from the stored copy if needed).

        Returns an fd. The file gets an ingest job when its last writer closes.
        """
        job = jobs.active_for(node.id)
        if job is not None and job.state == jobs.RUNNING:
            raise pyfuse3.FUSEError(errno.EBUSY)  # being ingested right now; try later
        jobs.cancel_queued(node.id)
        if node.spool is not None:
            fd = os.open(node.spool, os.O_RDWR | os.O_CLOEXEC)
        else:
            path, fd = self.spool.new_file()
            try:
                if node.blob_id is not None and not truncate:
                    await self._copy_stored(node, fd)
            except BaseException:
                os.close(fd)
                Spool.discard(path)
                raise
            with db.atomic():
                old_blob = node.blob_id
                node.spool, node.blob = path, None
                node.save()
                blobs.free([old_blob])
            self.collector.wake()
        if truncate:
            os.ftruncate(fd, 0)
        if self._writers[node.id] == 0:
            self._write_size[node.id] = 0 if truncate else os.fstat(fd).st_size
        elif truncate:
            self._write_size[node.id] = 0
        self._writers[node.id] += 1
        return fd

    async def _copy_stored(self, node: Node, fd: int) -> None:
        parts = blobs.parts_of(node.blob_id)
        for offset in range(0, node.size, _COPY_STEP):
            data = await self.cache.read(parts, offset, min(_COPY_STEP, node.size - offset))
            await Spool.pwrite(fd, data, offset)

    async def _end_write(self, inode: int) -> None:
        self._writers[inode] -= 1
        if self._writers[inode] > 0:
            return
        del self._writers[inode]
        size = self._write_size.pop(inode, 0)
        failed = self._write_error.pop(inode, None)
        node = tree.get(inode)
        if node is None:  # unlinked while open: its spool file is already gone
            return
        if failed is not None:
            # A short copy is worse than none: drop it so nothing half-written is stored.
            log.warning("write to %s failed (%s); the incomplete file was removed",
                        tree.path_of(node), os.strerror(failed))
            Spool.discard(node.spool)
            library.remove_file(node)
            self.invalidate(node.parent_id, [node.name])
            return
        node.size, node.mtime_ns, node.ctime_ns = size, now_ns(), now_ns()
        node.save()
        jobs.enqueue(node, tree.path_of(node), node.spool, size)
        self.runner.wake()

    # ---- handlers ------------------------------------------------------------------------

    @_guarded
    async def lookup(self, parent_inode, name, ctx=None):
        name = _name(name)
        log.debug("lookup(%d, %r)", parent_inode, name)
        parent = self._node(parent_inode)
        if name == ".":
            return self._attrs(parent)
        if name == "..":
            return self._attrs(self._node(parent.parent_id or ROOT_ID))
        return self._attrs(self._child(parent.id, name))

    @_guarded
    async def getattr(self, inode, ctx=None):
        log.debug("getattr(%d)", inode)
        return self._attrs(self._node(inode))

    @_guarded
    async def setattr(self, inode, attr, fields, fh, ctx):
        log.debug("setattr(%d)", inode)
        node = self._node(inode)
        kind = node.node_kind
        if kind not in (NodeKind.FILE, NodeKind.DIR):
            raise pyfuse3.FUSEError(errno.EPERM if kind.is_live or kind is NodeKind.CONTROL_DIR
                                    else errno.EROFS)
        if fields.update_size:
            if kind is NodeKind.DIR:
                raise pyfuse3.FUSEError(errno.EISDIR)
            await self._truncate(node, attr.st_size)
            node = self._node(inode)
        if fields.update_mode:
            node.mode = attr.st_mode & 0o7777
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = now_ns()
        node.save()
        return self._attrs(node)

    async def _truncate(self, node: Node, size: int) -> None:
        if self.settings.max_upload_size and size > self.settings.max_upload_size:
            raise pyfuse3.FUSEError(errno.EFBIG)
        fd = await self._begin_write(node, truncate=size == 0)
        try:
            os.ftruncate(fd, size)
            self._write_size[node.id] = size
        finally:
            os.close(fd)
            await self._end_write(node.id)

    @_guarded
    async def opendir(self, inode, ctx):
        log.debug("opendir(%d)", inode)
        if not self._node(inode).node_kind.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_guarded
    async def readdir(self, fh, start_id, token):
        log.debug("readdir(%d, %d)", fh, start_id)
        after = start_id
        while page := tree.children(fh, after_id=after, limit=_READDIR_PAGE):
            for node in page:
                after = node.id
                if node.id in self._hidden:
                    continue
                if not pyfuse3.readdir_reply(token, os.fsencode(node.name), self._attrs(node),
                                             node.id):
                    return

    async def releasedir(self, fh):
        log.debug("releasedir(%d)", fh)

    @_guarded
    async def mkdir(self, parent_inode, name, mode, ctx):
        name = _name(name)
        log.debug("mkdir(%d, %r)", parent_inode, name)
        parent = self._changeable_dir(parent_inode)
        if tree.child(parent.id, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = tree.create(parent.id, name, NodeKind.DIR, mode & ~ctx.umask & 0o7777,
                           ctx.uid, ctx.gid)
        tree.touch_dir(parent.id)
        return self._attrs(node)

    @_guarded
    async def rmdir(self, parent_inode, name, ctx):
        name = _name(name)
        log.debug("rmdir(%d, %r)", parent_inode, name)
        node = self._child(parent_inode, name)
        kind = node.node_kind
        if not kind.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if kind is NodeKind.CONTROL_DIR:
            raise pyfuse3.FUSEError(errno.EPERM)
        if self._has_visible_children(node.id):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        if kind is NodeKind.RENDITION:
            if not node.video.complete:
                raise pyfuse3.FUSEError(errno.EBUSY)
            self._hidden.add(node.id)
        elif kind is NodeKind.VIDEO:
            if not node.video.complete:
                # Still being made: its job would add to a deleted folder. Deleting the
                # dropped file (still beside the folder) cancels the job instead.
                raise pyfuse3.FUSEError(errno.EBUSY)
            self._remove_video(node)
        else:
            node.delete_instance()
            tree.touch_dir(parent_inode)

    def _has_visible_children(self, inode: int) -> bool:
        after = 0
        while page := tree.children(inode, after_id=after, limit=_READDIR_PAGE):
            if any(child.id not in self._hidden for child in page):
                return True
            after = page[-1].id
        return False

    def _remove_video(self, folder: Node) -> None:
        inside = [n.id for n in Node.select(Node.id).where(Node.video == folder.video_id)]
        queued = library.remove_video(folder.video_id)
        self._hidden.difference_update(inside)
        for inode in inside:
            self._rendered.pop(inode, None)
        tree.touch_dir(folder.parent_id)
        log.info("removed video %s (%d store part(s) to delete)", folder.name, queued)
        self.collector.wake()

    @_guarded
    async def unlink(self, parent_inode, name, ctx):
        name = _name(name)
        log.debug("unlink(%d, %r)", parent_inode, name)
        node = self._child(parent_inode, name)
        kind = node.node_kind
        if kind.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if kind in (NodeKind.MASTER, NodeKind.PLAYLIST, NodeKind.MEDIA):
            if not node.video.complete:
                raise pyfuse3.FUSEError(errno.EBUSY)  # see rmdir
            self._hidden.add(node.id)  # see module doc: removal is per video folder
            return
        if kind.is_live:
            raise pyfuse3.FUSEError(errno.EPERM)
        self._remove_file(node)
        tree.touch_dir(parent_inode)

    def _remove_file(self, node: Node) -> None:
        jobs.cancel_queued(node.id)
        spool = node.spool
        library.remove_file(node)
        Spool.discard(spool)  # open handles keep their fd; a running job discards itself
        self.collector.wake()

    @_guarded
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        name_old, name_new = _name(name_old), _name(name_new)
        log.debug("rename(%d, %r, %d, %r)", parent_inode_old, name_old, parent_inode_new,
                  name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._changeable_dir(parent_inode_old)
        target_dir = self._changeable_dir(parent_inode_new)
        node = self._child(parent_inode_old, name_old)
        if node.node_kind is NodeKind.CONTROL_DIR or node.node_kind.is_live:
            raise pyfuse3.FUSEError(errno.EPERM)
        moving_dir = node.node_kind.is_dir
        if moving_dir and tree.is_inside(target_dir.id, node.id):
            raise pyfuse3.FUSEError(errno.EINVAL)  # into itself
        existing = tree.child(target_dir.id, name_new)
        if existing is not None and existing.id != node.id:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            self._replace(existing, moving_dir)
        with db.atomic():
            tree.move(node, target_dir.id, name_new)
            tree.touch_dir(parent_inode_old)
            tree.touch_dir(target_dir.id)

    def _replace(self, existing: Node, moving_dir: bool) -> None:
        """Remove the entry a rename overwrites, with rename(2)'s rules."""
        if existing.node_kind.is_dir:
            if not moving_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if existing.node_kind is not NodeKind.DIR or tree.has_children(existing.id):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            existing.delete_instance()
        else:
            if moving_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            self._remove_file(existing)

    @_guarded
    async def create(self, parent_inode, name, mode, flags, ctx):
        name = _name(name)
        log.debug("create(%d, %r)", parent_inode, name)
        parent = self._changeable_dir(parent_inode)
        if tree.child(parent.id, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        path, fd = self.spool.new_file()
        node = tree.create(parent.id, name, NodeKind.FILE, mode & ~ctx.umask & 0o7777,
                           ctx.uid, ctx.gid, spool=path)
        tree.touch_dir(parent.id)
        self._writers[node.id] += 1
        self._write_size[node.id] = 0
        fh = self._add_handle(SpoolHandle(node.id, fd, writable=True))
        return pyfuse3.FileInfo(fh=fh), self._attrs(node)

    @_guarded
    async def open(self, inode, flags, ctx):
        log.debug("open(%d, %#o)", inode, flags)
        node = self._node(inode)
        kind = node.node_kind
        if kind.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            if kind is not NodeKind.FILE:
                raise pyfuse3.FUSEError(errno.EPERM if kind.is_live else errno.EROFS)
            fd = await self._begin_write(node, truncate=bool(flags & os.O_TRUNC))
            return pyfuse3.FileInfo(fh=self._add_handle(SpoolHandle(node.id, fd, True)))
        if kind.is_live:
            self.store_health = await self._store_health()
            handle = BytesHandle(node.id, self._render(node))
            return pyfuse3.FileInfo(fh=self._add_handle(handle), direct_io=True)
        if kind in (NodeKind.MASTER, NodeKind.PLAYLIST):
            handle = BytesHandle(node.id, self._render(node))
            # A growing playlist must not come from the page cache (nor be cut at a size
            # the kernel remembers): direct I/O until the video is complete.
            growing = not node.video.complete
            return pyfuse3.FileInfo(fh=self._add_handle(handle), keep_cache=not growing,
                                    direct_io=growing)
        if node.spool is not None:
            fd = os.open(node.spool, os.O_RDONLY | os.O_CLOEXEC)
            return pyfuse3.FileInfo(fh=self._add_handle(SpoolHandle(node.id, fd, False)))
        parts = blobs.parts_of(node.blob_id) if node.blob_id is not None else []
        handle = BlobHandle(node.id, parts, node.size)
        # Segments never change: let the page cache serve re-reads across opens.
        return pyfuse3.FileInfo(fh=self._add_handle(handle),
                                keep_cache=kind is NodeKind.MEDIA)

    async def _store_health(self) -> dict[str, Any]:
        try:
            with trio.fail_after(2):
                return await self.store.health()
        except Exception as exc:
            return {"kind": self.store.kind, "up": False, "error": str(exc)[:200]}

    @_guarded
    async def read(self, fh, off, size):
        log.debug("read(%d, %d, %d)", fh, off, size)
        handle = self._handle(fh)
        if isinstance(handle, SpoolHandle):
            return await Spool.pread(handle.fd, size, off)
        if isinstance(handle, BytesHandle):
            return handle.data[off:off + size]
        size = max(0, min(size, handle.size - off))
        if size == 0:
            return b""
        return await self.cache.read(handle.parts, off, size)  # StoreError → EIO (_guarded)

    @_guarded
    async def write(self, fh, off, buf):
        handle = self._handle(fh)
        if not isinstance(handle, SpoolHandle) or not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        end = off + len(buf)
        limit = self.settings.max_upload_size
        if limit and end > limit:
            self._write_error[handle.inode] = errno.EFBIG
            raise pyfuse3.FUSEError(errno.EFBIG)
        try:
            written = await Spool.pwrite(handle.fd, buf, off)
        except OSError as exc:
            self._write_error[handle.inode] = exc.errno or errno.EIO
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        if handle.inode in self._write_size:
            self._write_size[handle.inode] = max(self._write_size[handle.inode],
                                                 off + written)
        return written

    async def flush(self, fh):
        log.debug("flush(%d)", fh)

    @_guarded
    async def release(self, fh):
        log.debug("release(%d)", fh)
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.close()
        if isinstance(handle, BlobHandle):
            for part in handle.parts:
                self._open_parts[part.location] -= 1
                if self._open_parts[part.location] <= 0:
                    del self._open_parts[part.location]
        elif isinstance(handle, SpoolHandle) and handle.writable:
            await self._end_write(handle.inode)

    async def fsync(self, fh, datasync):
        log.debug("fsync(%d)", fh)

    @_guarded
    async def statfs(self, ctx):
        log.debug("statfs()")
        st = os.statvfs(self.spool.root)
        out = pyfuse3.StatvfsData()
        out.f_bsize, out.f_frsize = st.f_bsize, st.f_frsize
        out.f_blocks, out.f_bfree, out.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        out.f_files, out.f_ffree, out.f_favail = st.f_files, st.f_ffree, st.f_favail
        out.f_namemax = 255
        return out

    async def forget(self, inode_list):
        # Inodes live in the catalog, not in memory: nothing to free.
        pass
