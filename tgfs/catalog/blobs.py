"""Blobs and their parts, and the garbage list of store locations still to delete."""

from __future__ import annotations

import json
from collections.abc import Iterable

from peewee import fn

from tgfs.catalog import host
from tgfs.catalog.schema import Backup, Blob, Garbage, Landed, Part, db, is_sqlite
from tgfs.store.base import REPLICA_SEPARATOR, PartRef, replicas


def landed(location: str, job_id: int | None) -> None:
    """The store confirmed a part for an unfinished job: remember it at once, so a crash
    before the job records it in a blob cannot orphan it (see Landed)."""
    Landed.create(location=location, job_id=job_id)


def add(size: int, parts: list[PartRef]) -> Blob:
    """A blob of stored parts (they stop being merely landed, in the same transaction)."""
    with db.atomic():
        blob = Blob.create(size=size)
        for part in parts:
            Part.create(
                blob=blob,
                index=part.index,
                offset=part.offset,
                size=part.size,
                location=part.location,
                seal=part.seal,
            )
        unland(p.location for p in parts)
    return blob


def unland(locations: Iterable[str]) -> None:
    wanted = list(locations)
    for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
        Landed.delete().where(Landed.location.in_(wanted[start : start + 500])).execute()


def collect_landed() -> int:
    """At start-up: parts this host's jobs landed and never finished go to the garbage
    list (the jobs start over and store them again). Another host's are its jobs' own,
    perhaps running now. Returns how many."""
    mine = True if is_sqlite() else Landed.host == host.me()
    with db.atomic():
        rows = [r.location for r in Landed.select(Landed.location).where(mine)]
        if rows:
            Garbage.insert_many([{"location": loc} for loc in rows]).execute()
        Landed.delete().where(mine).execute()
    return len(rows)


def _ref(p: Part) -> PartRef:
    return PartRef(
        id=p.id,
        index=p.index,
        offset=p.offset,
        size=p.size,
        location=p.location,
        seal=bytes(p.seal) if p.seal is not None else None,
    )


def parts_of(blob_id: int) -> list[PartRef]:
    return [_ref(p) for p in Part.select().where(Part.blob == blob_id).order_by(Part.index)]


def parts_of_many(blob_ids: Iterable[int]) -> dict[int, list[PartRef]]:
    """The parts of several blobs in one query, by blob id (a blob without parts maps to
    an empty list)."""
    ids = list(blob_ids)
    found: dict[int, list[PartRef]] = {blob_id: [] for blob_id in ids}
    for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
        rows = (
            Part.select()
            .where(Part.blob.in_(ids[start : start + 500]))
            .order_by(Part.blob, Part.index)
        )
        for p in rows:
            found[p.blob_id].append(_ref(p))
    return found


def known_parts(part_ids: list[int]) -> set[int]:
    """Which of these part ids the catalog still has."""
    found: set[int] = set()
    for start in range(0, len(part_ids), 500):  # SQLite's limit on bound parameters
        rows = Part.select(Part.id).where(Part.id.in_(part_ids[start : start + 500]))
        found.update(p.id for p in rows)
    return found


def free(blob_ids: Iterable[int]) -> int:
    """Forget blobs; their parts' locations go to the garbage list for the store to delete.

    Call inside the transaction that removes the rows referring to the blobs.
    Returns the number of locations queued.
    """
    ids = [i for i in set(blob_ids) if i is not None]
    if not ids:
        return 0
    locations = [p.location for p in Part.select(Part.location).where(Part.blob.in_(ids))]
    if locations:
        Garbage.insert_many([{"location": loc} for loc in locations]).execute()
    Part.delete().where(Part.blob.in_(ids)).execute()
    Blob.delete().where(Blob.id.in_(ids)).execute()
    return len(locations)


def queue_locations(locations: Iterable[str]) -> None:
    """Queue for deletion the landed parts among `locations` that never made it into a
    blob (an aborted ingest). Parts already in a blob, or already queued, are left alone:
    callers may pass everything a failed upload stored."""
    wanted = list(dict.fromkeys(locations))
    with db.atomic():
        still = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            still += [
                r.location for r in Landed.select(Landed.location).where(Landed.location.in_(chunk))
            ]
        if still:
            Garbage.insert_many([{"location": loc} for loc in still]).execute()
        unland(still)


def queue_orphans(locations: Iterable[str]) -> None:
    """Queue parts the store holds and the catalog never knew (left by a crash)."""
    rows = [{"location": loc} for loc in locations]
    with db.atomic():
        for start in range(0, len(rows), 500):
            Garbage.insert_many(rows[start : start + 500]).execute()


def known_locations() -> set[str]:
    """Every single-replica location a part, landed part, garbage row or backup names: what a
    store's crash scan checks its findings against (one query per table, not one per
    finding: a local store can hold hundreds of thousands of parts)."""
    found: set[str] = set()
    for model in (Part, Landed, Garbage):
        for (location,) in model.select(model.location).tuples():
            found.update(replicas(location))
    for (parts,) in Backup.select(Backup.parts).tuples():  # the catalog's own backups
        found.update(r for location, _ in json.loads(parts) for r in replicas(location))
    return found


def held_by(location_prefix: str) -> tuple[int, int]:
    """(parts, bytes) whose location has a replica starting with `location_prefix`.

    A scan of the part table: it serves status output only.
    """
    query = Part.select(fn.COUNT(Part.id), fn.COALESCE(fn.SUM(Part.size), 0)).where(
        Part.location.startswith(location_prefix)
        | Part.location.contains(REPLICA_SEPARATOR + location_prefix)
    )
    count, size = query.scalar(as_tuple=True)
    return int(count), int(size)


def sealed() -> int:
    """How many parts and backup generations are sealed (tgfs.store.sealing)."""
    return (
        Part.select().where(Part.seal.is_null(False)).count()
        + Backup.select().where(Backup.seal.is_null(False)).count()
    )
