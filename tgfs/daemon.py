"""Wires the pieces together under one trio nursery and runs the mount until unmounted.

    FUSE handlers (fs.operations) ─┬─ spool (incoming writes)
                                   ├─ ingest runner ── media child ── store
                                   ├─ part cache ── store
                                   └─ garbage collector ── store

Stops cleanly on SIGINT/SIGTERM (unmounts), or when the mount is unmounted from outside
(`fusermount3 -u`, `tgfs umount`).
"""

from __future__ import annotations

import logging
import signal
import uuid
from pathlib import Path

import pyfuse3
import trio

from tgfs.cache import PartCache
from tgfs.catalog import Job, Meta, Node, close_catalog, open_catalog
from tgfs.config import ConfigError, Settings
from tgfs.fs.operations import Filesystem
from tgfs.ingest.runner import IngestRunner
from tgfs.spool import Spool
from tgfs.store.base import BlobStore, StoreError
from tgfs.store.collector import GarbageCollector
from tgfs.store.local import LocalStore
from tgfs.store.telegram.store import TelegramStore

log = logging.getLogger(__name__)


def make_store(settings: Settings) -> BlobStore:
    if settings.store_kind == "telegram":
        log.info("store: Telegram, %d bot(s), %d replica(s) per part", len(settings.bots),
                 settings.replicas)
        return TelegramStore(settings)
    log.info("store: local directory %s (no Telegram bots configured)",
             settings.local_store_dir)
    return LocalStore(settings.local_store_dir)


def _catalog_id() -> str:
    """A random id made with the catalog; names its cache folder (see tgfs.cache)."""
    row, _ = Meta.get_or_create(key="catalog_id", defaults={"value": uuid.uuid4().hex})
    return row.value


def run(settings: Settings, mountpoint: Path, debug_fuse: bool = False) -> None:
    """Mount and serve until unmounted. Blocks."""
    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    for skipped in settings.skipped_bots:
        log.warning("config: %s; skipped", skipped)
    open_catalog(settings.catalog_path)
    try:
        store = make_store(settings)
        spool = Spool(settings.spool_dir)
        keep = {n.spool for n in Node.select(Node.spool).where(Node.spool.is_null(False))}
        keep |= {j.spool for j in Job.select(Job.spool).where(Job.state.in_(["queued",
                                                                             "running"]))}
        spool.sweep(keep)
        cache = PartCache(settings.cache_dir / _catalog_id(), settings.cache_size, store)
        trio.run(_serve, settings, mountpoint, store, spool, cache, debug_fuse)
    finally:
        close_catalog()


async def _serve(settings: Settings, mountpoint: Path, store: BlobStore, spool: Spool,
                 cache: PartCache, debug_fuse: bool) -> None:
    try:
        await store.start()
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    try:
        await _serve_mounted(settings, mountpoint, store, spool, cache, debug_fuse)
    finally:
        await store.aclose()


async def _serve_mounted(settings: Settings, mountpoint: Path, store: BlobStore,
                         spool: Spool, cache: PartCache, debug_fuse: bool) -> None:
    fs_ref: list[Filesystem] = []
    collector = GarbageCollector(store, lambda loc: fs_ref[0].part_in_use(loc))
    runner = IngestRunner(settings, store, spool, lambda p, names: fs_ref[0].invalidate(p, names))
    fs = Filesystem(settings, spool, cache, store, runner, collector)
    fs_ref.append(fs)
    options = set(pyfuse3.default_options)
    options |= {"fsname=tgfs", "subtype=tgfs"}
    if settings.allow_other:
        options.add("allow_other")
    if debug_fuse:
        options.add("debug")
    pyfuse3.init(fs, str(mountpoint), options)
    log.info("mounted %s (store: %s); Ctrl-C or `tgfs umount %s` to unmount",
             mountpoint, store.kind, mountpoint)
    try:
        async with trio.open_nursery() as nursery:
            async def fuse_main() -> None:
                await pyfuse3.main()
                nursery.cancel_scope.cancel()  # unmounted from outside

            nursery.start_soon(fuse_main)
            nursery.start_soon(runner.run)
            nursery.start_soon(collector.run)
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", mountpoint)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            scope.cancel()
            return
