"""Work done once per library, whichever host does it, in a library several hosts share.

Collecting garbage, letting old trash go and scanning the store for a crash's orphans must
not run on two hosts at once: two collectors would delete each other's rows' parts twice,
and an orphan scan on one host would take the parts another host is storing right now
(not yet in the catalog) for a crash's leftovers. On a PostgreSQL catalog each of them
takes a session advisory lock while it runs (`duty`); a host that holds none waits for its
next turn. A host that dies lets go of its locks with its connection, so the work goes on
on the others. On SQLite there is one host: it always may.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterator

from tgfs.catalog.schema import LIBRARY_CLASS, MOUNTED, db, is_sqlite

log = logging.getLogger(__name__)


class Duty(enum.IntEnum):
    """A lock's object key in LIBRARY_CLASS (schema's MOUNTED and SETUP are 0 and 3)."""

    COLLECT = 1  # deleting the garbage list's parts from the store
    TRASH = 2  # letting trash older than TGFS_TRASH_DAYS go
    BACKUP = 4  # a backup of the catalog into the store (tgfs.backups)


@contextlib.contextmanager
def duty(which: Duty) -> Iterator[bool]:
    """Whether this host may do `which` now (held until the block ends)."""
    if is_sqlite():
        yield True
        return
    (held,) = db.execute_sql(
        "SELECT pg_try_advisory_lock(%s, %s)", (LIBRARY_CLASS, int(which))
    ).fetchone()
    try:
        yield bool(held)
    finally:
        if held:
            with contextlib.suppress(Exception):  # a lost connection let go of it already
                db.execute_sql("SELECT pg_advisory_unlock(%s, %s)", (LIBRARY_CLASS, int(which)))


def alone() -> bool:
    """Whether no other daemon (or tgfs command) is connected to the catalog: only then
    is every part in the store that the catalog does not name a crash's leftover."""
    if is_sqlite():
        return True
    with db.atomic():  # the exclusive form is granted only if no one else holds it shared
        (only,) = db.execute_sql(
            "SELECT pg_try_advisory_xact_lock(%s, %s)", (LIBRARY_CLASS, MOUNTED)
        ).fetchone()
    return bool(only)
