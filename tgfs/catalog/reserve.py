"""Room to delete on a full disk: a reserve file beside the catalog.

SQLite needs a little free space for any transaction, deletes included (they write to
the WAL). On a full disk every change would fail, so nothing could be removed to make
room: the mount would be stuck. tgfs keeps `RESERVE_SIZE` bytes allocated in a file next
to the catalog; when a removal fails because the disk is full, the reserve is given up
and the removal tried again. It is taken back once there is room for it again.

`is_full` recognises the disk-full error however SQLite and peewee report it (peewee's
rollback after SQLite already rolled back raises "cannot rollback", with the real error
as its context).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import peewee

log = logging.getLogger(__name__)

RESERVE_NAME = "catalog.reserve"
RESERVE_SIZE = 4 * 2**20  # room for deleting thousands of rows; small beside any disk


def is_full(exc: BaseException | None) -> bool:
    """Did the catalog fail because its disk is full?"""
    while exc is not None:
        if isinstance(exc, peewee.OperationalError) and "full" in str(exc):
            return True
        if isinstance(exc, OSError) and exc.errno in (28, 122):  # ENOSPC, EDQUOT
            return True
        exc = exc.__context__
    return False


class Reserve:
    def __init__(self, directory: Path) -> None:
        self.path = directory / RESERVE_NAME

    def ensure(self) -> None:
        """Allocate the reserve if it is missing and the disk has room to spare."""
        if self.path.exists():
            return
        try:
            if shutil.disk_usage(self.path.parent).free < 2 * RESERVE_SIZE:
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_SIZE)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("catalog reserve not allocated: %s", exc)
            self.path.unlink(missing_ok=True)

    def release(self) -> bool:
        """Give the reserve up; False if there was none to give."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "the catalog's disk is full: its reserve was released so that files "
            "can be deleted; free some space"
        )
        return True
