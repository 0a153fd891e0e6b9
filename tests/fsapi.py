"""The filesystem driven in-process: `Filesystem`'s handlers called directly, as the kernel
would call them, on a fresh catalog and local store (S3QL's tests/t3_fs_api.py does the
same). No mount, no daemon, no polling: each call returns when its work is done.

Background loops (ingest, garbage collection, prefetch) do not run; a test that needs
them uses a mount (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pyfuse3

from tgfs import config
from tgfs.cache import PartCache
from tgfs.catalog import ROOT_ID, close_catalog, open_catalog
from tgfs.catalog.check import check
from tgfs.collector import GarbageCollector
from tgfs.fs.operations import Filesystem
from tgfs.ingest.runner import IngestRunner
from tgfs.prefetch import Prefetcher
from tgfs.spool import Spool
from tgfs.store.local import LocalStore


@dataclasses.dataclass
class Ctx:
    """What pyfuse3 passes as a RequestContext."""

    uid: int = 0
    gid: int = 0
    pid: int = 1
    umask: int = 0o022


class FsApi:
    def __init__(self, root: Path, **env: str) -> None:
        """`env`: settings beyond the data and cache directories."""
        self.settings = config.load(
            {"TGFS_DATA_DIR": str(root / "data"), "TGFS_CACHE_DIR": str(root / "cache"), **env},
            env_file=Path("/dev/null"),
        )
        open_catalog(self.settings.catalog)
        self.store = LocalStore(self.settings.local_store_dir)
        spool = Spool(self.settings.spool_dir)
        cache = PartCache(self.settings.cache_dir, 2**26, self.store)
        self.invalidated: list[tuple[int, bytes]] = []
        runner = IngestRunner(self.settings, self.store, spool, lambda p, n: None)
        collector = GarbageCollector(self.store, lambda loc: False)
        self.fs = Filesystem(
            self.settings, spool, cache, self.store, runner, collector, Prefetcher(cache, 0)
        )
        self.ctx = Ctx()

    def close(self) -> None:
        self.fs.close()
        problems = check()
        close_catalog()
        assert not problems, "\n".join(map(str, problems))

    # ---- helpers: one kernel request each, or the few a syscall makes ----------------------

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        return await self.fs.lookup(parent, os.fsencode(name), self.ctx)

    async def mkdir(self, parent: int, name: str, mode: int = 0o755) -> int:
        return (await self.fs.mkdir(parent, os.fsencode(name), mode, self.ctx)).st_ino

    async def write_file(self, parent: int, name: str, data: bytes) -> int:
        """create, write, flush (close()), release: a whole `cp`."""
        info, attrs = await self.fs.create(
            parent, os.fsencode(name), 0o644, os.O_WRONLY | os.O_CREAT, self.ctx
        )
        await self.fs.write(info.fh, 0, data)
        await self.fs.flush(info.fh)
        await self.fs.release(info.fh)
        return attrs.st_ino

    async def read_file(self, inode: int) -> bytes:
        info = await self.fs.open(inode, os.O_RDONLY, self.ctx)
        try:
            return await self.fs.read(info.fh, 0, 2**30)
        finally:
            await self.fs.release(info.fh)

    async def listdir(self, inode: int) -> list[str]:
        """readdir as the kernel pages through it, two entries per call (so offsets are
        exercised); the kernel's lookup references are given back at once."""
        names: list[str] = []
        offset = 0
        while True:
            page: list[tuple[bytes, int, int]] = []

            def reply(token, name, attrs, next_id, page=page):
                if len(page) == 2:
                    return False
                page.append((name, attrs.st_ino, next_id))
                return True

            real, pyfuse3.readdir_reply = pyfuse3.readdir_reply, reply
            try:
                await self.fs.readdir(inode, offset, None)
            finally:
                pyfuse3.readdir_reply = real
            if not page:
                return names
            names += [os.fsdecode(n) for n, _, _ in page]
            await self.fs.forget([(ino, 1) for _, ino, _ in page])
            offset = page[-1][2]

    def file_type(self, attrs: pyfuse3.EntryAttributes) -> int:
        return stat.S_IFMT(attrs.st_mode)


ROOT = ROOT_ID
