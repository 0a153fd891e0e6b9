"""The embedded store: parts as files in a local directory. Needs no account.

It is the default when no Telegram bot is configured, and a faithful stand-in for the
remote store's contract in tests (same interface, same part splitting above it).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tgfs.store.base import BlobStore, PartMissing, StoreError, replicas
from tgfs.store.slots import URGENT, Priority, Slots

# Copy in 1 MiB steps: memory stays flat however large the part.
_COPY_CHUNK = 2**20
# Disk work runs in threads so the FUSE (trio) thread never waits on it; a few at once
# are plenty for one disk.
_DISK_THREADS = trio.CapacityLimiter(4)
# Reads: the store's directory may be a NAS or a network mount with hundreds of
# milliseconds per request, so several at once, and prefetch never holds them all.
_READ_SLOTS, _READ_PREFETCH_MAX = 16, 8
_READ_THREADS = trio.CapacityLimiter(_READ_SLOTS)  # as many as slots: never the bottleneck
# Where the backup manifest lives: a fixed name beside the part folders (never a part:
# those are two-character folders of hex names).
MANIFEST_NAME = "manifest.json"


class LocalStore(BlobStore):
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._reads = Slots(_READ_SLOTS, _READ_PREFETCH_MAX)

    def _path(self, location: str) -> Path:
        # Locations are "ab/<hex>" as made by put(); refuse anything else so a corrupt
        # catalog row can never make us read or delete outside the store directory.
        head, _, name = location.partition("/")
        if len(head) != 2 or not name.isalnum():
            raise StoreError(f"not a local-store location: {location!r}", retryable=False)
        return self.root / head / name

    async def put(
        self,
        src: Path,
        offset: int,
        size: int,
        key: str,
        spread: bool = False,
        everywhere: bool = False,
    ) -> str:
        name = uuid.uuid4().hex
        location = f"{name[:2]}/{name}"
        dest = self._path(location)
        try:
            await trio.to_thread.run_sync(
                _copy_range, src, offset, size, dest, limiter=_DISK_THREADS
            )
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise StoreError(
                f"local store: cannot write {key}: {exc.strerror}",
                retryable=full or exc.errno == errno.EIO,
            ) from exc
        return location

    async def get(
        self, location: str, offset: int, length: int, priority: Priority = URGENT
    ) -> bytes:
        path = self._path(location)
        try:
            async with self._reads.hold(priority):
                return await trio.to_thread.run_sync(
                    _pread, path, offset, length, limiter=_READ_THREADS
                )
        except FileNotFoundError:
            raise PartMissing(f"local store: part {location} is missing") from None
        except OSError as exc:
            raise StoreError(f"local store: cannot read {location}: {exc.strerror}") from exc

    async def delete(self, location: str) -> None:
        path = self._path(location)
        try:
            await trio.to_thread.run_sync(path.unlink, True, limiter=_DISK_THREADS)
        except OSError as exc:
            raise StoreError(f"local store: cannot delete {location}: {exc.strerror}") from exc

    async def orphans(self, referenced: Callable[[str], bool], whole: bool = False) -> list[str]:
        """Every part file no catalog row names, `whole` or not; unfinished copies (`.tmp`)
        are removed here directly. A directory listing: the local store can afford it."""
        names = await trio.to_thread.run_sync(_list, self.root, limiter=_DISK_THREADS)
        found = []
        for head, name in names:
            if name.endswith(".tmp"):
                (self.root / head / name).unlink(missing_ok=True)
            elif not referenced(location := f"{head}/{name}"):
                found.append(location)
        return found

    async def missing(self, locations: list[str]) -> list[str]:
        def absent() -> list[str]:
            return [
                replica
                for location in locations
                for replica in replicas(location)
                if not self._path(replica).exists()
            ]

        return await trio.to_thread.run_sync(absent, limiter=_DISK_THREADS)

    async def save_manifest(self, data: bytes) -> None:
        """A fixed file in the store directory, replaced atomically (written beside it,
        fsynced, renamed, directory fsynced)."""
        try:
            await trio.to_thread.run_sync(_replace_file, self.root / MANIFEST_NAME, data)
        except OSError as exc:
            raise StoreError(f"local store: cannot write the manifest: {exc.strerror}") from exc

    async def load_manifest(self) -> bytes | None:
        try:
            return await trio.to_thread.run_sync((self.root / MANIFEST_NAME).read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"local store: cannot read the manifest: {exc.strerror}") from exc

    async def health(self) -> dict[str, Any]:
        usage = await trio.to_thread.run_sync(shutil.disk_usage, self.root)
        return {"kind": self.kind, "path": str(self.root), "up": True, "free_bytes": usage.free}


def _copy_range(src: Path, offset: int, size: int, dest: Path) -> None:
    dest.parent.mkdir(exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            fin.seek(offset)
            left = size
            while left:
                chunk = fin.read(min(_COPY_CHUNK, left))
                if not chunk:
                    raise OSError(errno.EIO, f"{src} is shorter than expected")
                fout.write(chunk)
                left -= len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _list(root: Path) -> list[tuple[str, str]]:
    return [
        (head.name, entry.name)
        for head in os.scandir(root)
        if head.is_dir() and len(head.name) == 2
        for entry in os.scandir(head.path)
    ]


def _pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)
