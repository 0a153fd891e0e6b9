"""Open file handles: what a file handle number stands for between open and release."""

from __future__ import annotations

import dataclasses
import os

from tgfs.fs.writes import Session
from tgfs.store.base import PartRef


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


@dataclasses.dataclass
class BlobHandle:
    """Stored, immutable content read through the cache (segments, stored files)."""

    inode: int
    parts: list[PartRef]
    size: int

    def close(self) -> None:
        pass


@dataclasses.dataclass
class BytesHandle:
    """Content rendered at open (playlists, status.json): one consistent snapshot per open."""

    inode: int
    data: bytes

    def close(self) -> None:
        pass


Handle = SpoolHandle | WriteHandle | BlobHandle | BytesHandle
