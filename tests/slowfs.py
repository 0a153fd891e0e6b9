"""A read-only FUSE mirror of a directory that is as slow as a store: for benchmarks.

`python -m tests.slowfs SOURCE MOUNTPOINT --latency 0.3 --bandwidth 2000000 --links 8`

It models a remote store the way the Telegram stand-in does, so a peer (rclone) can be
measured over the same physics as tgfs: every file is reached through one of `links` links
(chosen by a hash of its path, as a bot is chosen for a part); a read pays one request of
`latency` seconds per 1 MiB chunk it touches for the first time in that open file, and a
chunk's bytes then cross the link at `bandwidth` bytes/s, shared in order by all the
transfers on that link. Chunks already fetched by the open file are served at once;
concurrent reads of one chunk wait for one fetch.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import os
import stat
from pathlib import Path

import pyfuse3
import trio

CHUNK = 2**20


@dataclasses.dataclass
class _Open:
    fd: int
    link: int
    size: int
    chunks: dict[int, trio.Event] = dataclasses.field(default_factory=dict)


class SlowFS(pyfuse3.Operations):
    def __init__(
        self, root: Path, latency: float, bandwidth: float, links: int, keep_cache: bool = False
    ) -> None:
        super().__init__()
        self.root = root
        self.keep_cache = keep_cache
        self.latency, self.bandwidth, self.links = latency, bandwidth, links
        self._paths: dict[int, Path] = {pyfuse3.ROOT_INODE: root}
        self._inodes: dict[Path, int] = {root: pyfuse3.ROOT_INODE}
        self._open: dict[int, _Open] = {}
        self._wire_free = [0.0] * links

    def _inode(self, path: Path) -> int:
        if path not in self._inodes:
            self._inodes[path] = len(self._paths) + 1
            self._paths[self._inodes[path]] = path
        return self._inodes[path]

    def _attrs(self, path: Path) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = self._inode(path)
        attrs.st_mode = (
            (stat.S_IFDIR | 0o555) if stat.S_ISDIR(st.st_mode) else (stat.S_IFREG | 0o444)
        )
        attrs.st_nlink = 1
        attrs.st_size = st.st_size
        attrs.st_mtime_ns = attrs.st_ctime_ns = attrs.st_atime_ns = st.st_mtime_ns
        attrs.st_blksize = 128 * 1024
        attrs.st_blocks = (st.st_size + 511) // 512
        attrs.entry_timeout = attrs.attr_timeout = 3600
        return attrs

    async def lookup(self, parent_inode, name, ctx=None):
        return self._attrs(self._paths[parent_inode] / os.fsdecode(name))

    async def getattr(self, inode, ctx=None):
        return self._attrs(self._paths[inode])

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        names = sorted(os.listdir(self._paths[fh]))
        for i, name in enumerate(names[start_id:], start_id):
            attrs = self._attrs(self._paths[fh] / name)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, i + 1):
                break

    async def open(self, inode, flags, ctx):
        path = self._paths[inode]
        fd = os.open(path, os.O_RDONLY)
        link = (
            int.from_bytes(hashlib.blake2b(str(path).encode(), digest_size=4).digest(), "big")
            % self.links
        )
        self._open[fd] = _Open(fd, link, os.fstat(fd).st_size)
        return pyfuse3.FileInfo(fh=fd, keep_cache=self.keep_cache)

    async def read(self, fh, off, size):
        f = self._open[fh]
        last = min(off + size, f.size) - 1
        if last >= off:
            async with trio.open_nursery() as nursery:
                for index in range(off // CHUNK, last // CHUNK + 1):
                    nursery.start_soon(self._chunk, f, index)
        return os.pread(fh, size, off)

    async def _chunk(self, f: _Open, index: int) -> None:
        done = f.chunks.get(index)
        if done is not None:
            await done.wait()
            return
        done = f.chunks[index] = trio.Event()
        await trio.sleep(self.latency)  # the request's round trip
        nbytes = min(CHUNK, f.size - index * CHUNK)
        start = max(trio.current_time(), self._wire_free[f.link])
        self._wire_free[f.link] = start + nbytes / self.bandwidth
        await trio.sleep_until(self._wire_free[f.link])
        done.set()

    async def release(self, fh):
        os.close(self._open.pop(fh).fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--bandwidth", type=float, default=2e6)
    parser.add_argument("--links", type=int, default=8)
    parser.add_argument(
        "--keep-cache",
        action="store_true",
        help="let the page cache serve re-reads (with --latency 0: the "
        "fastest a Python FUSE filesystem can be, for warm reads)",
    )
    args = parser.parse_args()
    fs = SlowFS(args.source.absolute(), args.latency, args.bandwidth, args.links, args.keep_cache)
    options = set(pyfuse3.default_options) | {"fsname=slowfs", "ro"}
    pyfuse3.init(fs, str(args.mountpoint), options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
