"""Read-through on-disk cache of store parts.

Every read of stored content (segments, init segments, ordinary files) that misses the
kernel's page cache lands here. The unit is one store part (≤ TELEGRAM_MAX_FILE_SIZE): a
miss fetches the whole part into `<cache_dir>/<catalog id>/<part id>` and later reads are
local `pread`s. Properties:

- bounded: total size ≤ TGFS_CACHE_SIZE; least recently used parts are evicted first;
- single-flight: concurrent misses on one part share one fetch;
- survives restarts: the directory is rescanned at start (oldest atime first);
- namespaced by catalog: part ids are only unique within one catalog, so a cache directory
  shared by two data directories can never serve one's bytes for the other's part;
- memory-flat: a fetch streams the part to disk in `_FETCH_CHUNK` steps.

Seams for the prefetch/eviction issue: `warm()` fetches without reading, and eviction asks
`_victims()` for an order.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from tgfs.store.base import BlobStore, PartRef
from tgfs.store.parts import overlapping

log = logging.getLogger(__name__)

# 4 MiB per store request: large enough to amortise a remote round trip, small enough to
# keep a fetch's memory use trivial.
_FETCH_CHUNK = 4 * 2**20
_DISK_THREADS = trio.CapacityLimiter(8)


class PartCache:
    def __init__(self, root: Path, capacity: int, store: BlobStore) -> None:
        self.root = root
        self.capacity = capacity
        self.store = store
        self._sizes: collections.OrderedDict[int, int] = collections.OrderedDict()  # LRU order
        self._used = 0
        self._fetching: dict[int, trio.Event] = {}
        self._pinned: collections.Counter[int] = collections.Counter()
        self.hits = 0
        self.misses = 0
        self.fetched_bytes = 0
        root.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        entries = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)  # a fetch interrupted by a crash
            elif entry.name.isdigit():
                st = entry.stat()
                entries.append((st.st_atime, int(entry.name), st.st_size))
        for _, part_id, size in sorted(entries):
            self._sizes[part_id] = size
            self._used += size
        self._evict()

    def _path(self, part_id: int) -> Path:
        return self.root / str(part_id)

    async def read(self, parts: list[PartRef], offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the blob made of `parts`."""
        chunks = []
        for part in overlapping(parts, offset, length):
            start = max(offset, part.offset) - part.offset
            end = min(offset + length, part.offset + part.size) - part.offset
            self._pinned[part.id] += 1  # not evicted while we read it
            try:
                await self._ensure(part)
                chunks.append(await trio.to_thread.run_sync(
                    _pread, self._path(part.id), start, end - start, limiter=_DISK_THREADS))
            finally:
                self._pinned[part.id] -= 1
                if not self._pinned[part.id]:
                    del self._pinned[part.id]
        return b"".join(chunks)

    async def warm(self, part: PartRef) -> None:
        """Fetch a part into the cache without reading it (for prefetch)."""
        await self._ensure(part)

    async def _ensure(self, part: PartRef) -> None:
        assert part.id is not None
        while True:
            if part.id in self._sizes:
                self._sizes.move_to_end(part.id)
                self.hits += 1
                return
            pending = self._fetching.get(part.id)
            if pending is None:
                break
            await pending.wait()  # someone else is fetching it; if that failed, we try
        self.misses += 1
        done = self._fetching[part.id] = trio.Event()
        try:
            await self._fetch(part)
        finally:
            del self._fetching[part.id]
            done.set()

    async def _fetch(self, part: PartRef) -> None:
        path = self._path(part.id)
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as out:
                offset = 0
                while offset < part.size:
                    want = min(_FETCH_CHUNK, part.size - offset)
                    data = await self.store.get(part.location, offset, want)
                    if len(data) != want:
                        raise OSError(f"store returned {len(data)} of {want} bytes")
                    await trio.to_thread.run_sync(out.write, data, limiter=_DISK_THREADS)
                    offset += want
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.fetched_bytes += part.size
        self._sizes[part.id] = part.size
        self._used += part.size
        self._evict()

    def _victims(self) -> Iterator[int]:
        """Eviction order: least recently used first (the policy seam)."""
        return iter(list(self._sizes))

    def _evict(self) -> None:
        if self._used <= self.capacity:
            return
        for part_id in self._victims():
            if self._used <= self.capacity:
                break
            if self._pinned.get(part_id):
                continue
            self._used -= self._sizes.pop(part_id)
            self._path(part_id).unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        return {
            "used_bytes": self._used,
            "capacity_bytes": self.capacity,
            "parts": len(self._sizes),
            "hits": self.hits,
            "misses": self.misses,
            "fetched_bytes": self.fetched_bytes,
        }


def _pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)
