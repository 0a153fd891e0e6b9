"""Facts about the catalog itself (the Meta table): its id, how the last daemon stopped."""

from __future__ import annotations

import uuid

from tgfs.catalog import host
from tgfs.catalog.schema import Meta, is_sqlite

STOPPED_CLEANLY = "stopped_cleanly"  # "1" once a daemon has exited normally (see below)
ORPHAN_SCAN_DUE = "orphan_scan_due"  # "1" while a crash's scan of the store has not succeeded
KEY_ID = "encryption_key_id"  # tgfs.keys.key_id of the key new parts are sealed with


def stopped_cleanly() -> str:
    """The key saying whether this host's daemon last exited normally: per host on a
    catalog several hosts share (one's clean stop says nothing of another's crash)."""
    return STOPPED_CLEANLY if is_sqlite() else f"{STOPPED_CLEANLY}:{host.me()}"


def catalog_id() -> str:
    """A random id made with the catalog; names its cache folder (see tgfs.cache)."""
    row, _ = Meta.get_or_create(key="catalog_id", defaults={"value": uuid.uuid4().hex})
    return str(row.value)


def get(key: str) -> str | None:
    row = Meta.get_or_none(Meta.key == key)
    return None if row is None else str(row.value)


def put(key: str, value: str) -> None:
    Meta.insert(key=key, value=value).on_conflict(
        conflict_target=[Meta.key], update={Meta.value: value}
    ).execute()
