"""The catalog's record of its own backup generations (the Backup table)."""

from __future__ import annotations

import dataclasses
import json

from tgfs.catalog.blobs import unland
from tgfs.catalog.schema import Backup, Garbage, db
from tgfs.store.base import REPLICA_SEPARATOR, replicas


@dataclasses.dataclass(frozen=True)
class Generation:
    """One backup generation: what the manifest says about it, and what the table holds."""

    generation: int
    created_ns: int
    size: int  # bytes of the catalog snapshot
    stored_size: int  # bytes in the store
    parts: list[tuple[str, int]]  # (location, size) in order
    # The salt (hex) the compressed snapshot was sealed with, whole, before it was cut into
    # parts; None: stored as it is (no key). Manifests from before it was kept parse as None.
    seal: str | None = None


def _of(row: Backup) -> Generation:
    return Generation(
        generation=row.generation,
        created_ns=row.created_ns,
        size=row.size,
        stored_size=row.stored_size,
        parts=[(loc, size) for loc, size in json.loads(row.parts)],
        seal=row.seal,
    )


def generations() -> list[Generation]:
    """Every generation kept, newest first."""
    return [_of(r) for r in Backup.select().order_by(Backup.generation.desc())]


def next_generation() -> int:
    newest = Backup.select(Backup.generation).order_by(Backup.generation.desc()).first()
    return 1 if newest is None else newest.generation + 1


def record(generation: Generation, keep: int) -> int:
    """A generation is stored: record it (its parts stop being merely landed) and let the
    oldest go beyond `keep` (their parts to the garbage list), in one transaction. Returns
    how many generations went."""
    with db.atomic():
        Backup.insert(**_row(generation)).execute()
        unland(loc for loc, _ in generation.parts)
        old = list(Backup.select().order_by(Backup.generation.desc()).offset(keep))
        for row in old:
            rows = [{"location": loc} for loc, _ in json.loads(row.parts)]
            if rows:
                Garbage.insert_many(rows).execute()
            row.delete_instance()
    return len(old)


def adopt(found: list[Generation]) -> None:
    """After a restore: the generations the manifest lists are this catalog's (the
    snapshot was taken before its own generation was recorded)."""
    with db.atomic():
        for g in found:
            row = _row(g)
            Backup.insert(**row).on_conflict(
                conflict_target=[Backup.generation],
                update={getattr(Backup, k): v for k, v in row.items() if k != "generation"},
            ).execute()


def _row(g: Generation) -> dict:
    return {
        "generation": g.generation,
        "created_ns": g.created_ns,
        "size": g.size,
        "stored_size": g.stored_size,
        "parts": json.dumps(g.parts),
        "seal": g.seal,
    }


def locations() -> list[str]:
    return [loc for g in generations() for loc, _ in g.parts]


def drop_replicas(gone: set[str]) -> tuple[int, list[int]]:
    """Take copies the store lost (`gone`, single replicas) out of the generations' parts.
    A generation left with a part that has no copy can never be restored: it goes (its
    other parts to the garbage list). Returns (generations changed, generations dropped)."""
    changed, dropped = 0, []
    with db.atomic():
        for row in list(Backup.select()):
            parts = json.loads(row.parts)
            kept = [(_kept(loc, gone), size) for loc, size in parts]
            if any(not loc for loc, _ in kept):
                rows = [{"location": loc} for loc, _ in kept if loc]
                if rows:
                    Garbage.insert_many(rows).execute()
                row.delete_instance()
                dropped.append(row.generation)
            elif kept != [tuple(p) for p in parts]:
                row.parts = json.dumps(kept)
                row.save()
                changed += 1
    return changed, dropped


def _kept(location: str, gone: set[str]) -> str:
    return REPLICA_SEPARATOR.join(r for r in replicas(location) if r not in gone)
