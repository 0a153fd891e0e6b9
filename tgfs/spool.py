"""The spool: files being written into the mount, staged on local disk.

A `cp` into the mount streams into a spool file with `pwrite` from a worker thread, so the
daemon's memory stays flat whatever the file size and the FUSE thread never waits on disk.
The spool file stays the file's content until the ingest job has stored it; reads of a
file still in the spool are served from it. Put the spool on a local disk with room for the
largest file you will drop (TGFS_SPOOL_DIR).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import trio

log = logging.getLogger(__name__)

_DISK_THREADS = trio.CapacityLimiter(4)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def new_file(self) -> tuple[str, int]:
        """Create an empty spool file; returns (path, fd opened read-write)."""
        path = str(self.root / uuid.uuid4().hex)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return path, fd

    def work_dir(self, job_id: int) -> Path:
        """Scratch folder where the media process writes a job's HLS files."""
        return self.root / f"job-{job_id}"

    @staticmethod
    async def pwrite(fd: int, data: bytes, offset: int) -> int:
        return await trio.to_thread.run_sync(os.pwrite, fd, data, offset, limiter=_DISK_THREADS)

    @staticmethod
    async def pread(fd: int, size: int, offset: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, fd, size, offset, limiter=_DISK_THREADS)

    @staticmethod
    def discard(path: str | None) -> None:
        if path:
            Path(path).unlink(missing_ok=True)

    def sweep(self, keep: set[str]) -> int:
        """Delete spool files and job folders nothing refers to (left by a crash)."""
        removed = 0
        for entry in os.scandir(self.root):
            if entry.path in keep:
                continue
            if entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed += 1
        if removed:
            log.info("spool: removed %d leftover file(s) from an earlier run", removed)
        return removed
