"""`tgfs fsck [--repair]`: is the library whole? The catalog's consistency
(tgfs.catalog.check); every part the catalog names (files, segments, the catalog's own
backups) against the store; parts stored with fewer copies than TGFS_REPLICAS (bots were
down); parts in the store that nothing names (orphans: a crash, a restore of an older
backup, deletes that never reached the store).

Runs with no daemon on the data directory (it takes the lock). Without --repair it changes
nothing in the catalog; on Telegram, learning where each channel ends costs one tiny
document per bot, sent and deleted (see TelegramStore.orphans).

--repair, each step safe to kill and to run again:
- a copy the store lost is dropped from its part's location when another copy is left
  (one transaction per part); a part with no copy left is lost and reported by path; a
  backup generation with a part lost goes (it could never be restored);
- a part with too few copies gets more: its bytes are read from a copy, stored again, each
  new copy recorded as landed at once (a kill leaves it on the landed list, which the next
  start or repair sends to the garbage list), then added to the part in one transaction;
- orphans go on the garbage list (kept there until the store confirms the delete), and
  the garbage list is worked through before fsck returns. On a catalog several hosts
  share, orphans are looked for only when no other host is connected: a part another host
  is storing is in the store before it is in the catalog;
- a catalog that changed is backed up.
A repair starts by finishing what a killed one left: landed copies to the garbage list.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from tgfs.backups import Backups
from tgfs.catalog import backups, blobs, check, duties, tree
from tgfs.catalog.schema import Node, Part, db
from tgfs.collector import GarbageCollector
from tgfs.config import Settings
from tgfs.store.base import REPLICA_SEPARATOR, BlobStore, StoreError, replicas
from tgfs.store.sealing import sealer_for, stored_size

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Report:
    problems: list[check.Problem]  # broken catalog rules
    parts: int  # parts the catalog names, checked against the store
    missing: list[str]  # replicas the store no longer holds
    under_replicated: list[str]  # locations with fewer copies than TGFS_REPLICAS
    orphans: list[str]  # parts in the store that nothing in the catalog names
    lost: list[str] = dataclasses.field(default_factory=list)  # files with a part gone
    repaired: list[str] = dataclasses.field(default_factory=list)  # what --repair did
    # Orphans not looked for: another host is connected to the catalog, and the parts it
    # is storing (not in the catalog yet) would look like orphans (tgfs.catalog.duties).
    orphans_unchecked: bool = False

    @property
    def ok(self) -> bool:
        return not (
            self.problems or self.missing or self.under_replicated or self.orphans or self.lost
        )

    def lines(self) -> list[str]:
        out = [f"catalog: {len(self.problems)} problem(s)"]
        out += [f"  {p}" for p in self.problems]
        out.append(f"store: {self.parts} part(s) checked, {len(self.missing)} replica(s) missing")
        out += [f"  missing: {m}" for m in self.missing[:50]]
        out += [f"  lost: {path}" for path in self.lost[:50]]
        out.append(f"replicas: {len(self.under_replicated)} part(s) with fewer copies than wanted")
        out += [f"  {u}" for u in self.under_replicated[:50]]
        if self.orphans_unchecked:
            out.append(
                "orphans: not looked for, since another host is connected to the catalog "
                "(the parts it is storing would look like orphans); run again when it is not"
            )
        else:
            out.append(f"orphans: {len(self.orphans)} part(s) in the store that nothing names")
        out += [f"  {o}" for o in self.orphans[:50]]
        out += [f"repaired: {r}" for r in self.repaired]
        return out


async def fsck(settings: Settings, store: BlobStore, repair: bool = False) -> Report:
    repaired: list[str] = []
    if repair:
        repaired += _finish_killed_repair()
    report = await _examine(settings, store)
    if not repair or report.problems:  # a catalog that breaks its rules is not repaired
        return report
    repaired += _drop_missing(report.missing)
    repaired += await _add_copies(settings, store)
    if report.orphans:
        blobs.queue_orphans(report.orphans)
        repaired.append(f"{len(report.orphans)} orphan(s) queued for deletion")
    failed = await GarbageCollector(store, lambda _location: False).collect_once()
    if failed:
        repaired.append(f"{failed} delete(s) failed (see above); run --repair again")
    if not repaired:
        return report
    if await Backups(settings, store, settings.spool_dir).backup_now("fsck") is None:
        repaired.append("the catalog's backup failed (see above)")
    after = await _examine(settings, store)
    after.repaired = repaired
    return after


async def _examine(settings: Settings, store: BlobStore) -> Report:
    problems = check.check()
    part_locations = [loc for (loc,) in Part.select(Part.location).tuples()]
    locations = part_locations + backups.locations()
    missing = await store.missing(locations)
    gone = set(missing)
    wanted = settings.replicas if store.kind == "telegram" else 1
    # Backups are not counted: each goes to every bot up at the time, and the next one
    # (after any change, `tgfs backup`, or a repair) replaces it.
    thin = [loc for loc in part_locations if _short(loc, wanted, gone)]
    alone = duties.alone()
    orphans = await store.orphans(blobs.known_locations().__contains__, whole=True) if alone else []
    lost = _lost_paths([loc for loc in part_locations if all(r in gone for r in replicas(loc))])
    return Report(
        problems, len(locations), missing, thin, orphans, lost, orphans_unchecked=not alone
    )


def _finish_killed_repair() -> list[str]:
    """Copies a killed repair stored but never added to their parts go to the garbage list
    (landed, like an unfinished job's)."""
    collected = blobs.collect_landed()
    if not collected:
        return []
    return [f"{collected} copy(ies) left by an interrupted run queued for deletion"]


def _drop_missing(missing: list[str]) -> list[str]:
    """Take copies the store lost out of the catalog, where another is left."""
    if not missing:
        return []
    gone = set(missing)
    done = 0
    for part in list(Part.select()):
        kept = [r for r in replicas(part.location) if r not in gone]
        if kept and len(kept) < len(replicas(part.location)):
            Part.update(location=REPLICA_SEPARATOR.join(kept)).where(Part.id == part.id).execute()
            done += 1
    out = [f"{done} part(s): copies the store lost taken out of the catalog"] if done else []
    changed, dropped = backups.drop_replicas(gone)
    if changed:
        out.append(f"{changed} backup generation(s): copies the store lost taken out")
    if dropped:
        out.append(f"backup generation(s) {dropped} dropped: a part of each has no copy left")
    return out


async def _add_copies(settings: Settings, store: BlobStore) -> list[str]:
    """More copies of parts with fewer than TGFS_REPLICAS."""
    if store.kind != "telegram":
        return []
    thin = [p for p in Part.select() if _short(p.location, settings.replicas)]
    work = settings.spool_dir / "fsck"
    work.mkdir(parents=True, exist_ok=True)
    sealer = sealer_for(settings)
    added, short, unread = 0, 0, 0
    for part in thin:
        copy = work / f"part-{part.id}"
        # The stored bytes as they are: a sealed part's new copy is the same sealed bytes
        # (its salt, in the catalog, opens both).
        stored = stored_size(part.size, part.seal is not None)
        try:
            data = await store.get(part.location, 0, stored)
        except StoreError as exc:  # lost (reported as such), or its bots are down
            log.warning("fsck: part %d cannot be read to copy it: %s", part.id, exc)
            unread += 1
            continue
        copy.write_bytes(data)
        try:
            location = part.location
            while len(replicas(location)) < settings.replicas:
                name = f"repair-{part.id}"  # opaque with a key, like every part's name
                name = sealer.name(name) if sealer else name
                new = await store.add_copy(location, copy, stored, f"{name}.part0")
                if new is None:
                    short += 1
                    break
                blobs.landed(new, None)  # a kill from here on: the next run deletes it
                location = f"{location}{REPLICA_SEPARATOR}{new}"
            if location != part.location:
                with db.atomic():
                    Part.update(location=location).where(Part.id == part.id).execute()
                    blobs.unland(replicas(location))
                added += 1
        finally:
            copy.unlink(missing_ok=True)
    if not os.listdir(work):
        work.rmdir()
    out = [f"{added} part(s) given more copies"] if added else []
    if short:
        out.append(f"{short} part(s) still short of copies: not enough bots up")
    if unread:
        out.append(f"{unread} part(s) could not be read to copy them (see above)")
    return out


def _short(location: str, wanted: int, gone: set[str] | frozenset[str] = frozenset()) -> bool:
    """Fewer copies than `wanted`, not counting those in `gone` (an empty part has none)."""
    kept = [r for r in replicas(location) if r not in gone]
    return len(kept) < wanted and "empty" not in location


def _lost_paths(locations: list[str]) -> list[str]:
    """The files (video files included) that have a part with no copy left in the store."""
    paths: set[str] = set()
    for start in range(0, len(locations), 500):  # SQLite's limit on bound parameters
        blob_ids = Part.select(Part.blob).where(Part.location.in_(locations[start : start + 500]))
        for node in Node.select().where(Node.blob.in_(blob_ids)):
            paths.add(tree.path_of(node) if node.links > 0 else f"(in the trash) inode {node.id}")
    return sorted(paths)
