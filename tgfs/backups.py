"""Backups of the catalog in the store it describes, and restoring from them.

Bots cannot list a channel: the catalog is the only index of what lives where, and losing it
loses the library. So it is backed up into the store, in this order:

1. a consistent snapshot, on a connection of its own, in a thread (the FUSE thread never
   waits for it; the live file is never copied), gzip-compressed: `VACUUM INTO` for the
   SQLite catalog, a dump of its rows in one REPEATABLE READ transaction for PostgreSQL
   (tgfs.catalog.dump; on a catalog several hosts share, one host at a time makes it);
2. stored as parts like any file, each part recorded as landed the moment the store takes
   it, so a crash leaves nothing the catalog does not know of;
3. one transaction records the generation (Backup row) and lets the oldest beyond
   `TGFS_BACKUP_KEEP` go to the garbage list;
4. the manifest (every kept generation, with its parts) is saved where the store finds it
   with nothing but the settings: a fixed file in the local store, a pinned message in
   each bot's channel. Until this step the previous manifest stands, so a crash anywhere
   leaves the previous generation usable.

Backups run after changes, at most every `TGFS_BACKUP_INTERVAL`, and at a clean unmount;
`tgfs backup` makes one now. `tgfs restore` rebuilds a catalog from the newest generation
(or the one asked for) with nothing but the settings, into either engine whichever made the
backup, and never overwrites a catalog unless told (a SQLite one is then moved aside, not
deleted; a PostgreSQL database must be empty).

With an encryption key the compressed snapshot is sealed whole (tgfs.store.sealing; its
salt in the generation's record) before it is cut into parts, under an opaque name, and the
manifest is sealed too (`_SEALED_MANIFEST` + salt + sealed JSON): the store learns nothing
of the library from them, and a restore with the wrong key fails on the manifest, with a
message that says so, before anything is written. A manifest made without a key stays
readable after one is set.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import peewee
import psycopg
import pydantic
import trio

from tgfs.catalog import backups as generations_table
from tgfs.catalog import blobs, dump, facts
from tgfs.catalog.backups import Generation
from tgfs.catalog.dump import DumpError
from tgfs.catalog.duties import Duty, duty
from tgfs.catalog.schema import changes_seen, db, is_sqlite, now_ns
from tgfs.config import Settings, format_time
from tgfs.store.base import BlobStore, StoreError
from tgfs.store.parts import Upload, put_files
from tgfs.store.sealing import (
    SALT_BYTES,
    SealBroken,
    Sealer,
    new_salt,
    plain_size,
    sealer_for,
)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
_CHECK_EVERY = 10.0  # seconds between looks at whether a backup is due
_WORK = "backup"  # folder in the spool for the snapshot being made (swept at start)
BACKUP_STATE = "backup_state"  # Meta key: the library's fingerprint at the newest backup


@dataclasses.dataclass
class Manifest:
    """What the store keeps about the catalog's backups (a few KB of JSON)."""

    catalog_id: str  # the catalog's random id (tgfs.catalog.facts)
    generations: list[Generation]  # newest first
    format: int = MANIFEST_FORMAT


_MANIFEST = pydantic.TypeAdapter(Manifest)
# What a sealed manifest starts with (a plain one is JSON: "{").
_SEALED_MANIFEST = b"tgfs-sealed-manifest-v1\n"


def encode_manifest(manifest: Manifest, sealer: Sealer | None) -> bytes:
    data = _MANIFEST.dump_json(manifest)
    if sealer is None:
        return data
    salt = new_salt()
    return _SEALED_MANIFEST + salt + sealer.seal(salt, data)


def decode_manifest(data: bytes, sealer: Sealer | None) -> Manifest:
    if data.startswith(_SEALED_MANIFEST):
        if sealer is None:
            raise StoreError(
                "the store's backup manifest is encrypted: set the library's key "
                "(TGFS_ENCRYPTION_KEY or TGFS_ENCRYPTION_KEY_FILE)",
                retryable=False,
            )
        rest = data[len(_SEALED_MANIFEST) :]
        salt, sealed = rest[:SALT_BYTES], rest[SALT_BYTES:]
        try:
            size = plain_size(len(sealed))
            data = sealer.open(salt, sealed, 0, size, size)
        except SealBroken:
            raise StoreError(
                "the encryption key does not open the store's backup manifest: it is not "
                "the key this library's backups were made with (or the manifest was "
                "tampered with)",
                retryable=False,
            ) from None
    try:
        return _MANIFEST.validate_json(data)
    except pydantic.ValidationError as exc:
        raise StoreError(f"the store's backup manifest is unreadable: {exc}") from None


class Backups:
    """Backs the catalog up into the store (see the module doc)."""

    def __init__(self, settings: Settings, store: BlobStore, spool_root: Path) -> None:
        self.settings = settings
        self.store = store
        self.sealer = sealer_for(settings)
        self.work = spool_root / _WORK
        self._lock = trio.Lock()
        # What the library looked like at the last backup (see `changed`).
        # (The state is kept in the catalog: changes a crash kept from being backed up are
        # still changes after the restart.)
        self._saved_changes: object = -1
        saved = facts.get(BACKUP_STATE)
        self._saved_state: list | None = json.loads(saved) if saved else None
        self._last = 0.0  # time.monotonic() of the last backup attempt
        self.last_error: str | None = None

    def changed(self) -> bool:
        """Has the library changed since the last backup? Its own bookkeeping (backup
        rows, garbage collected) does not count, or backups would beget backups. The
        connection's change counter is the cheap first look."""
        changes = changes_seen()
        if changes == self._saved_changes:
            return False
        if _state() == self._saved_state:
            self._saved_changes = changes  # bookkeeping only: look no more until the next
            return False
        return True

    async def run(self) -> None:
        """Back up after changes, at most every TGFS_BACKUP_INTERVAL (0: only on demand and
        at unmount)."""
        interval = self.settings.backup_interval
        if not interval:
            return
        self._last = time.monotonic()
        while True:
            await trio.sleep(min(_CHECK_EVERY, interval))
            if time.monotonic() - self._last >= interval and self.changed():
                await self.backup_now("after changes")

    async def backup_now(self, why: str) -> Generation | None:
        """One generation now; None if it failed (logged, and said in status). Never
        raises for a store or disk failure: the mount goes on, the next one tries again."""
        async with self._lock:
            self._last = time.monotonic()
            try:
                with duty(Duty.BACKUP) as mine:
                    if not mine:
                        log.info("backup (%s): another host is making one; not here", why)
                        return None
                    made = await self._backup()
            except (
                StoreError,
                OSError,
                sqlite3.Error,
                peewee.PeeweeException,
                psycopg.Error,
                DumpError,
            ) as exc:
                self.last_error = str(exc)[:300]
                log.warning("backup (%s) failed: %s; the previous generation stands", why, exc)
                return None
            except Exception as exc:  # a bug: it must not end the mount
                self.last_error = f"internal error: {exc}"[:300]
                log.exception("backup (%s) failed; the previous generation stands", why)
                return None
            self.last_error = None
            log.info(
                "backup %d (%s): %d bytes of catalog, %d stored",
                made.generation,
                why,
                made.size,
                made.stored_size,
            )
            return made

    async def _backup(self) -> Generation:
        state = _state()
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        snapshot = self.work / ("catalog.db" if is_sqlite() else "catalog.rows")
        packed = snapshot.with_name(snapshot.name + ".gz")
        created = now_ns()
        if is_sqlite():
            await trio.to_thread.run_sync(_snapshot, self.settings.catalog_path, snapshot)
        else:
            await trio.to_thread.run_sync(dump.write, self.settings.catalog_url, snapshot)
        size = snapshot.stat().st_size
        await trio.to_thread.run_sync(_compress, snapshot, packed)
        generation = generations_table.next_generation()
        key, salt = f"backup-{generation}", None
        if self.sealer is not None:
            salt, key = new_salt(), self.sealer.name(key)
            plain, packed = packed, self.work / "catalog.db.gz.sealed"
            await trio.to_thread.run_sync(
                self.sealer.seal_file, salt, plain, 0, plain.stat().st_size, packed
            )
        stored: list[str] = []
        upload = Upload(packed, packed.stat().st_size, key, everywhere=True)

        def landed(part) -> None:
            blobs.landed(part.location, None)
            stored.append(part.location)

        try:
            parts = (await put_files(self.store, [upload], self.settings.part_size, landed))[packed]
        except BaseException:
            blobs.queue_locations(stored)  # nothing half-stored is kept
            raise
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        made = Generation(
            generation=generation,
            created_ns=created,
            size=size,
            stored_size=upload.size,
            parts=[(p.location, p.size) for p in parts],
            seal=salt.hex() if salt else None,
        )
        if generations_table.record(made, self.settings.backup_keep):
            log.info("backup: older generations beyond TGFS_BACKUP_KEEP go")
        manifest = Manifest(
            catalog_id=facts.catalog_id(), generations=generations_table.generations()
        )
        await self.store.save_manifest(encode_manifest(manifest, self.sealer))
        facts.put(BACKUP_STATE, json.dumps(state))
        self._saved_changes, self._saved_state = changes_seen(), state
        return made


def _state() -> list:
    """A fingerprint of the library: every change to the tree touches a directory's or a
    node's times (tgfs.catalog.tree), and stored content adds blobs."""
    return list(
        db.execute_sql(
            "SELECT (SELECT max(ctime_ns) FROM node), (SELECT count(*) FROM node), "
            "(SELECT max(id) FROM blob), (SELECT count(*) FROM blob), "
            "(SELECT count(*) FROM video WHERE complete)"
        ).fetchone()
    )


def _snapshot(catalog: Path, dest: Path) -> None:
    """A consistent copy of the live catalog (its own read transaction, WAL included)."""
    con = sqlite3.connect(catalog)
    try:
        con.execute("VACUUM INTO ?", (str(dest),))
    finally:
        con.close()


def _compress(src: Path, dest: Path) -> None:
    with open(src, "rb") as f, gzip.open(dest, "wb", compresslevel=6) as out:
        shutil.copyfileobj(f, out, 2**20)


def _decompress(src: Path, dest: Path) -> None:
    with gzip.open(src, "rb") as f, open(dest, "wb") as out:
        shutil.copyfileobj(f, out, 2**20)
        out.flush()
        os.fsync(out.fileno())


def backups_snapshot(backups: Backups | None) -> dict:
    """`.tgfs/backups.json`: the generations kept, newest first, and the last failure."""
    rows = [
        {
            "generation": g.generation,
            "created": format_time(g.created_ns),
            "size": g.size,
            "stored_size": g.stored_size,
            "parts": len(g.parts),
        }
        for g in generations_table.generations()
    ]
    return {
        "generations": rows,
        "interval_s": backups.settings.backup_interval if backups else None,
        "last_error": backups.last_error if backups else None,
    }


# ---- restoring -------------------------------------------------------------------------------


async def read_manifest(store: BlobStore, sealer: Sealer | None) -> Manifest:
    data = await store.load_manifest()
    if data is None:
        raise StoreError("no backup of a catalog was found in the store", retryable=False)
    return decode_manifest(data, sealer)


@dataclasses.dataclass(frozen=True)
class Restored:
    generation: Generation
    moved_aside: Path | None  # the catalog that was there (with --force)
    lost: list[str]  # files whose content was only in a spool this machine does not have


async def restore(
    settings: Settings, store: BlobStore, generation: int | None = None, force: bool = False
) -> Restored:
    """Rebuild the catalog from a backup generation (the newest if None), into the SQLite
    file or the PostgreSQL database the settings name, whichever engine made the backup
    (a snapshot of the other engine goes through a dump: tgfs.catalog.dump).

    A SQLite catalog appears in one rename, once whole and checked (`PRAGMA
    integrity_check`): a crash before leaves no catalog (or the old one), never half of
    one. An existing one is refused unless `force`; then it is moved aside, not deleted. A
    PostgreSQL database must hold no catalog; it is filled in one transaction.
    """
    from tgfs.catalog import close_catalog, host, library, open_catalog

    url = settings.catalog_url
    target = settings.catalog_path
    if url:
        if (why := await trio.to_thread.run_sync(dump.holds_catalog, url)) is not None:
            raise FileExistsError(
                f"the PostgreSQL database of TGFS_CATALOG_URL cannot be restored into ({why}):"
                " restore into an empty one (dropdb and createdb, or another database)"
            )
    elif target.exists() and not force:
        raise FileExistsError(
            f"{target} exists: restoring would replace it (--force moves it aside first)"
        )
    sealer = sealer_for(settings)
    manifest = await read_manifest(store, sealer)
    if not manifest.generations:
        raise StoreError("the store's backup manifest lists no generation", retryable=False)
    chosen = manifest.generations[0]
    if generation is not None:
        found = [g for g in manifest.generations if g.generation == generation]
        if not found:
            kept = ", ".join(str(g.generation) for g in manifest.generations)
            raise StoreError(f"no backup generation {generation} (kept: {kept})", retryable=False)
        chosen = found[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    packed = target.with_name(target.name + ".restoring.gz")
    fresh = target.with_name(target.name + ".restoring")
    rows = target.with_name(target.name + ".restoring.rows")
    leftovers = (packed, fresh, rows, Path(f"{fresh}-wal"), Path(f"{fresh}-shm"))
    for leftover in leftovers:  # a restore killed before: its WAL must not meet a new file
        leftover.unlink(missing_ok=True)
    with open(packed, "wb") as out:
        for location, size in chosen.parts:
            at = 0
            while at < size:
                data = await store.get(location, at, min(8 * 2**20, size - at))
                if not data:
                    raise StoreError(f"backup part {location} ends early", retryable=False)
                out.write(data)
                at += len(data)
    if chosen.seal is not None:
        await _open_sealed(sealer, bytes.fromhex(chosen.seal), packed, chosen.generation)
    await trio.to_thread.run_sync(_decompress, packed, fresh)
    packed.unlink()
    host.identify(settings.data_dir)
    moved = None
    lost: list[str] = []

    def finish() -> None:
        """In the restored catalog, before it is anyone's: a kill before it is done
        leaves no catalog (SQLite: not renamed in yet; PostgreSQL: one transaction)."""
        nonlocal lost
        generations_table.adopt(manifest.generations)
        lost = library.forget_missing_spools()
        # Parts stored after this generation are unknown to it: the next start must not
        # delete them as a crash's leftovers (`tgfs fsck` lists them).
        facts.put(facts.stopped_cleanly(), "1")
        facts.put(facts.ORPHAN_SCAN_DUE, "0")

    made_by_postgres = dump.is_dump(fresh)  # else a SQLite snapshot
    try:
        if made_by_postgres:
            os.replace(fresh, rows)
        else:  # a SQLite snapshot
            await trio.to_thread.run_sync(_check_sqlite, fresh)
            if url:
                await trio.to_thread.run_sync(dump.write, fresh, rows)
        open_catalog(url or fresh)  # (a SQLite snapshot is opened as it is)
        try:
            with db.atomic():
                if made_by_postgres or url:  # (a snapshot for SQLite is the catalog)
                    dump.load(rows)
                finish()
        finally:
            close_catalog()
        if not url:
            await trio.to_thread.run_sync(_check_sqlite, fresh)
            if target.exists():
                stamp = time.strftime("%Y%m%d-%H%M%S")
                moved = target.with_name(f"{target.name}.before-restore-{stamp}")
                for suffix in ("", "-wal", "-shm"):
                    old = Path(f"{target}{suffix}")
                    if old.exists():
                        os.replace(old, Path(f"{moved}{suffix}"))
            os.replace(fresh, target)
    finally:
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
    return Restored(chosen, moved, lost)


async def _open_sealed(sealer: Sealer | None, salt: bytes, packed: Path, generation: int) -> None:
    """The downloaded sealed snapshot, opened in place of itself."""
    if sealer is None:  # (a sealed manifest already needed the key: a plain one lists it)
        raise StoreError(
            f"backup generation {generation} is encrypted and no encryption key is set",
            retryable=False,
        )
    opened = packed.with_name(packed.name + ".opened")
    try:
        await trio.to_thread.run_sync(sealer.open_file, salt, packed, opened)
    except SealBroken as exc:
        opened.unlink(missing_ok=True)
        raise StoreError(f"backup generation {generation}: {exc}", retryable=False) from None
    os.replace(opened, packed)


def _check_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    try:
        (result,) = con.execute("PRAGMA integrity_check").fetchone()
    finally:
        con.close()
    if result != "ok":
        raise StoreError(f"the restored catalog is damaged: {result}", retryable=False)
