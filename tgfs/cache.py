"""Read-through on-disk cache of store parts, fetched and kept in 1 MiB chunks.

Every read of stored content (segments, init segments, ordinary files) that misses the
kernel's page cache lands here. A part (≤ TELEGRAM_MAX_FILE_SIZE) is kept as a sparse file
`<cache dir>/<catalog id>/<part id>`; which of its 1 MiB chunks are present is recorded
beside it in `<part id>.map` (one byte per chunk) until the part is complete, when the map
goes. Properties:

- a read waits only for the chunks that cover it, fetched in parallel (at hundreds of
  milliseconds per request, one serial stream caps a bot at chunk/RTT); what the reader
  will want next (the rest of a segment, read-ahead of a file, tgfs.prefetch) is fetched
  in the background, at the priority the caller says (tgfs.store.slots);
- single flight per chunk: a read of a chunk being fetched waits for that fetch, raising
  its priority if it was a prefetch (and, if it failed, fetches it itself);
- bounded: total bytes present ≤ TGFS_CACHE_SIZE, and the disk keeps TGFS_CACHE_MIN_FREE;
  scan-resistant eviction (S3-FIFO, see `_evict`), never of a part being read or fetched;
- a part whose blob was deleted leaves the cache at the collector's next pass
  (`drop_unknown`: part ids are never reused);
- survives restarts, partial parts included, without reading the cached data: a chunk is
  recorded in the map only after the data file was fdatasync'ed (`flush`, every
  `FLUSH_EVERY` seconds), so a recorded chunk is on disk; a chunk written but not yet
  recorded when the daemon dies is fetched again. A map is written before its data file
  exists, so a data file without a map is always a complete part;
- namespaced by catalog: part ids are only unique within one catalog, so a cache directory
  shared by two data directories can never serve one's bytes for the other's part;
- memory-flat: a chunk at a time per fetch;
- sealed parts (tgfs.store.sealing) are kept as the store keeps them, sealed: their chunks
  are the store's own 1 MiB chunks (16 whole frames each), each checked as it arrives (a
  chunk that fails authentication is never kept), and a read opens only the frames it
  needs. So the cache of an encrypted library holds no plaintext, and a cache chunk is
  one request to the store. Sizes and chunk numbers here are of the stored bytes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from tgfs.store.base import BlobStore, PartRef, StoreError
from tgfs.store.parts import overlapping
from tgfs.store.sealing import (
    SEALED_FRAME,
    NoKey,
    SealBroken,
    Sealer,
    sealed_range,
    stored_size,
)
from tgfs.store.slots import URGENT, Priority, Slots

log = logging.getLogger(__name__)

# The unit fetched and recorded. Telegram's stream_media counts in 1 MiB chunks, so one
# chunk is one range request there; small enough that a read waits for little more than
# it asked for, large enough that a store's per-request latency is paid rarely.
CHUNK = 2**20
FLUSH_EVERY = 1.0  # seconds between writes of the chunk maps (see the module docstring)
# Chunk fetches in flight (across all parts), and how many of them prefetch may hold
# (see tgfs.store.slots). Stores cap their own transfers further (per bot, overall).
_FETCHES = 32
_PREFETCH_FETCHES = 8
_DISK_THREADS = trio.CapacityLimiter(8)
_MAP = ".map"


@dataclasses.dataclass(eq=False)
class _Fetch:
    """A chunk fetch in progress: readers of the chunk wait for `done`."""

    priority: Priority
    done: trio.Event = dataclasses.field(default_factory=trio.Event)


@dataclasses.dataclass
class _Entry:
    """A part in the cache: which chunks are on disk."""

    id: int
    size: int
    present: bytearray  # one byte per chunk: 1 once its bytes are in the data file
    dirty: bool = False  # chunks arrived since the map was last written
    pins: int = 0  # reads in progress: not evicted
    fetching: int = 0  # chunk fetches in progress: not evicted
    reads: int = 0  # open files that read it (a file's many reads count once)
    main: bool = False  # in the main queue (else the small one), see _evict
    ahead: set[int] = dataclasses.field(default_factory=set)  # chunks prefetched, unread

    @property
    def complete(self) -> bool:
        return all(self.present)

    @property
    def bytes_present(self) -> int:
        return sum(_chunk_size(self.size, i) for i, here in enumerate(self.present) if here)


def _chunk_span(part: PartRef, start: int, end: int) -> tuple[int, int]:
    """The first and last chunk that hold bytes [start, end) of a part's content."""
    if part.seal is not None:
        at, count = sealed_range(start, end - start, part.size)
        start, end = at, at + count
    return start // CHUNK, (end - 1) // CHUNK


def _chunks(size: int) -> int:
    return -(-size // CHUNK)


def _chunk_size(size: int, index: int) -> int:
    return min(CHUNK, size - index * CHUNK)


class PartCache:
    def __init__(
        self,
        root: Path,
        capacity: int,
        store: BlobStore,
        min_free: int = 0,
        sealer: Sealer | None = None,
    ) -> None:
        self.root = root
        self.capacity = capacity
        self.min_free = min_free  # bytes the cache leaves free on its disk, whatever its size
        self.store = store
        self.sealer = sealer  # checks sealed chunks as they arrive, opens them per read
        self._entries: dict[int, _Entry] = {}
        # S3-FIFO queues (see _evict), oldest first, and the ghost: ids recently evicted
        # from the small queue, so a part that comes back goes straight to the main one.
        self._small: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._main: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._ghost: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._used = 0  # bytes present over all entries
        self._small_used = 0  # of which in the small queue
        self._fetching: dict[tuple[int, int], _Fetch] = {}  # (part id, chunk) → its fetch
        self._slots = Slots(_FETCHES, _PREFETCH_FETCHES)
        self._nursery: trio.Nursery | None = None  # for fetches ahead, while run() runs
        self.hits = 0  # reads whose chunks were all present
        self.misses = 0  # reads that had to wait for a fetch
        self.fetched_bytes = 0
        self.prefetched_bytes = 0  # fetched while nobody waited for them
        self.prefetch_hit_bytes = 0  # prefetched bytes a reader then read
        self.prefetch_wasted_bytes = 0  # prefetched bytes evicted or deleted unread
        self.served_bytes = 0  # bytes returned to readers
        self.evicted_parts = 0
        root.mkdir(parents=True, exist_ok=True)
        self._load()

    # ---- start-up ------------------------------------------------------------------------

    def _load(self) -> None:
        found = []
        maps = set()
        for item in os.scandir(self.root):
            name = item.name
            if name.endswith(".tmp"):
                os.unlink(item.path)  # a map or a legacy fetch interrupted by a crash
            elif name.endswith(_MAP):
                maps.add(name.removesuffix(_MAP))
            elif name.isdigit():
                st = item.stat()
                found.append((st.st_atime, int(name), st.st_size))
        for _, part_id, size in sorted(found):
            present = bytearray(b"\x01" * _chunks(size))
            if str(part_id) in maps:
                maps.discard(str(part_id))
                recorded = (self.root / f"{part_id}{_MAP}").read_bytes()
                if len(recorded) != len(present):
                    self._remove_files(part_id)
                    continue
                present = bytearray(recorded)
            entry = _Entry(part_id, size, present, main=True)  # they survived: keep them
            self._entries[part_id] = self._main[part_id] = entry
            self._used += entry.bytes_present
        for orphan in maps:  # a map whose data file was never made
            (self.root / f"{orphan}{_MAP}").unlink(missing_ok=True)
        self._evict()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work: fetches ahead, writing the chunk maps. Runs for the mount's
        life (reads work without it, only nothing is fetched ahead)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(FLUSH_EVERY)
                    await self.flush()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.flush()

    # ---- reading -------------------------------------------------------------------------

    def _path(self, part_id: int) -> Path:
        return self.root / str(part_id)

    async def read(
        self,
        parts: list[PartRef],
        offset: int,
        length: int,
        ahead: int = 0,
        priority: Priority = URGENT,
        seen: set[int] | None = None,
    ) -> bytes:
        """Bytes [offset, offset+length) of the blob made of `parts`; then, without
        waiting, makes sure the `ahead` bytes after them are on their way, fetched with
        `priority` (see `fetch_ahead`). `seen`: the part ids this open file has read
        already, so that its many reads of one part count as one use for eviction."""
        pieces = []
        for part in overlapping(parts, offset, length):
            start = max(offset, part.offset) - part.offset
            end = min(offset + length, part.offset + part.size) - part.offset
            entry = self._entry(part)
            if seen is None or part.id not in seen:
                entry.reads += 1
                if seen is not None:
                    seen.add(entry.id)
            entry.pins += 1  # not evicted while we read it
            try:
                first, last = _chunk_span(part, start, end)
                await self._need(part, entry, first, last)
                pieces.append(await self._read_present(part, entry, start, end))
                for index in entry.ahead & set(range(first, last + 1)):
                    entry.ahead.discard(index)
                    self.prefetch_hit_bytes += _chunk_size(entry.size, index)
            finally:
                entry.pins -= 1
        self.served_bytes += length
        if ahead > 0:
            self.fetch_ahead(parts, offset + length, ahead, priority)
        return b"".join(pieces)

    async def read_all(self, blobs: list[list[PartRef]], at_once: int = 16) -> list[bytes]:
        """The whole of several small blobs (a subtitle track's segments), `at_once` at a
        time: one after the other, a thousand of them would take a thousand round trips."""
        found = [b""] * len(blobs)
        limiter = trio.CapacityLimiter(at_once)

        async def one(n: int) -> None:
            async with limiter:
                found[n] = await self.read(blobs[n], 0, sum(p.size for p in blobs[n]))

        with _store_error_unwrapped():
            async with trio.open_nursery() as nursery:
                for n in range(len(blobs)):
                    nursery.start_soon(one, n)
        return found

    async def _read_present(self, part: PartRef, entry: _Entry, start: int, end: int) -> bytes:
        """Bytes [start, end) of a part whose chunks are present: read, and opened if the
        part is sealed (a cache file damaged on disk is dropped, and EIO)."""
        path = self._path(entry.id)
        if part.seal is None:
            return await trio.to_thread.run_sync(
                _pread, path, start, end - start, limiter=_DISK_THREADS
            )
        if self.sealer is None:
            raise NoKey(part.id)
        at, count = sealed_range(start, end - start, part.size)
        try:
            return await trio.to_thread.run_sync(
                _pread_opened, path, at, count, self.sealer, part, start, end, limiter=_DISK_THREADS
            )
        except SealBroken as exc:
            log.error("cache: the cached copy of part %d is damaged (%s): dropped", part.id, exc)
            if not (entry.pins > 1 or entry.fetching):
                self._drop(entry)
            raise

    async def warm(
        self, parts: list[PartRef], offset: int, length: int, priority: Priority
    ) -> None:
        """Fetch bytes [offset, offset+length) of a blob into the cache without reading
        them (prefetch). Cancelling it cancels the fetches it started."""

        async def one(part: PartRef) -> None:
            start = max(offset, part.offset) - part.offset
            end = min(offset + length, part.offset + part.size) - part.offset
            entry = self._entry(part)
            await self._need(part, entry, *_chunk_span(part, start, end), priority)

        with _store_error_unwrapped():
            async with trio.open_nursery() as nursery:  # the stripes of a segment at once
                for part in overlapping(parts, offset, length):
                    nursery.start_soon(one, part)

    def prepare(self, parts: list[PartRef]) -> None:
        """These parts may be read soon (a player opened their video): the store gets ready
        for those not cached in full (`BlobStore.prepare`), in the background."""
        if self._nursery is None:
            return
        locations = [
            p.location
            for p in parts
            if p.id not in self._entries or not self._entries[p.id].complete
        ]
        if locations:
            self._nursery.start_soon(self._prepare_quietly, locations)

    async def _prepare_quietly(self, locations: list[str]) -> None:
        try:
            await self.store.prepare(locations)
        except Exception:  # best effort: the reads do it themselves
            log.exception("cache: preparing %d part(s) failed", len(locations))

    def fetch_ahead(
        self, parts: list[PartRef], offset: int, length: int, priority: Priority
    ) -> None:
        """Start fetching the missing chunks of [offset, offset+length) that nobody fetches
        yet, in the background (while run() runs); raise the ones already on their way to
        `priority` if it is urgent."""
        if self._nursery is None:
            return
        for part in overlapping(parts, offset, length):
            start = max(offset, part.offset) - part.offset
            end = min(offset + length, part.offset + part.size) - part.offset
            entry = self._entry(part)
            first, last = _chunk_span(part, start, end)
            for index in range(first, last + 1):
                if entry.present[index]:
                    continue
                pending = self._fetching.get((entry.id, index))
                if pending is None:
                    self._nursery.start_soon(self._chunk_quietly, part, entry, index, priority)
                elif priority.urgent:
                    pending.priority.raise_to_urgent()

    def _entry(self, part: PartRef) -> _Entry:
        """The part's entry, made (map first, then a sparse data file) if it is new."""
        assert part.id is not None
        entry = self._entries.get(part.id)
        size = stored_size(part.size, part.seal is not None)
        if entry is not None and entry.size != size:
            self._drop(entry)  # cannot happen with a sound catalog; never serve it
            entry = None
        if entry is None:
            entry = _Entry(part.id, size, bytearray(_chunks(size)))
            _write_map(self.root / f"{part.id}{_MAP}", entry.present)
            with open(self._path(part.id), "wb") as data:
                data.truncate(size)
            self._entries[part.id] = entry
            if part.id in self._ghost:  # evicted early, and wanted again
                del self._ghost[part.id]
                entry.main = True
                self._main[part.id] = entry
            else:
                self._small[part.id] = entry
        return entry

    async def _need(
        self, part: PartRef, entry: _Entry, first: int, last: int, priority: Priority = URGENT
    ) -> None:
        """Wait until chunks first..last of the part are present, fetching the missing
        ones in parallel."""
        missing = [i for i in range(first, last + 1) if not entry.present[i]]
        if not missing:
            if priority.urgent:
                self.hits += 1
            return
        if priority.urgent:
            self.misses += 1
        entry.fetching += 1  # not evicted while we wait, even between two chunk fetches
        try:
            with _store_error_unwrapped():
                async with trio.open_nursery() as nursery:
                    for index in missing:
                        nursery.start_soon(self._chunk, part, entry, index, priority)
        finally:
            entry.fetching -= 1

    async def _chunk(self, part: PartRef, entry: _Entry, index: int, priority: Priority) -> None:
        """Make chunk `index` present: fetch it, or wait for the fetch already running
        (raising its priority if ours is higher; fetching again if that one failed)."""
        key = (entry.id, index)
        while not entry.present[index] and self._entries.get(entry.id) is entry:
            pending = self._fetching.get(key)
            if pending is not None:
                if priority.urgent:
                    pending.priority.raise_to_urgent()
                await pending.done.wait()
                continue
            fetch = self._fetching[key] = _Fetch(priority)
            entry.fetching += 1
            try:
                async with self._slots.hold(priority):
                    await self._fetch(part, entry, index, priority)
            finally:
                entry.fetching -= 1
                del self._fetching[key]
                fetch.done.set()

    async def _chunk_quietly(
        self, part: PartRef, entry: _Entry, index: int, priority: Priority
    ) -> None:
        """A chunk fetched ahead: nobody waits for it, so a failure is only logged (the
        reader that needs the chunk fetches it again and gets the error)."""
        try:
            await self._chunk(part, entry, index, priority)
        except (StoreError, OSError) as exc:
            log.info("cache: fetching ahead in part %d stopped: %s", part.id, exc)
        except Exception:  # never let a background fetch end the mount
            log.exception("cache: fetching ahead in part %d failed", part.id)

    async def _fetch(self, part: PartRef, entry: _Entry, index: int, priority: Priority) -> None:
        offset, want = index * CHUNK, _chunk_size(entry.size, index)
        data = await self.store.get(part.location, offset, want, priority)
        if part.seal is not None:
            await self._check(part, data, index * (CHUNK // SEALED_FRAME))
        if len(data) != want:
            raise StoreError(
                f"part {part.id}: the store returned {len(data)} of {want} bytes at {offset}"
            )
        if self._entries.get(entry.id) is not entry:
            return  # evicted or dropped meanwhile (only possible when nobody reads it)
        await trio.to_thread.run_sync(
            _pwrite, self._path(entry.id), data, offset, limiter=_DISK_THREADS
        )
        entry.present[index] = 1
        entry.dirty = True
        self._used += want
        if not entry.main:
            self._small_used += want
        self.fetched_bytes += want
        if not priority.urgent:
            self.prefetched_bytes += want
            entry.ahead.add(index)
        self._evict()

    async def _check(self, part: PartRef, data: bytes, first_frame: int) -> None:
        """A sealed chunk is kept only if every frame in it is authentic (SealBroken, which
        names the part, otherwise)."""
        assert part.seal is not None
        if self.sealer is None:
            raise NoKey(part.id)
        try:
            await trio.to_thread.run_sync(
                self.sealer.verify, part.seal, data, first_frame, part.size
            )
        except SealBroken as exc:
            raise SealBroken(f"part {part.id} at {part.location}: {exc}") from None

    # ---- bookkeeping ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Record the chunks that arrived: data on disk first, then the map (or, for a
        complete part, no map at all)."""
        for entry in [e for e in self._entries.values() if e.dirty]:
            entry.dirty = False
            present = bytes(entry.present)
            path = self._path(entry.id)
            try:
                await trio.to_thread.run_sync(_sync, path, limiter=_DISK_THREADS)
                map_path = self.root / f"{entry.id}{_MAP}"
                if all(present):
                    map_path.unlink(missing_ok=True)
                else:
                    await trio.to_thread.run_sync(
                        _write_map, map_path, present, limiter=_DISK_THREADS
                    )
            except FileNotFoundError:
                pass  # evicted meanwhile
            except OSError as exc:
                entry.dirty = True
                log.warning("cache: cannot record the chunks of part %d: %s", entry.id, exc)

    def _evict(self) -> None:
        """Evict until the cache fits its bound and leaves its disk `min_free` bytes.

        S3-FIFO (Yang et al., SOSP 2023), by part. New parts enter a small FIFO queue
        (a tenth of the bytes); parts read by a second open file while there move to the
        main FIFO queue, the others leave early and are remembered in a ghost list, so a
        part that comes back enters the main queue directly. The main queue gives each
        part one more round per use (up to 3) before it goes. Why this one: a film watched
        once from start to end is a scan of parts each used once, and under LRU it would
        flush everything else; here it passes through the small queue and leaves, while
        the parts people come back to stay in the main one. It needs no reordering on a
        hit (a counter), unlike LRU, SLRU or 2Q, and has one fixed knob (10 %).

        A part being read or fetched is never evicted: it is skipped, and the cache may
        stay over its bound until it is released.
        """
        while self._over():
            if self._small_used > self.capacity // 10 and self._evict_small():
                continue
            if not self._evict_main() and not self._evict_small():
                return  # everything left is in use

    def _over(self) -> bool:
        if self._used > self.capacity:
            return True
        if not self.min_free or not self._entries:
            return False
        try:
            st = os.statvfs(self.root)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < self.min_free

    def _evict_small(self) -> bool:
        for entry in list(self._small.values()):
            if entry.pins or entry.fetching:
                continue
            del self._small[entry.id]
            self._small_used -= entry.bytes_present
            if entry.reads >= 2:  # used again since it came: keep it
                entry.main = True
                self._main[entry.id] = entry
                return True
            self._drop(entry)
            self._ghost[entry.id] = None
            while len(self._ghost) > max(len(self._main), 64):
                self._ghost.popitem(last=False)
            return True
        return False

    def _evict_main(self) -> bool:
        for _ in range(4 * len(self._main)):  # each part loses one round per pass
            if not self._main:
                return False
            part_id, entry = next(iter(self._main.items()))
            self._main.move_to_end(part_id)
            if entry.pins or entry.fetching:
                continue
            if entry.reads > 1:
                entry.reads = min(entry.reads, 4) - 1  # another round for a used part
                continue
            self._drop(entry)
            return True
        return False

    def _drop(self, entry: _Entry) -> None:
        """Forget a part and delete its files (whichever queue it is in)."""
        if self._entries.pop(entry.id, None) is None:
            return
        present = entry.bytes_present
        self._used -= present
        if self._small.pop(entry.id, None) is not None:
            self._small_used -= present
        self._main.pop(entry.id, None)
        self.evicted_parts += 1
        self.prefetch_wasted_bytes += sum(_chunk_size(entry.size, i) for i in entry.ahead)
        self._remove_files(entry.id)

    def drop_unknown(self, known: Callable[[list[int]], set[int]]) -> int:
        """Drop the parts whose blobs were deleted: `known` says which of some part ids
        the catalog still has (ids are never reused, so an unknown id is gone for good).
        Parts being read are left for the next sweep. Returns how many went."""
        ids = [i for i, e in self._entries.items() if not (e.pins or e.fetching)]
        alive = known(ids)
        gone = [self._entries[i] for i in ids if i not in alive and i in self._entries]
        for entry in gone:
            self._drop(entry)
        return len(gone)

    def clear(self) -> int:
        """Drop every part nobody reads or fetches now (`tgfs cache clear`); returns the
        bytes freed."""
        before = self._used
        for entry in [e for e in self._entries.values() if not (e.pins or e.fetching)]:
            self._drop(entry)
        self._ghost.clear()
        return before - self._used

    def _remove_files(self, part_id: int) -> None:
        (self.root / f"{part_id}{_MAP}").unlink(missing_ok=True)  # first: see _load
        self._path(part_id).unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        reads = self.hits + self.misses
        return {
            "used_bytes": self._used,
            "capacity_bytes": self.capacity,
            "min_free_bytes": self.min_free,
            "parts": len(self._entries),
            "partial_parts": sum(1 for e in self._entries.values() if not e.complete),
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / reads, 4) if reads else None,
            "served_bytes": self.served_bytes,
            "fetched_bytes": self.fetched_bytes,
            "prefetched_bytes": self.prefetched_bytes,
            "prefetch_hit_bytes": self.prefetch_hit_bytes,
            "prefetch_wasted_bytes": self.prefetch_wasted_bytes,
            "evicted_parts": self.evicted_parts,
            "fetches_in_flight": len(self._fetching),
        }


@contextlib.contextmanager
def _store_error_unwrapped() -> Iterator[None]:
    """One failed chunk fails the whole read or warm: raise why as the store said it, not
    as the group of a nursery."""
    try:
        yield
    except BaseExceptionGroup as group:
        first_error = _first_leaf(group)
        if isinstance(first_error, (StoreError, OSError)):
            raise first_error from None
        raise


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


def _pread_opened(
    path: Path, at: int, count: int, sealer: Sealer, part: PartRef, start: int, end: int
) -> bytes:
    assert part.seal is not None
    try:
        return sealer.open(part.seal, _pread(path, at, count), start, end - start, part.size)
    except SealBroken as exc:
        raise SealBroken(f"part {part.id}: {exc}") from None


def _pwrite(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _write_map(path: Path, present: bytes | bytearray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(present))
    os.replace(tmp, path)
