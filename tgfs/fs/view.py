"""The MP4 view in the mount (tgfs.catalog.view): its folders, its files' attributes, and
reading a video's MP4 file from the stored segments through the cache.

Inodes: the view's own folder is a catalog row; everything inside it is numbered from the
node it shows, VIEW_INODES + the node's id: a library folder's mirror, a video folder's
MP4 file, or a subtitle rendition folder's WebVTT file. Node ids are never reused and stay
far below VIEW_INODES, so these numbers are stable across restarts and never name two
things, and `forget` has nothing to purge.

Names: a folder keeps its name; a complete video folder `Film` is the file `Film.mp4`
(`Film.m4a` for an audio-only one) and a subtitle file for each subtitle rendition
(`Film.eng.vtt`, see `sidecar_names`). A video still being made is not shown, and nothing
else is: no ordinary files, playlists or segments, so a media server's scanner sees only
films. Should a folder named `Film.mp4` stand beside the video `Film`, the folder is
shown and the video is not (lookup and readdir agree).

Kept current without being told: every entry is given to the kernel with an entry timeout
of 0, so each path lookup asks again, and a rename, move or delete in the library shows in
the view at once. A file's size and bytes never change once shown (a complete video's
renditions never change; subtitles added later are not in the file).

Reading: a file is its header (made from the catalog alone, see tgfs.media.fmp4) and then
stored segments, read through the read cache as segments are, with a handful of bytes
patched in each. The patches' places come from the segment's box headers and `moof`s,
read through the cache too (its first chunk, mostly, which the read wants anyway) and
kept. A read fetches the rest of its segment at once, as a segment file's first read
does; sequential reads also fetch the next segments of every track ahead, as HLS
prefetch does (a window from 2 segments up to TGFS_PREFETCH_SEGMENTS), so a player
streams; a seek fetches what it reads, then the window starts again.

Failure modes: a segment that is not fragmented MP4 as tgfs makes it (FormatError) or a
store that fails gives EIO for that read, with a log line naming the video; a listing
leaves out a video it cannot show (logged) rather than fail the folder; the mount and the
other files go on.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import stat
from collections.abc import AsyncIterator

import pyfuse3

from tgfs.cache import PartCache
from tgfs.catalog import ROOT_ID, Node, NodeKind, blobs, tree, view
from tgfs.fs.attrs import MUTABLE_TIMEOUT
from tgfs.fs.handles import BytesHandle, OpenParts
from tgfs.media import fmp4, subtitles
from tgfs.prefetch import FIRST_WINDOW
from tgfs.store.base import PartRef, StoreError
from tgfs.store.slots import URGENT, Priority

log = logging.getLogger(__name__)

# Inode numbers from here on are the view's (see the module docstring). SQLite's ids are
# 63-bit, but an AUTOINCREMENT counter reaching 2**60 would take a billion new nodes a
# second for 36 years.
VIEW_INODES = 1 << 60
VIDEO_SUFFIX = ".mp4"
AUDIO_SUFFIX = ".m4a"  # an audio-only "video" (TGFS_AUDIO_HLS): what music servers scan
SUBTITLES_SUFFIX = ".vtt"
# A library entry's place in a view listing is entry id * _SLOTS + its item (one per file
# a video shows), so a listing resumes at a stable offset.
_SLOTS = 64
_PAGE = 500
_HEAD = 64 * 1024  # bytes of a segment read at a time to find its boxes (see _fragments)
_SIZES_KEPT = 65536  # files whose size is kept (a stat needs no query): ints
_FILES_KEPT = 16  # files whose layout and parts are kept: each open of nginx's needs one
_SCANS_KEPT = 4096  # segments whose box layout is kept (a few dozen bytes each)
_SIDECARS_KEPT = 16  # subtitle files kept whole (tens of KiB each)


def is_view(inode: int) -> bool:
    return inode >= VIEW_INODES


@dataclasses.dataclass(frozen=True)
class ViewFile:
    """A video's file as reads need it: its layout and every segment's parts."""

    folder_id: int
    layout: fmp4.Layout
    parts: tuple[tuple[list[PartRef], ...], ...]  # [track][seq]
    audio_only: bool  # made of an audio-only "video" rendition: `.m4a`

    def all_parts(self) -> list[PartRef]:
        return [p for track in self.parts for segment in track for p in segment]


@dataclasses.dataclass
class ViewHandle:
    """A view file open for reading, and how far ahead of its reader to fetch."""

    inode: int
    file: ViewFile
    next_offset: int = 0  # where a sequential read would start
    piece: int = -1  # the last piece read
    window: int = 0  # segments of each track fetched ahead of it
    seen: set[int] = dataclasses.field(default_factory=set)  # part ids read (for eviction)

    def ahead(self, offset: int, length: int, last_piece: int, most: int) -> int:
        """Pieces to fetch after `last_piece`, the last one a read of [offset,
        offset+length) touched: a window of segments per track, as HLS prefetch keeps
        (tgfs.prefetch), from FIRST_WINDOW, doubling each time the reader moves on to the
        next piece, up to `most`; none after a seek, until reads are sequential again."""
        sequential = offset == self.next_offset
        self.next_offset = offset + length
        if not sequential or most <= 0:
            self.window = 0
        elif last_piece != self.piece or self.window == 0:
            self.window = min(max(self.window * 2, FIRST_WINDOW), most)
        self.piece = last_piece
        return self.window * len(self.file.parts)

    def close(self) -> None:
        pass


def _attrs(inode: int, mode: int, node: Node, size: int) -> pyfuse3.EntryAttributes:
    """Attributes of a view entry: its owner and times are those of the node it shows."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = inode
    attrs.generation = 0
    attrs.st_mode = mode
    attrs.st_nlink = 1
    attrs.st_uid, attrs.st_gid = node.uid, node.gid
    attrs.st_size = size
    attrs.st_blksize = 128 * 1024
    attrs.st_blocks = (size + 511) // 512
    attrs.st_atime_ns, attrs.st_mtime_ns, attrs.st_ctime_ns = (
        node.atime_ns,
        node.mtime_ns,
        node.ctime_ns,
    )
    attrs.entry_timeout = 0  # see the module docstring: every lookup asks again
    attrs.attr_timeout = MUTABLE_TIMEOUT
    return attrs


def file_name(folder: Node, audio_only: bool) -> str:
    return folder.name + (AUDIO_SUFFIX if audio_only else VIDEO_SUFFIX)


def sidecar_names(stem: str, subs: list[view.Subtitles]) -> list[str]:
    """The names of a video's subtitle files, as media servers match them to `stem.mp4`:
    `Film.eng.vtt` (the language as tagged), `Film.eng.2.vtt` for a second one in that
    language, `Film.vtt` for one without a language."""
    seen: collections.Counter[str] = collections.Counter()
    names = []
    for sub in subs:
        tag = (sub.language or "").replace("/", "_").replace("\0", "_")
        seen[tag] += 1
        words = [stem, *([tag] if tag else []), *([str(seen[tag])] if seen[tag] > 1 else [])]
        names.append(".".join(words) + SUBTITLES_SUFFIX)
    return names


def _stems(name: str) -> list[str]:
    """The video folder names a view file's name may come from: what is left before its
    suffix, and for a subtitle file before each dot (`A.b.eng.vtt`: `A.b.eng`, `A.b`, `A`)."""
    for suffix in (VIDEO_SUFFIX, AUDIO_SUFFIX):
        if name.endswith(suffix) and len(name) > len(suffix):
            return [name[: -len(suffix)]]
    if not name.endswith(SUBTITLES_SUFFIX):
        return []
    rest = name[: -len(SUBTITLES_SUFFIX)]
    return [rest[:at] for at in range(len(rest), 0, -1) if at == len(rest) or rest[at] == "."]


class View:
    """The view's folders and files, below its folder `root_id` (a VIEW node)."""

    def __init__(
        self, root_id: int, cache: PartCache, open_parts: OpenParts, prefetch_segments: int
    ) -> None:
        """`prefetch_segments`: TGFS_PREFETCH_SEGMENTS, the most segments of each track
        fetched ahead of a reader."""
        self.root_id = root_id
        self.cache = cache
        self.open_parts = open_parts
        self.prefetch_segments = prefetch_segments
        self._sizes: collections.OrderedDict[int, tuple[int, bool]] = collections.OrderedDict()
        self._files: collections.OrderedDict[int, ViewFile] = collections.OrderedDict()
        self._scans: collections.OrderedDict[int, fmp4.Fragments] = collections.OrderedDict()
        self._sidecars: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def owns(self, inode: int) -> bool:
        """Whether `inode` is the view's folder or inside it."""
        return inode == self.root_id or is_view(inode)

    def _shown(self, inode: int) -> int:
        """The id of the node a view inode shows (the view's folder shows the root)."""
        return ROOT_ID if inode == self.root_id else inode - VIEW_INODES

    def _inode(self, node: Node) -> int:
        return self.root_id if node.id == ROOT_ID else VIEW_INODES + node.id

    # ---- attributes ----------------------------------------------------------------------

    def _dir_attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """A folder's mirror: its owner, times and permissions, without write bits."""
        mode = stat.S_IFDIR | (node.mode & 0o7777 & ~0o222)
        return _attrs(self._inode(node), mode, node, 0)

    async def _file(self, folder: Node) -> tuple[int, bool] | None:
        """(size, audio only) of a video folder's file; None if it has none (not complete,
        or no picture rendition)."""
        kept = self._sizes.get(folder.id)
        if kept is None:
            laid_out = await self._layout(folder)
            if laid_out is None:
                return None
            source, layout = laid_out
            kept = self._sizes[folder.id] = (layout.size, source.audio_only)
            if len(self._sizes) > _SIZES_KEPT:
                self._sizes.popitem(last=False)
        self._sizes.move_to_end(folder.id)
        return kept

    async def _items(self, folder: Node) -> list[tuple[str, pyfuse3.EntryAttributes]]:
        """What a video folder shows in the view: its MP4 file, then a WebVTT file for each
        of its subtitle renditions; nothing while it has no file (not complete)."""
        found = await self._file(folder)
        if found is None:
            return []
        size, audio_only = found
        mode = stat.S_IFREG | 0o444
        items = [
            (file_name(folder, audio_only), _attrs(VIEW_INODES + folder.id, mode, folder, size))
        ]
        subs = view.subtitles(folder.video_id) if folder.video_id else []
        for sub, name in zip(subs, sidecar_names(folder.name, subs), strict=True):
            size = sub.size if sub.size is not None else len(await self._sidecar(sub))
            items.append((name, _attrs(VIEW_INODES + sub.folder_id, mode, folder, size)))
        return items

    async def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        node = tree.get(self._shown(inode))
        if node is None or (node.links == 0 and node.id != ROOT_ID):
            raise pyfuse3.FUSEError(errno.ENOENT)
        kind = node.node_kind
        if kind is NodeKind.DIR:
            return self._dir_attrs(node)
        folder = tree.get(node.parent_id) if kind is NodeKind.RENDITION else node
        if folder is not None and folder.node_kind is NodeKind.VIDEO and folder.links > 0:
            for _, attrs in await self._items(folder):
                if attrs.st_ino == inode:
                    return attrs
        raise pyfuse3.FUSEError(errno.ENOENT)

    # ---- names -------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: str) -> pyfuse3.EntryAttributes:
        source_id = self._shown(parent_inode)
        if name == ".":
            return await self.getattr(parent_inode)
        if name == "..":
            if parent_inode == self.root_id:
                raise pyfuse3.FUSEError(errno.ENOENT)  # (the caller answers for the root)
            parent = tree.get(source_id)
            if parent is None or parent.links == 0:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(self._inode(tree.get(parent.parent_id) or parent))
        node = tree.child(source_id, name)
        if node is not None and node.node_kind is NodeKind.DIR:
            return self._dir_attrs(node)
        for stem in _stems(name):
            folder = tree.child(source_id, stem)
            if folder is not None and folder.node_kind is NodeKind.VIDEO:
                for found, attrs in await self._items(folder):
                    if found == name:
                        return attrs
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def entries(
        self, inode: int, start: int
    ) -> AsyncIterator[tuple[str, pyfuse3.EntryAttributes, int]]:
        """A view folder's listing from offset `start`: (name, attributes, next offset)."""
        source_id = self._shown(inode)
        after = start // _SLOTS - 1  # the entry the offset is in, and on
        while page := tree.children(source_id, after=after, limit=_PAGE):
            after = page[-1].entry.id if page[-1].entry is not None else after + _PAGE
            videos = view.complete(
                [n.video_id for n in page if n.node_kind is NodeKind.VIDEO and n.video_id]
            )
            for node in page:
                assert node.entry is not None
                place = node.entry.id * _SLOTS
                kind = node.node_kind
                if kind is NodeKind.DIR and place >= start:
                    yield node.name, self._dir_attrs(node), place + 1
                elif kind is NodeKind.VIDEO and node.video_id in videos:
                    try:
                        items = await self._items(node)
                    except (pyfuse3.FUSEError, StoreError, OSError) as exc:
                        # One video that cannot be shown (logged) must not hide the folder.
                        log.warning("MP4 view: %s left out: %s", tree.path_of(node), exc)
                        continue
                    for n, (name, attrs) in enumerate(items[: _SLOTS - 1]):
                        if place + n < start:
                            continue
                        shadow = tree.child(source_id, name)  # a folder of that name wins
                        if shadow is None or shadow.node_kind is not NodeKind.DIR:
                            yield name, attrs, place + n + 1

    # ---- files ---------------------------------------------------------------------------

    async def _made(self, folder: Node) -> ViewFile | None:
        """A video folder's file as reads need it (kept for the last few opened); None if
        it has none. The store gets ready for all its parts, since a player or a scanner
        may seek anywhere."""
        kept = self._files.get(folder.id)
        if kept is None:
            laid_out = await self._layout(folder)
            if laid_out is None:
                return None
            source, layout = laid_out
            found = blobs.parts_of_many(b for t in source.tracks for b, _, _ in t.segments)
            placed = tuple(tuple(found[b] for b, _, _ in t.segments) for t in source.tracks)
            kept = ViewFile(folder.id, layout, placed, source.audio_only)
            self._files[folder.id] = kept
            if len(self._files) > _FILES_KEPT:
                self._files.popitem(last=False)
            self.cache.prepare(kept.all_parts())
        self._files.move_to_end(folder.id)
        return kept

    async def _layout(self, folder: Node) -> tuple[view.Source, fmp4.Layout] | None:
        """What a video folder's file is made of, and how it is laid out; None if it has no
        file (see tgfs.catalog.view.source)."""
        source = view.source(folder.video_id) if folder.video_id else None
        if source is None:
            return None
        inits = []
        for track in source.tracks:
            data = track.init_data
            if data is None:  # made before the catalog kept init segments: read it once
                if track.init_blob is None:
                    raise pyfuse3.FUSEError(errno.EIO)
                parts = blobs.parts_of(track.init_blob)
                data = await self.cache.read(parts, 0, sum(p.size for p in parts))
                view.record_init(track.rendition_id, data)
            inits.append(data)
        tracks = [
            fmp4.Track(init, tuple((size, s) for _, size, s in t.segments), t.language)
            for init, t in zip(inits, source.tracks, strict=True)
        ]
        try:
            return source, fmp4.layout(tracks, source.duration, source.start_time)
        except fmp4.FormatError as exc:
            log.error("MP4 view: %s cannot be laid out: %s", tree.path_of(folder), exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def open(self, inode: int) -> ViewHandle | BytesHandle:
        node = tree.get(inode - VIEW_INODES)
        if node is None or node.links == 0:
            raise pyfuse3.FUSEError(errno.ENOENT)
        kind = node.node_kind
        if kind is NodeKind.DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if kind is NodeKind.RENDITION:  # a subtitle file
            await self.getattr(inode)  # (shown: its video complete and in the tree)
            subs = view.subtitles(node.video_id) if node.video_id else []
            sub = next((s for s in subs if s.folder_id == node.id), None)
            if sub is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return BytesHandle(inode, await self._sidecar(sub))
        made = await self._made(node) if kind is NodeKind.VIDEO else None
        if made is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        handle = ViewHandle(inode, made)
        self.open_parts.opened(handle.file.all_parts())
        # A player or a prober reads the header, then the first segment of each track: on
        # their way now.
        self._fetch_pieces(handle.file, 0, len(handle.file.parts))
        return handle

    async def _sidecar(self, sub: view.Subtitles) -> bytes:
        """A subtitle rendition as one WebVTT file (tgfs.media.subtitles.whole), from its
        stored segments (kept for the last few asked for). Its size, recorded when it was
        published, is checked; one made before sizes were recorded gets its size now."""
        kept = self._sidecars.get(sub.rendition_id)
        if kept is None:
            segments = view.subtitle_segments(sub.rendition_id)
            parts = blobs.parts_of_many(segments)
            texts = await self.cache.read_all([parts[b] for b in segments])
            kept = subtitles.whole_file(texts)
            if sub.size is None:
                view.record_sidecar_size(sub.rendition_id, len(kept))
            elif len(kept) != sub.size:
                log.error(
                    "MP4 view: subtitles %d make %d bytes, %d were recorded",
                    sub.rendition_id,
                    len(kept),
                    sub.size,
                )
                raise pyfuse3.FUSEError(errno.EIO)
            self._sidecars[sub.rendition_id] = kept
            if len(self._sidecars) > _SIDECARS_KEPT:
                self._sidecars.popitem(last=False)
        self._sidecars.move_to_end(sub.rendition_id)
        return kept

    def release(self, handle: ViewHandle) -> None:
        self.open_parts.closed(handle.file.all_parts())

    async def read(self, handle: ViewHandle, offset: int, length: int) -> bytes:
        file = handle.file
        layout = file.layout
        end = min(offset + length, layout.size)
        if offset >= end:
            return b""
        out = bytearray(layout.header[offset:end])
        index = layout.first_piece(offset)
        while index < len(layout.pieces) and layout.pieces[index].offset < end:
            piece = layout.pieces[index]
            index += 1
            start = max(offset, piece.offset) - piece.offset
            stop = min(end, piece.offset + piece.size) - piece.offset
            if stop <= start:
                continue
            parts = file.parts[piece.track][piece.seq]
            # The segment from here on comes at once, urgently, as a segment file's does (a
            # player reads a fragment to its end): on its way before the scan for patches
            # waits for its first chunk, so that the two are one round trip.
            self.cache.fetch_ahead(parts, start, piece.size - start, URGENT)
            found = await self._fragments(file, parts, piece.size)
            data = bytearray(
                await self.cache.read(parts, start, stop - start, 0, URGENT, handle.seen)
            )
            for patch in layout.patches(piece, found):
                a = max(patch.offset, start)
                b = min(patch.offset + len(patch.value), stop)
                if a < b:
                    data[a - start : b - start] = patch.value[a - patch.offset : b - patch.offset]
            out += data
        last = max(0, index - 1)
        ahead = handle.ahead(offset, length, last, self.prefetch_segments)
        if ahead:
            self._fetch_pieces(file, last + 1, ahead)
        return bytes(out)

    def _fetch_pieces(self, file: ViewFile, first: int, count: int) -> None:
        """Start fetching pieces first … first+count-1 (those not in the cache nor on their
        way), in the background at prefetch priority: a read someone waits for goes first."""
        priority = Priority(urgent=False)
        for piece in file.layout.pieces[first : first + count]:
            self.cache.fetch_ahead(file.parts[piece.track][piece.seq], 0, piece.size, priority)

    async def _fragments(self, file: ViewFile, parts: list[PartRef], size: int) -> fmp4.Fragments:
        """Where a segment's patches go: from its box headers and moofs (fmp4.fragments_of),
        read through the cache a few dozen KiB at a time; kept by the segment's first part."""
        key = parts[0].id if parts else None
        if key is not None and (kept := self._scans.get(key)) is not None:
            return kept
        held: dict[int, bytes] = {}

        def read(offset: int, length: int) -> bytes:
            for at, data in held.items():
                if at <= offset and offset + length <= at + len(data):
                    return data[offset - at : offset - at + length]
            raise fmp4.NeedBytes(offset, length)

        while True:
            try:
                found = fmp4.fragments_of(read, size)
                break
            except fmp4.NeedBytes as need:
                count = min(size - need.offset, max(need.length, _HEAD))
                held[need.offset] = await self.cache.read(parts, need.offset, count)
            except fmp4.FormatError as exc:
                folder = tree.get(file.folder_id)
                where = tree.path_of(folder) if folder is not None else file.folder_id
                log.error("MP4 view: a segment of %s cannot be served: %s", where, exc)
                raise pyfuse3.FUSEError(errno.EIO) from None
        if key is not None:
            self._scans[key] = found
            if len(self._scans) > _SCANS_KEPT:
                self._scans.popitem(last=False)
        return found
