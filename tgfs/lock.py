"""One daemon per data directory: an exclusive `flock` held for the daemon's whole life.

Two daemons on one catalog would each sweep the other's spool files, withdraw each
other's half-made videos and restart each other's jobs. The lock file also says who holds
it (pid and mount point), so the second `tgfs mount` can name the first. The kernel drops
an flock when its holder dies, kill -9 included, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tgfs.config import ConfigError

LOCK_NAME = "tgfs.lock"


class DirectoryLock:
    def __init__(self, directory: Path, mountpoint: Path) -> None:
        self.path = directory / LOCK_NAME
        self.mountpoint = mountpoint
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the daemon that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
            os.close(fd)
            pid = holder[0] or "?"
            where = holder[1] if len(holder) > 1 and holder[1] else "an unknown mount point"
            raise ConfigError(
                f"{self.path.parent} is in use by another tgfs daemon (pid "
                f"{pid}, mounted on {where}); one daemon per data "
                "directory: unmount it first, or set another TGFS_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{self.mountpoint}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
