"""Open file handles: what a file handle number stands for between open and release."""

from __future__ import annotations

import collections
import dataclasses
import errno
import os

import pyfuse3

from tgfs.fs.writes import Session
from tgfs.store.base import PartRef
from tgfs.store.slots import Priority


@dataclasses.dataclass
class SpoolHandle:
    """Reading a file whose content is a local spool file (written, awaiting ingest)."""

    inode: int
    fd: int

    def close(self) -> None:
        os.close(self.fd)


@dataclasses.dataclass
class WriteHandle:
    """A file opened for writing (and maybe reading): its inode's write session."""

    inode: int
    session: Session

    def close(self) -> None:
        pass  # the session closes its file at the last release


# Read-ahead of ordinary stored files read sequentially (a kept .mkv, audio): it starts at
# two chunks and doubles with each sequential read up to 32 MiB, 4 s of a 64 Mbps stream.
READ_AHEAD_FIRST = 2 * 2**20
READ_AHEAD_MAX = 32 * 2**20


@dataclasses.dataclass
class BlobHandle:
    """Stored, immutable content read through the cache (segments, stored files). It
    carries all a read needs, so reads never query the catalog."""

    inode: int
    parts: list[PartRef]
    size: int
    # A segment is read whole by players: its first read fetches the rest at once,
    # urgently. Other files get read-ahead while reads are sequential.
    whole: bool = False
    priority: Priority = dataclasses.field(default_factory=lambda: Priority(urgent=False))
    next_offset: int = 0  # where a sequential read would start
    read_ahead: int = 0
    seen: set[int] = dataclasses.field(default_factory=set)  # part ids read (for eviction)

    def ahead(self, offset: int, length: int) -> int:
        """Bytes to fetch ahead after a read of [offset, offset+length)."""
        if self.whole:
            return self.size
        sequential = offset == self.next_offset
        self.next_offset = offset + length
        if not sequential:
            self.read_ahead = 0
            return 0
        self.read_ahead = min(max(self.read_ahead * 2, READ_AHEAD_FIRST), READ_AHEAD_MAX)
        return self.read_ahead

    def close(self) -> None:
        pass


@dataclasses.dataclass
class BytesHandle:
    """Content rendered at open (playlists, status.json): one consistent snapshot per open."""

    inode: int
    data: bytes

    def close(self) -> None:
        pass


REQUEST_MAX = 4096  # bytes a control file takes per open: requests are one short line


@dataclasses.dataclass
class RequestHandle:
    """A control file open for writing (`.tgfs/trash.json`): the lines written are requests,
    carried out at flush (close), in the name of the user who opened it."""

    inode: int
    uid: int
    gid: int
    data: bytearray = dataclasses.field(default_factory=bytearray)

    def add(self, buf: bytes) -> int:
        if len(self.data) + len(buf) > REQUEST_MAX:
            raise pyfuse3.FUSEError(errno.EFBIG)
        self.data += buf
        return len(buf)

    def take(self) -> list[str]:
        """The requests written since the last flush (a dup'd descriptor flushes again)."""
        text = self.data.decode("utf-8", "replace")
        self.data.clear()
        return [line for line in text.splitlines() if line.strip()]

    def close(self) -> None:
        pass


Handle = SpoolHandle | WriteHandle | BlobHandle | BytesHandle | RequestHandle


class OpenParts:
    """Store parts that open handles are reading: the garbage collector leaves them alone
    until the last one is closed (a player holding a video that was just deleted)."""

    def __init__(self) -> None:
        self._readers: collections.Counter[str] = collections.Counter()  # location → handles

    def opened(self, parts: list[PartRef]) -> None:
        for part in parts:
            self._readers[part.location] += 1

    def closed(self, parts: list[PartRef]) -> None:
        for part in parts:
            self._readers[part.location] -= 1
            if self._readers[part.location] <= 0:
                del self._readers[part.location]

    def in_use(self, location: str) -> bool:
        return self._readers[location] > 0
