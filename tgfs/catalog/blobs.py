"""Blobs and their parts, and the garbage list of store locations still to delete."""

from __future__ import annotations

from collections.abc import Iterable

from peewee import fn

from tgfs.catalog.schema import Blob, Garbage, Part
from tgfs.store.base import PartRef


def add(size: int, parts: list[PartRef]) -> Blob:
    blob = Blob.create(size=size)
    for part in parts:
        Part.create(
            blob=blob, index=part.index, offset=part.offset, size=part.size,
            location=part.location,
        )
    return blob


def parts_of(blob_id: int) -> list[PartRef]:
    rows = Part.select().where(Part.blob == blob_id).order_by(Part.index)
    return [
        PartRef(id=p.id, index=p.index, offset=p.offset, size=p.size, location=p.location)
        for p in rows
    ]


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
    """Queue store locations that never made it into a blob (an aborted ingest)."""
    rows = [{"location": loc} for loc in locations]
    if rows:
        Garbage.insert_many(rows).execute()


def held_by(location_prefix: str) -> tuple[int, int]:
    """(parts, bytes) whose location has a replica starting with `location_prefix`.

    Locations with several replicas are comma-separated (see the store that made them).
    A scan of the part table: it serves status output only.
    """
    query = Part.select(fn.COUNT(Part.id), fn.COALESCE(fn.SUM(Part.size), 0)).where(
        Part.location.startswith(location_prefix)
        | Part.location.contains("," + location_prefix)
    )
    count, size = query.scalar(as_tuple=True)
    return int(count), int(size)
