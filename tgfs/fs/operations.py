"""pyfuse3 handlers: translate kernel requests into catalog, spool and cache calls.

Each handler is thin: a debug log line, a lookup, a call into a helper or another module,
and `FUSEError(errno)` for everything the caller did wrong. `@_guarded` turns anything
else into EIO with a log line, because any non-FUSEError exception escaping a handler
would end the whole filesystem, and one bad file must never do that.

Rules of the tree (see README "Using the mount"):
- ordinary directories and files behave like on a local disk: hard links, symlinks, fifos,
  sockets and device nodes (those three as entries only: the kernel opens them, not us);
- an inode lives while it has a name or the kernel knows it: a file unlinked while open
  stays readable and writable through its handles, and its content goes at `forget` (or at
  the next start, if the daemon stopped first). Only `forget` purges an inode;
- a released file is queued for ingest; it stays visible (and readable from the spool)
  under its own name until its video folder replaces it, or it is stored as it is;
- a video folder appears while the video is still being made (EVENT playlists that grow),
  beside the dropped file, which goes away when the video is complete;
- a video folder and everything in it is read-only (EROFS). `rm -r` works: unlinking an
  entry inside a video folder only hides it from this mount session, and removing the
  emptied folder deletes the video (to the trash). Entries hidden but not followed by the
  folder's removal come back at the next mount; nothing is lost by a stray `rm`;
- a stored file that loses its last name and a removed video folder go to the trash for
  TGFS_TRASH_DAYS (tgfs.catalog.trash), from where `tgfs undelete` brings them back;
- `/.tgfs/` is the control folder: status and figures to read, a few requests to write
  (truncating cache.json or backups.json, a line into trash.json; see tgfs.trash);
- the folder TGFS_MP4_VIEW names at the root (`/MP4/`, when asked for) is the MP4 view,
  read-only: the library's folders with every complete video as one MP4 file
  (tgfs.fs.view). Its insides are not catalog rows: their inodes are VIEW_INODES + the
  node they show, and every handler sends them to the view.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from tgfs import web
from tgfs.backups import Backups, backups_snapshot
from tgfs.cache import PartCache
from tgfs.catalog import (
    ROOT_ID,
    Node,
    NodeKind,
    access,
    blobs,
    db,
    jobs,
    library,
    listing,
    now_ns,
    reserve,
    trash,
    tree,
)
from tgfs.catalog import view as catalog_view
from tgfs.catalog.readers import Readers
from tgfs.catalog.schema import changes_seen
from tgfs.collector import GarbageCollector
from tgfs.config import Settings
from tgfs.fs import attrs
from tgfs.fs.handles import (
    BlobHandle,
    BytesHandle,
    Handle,
    OpenParts,
    RequestHandle,
    SpoolHandle,
    WriteHandle,
)
from tgfs.fs.render import Names, Renderer
from tgfs.fs.view import View, ViewHandle, is_view
from tgfs.fs.writes import Writes, open_spool
from tgfs.ingest.runner import IngestRunner
from tgfs.prefetch import Prefetcher
from tgfs.spool import Spool
from tgfs.status import (
    bots_snapshot,
    library_snapshot,
    snapshot,
    to_bytes,
    to_compact_bytes,
)
from tgfs.store.base import BlobStore, PartRef, StoreError
from tgfs.store.slots import URGENT
from tgfs.trash import Action, Request
from tgfs.trash import snapshot as trash_snapshot

log = logging.getLogger(__name__)

_READDIR_PAGE = 500


def _children_page(folder_id: int, after: int) -> list[Node]:
    """A page of a folder's entries, with their names (read by a catalog reader)."""
    return tree.children(folder_id, after=after, limit=_READDIR_PAGE)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


# The request being handled, per worker task (a task's context variables are its own): who
# asks, for control files that answer each reader differently.
_REQUEST: contextvars.ContextVar[pyfuse3.RequestContext | None] = contextvars.ContextVar(
    "tgfs_request", default=None
)


def _requester() -> access.Who | None:
    """Who this request is from, if they see less than everything: not root, not the
    daemon's user (who can read the catalog anyway), not the daemon itself."""
    ctx = _REQUEST.get()
    if ctx is None or ctx.uid in (0, os.getuid()):
        return None
    gids = {ctx.gid}
    try:  # supplementary groups count too, as the kernel counts them
        with open(f"/proc/{ctx.pid}/status") as f:
            lines = f.read().splitlines()
        for line in lines:
            if line.startswith("Groups:"):
                gids.update(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass  # the process is gone: its primary group is what is known
    return access.Who(ctx.uid, frozenset(gids))


def _guarded(handler: F) -> F:
    @functools.wraps(handler)
    async def wrapper(self, *args):
        # Set for every request, None where the kernel says nobody (readdir, read): pyfuse3's
        # worker tasks handle many requests, and one must not answer as the last one's user.
        _REQUEST.set(next((a for a in args if isinstance(a, pyfuse3.RequestContext)), None))
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            if not (
                getattr(handler, "frees_space", False)
                and reserve.is_full(exc)
                and self.reserve.release()
            ):
                raise _errno_for(handler.__name__, exc) from None
        try:  # once more, with the catalog's reserve given up (see _frees_space)
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _errno_for(handler.__name__, exc) from None

    return wrapper  # type: ignore[return-value]


def _frees_space(handler: F) -> F:
    """Marks a removal: on a full disk, _guarded gives up the catalog's reserve and runs it
    once more, so that deleting is always possible (see tgfs.catalog.reserve). Such a
    handler must do nothing before its catalog transaction that a second run would repeat
    wrongly."""
    handler.frees_space = True  # type: ignore[attr-defined]
    return handler


def _errno_for(name: str, exc: Exception) -> pyfuse3.FUSEError:
    if isinstance(exc, tree.NameTaken):  # another host's, since this one looked
        log.info("%s: %r was taken meanwhile (by another host)", name, str(exc))
        return pyfuse3.FUSEError(errno.EEXIST)
    if reserve.is_full(exc):  # ENOSPC/EDQUOT as themselves, wherever they came from
        log.warning("%s: no space left for the catalog or the spool: %s", name, exc)
        quota = isinstance(exc, OSError) and exc.errno == errno.EDQUOT
        return pyfuse3.FUSEError(errno.EDQUOT if quota else errno.ENOSPC)
    if isinstance(exc, StoreError):
        log.error("%s: store error: %s", name, exc)
        return pyfuse3.FUSEError(errno.EIO)
    if isinstance(exc, OSError):
        log.warning("%s: %s", name, exc)
        return pyfuse3.FUSEError(exc.errno or errno.EIO)
    log.error("%s failed", name, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


_SEGMENTS_KEPT = 65536  # segments whose open needs no query (~200 bytes each)


@dataclasses.dataclass(frozen=True)
class _Segment:
    parts: list[PartRef]
    size: int
    rendition_id: int | None
    blob_id: int
    attrs: pyfuse3.EntryAttributes  # a segment's attributes never change either


def _entry_id(node: Node) -> int:
    """The id of the entry a directory listing found `node` as (a readdir offset)."""
    assert node.entry is not None, "listed without an entry"
    return node.entry.id


def _new_gid(parent: Node, ctx) -> int:
    """A new entry's group: the directory's if it is set-group-ID (as on BSD, and on Linux
    for such directories), else the caller's."""
    return parent.gid if parent.mode & stat.S_ISGID else ctx.gid


def _name(raw: bytes) -> str:
    """A name from the kernel: any bytes but "/" and NUL, kept exactly (see NameField)."""
    if len(raw) > tree.NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    return os.fsdecode(raw)


class Filesystem(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        cache: PartCache,
        store: BlobStore,
        runner: IngestRunner,
        collector: GarbageCollector,
        prefetch: Prefetcher | None = None,
        writes: Writes | None = None,
        names: Names | None = None,
        open_parts: OpenParts | None = None,
        backups: Backups | None = None,
    ) -> None:
        """`writes`, `names` and `open_parts` are shared with the ingest runner and the
        garbage collector (see daemon); made here when not given (in-process tests)."""
        super().__init__()
        self.settings = settings
        self.spool = spool
        self.cache = cache
        self.prefetch = prefetch or Prefetcher(cache, 0)
        self.store = store
        self.runner = runner
        self.collector = collector
        self._handles: dict[int, Handle | ViewHandle] = {}
        self._fh = itertools.count(1)
        self.reserve = reserve.Reserve(settings.data_dir)
        self.names = names or Names(Renderer())
        self.renderer = self.names.renderer
        self.writes = writes or Writes(
            spool, cache, settings.max_upload_size, runner.wake, self.names.invalidate
        )
        self.open_parts = open_parts or OpenParts()
        self.backups = backups
        self._hidden: set[int] = set()  # entries of video folders unlinked this session
        # Inode → how many times the kernel was told of it (every reply that carries its
        # entry, readdir included), minus what `forget` gave back. An orphan (no name left)
        # is purged when this reaches 0.
        self._lookups: collections.Counter[int] = collections.Counter()
        # What opening a segment needs, after its first open and until the kernel forgets
        # the inode: segments never change and inode numbers are never reused, so a warm
        # open costs no catalog query.
        self._segments: collections.OrderedDict[int, _Segment] = collections.OrderedDict()
        self.store_health: dict[str, Any] = {"kind": store.kind, "up": True}
        self.restored: list[trash.Restored] = []  # undeletes this session, for trash.json
        # library.json's listing and bytes, and what they were made from (_library_json)
        self._library_rows: tuple[object, list[listing.VideoEntry]] | None = None
        self._library_bytes: tuple[tuple, bytes] | None = None
        # Other users' status.json and library.json (_control_for), and the tree's modes
        # they are judged by, as of a catalog change count.
        self._others: dict[tuple[NodeKind, access.Who], tuple[float, object, bytes]] = {}
        self._tree: tuple[object, access.Tree] | None = None
        self.view = self._place_view(settings)
        # Catalog reads of lookup, getattr, readdir and open, off this thread when the
        # catalog is across a network (tgfs.catalog.readers).
        self.readers = Readers(settings.catalog_readers if settings.catalog_url else 0)

    def close(self) -> None:
        """At unmount: the reader threads end, and their connections."""
        self.readers.close()

    def _place_view(self, settings: Settings) -> View | None:
        """The MP4 view's folder at the root (see tgfs.catalog.view), if it is wanted and
        its name is free."""
        name = settings.mp4_view
        root = catalog_view.place(name)
        if root is None:
            if name:
                log.warning(
                    "MP4 view: not shown, since %r at the mount's root is yours "
                    "(rename it, or set TGFS_MP4_VIEW to another name)",
                    name,
                )
            return None
        return View(root, self.cache, self.open_parts, settings.prefetch_segments)

    def _in_view(self, inode: int) -> bool:
        return self.view is not None and self.view.owns(inode)

    # ---- helpers -------------------------------------------------------------------------

    def cache_stats(self) -> dict[str, Any]:
        return {**self.cache.stats(), "prefetch": self.prefetch.stats()}

    def invalidate(self, parent_id: int, names: list[str]) -> None:
        """Make the kernel (and our playlist renders) forget names after the catalog
        changed under them."""
        self.names.invalidate(parent_id, names)

    def _node(self, inode: int) -> Node:
        if is_view(inode):  # what reaches here of the view would change it
            raise pyfuse3.FUSEError(errno.EROFS)
        node = tree.get(inode)
        if node is None or node.id in self._hidden:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _child(self, parent_id: int, name: str) -> Node:
        if self._in_view(parent_id):  # (lookups of the view do not come here)
            raise pyfuse3.FUSEError(errno.EROFS)
        node = tree.child(parent_id, name)
        if node is None or node.id in self._hidden:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def _read_node(self, inode: int) -> Node:
        """`_node`, read by a catalog reader (see tgfs.catalog.readers)."""
        if is_view(inode):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = await self.readers.run(tree.get, inode)
        if node is None or node.id in self._hidden:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def _read_child(self, parent_id: int, name: str) -> Node:
        """`_child`, read by a catalog reader."""
        if self._in_view(parent_id):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = await self.readers.run(tree.child, parent_id, name)
        if node is None or node.id in self._hidden:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _changeable_dir(self, inode: int) -> Node:
        """A directory the user may add to, remove from or rename in."""
        node = self._node(inode)
        kind = node.node_kind
        if kind is NodeKind.DIR:
            if node.links == 0 and node.id != ROOT_ID:
                raise pyfuse3.FUSEError(errno.ENOENT)  # removed (someone's cwd)
            return node
        if kind in (NodeKind.VIDEO, NodeKind.RENDITION, NodeKind.VIEW):
            raise pyfuse3.FUSEError(errno.EROFS)
        if kind is NodeKind.CONTROL_DIR:
            raise pyfuse3.FUSEError(errno.EPERM)
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    def status(self, view: access.View | None = None) -> dict[str, Any]:
        """What status.json says (the store's health as last asked: `refresh_health`), to
        a reader with `view` (None: everything)."""
        encoder = {"name": self.runner.encoder, "note": self.runner.encoder_note}
        return snapshot(
            self.runner.progress,
            self.cache_stats(),
            self.store_health,
            self.collector.pending(),
            encoder,
            self._trash_held(),
            view.sees_path if view is not None else None,
        )

    async def refresh_health(self) -> None:
        self.store_health = await self._store_health()

    def _control(self, kind: NodeKind) -> bytes:
        """A control file's bytes: the daemon's state now, as the reader of this request
        may see it (see tgfs.catalog.access)."""
        who = _requester()
        if who is not None and kind in (NodeKind.STATUS, NodeKind.LIBRARY):
            return self._control_for(kind, who)
        if kind is NodeKind.STATUS:
            return to_bytes(self.status())
        if kind is NodeKind.CACHE:
            return to_bytes(self.cache_stats())
        if kind is NodeKind.BACKUPS:
            return to_bytes(backups_snapshot(self.backups))
        if kind is NodeKind.TRASH:
            return to_bytes(trash_snapshot(self.settings.trash_days, self.restored))
        if kind is NodeKind.LIBRARY:
            return self._library_json()
        return to_bytes({"bots": bots_snapshot(self.store_health)})

    def _control_for(self, kind: NodeKind, who: access.Who) -> bytes:
        """status.json or library.json for another user: only what is in folders they could
        list. Kept for MUTABLE_TIMEOUT per user while the catalog does not change, so that
        the size a `stat` reports is the size an `open` right after reads (nginx sends the
        one and reads the other)."""
        now, changes = time.monotonic(), changes_seen()
        kept = self._others.get((kind, who))
        if kept is not None and kept[1] == changes and now - kept[0] < attrs.MUTABLE_TIMEOUT:
            return kept[2]  # (never after a change to the catalog: a page lists it again)
        if self._tree is None or self._tree[0] != changes:
            self._tree = (changes, access.Tree())
        view = access.View(self._tree[1], who)
        if kind is NodeKind.STATUS:
            data = to_bytes(self.status(view))
        else:
            self._library_json()  # (the listing, fresh)
            assert self._library_rows is not None
            videos = [v for v in self._library_rows[1] if view.listable(v.folder_id)]
            data = to_compact_bytes(library_snapshot(videos, self.runner.progress))
        self._others[(kind, who)] = (now, changes, data)
        return data

    def _library_json(self) -> bytes:
        """library.json, listed again only when the catalog changed (its connection's
        change counter moved) and rendered again only when that or a processing video's
        percent did: every stat of it renders it (its size), and a page polls it."""
        changes = changes_seen()
        if self._library_rows is None or self._library_rows[0] != changes:
            self._library_rows = (changes, listing.videos())
        videos = self._library_rows[1]
        key = (
            changes,
            tuple(
                self.runner.progress[v.job_id].snapshot()["percent"]
                for v in videos
                if v.job_id is not None and v.job_id in self.runner.progress
            ),
        )
        if self._library_bytes is None or self._library_bytes[0] != key:
            listed = library_snapshot(videos, self.runner.progress)
            self._library_bytes = (key, to_compact_bytes(listed))
        return self._library_bytes[1]

    def _render(self, node: Node) -> bytes:
        return self.renderer.render(node, self._control)

    def _size(self, node: Node) -> int:
        kind = node.node_kind
        if kind is NodeKind.FILE and (session := self.writes.get(node.id)) is not None:
            return session.current_size
        if kind in (NodeKind.MASTER, NodeKind.PLAYLIST) or kind.is_live:
            return len(self._render(node))
        return node.size

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        session = self.writes.get(node.id)
        if session is not None and session.mtime_ns is not None:
            node.mtime_ns = session.mtime_ns  # a local copy: written to the catalog at close
        return attrs.entry(node, self._size(node))

    def _known(self, node: Node) -> pyfuse3.EntryAttributes:
        """`node`'s attributes for a reply that tells the kernel of it (one lookup more)."""
        out = self._attrs(node)
        self._lookups[node.id] += 1
        return out

    def _purge(self, node: Node) -> None:
        """An inode with no name that the kernel has forgotten goes for good: its row, its
        content (blob to the garbage list, spool file deleted)."""
        self._segments.pop(node.id, None)
        if self.writes.get(node.id) is not None:
            # Cannot happen (the kernel forgets no inode it has open); the next start
            # purges it if it does.
            return
        spool = library.purge(node)
        Spool.discard(spool)
        self.collector.wake()
        log.debug("purged inode %d", node.id)

    # ---- the trash (see tgfs.trash) -----------------------------------------------------

    def _request(self, line: str, uid: int, gid: int) -> None:
        try:
            request = Request.parse(line)
        except ValueError as exc:
            log.warning("trash.json: %s", exc)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        if request.action is Action.EMPTY:
            self.let_go_of_trash(None)
            return
        assert request.item is not None
        try:
            done = trash.restore(request.item, uid, gid)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        # No name to invalidate: the kernel dropped its dentries at unlink/rmdir, and the
        # names that come back (or the folders made again) are looked up afresh.
        self.restored.append(done)
        log.info("brought back from the trash: %s", done.path)

    def _trash_held(self) -> dict[str, Any]:
        items, size = trash.held()
        return {"items": items, "bytes": size, "days": self.settings.trash_days}

    def let_go_of_trash(self, older_than_ns: int | None) -> int:
        """Delete for good what the trash holds from before `older_than_ns` (None: all)."""
        gone, spools = trash.let_go(older_than_ns, lambda inode: self._lookups[inode] > 0)
        for spool in spools:
            Spool.discard(spool)
        if gone:
            log.info("%d item(s) deleted from the trash for good", len(gone))
            self.collector.wake()
        return len(gone)

    def _add_handle(self, handle: Handle | ViewHandle) -> int:
        fh = next(self._fh)
        self._handles[fh] = handle
        if isinstance(handle, BlobHandle):
            self.open_parts.opened(handle.parts)
        return fh

    def _handle(self, fh: int) -> Handle | ViewHandle:
        try:
            return self._handles[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    # ---- handlers ------------------------------------------------------------------------

    @_guarded
    async def lookup(self, parent_inode, name, ctx=None):
        name = _name(name)
        log.debug("lookup(%d, %r)", parent_inode, name)
        if self.view is not None and (
            is_view(parent_inode) or (parent_inode == self.view.root_id and name not in (".", ".."))
        ):
            return await self.view.lookup(parent_inode, name)
        if name == ".":
            return self._known(await self._read_node(parent_inode))
        if name == "..":
            parent = await self._read_node(parent_inode)
            if parent.links == 0:
                raise pyfuse3.FUSEError(errno.ENOENT)  # a removed directory
            return self._known(await self._read_node(parent.parent_id))
        if parent_inode in self._hidden:  # (_read_child reads no parent: it may be one)
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._known(await self._read_child(parent_inode, name))

    @_guarded
    async def getattr(self, inode, ctx=None):
        log.debug("getattr(%d)", inode)
        if self.view is not None and is_view(inode):
            return await self.view.getattr(inode)
        segment = self._segments.get(inode)
        if segment is not None and inode not in self._hidden:
            return segment.attrs  # no catalog query (see _segments)
        return self._attrs(await self._read_node(inode))

    @_guarded
    async def setattr(self, inode, attr, fields, fh, ctx):
        log.debug("setattr(%d)", inode)
        node = self._node(inode)
        kind = node.node_kind
        if kind is NodeKind.CACHE and fields.update_size and attr.st_size == 0:
            freed = self.cache.clear()
            log.info("cache cleared: %d bytes freed", freed)
            return self._attrs(node)
        if kind is NodeKind.BACKUPS and fields.update_size and attr.st_size == 0:
            if self.backups is None or await self.backups.backup_now("asked for") is None:
                raise pyfuse3.FUSEError(errno.EIO)  # why: in the log and backups.json
            return self._attrs(node)
        if kind is NodeKind.TRASH and fields.update_size and attr.st_size == 0:
            return self._attrs(node)  # `>` truncates before the request is written
        if not kind.is_user_entry:
            raise pyfuse3.FUSEError(
                errno.EPERM if kind.is_live or kind is NodeKind.CONTROL_DIR else errno.EROFS
            )
        if fields.update_size:
            if kind is not NodeKind.FILE:
                raise pyfuse3.FUSEError(errno.EISDIR if kind is NodeKind.DIR else errno.EINVAL)
            await self._truncate(node, attr.st_size, fh)
            node = self._node(inode)
        if fields.update_mode and kind is not NodeKind.SYMLINK:  # a link's mode is 0777
            node.mode = attr.st_mode & 0o7777
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
            if (session := self.writes.get(inode)) is not None:
                self.writes.set_mtime(session, attr.st_mtime_ns)
        node.ctime_ns = now_ns()
        with db.atomic():
            node.save()
            jobs.settle(node.id)
        return self._attrs(node)

    async def _truncate(self, node: Node, size: int, fh: int | None) -> None:
        """truncate(2) through an open handle, or on its own: then a session of one step,
        accepted at once as if closed."""
        handle = self._handles.get(fh) if fh is not None else None
        if isinstance(handle, WriteHandle):
            await self.writes.truncate(handle.session, size)
            return
        session = await self.writes.open(node, truncate=False)
        try:
            await self.writes.truncate(session, size)
            await self.writes.flush(session)
        finally:
            await self.writes.release(session)

    @_guarded
    async def opendir(self, inode, ctx):
        log.debug("opendir(%d)", inode)
        if self.view is not None and is_view(inode):
            if not stat.S_ISDIR((await self.view.getattr(inode)).st_mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode
        if not (await self._read_node(inode)).node_kind.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_guarded
    async def readdir(self, fh, start_id, token):
        log.debug("readdir(%d, %d)", fh, start_id)
        if self.view is not None and self.view.owns(fh):
            async with contextlib.aclosing(self.view.entries(fh, start_id)) as listed:
                async for name, attributes, next_id in listed:
                    if not pyfuse3.readdir_reply(token, os.fsencode(name), attributes, next_id):
                        return
            return
        after = start_id  # an entry id (see tree.children)
        while page := await self.readers.run(_children_page, fh, after):
            for node in page:
                after = _entry_id(node)
                if node.id in self._hidden:
                    continue
                if not pyfuse3.readdir_reply(
                    token, os.fsencode(node.name), self._attrs(node), after
                ):
                    return
                self._lookups[node.id] += 1  # readdirplus: the kernel now knows it

    async def releasedir(self, fh):
        log.debug("releasedir(%d)", fh)

    @_guarded
    async def mkdir(self, parent_inode, name, mode, ctx):
        name = _name(name)
        log.debug("mkdir(%d, %r)", parent_inode, name)
        mode = mode & ~ctx.umask & 0o7777
        if self._node(parent_inode).mode & stat.S_ISGID:
            mode |= stat.S_ISGID  # passed down, as Linux does (see _new_gid)
        return self._known(self._new_entry(parent_inode, name, NodeKind.DIR, mode, ctx))

    @_guarded
    async def symlink(self, parent_inode, name, target, ctx):
        name = _name(name)
        log.debug("symlink(%d, %r)", parent_inode, name)
        return self._known(
            self._new_entry(
                parent_inode,
                name,
                NodeKind.SYMLINK,
                0o777,
                ctx,
                target=os.fsdecode(target),
                size=len(target),
            )
        )

    @_guarded
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        name = _name(name)
        log.debug("mknod(%d, %r, %#o)", parent_inode, name, mode)
        kind = attrs.kind_of(mode)
        if kind is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        # A regular file made by mknod(2) is an empty file with nothing to ingest.
        return self._known(
            self._new_entry(parent_inode, name, kind, mode & ~ctx.umask & 0o7777, ctx, rdev=rdev)
        )

    def _new_entry(
        self, parent_inode: int, name: str, kind: NodeKind, mode: int, ctx, **fields: Any
    ) -> Node:
        """A new node in an ordinary directory, which gets new times."""
        parent = self._changeable_dir(parent_inode)
        if tree.child(parent.id, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        with db.atomic():
            node = tree.create(
                parent.id, name, kind, mode, ctx.uid, _new_gid(parent, ctx), **fields
            )
            tree.touch_dir(parent.id)
        return node

    @_guarded
    async def link(self, inode, new_parent_inode, new_name, ctx):
        new_name = _name(new_name)
        log.debug("link(%d, %d, %r)", inode, new_parent_inode, new_name)
        node = self._node(inode)
        if node.node_kind.is_dir:
            raise pyfuse3.FUSEError(errno.EPERM)  # POSIX allows refusing; Linux always does
        if not node.node_kind.is_user_entry:
            raise pyfuse3.FUSEError(errno.EROFS if node.node_kind.in_video else errno.EPERM)
        if node.links == 0:
            raise pyfuse3.FUSEError(errno.ENOENT)  # linkat(AT_EMPTY_PATH) of an unlinked file
        parent = self._changeable_dir(new_parent_inode)
        if tree.child(parent.id, new_name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        with db.atomic():
            tree.link(node, parent.id, new_name)
            tree.touch_dir(parent.id)
            jobs.settle(node.id)
        return self._known(node)

    @_guarded
    async def readlink(self, inode, ctx):
        log.debug("readlink(%d)", inode)
        node = self._node(inode)
        if node.node_kind is not NodeKind.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @_guarded
    @_frees_space
    async def rmdir(self, parent_inode, name, ctx):
        name = _name(name)
        log.debug("rmdir(%d, %r)", parent_inode, name)
        node = self._child(parent_inode, name)
        kind = node.node_kind
        if not kind.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if kind in (NodeKind.CONTROL_DIR, NodeKind.VIEW):
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
            if self.settings.trash_days > 0:
                self._trash_video(node)
            else:
                self._remove_video(node)
        else:
            self._changeable_dir(parent_inode)
            with db.atomic():
                orphan = self._remove_name(node)
                tree.touch_dir(parent_inode)
            if orphan is not None:
                self._purge(orphan)

    def _has_visible_children(self, inode: int) -> bool:
        after = 0
        while page := tree.children(inode, after=after, limit=_READDIR_PAGE):
            if any(child.id not in self._hidden for child in page):
                return True
            after = _entry_id(page[-1])
        return False

    def _remove_video(self, folder: Node) -> None:
        inside = [n.id for n in Node.select(Node.id).where(Node.video == folder.video_id)]
        parent_id = folder.parent_id
        queued = library.remove_video(folder.video_id)
        self._hidden.difference_update(inside)
        self.renderer.forget_nodes(inside)
        tree.touch_dir(parent_id)
        log.info("removed video %s (%d store part(s) to delete)", folder.name, queued)
        self.collector.wake()

    def _trash_video(self, folder: Node) -> None:
        inside = [n.id for n in Node.select(Node.id).where(Node.video == folder.video_id)]
        parent_id, name = folder.parent_id, folder.name
        with db.atomic():
            trash.put(folder)
            tree.unlink(folder)
            tree.touch_dir(parent_id)
        self._hidden.difference_update(inside)  # whole again if it comes back
        log.info("video %s moved to the trash", name)

    @_guarded
    @_frees_space
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
        if not kind.is_user_entry:
            raise pyfuse3.FUSEError(errno.EPERM)
        self._changeable_dir(parent_inode)
        with db.atomic():
            orphan = self._remove_name(node)
            tree.touch_dir(parent_inode)
        if orphan is not None:
            self._purge(orphan)

    def _remove_name(self, node: Node) -> Node | None:
        """Remove the name `node` was found as (inside the caller's transaction). Its last
        name gone, its queued versions are dropped (a running job notices by itself), and
        the inode lives on until the kernel forgets it: open handles keep reading and
        writing, and `forget` purges it. Returns the node if the kernel never knew of it:
        the caller purges it after the commit. A stored file losing its last name goes to
        the trash (its purge then keeps it)."""
        if node.links == 1 and self.settings.trash_days > 0 and trash.wanted(node):
            trash.put(node)
        if tree.unlink(node):
            jobs.cancel(node.id)
            if self._lookups[node.id] <= 0:
                return node
        return None

    @_guarded
    @_frees_space
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        name_old, name_new = _name(name_old), _name(name_new)
        log.debug("rename(%d, %r, %d, %r)", parent_inode_old, name_old, parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._changeable_dir(parent_inode_old)
        target_dir = self._changeable_dir(parent_inode_new)
        node = self._child(parent_inode_old, name_old)
        if not node.node_kind.is_user_entry and node.node_kind is not NodeKind.VIDEO:
            raise pyfuse3.FUSEError(errno.EPERM)
        moving_dir = node.node_kind.is_dir
        if moving_dir and tree.is_inside(target_dir.id, node.id):
            raise pyfuse3.FUSEError(errno.EINVAL)  # into itself
        existing = tree.child(target_dir.id, name_new)
        if existing is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if existing is not None and existing.id == node.id:
            return  # two names of one file: rename(2) does nothing and succeeds
        if existing is not None:
            self._check_replace(existing, moving_dir)
        # One transaction: a crash leaves the old name or the new one, never neither, and
        # the replaced file stays whole until the commit.
        with db.atomic():
            orphan = self._remove_name(existing) if existing is not None else None
            tree.move(node, target_dir.id, name_new)
            tree.touch_dir(parent_inode_old)
            tree.touch_dir(target_dir.id)
            jobs.settle(node.id)
        if orphan is not None:
            self._purge(orphan)

    def _check_replace(self, existing: Node, moving_dir: bool) -> None:
        """rename(2)'s rules for the entry a rename overwrites."""
        if existing.node_kind.is_dir:
            if not moving_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if existing.node_kind is not NodeKind.DIR or self._has_visible_children(existing.id):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        elif moving_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        elif not existing.node_kind.is_user_entry:
            raise pyfuse3.FUSEError(errno.EPERM)

    @_guarded
    async def create(self, parent_inode, name, mode, flags, ctx):
        name = _name(name)
        log.debug("create(%d, %r, %#o)", parent_inode, name, flags)
        parent = self._changeable_dir(parent_inode)
        # The kernel creates only a name it found free. One taken since then is another
        # host's (a catalog several hosts share): both files are kept, this one as
        # "name (2).ext", unless O_EXCL asked for that very name (a lock file).
        node, session = self.writes.create(
            parent.id,
            name,
            mode & ~ctx.umask & 0o7777,
            ctx.uid,
            _new_gid(parent, ctx),
            or_free_name=not flags & os.O_EXCL,
        )
        if node.name != name:
            log.info("create: %r was taken meanwhile (by another host): made %r", name, node.name)
        fh = self._add_handle(WriteHandle(node.id, session))
        return pyfuse3.FileInfo(fh=fh), self._known(node)

    @_guarded
    async def open(self, inode, flags, ctx):
        log.debug("open(%d, %#o)", inode, flags)
        if self.view is not None and is_view(inode):
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EROFS)
            opened = await self.view.open(inode)
            # A view file never changes: the page cache may keep it across opens.
            return pyfuse3.FileInfo(fh=self._add_handle(opened), keep_cache=True)
        segment = self._segments.get(inode)
        if (
            segment is not None
            and inode not in self._hidden
            and flags & os.O_ACCMODE == os.O_RDONLY
        ):
            return self._open_segment(segment, inode, ctx.pid)  # no catalog query
        node = await self._read_node(inode)
        kind = node.node_kind
        if kind.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            if kind is NodeKind.TRASH:
                handle = RequestHandle(node.id, ctx.uid, ctx.gid)
                return pyfuse3.FileInfo(fh=self._add_handle(handle), direct_io=True)
            if kind is not NodeKind.FILE:
                raise pyfuse3.FUSEError(errno.EPERM if kind.is_live else errno.EROFS)
            session = await self.writes.open(node, truncate=bool(flags & os.O_TRUNC))
            return pyfuse3.FileInfo(fh=self._add_handle(WriteHandle(node.id, session)))
        if kind.is_live:
            await self.refresh_health()
            handle = BytesHandle(node.id, self._render(node))
            return pyfuse3.FileInfo(fh=self._add_handle(handle), direct_io=True)
        if kind is NodeKind.WEB:  # the library page: files shipped with tgfs (tgfs.web)
            shipped = web.files().get(node.target or "")
            if shipped is None:
                raise pyfuse3.FUSEError(errno.ENOENT)  # gone since start-up (an upgrade)
            data = await trio.to_thread.run_sync(shipped.read_bytes)
            return pyfuse3.FileInfo(fh=self._add_handle(BytesHandle(node.id, data)))
        if kind in (NodeKind.MASTER, NodeKind.PLAYLIST):
            handle = BytesHandle(node.id, self._render(node))
            self.prefetch.playlist_opened(
                [node.rendition_id]
                if kind is NodeKind.PLAYLIST
                else library.first_renditions(node.video_id)
            )
            # A growing playlist must not come from the page cache (nor be cut at a size
            # the kernel remembers): direct I/O until the video is complete.
            growing = not node.video.complete
            return pyfuse3.FileInfo(
                fh=self._add_handle(handle), keep_cache=not growing, direct_io=growing
            )
        reader = self._reader(node)
        if kind is NodeKind.MEDIA and isinstance(reader, BlobHandle):
            # A segment's folder is its rendition's (media nodes do not record it).
            folder = tree.get(node.parent_id)
            rendition_id = folder.rendition_id if folder is not None else None
            self._segments[inode] = _Segment(
                reader.parts, reader.size, rendition_id, node.blob_id, self._attrs(node)
            )
            if len(self._segments) > _SEGMENTS_KEPT:
                self._segments.popitem(last=False)
            return self._open_segment(self._segments[inode], inode, ctx.pid)
        return pyfuse3.FileInfo(fh=self._add_handle(reader))

    def _open_segment(self, segment: _Segment, inode: int, pid: int) -> pyfuse3.FileInfo:
        if segment.rendition_id is not None:
            self.prefetch.segment_opened(segment.rendition_id, segment.blob_id, pid)
        handle = BlobHandle(inode, segment.parts, segment.size, whole=True, priority=URGENT)
        # Segments never change: let the page cache serve re-reads across opens.
        return pyfuse3.FileInfo(fh=self._add_handle(handle), keep_cache=True)

    def _reader(self, node: Node) -> Handle:
        """A read handle on the file's current content (see tgfs.fs.writes)."""
        session = self.writes.get(node.id)
        path = session.path if session is not None and session.path else node.spool
        if path is not None:
            return SpoolHandle(node.id, open_spool(path))
        parts = blobs.parts_of(node.blob_id) if node.blob_id is not None else []
        return BlobHandle(node.id, parts, node.size)

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
        if isinstance(handle, WriteHandle):  # O_RDWR: the new content, else the current
            data = await self.writes.read(handle.session, off, size)
            if data is not None:
                return data
            reader = self._reader(self._node(handle.inode))
            try:
                return await self._read(reader, off, size)
            finally:
                reader.close()
        return await self._read(handle, off, size)

    async def _read(self, handle: Handle | ViewHandle, off: int, size: int) -> bytes:
        if isinstance(handle, ViewHandle):
            assert self.view is not None
            return await self.view.read(handle, off, size)
        if isinstance(handle, SpoolHandle):
            return await Spool.pread(handle.fd, size, off)
        if isinstance(handle, BytesHandle):
            return handle.data[off : off + size]
        if isinstance(handle, RequestHandle):
            return b""  # opened for requests (O_RDWR): what it lists is read on its own
        assert isinstance(handle, BlobHandle)
        size = max(0, min(size, handle.size - off))
        if size == 0:
            return b""
        # StoreError → EIO (_guarded)
        return await self.cache.read(
            handle.parts, off, size, handle.ahead(off, size), handle.priority, handle.seen
        )

    @_guarded
    async def write(self, fh, off, buf):
        handle = self._handle(fh)
        if isinstance(handle, RequestHandle):
            return handle.add(buf)
        if not isinstance(handle, WriteHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self.writes.write(handle.session, off, buf)

    @_guarded
    async def flush(self, fh):
        # Every close(2) waits for this: a file's new content is accepted here.
        log.debug("flush(%d)", fh)
        handle = self._handles.get(fh)
        if isinstance(handle, WriteHandle):
            await self.writes.flush(handle.session)
        elif isinstance(handle, RequestHandle):
            for line in handle.take():
                self._request(line, handle.uid, handle.gid)

    @_guarded
    async def fsync(self, fh, datasync):
        log.debug("fsync(%d)", fh)
        handle = self._handles.get(fh)
        if isinstance(handle, WriteHandle):
            await self.writes.flush(handle.session)

    @_guarded
    async def release(self, fh):
        log.debug("release(%d)", fh)
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.close()
        if isinstance(handle, BlobHandle):
            self.open_parts.closed(handle.parts)
            self.collector.released()
        elif isinstance(handle, ViewHandle) and self.view is not None:
            self.view.release(handle)
            self.collector.released()
        elif isinstance(handle, WriteHandle):
            await self.writes.release(handle.session)

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
        # Must not raise (pyfuse3). Inodes live in the catalog; what a segment's open needs
        # is kept in memory until the kernel forgets the inode, and an inode without a name
        # is purged once the kernel has forgotten it.
        for inode, nlookup in inode_list:
            if is_view(inode):
                continue  # not counted: nothing of the view is ever purged
            self._segments.pop(inode, None)
            self._lookups[inode] -= nlookup
            if self._lookups[inode] > 0:
                continue
            del self._lookups[inode]
            try:
                node = tree.get(inode)
                if node is not None and node.links <= 0 and node.id != ROOT_ID:
                    self._purge(node)
            except Exception:
                log.exception("forget(%d): purge failed; the next start purges it", inode)
