"""Wires the pieces together under one trio nursery and runs the mount until unmounted.

    FUSE handlers (fs.operations) ─┬─ spool (incoming writes)
                                   ├─ ingest runner ── media child ── store
                                   ├─ part cache ── store
                                   └─ garbage collector ── store

Stops cleanly on SIGINT/SIGTERM (unmounts), or when the mount is unmounted from outside
(`fusermount3 -u`, `tgfs umount`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import peewee
import pyfuse3
import trio

from tgfs.backups import Backups, Manifest, Restored, read_manifest, restore
from tgfs.cache import PartCache
from tgfs.catalog import (
    blobs,
    close_catalog,
    duties,
    facts,
    host,
    jobs,
    library,
    now_ns,
    open_catalog,
    trash,
)
from tgfs.catalog.backups import Generation
from tgfs.catalog.reserve import Reserve
from tgfs.collector import GarbageCollector
from tgfs.config import ConfigError, Settings
from tgfs.fs.handles import OpenParts
from tgfs.fs.operations import Filesystem
from tgfs.fs.render import Names, Renderer
from tgfs.fs.writes import Writes
from tgfs.fsck import Report, fsck
from tgfs.ingest.runner import Doorbell, IngestRunner
from tgfs.keys import key_id
from tgfs.lock import LOCK_NAME, DirectoryLock
from tgfs.prefetch import Prefetcher
from tgfs.service import Notifier
from tgfs.spool import Spool
from tgfs.status import one_line
from tgfs.store.base import BlobStore, StoreError
from tgfs.store.local import LocalStore
from tgfs.store.sealing import sealer_for

log = logging.getLogger(__name__)

T = TypeVar("T")


def make_store(settings: Settings) -> BlobStore:
    if settings.store_kind == "telegram":
        log.info(
            "store: Telegram, %d bot(s), %d replica(s) per part",
            len(settings.bots),
            settings.replicas,
        )
        # Imported here: pyrogram takes ~0.7 s to import, which a mount on the local store
        # (and every test's daemon) need not pay.
        from tgfs.store.telegram.store import TelegramStore

        return TelegramStore(settings)
    log.info("store: local directory %s (no Telegram bots configured)", settings.local_store_dir)
    return LocalStore(settings.local_store_dir)


def run(settings: Settings, mountpoint: Path, debug_fuse: bool = False) -> None:
    """Mount and serve until unmounted. Blocks."""
    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    for skipped in settings.skipped_bots:
        log.warning("config: %s; skipped", skipped)
    _private_dirs(settings)
    with contextlib.ExitStack() as held:
        held.enter_context(DirectoryLock(settings.data_dir, mountpoint))
        # A spool outside the data directory is swept at start too: it gets a lock of its own.
        if not settings.spool_dir.is_relative_to(settings.data_dir):
            held.enter_context(DirectoryLock(settings.spool_dir, mountpoint))
        _open_catalog(settings)
        held.callback(close_catalog)
        _check_key(settings)
        store = make_store(settings)
        spool = Spool(settings.spool_dir)
        _recover()
        spool.sweep(jobs.live_spools() | {str(settings.spool_dir / LOCK_NAME)})
        cache = PartCache(
            settings.cache_dir / facts.catalog_id(),
            settings.cache_size,
            store,
            settings.cache_min_free,
            sealer_for(settings),
        )
        trio.run(_serve, settings, mountpoint, store, spool, cache, debug_fuse)


def _open_catalog(settings: Settings) -> None:
    """The catalog, opened as this data directory's host (tgfs.catalog.host)."""
    host.identify(settings.data_dir)
    open_catalog(settings.catalog)


def _private_dirs(settings: Settings) -> None:
    """The data, cache and spool directories, 0700: made so, or made so now (a library
    from before this was so had them 0755; what is inside is then out of reach too)."""
    for folder in {settings.data_dir, settings.cache_dir, settings.spool_dir}:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_uid == os.getuid():
            folder.chmod(0o700)


def backup_offline(settings: Settings) -> Generation | None:
    """`tgfs backup` with no daemon running: one generation now (the lock keeps a daemon
    from starting meanwhile). None if it failed (the reason is logged)."""
    with DirectoryLock(settings.data_dir, Path("(tgfs backup)")):
        if not settings.catalog_url and not settings.catalog_path.exists():
            raise ConfigError(f"no catalog at {settings.catalog_path}: nothing to back up")
        _open_catalog(settings)
        try:
            _check_key(settings)
            return trio.run(_with_store, settings, _backup_once)
        finally:
            close_catalog()


def restore_offline(settings: Settings, generation: int | None, force: bool) -> Restored:
    """`tgfs restore`: the catalog rebuilt from the store (see tgfs.backups.restore)."""
    with DirectoryLock(settings.data_dir, Path("(tgfs restore)")):
        return trio.run(
            _with_store, settings, lambda s, store: restore(s, store, generation, force)
        )


def fsck_offline(settings: Settings, repair: bool = False) -> Report:
    """`tgfs fsck` with no daemon running (see tgfs.fsck)."""
    with _offline_catalog(settings, "fsck"):
        return trio.run(_with_store, settings, lambda s, store: fsck(s, store, repair))


@contextlib.contextmanager
def _offline_catalog(settings: Settings, what: str) -> Iterator[None]:
    """The catalog, with no daemon running on the data directory (the lock says so)."""
    with DirectoryLock(settings.data_dir, Path(f"(tgfs {what})")):
        if not settings.catalog_url and not settings.catalog_path.exists():
            raise ConfigError(f"no catalog at {settings.catalog_path} (tgfs restore makes one)")
        _open_catalog(settings)
        try:
            _check_key(settings)
            yield
        finally:
            close_catalog()


def _check_key(settings: Settings) -> None:
    """The key, if any, must be the one the library's sealed parts were sealed with: with
    another, every one of them would read as an error, and new ones would be sealed under a
    key the next correct start could not open. (Without any key, a library with sealed
    parts still mounts: its plain files read, the sealed ones are EIO, and the log says
    why.)"""
    sealed = blobs.sealed()
    key = settings.key
    if key is None:
        if sealed:
            log.warning(
                "%d parts of this library are encrypted and no encryption key is set: "
                "reading them fails (EIO) until TGFS_ENCRYPTION_KEY(_FILE) is set",
                sealed,
            )
        return
    recorded, given = facts.get(facts.KEY_ID), key_id(key)
    if sealed and recorded not in (None, given):
        raise ConfigError(
            f"the encryption key set (id {given}) is not the key this library was "
            f"encrypted with (id {recorded}): its {sealed} encrypted parts would be "
            "unreadable with it"
        )
    if recorded != given:
        facts.put(facts.KEY_ID, given)
    log.info("encryption: on (key id %s); %d parts and backups sealed so far", given, sealed)


def trash_offline(settings: Settings) -> list[trash.Item]:
    """`tgfs trash` with no mount: what the trash holds."""
    with _offline_catalog(settings, "trash"):
        return trash.items()


def undelete_offline(settings: Settings, item_id: int) -> trash.Restored:
    """`tgfs undelete` with no mount (KeyError: no such item)."""
    with _offline_catalog(settings, "undelete"):
        return trash.restore(item_id, os.getuid(), os.getgid())


def empty_trash_offline(settings: Settings) -> int:
    """`tgfs trash --empty` with no mount: everything in the trash is deleted from the
    store now. Returns how many items went."""
    with _offline_catalog(settings, "trash --empty"):
        gone, spools = trash.let_go(None, lambda _inode: False)
        for spool in spools:
            Spool.discard(spool)
        trio.run(_with_store, settings, _collect_garbage)
        return len(gone)


async def _collect_garbage(settings: Settings, store: BlobStore) -> None:
    failed = await GarbageCollector(store, lambda _location: False).collect_once()
    if failed:
        log.warning("store: %d delete(s) failed; the next mount tries again", failed)


def manifest_offline(settings: Settings) -> Manifest:
    """`tgfs backups` with no mount: what the store's manifest lists."""
    return trio.run(_with_store, settings, lambda s, store: read_manifest(store, sealer_for(s)))


async def _backup_once(settings: Settings, store: BlobStore) -> Generation | None:
    return await Backups(settings, store, settings.spool_dir).backup_now("asked for")


async def _with_store(settings: Settings, work: Callable[[Settings, BlobStore], Awaitable[T]]) -> T:
    store = make_store(settings)
    try:
        await store.start()
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return await work(settings, store)
    finally:
        await store.aclose()


def _recover() -> None:
    """What a crash left: writes never closed (kept, and queued), files unlinked while open
    (deleted now), parts stored for jobs that never finished (to the garbage list: the jobs
    start over)."""
    recovered = jobs.recover_writes()
    if recovered:
        log.warning(
            "recovered %d file(s) that were being written when tgfs stopped", len(recovered)
        )
    for path in library.purge_unlinked():
        Spool.discard(path)
    if collected := blobs.collect_landed():
        log.info(
            "store: %d part(s) stored by unfinished jobs will be deleted (the jobs start over)",
            collected,
        )


async def _serve(
    settings: Settings,
    mountpoint: Path,
    store: BlobStore,
    spool: Spool,
    cache: PartCache,
    debug_fuse: bool,
) -> None:
    try:
        await store.start()
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    try:
        await _collect_orphans(store)
        facts.put(facts.stopped_cleanly(), "0")  # until this daemon exits normally
        await _serve_mounted(settings, mountpoint, store, spool, cache, debug_fuse)
        try:  # every put was awaited or cancelled, and recorded
            facts.put(facts.stopped_cleanly(), "1")
        except peewee.OperationalError as exc:  # a full disk: the next start just looks
            log.warning("could not record the clean stop (%s)", exc)
    finally:
        await store.aclose()


ORPHAN_SCAN_TIMEOUT = 120.0  # seconds; a store that slow is scanned again next start


async def _collect_orphans(store: BlobStore) -> None:
    """After a kill or a crash, a put may have finished in the store without the catalog
    hearing of it. Ask the store for parts nothing names (before any new put), and queue
    them for deletion."""
    if facts.get(facts.stopped_cleanly()) == "1" and facts.get(facts.ORPHAN_SCAN_DUE) != "1":
        return
    facts.put(facts.ORPHAN_SCAN_DUE, "1")
    if not duties.alone():  # the others' puts not yet recorded would look like orphans
        log.info(
            "store: the look for parts left by the last crash waits for a start with no "
            "other host connected to the catalog"
        )
        return
    try:
        with trio.fail_after(ORPHAN_SCAN_TIMEOUT):
            found = await store.orphans(blobs.known_locations().__contains__)
    except (StoreError, OSError, trio.TooSlowError) as exc:
        log.warning(
            "store: could not look for parts left by the last crash (%s); will "
            "look again at the next start",
            exc or "timed out",
        )
        return
    facts.put(facts.ORPHAN_SCAN_DUE, "0")
    if found:
        blobs.queue_orphans(found)
        log.info("store: %d part(s) left by the last crash will be deleted", len(found))


async def _serve_mounted(
    settings: Settings,
    mountpoint: Path,
    store: BlobStore,
    spool: Spool,
    cache: PartCache,
    debug_fuse: bool,
) -> None:
    # Made first and shared, so that no piece needs another to exist before it: the kernel's
    # names (publishing changes them), the open handles' parts (the collector spares them),
    # write sessions (the runner leaves files being written alone) and the runner's bell.
    names = Names(Renderer())
    open_parts = OpenParts()
    doorbell = Doorbell()
    writes = Writes(spool, cache, settings.max_upload_size, doorbell.ring, names.invalidate)
    collector = GarbageCollector(
        store, open_parts.in_use, lambda: cache.drop_unknown(blobs.known_parts)
    )
    runner = IngestRunner(
        settings, store, spool, names.invalidate, writes.busy, collector.wake, doorbell
    )
    prefetch = Prefetcher(cache, settings.prefetch_segments)
    backups = Backups(settings, store, spool.root)
    fs = Filesystem(
        settings,
        spool,
        cache,
        store,
        runner,
        collector,
        prefetch,
        writes,
        names,
        open_parts,
        backups,
    )
    options = set(pyfuse3.default_options)
    options |= {"fsname=tgfs", "subtype=tgfs"}
    if settings.allow_other:
        options.add("allow_other")
    if debug_fuse:
        options.add("debug")
    notifier = Notifier()
    pyfuse3.init(fs, str(mountpoint), options)
    log.info(
        "mounted %s (store: %s); Ctrl-C or `tgfs umount %s` to unmount",
        mountpoint,
        store.kind,
        mountpoint,
    )
    try:
        async with trio.open_nursery() as nursery:

            async def fuse_main() -> None:
                await pyfuse3.main()
                nursery.cancel_scope.cancel()  # unmounted from outside

            nursery.start_soon(fuse_main)
            nursery.start_soon(runner.run)
            nursery.start_soon(collector.run)
            await nursery.start(cache.run)
            await nursery.start(prefetch.run)
            if settings.catalog_url:  # other hosts may share it: hear of their changes
                from tgfs.fs.notices import Notices  # (psycopg: only for PostgreSQL)

                notices = Notices(settings.catalog_url, fs.renderer.forget_nodes, doorbell.ring)
                await nursery.start(notices.run)
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            nursery.start_soon(_keep_reserve, fs.reserve)
            nursery.start_soon(backups.run)
            nursery.start_soon(_expire_trash, fs, settings.trash_days)
            nursery.start_soon(_tell_systemd, notifier, fs, mountpoint)
    finally:
        notifier.send("STOPPING=1", "STATUS=unmounting")
        notifier.close()
        pyfuse3.close(unmount=True)
        fs.close()
        log.info("unmounted %s", mountpoint)
        with trio.CancelScope(shield=True), trio.move_on_after(BACKUP_AT_EXIT_TIMEOUT):
            if backups.changed():
                await backups.backup_now("at unmount")


# A backup at unmount waits this long at most (a film's catalog is a few MB, one part), so a
# stop never hangs on a store that is down; the previous generation then stands.
BACKUP_AT_EXIT_TIMEOUT = 60.0
RESERVE_CHECK = 30.0  # seconds between checks that the catalog's reserve is in place


STATUS_EVERY = 10.0  # seconds between STATUS= lines to systemd (and keep-alives, at most)


async def _tell_systemd(notifier: Notifier, fs: Filesystem, mountpoint: Path) -> None:
    """READY=1 once the mount answers a request (a stat through the kernel, answered by
    this loop), then STATUS= lines, and WATCHDOG=1 keep-alives as often as WatchdogSec asks
    (see tgfs.service). Nothing to do when systemd did not start us."""
    if not notifier.enabled:
        return
    try:
        await trio.to_thread.run_sync(os.stat, mountpoint / ".tgfs" / "status.json")
    except OSError as exc:  # no READY=1: systemd's start timeout then says so
        log.error("the mount does not answer (%s); not telling systemd it is ready", exc)
        return
    notifier.send("READY=1", f"STATUS=mounted {mountpoint}; {await _status_line(fs)}")
    log.info("systemd: told it the mount is ready")
    every = min(notifier.keepalive_every or STATUS_EVERY, STATUS_EVERY)
    last_status = trio.current_time()
    while True:
        await trio.sleep(every)
        fields = ["WATCHDOG=1"] if notifier.keepalive_every else []
        if trio.current_time() - last_status >= STATUS_EVERY - every / 2:
            fields.append(f"STATUS={await _status_line(fs)}")
            last_status = trio.current_time()
        if fields:
            notifier.send(*fields)


async def _status_line(fs: Filesystem) -> str:
    """The STATUS= text; a failure to make it (a catalog error) never stops keep-alives."""
    try:
        await fs.refresh_health()
        return one_line(fs.status())
    except Exception as exc:
        log.exception("status for systemd failed")
        return f"status unavailable: {type(exc).__name__}"


TRASH_CHECK = 60.0  # seconds between looks for trash past TGFS_TRASH_DAYS (one indexed query)


async def _expire_trash(fs: Filesystem, days: float) -> None:
    """What has been in the trash for TGFS_TRASH_DAYS goes for good (all of it if the
    setting went down to 0). Looked for every TRASH_CHECK, or a tenth of a short stay."""
    period = min(TRASH_CHECK, max(1.0, days * trash.DAY_NS / 1e9 / 10)) if days else TRASH_CHECK
    while True:
        try:
            with duties.duty(duties.Duty.TRASH) as mine:  # (one host at a time)
                if mine:
                    fs.let_go_of_trash(now_ns() - int(days * trash.DAY_NS))
        except Exception:  # a full disk, a catalog error: the next look tries again
            log.exception("trash: letting old items go failed")
        await trio.sleep(period)


async def _keep_reserve(room: Reserve) -> None:
    while True:
        await trio.to_thread.run_sync(room.ensure)
        await trio.sleep(RESERVE_CHECK)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            scope.cancel()
            return
