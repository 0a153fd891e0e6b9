"""`tgfs fsck`: is the library whole? The catalog's consistency (tgfs.catalog.check), then
every part the catalog names (files, segments, the catalog's own backups) against the
store, and parts stored with fewer copies than TGFS_REPLICAS (bots were down).

Read-only. Runs with no daemon on the data directory (it takes the lock). Repairs
(re-replicating, deleting orphans) are still to come; until then it says what is wrong and
exits non-zero.
"""

from __future__ import annotations

import dataclasses

from tgfs.catalog import backups, check
from tgfs.catalog.schema import Part
from tgfs.config import Settings
from tgfs.store.base import BlobStore, replicas


@dataclasses.dataclass
class Report:
    problems: list[check.Problem]  # broken catalog rules
    parts: int  # parts the catalog names, checked against the store
    missing: list[str]  # replicas the store no longer holds
    under_replicated: list[str]  # locations with fewer copies than TGFS_REPLICAS

    @property
    def ok(self) -> bool:
        return not (self.problems or self.missing or self.under_replicated)

    def lines(self) -> list[str]:
        out = [f"catalog: {len(self.problems)} problem(s)"]
        out += [f"  {p}" for p in self.problems]
        out.append(f"store: {self.parts} part(s) checked, {len(self.missing)} replica(s) missing")
        out += [f"  missing: {m}" for m in self.missing[:50]]
        out.append(f"replicas: {len(self.under_replicated)} part(s) with fewer copies than wanted")
        out += [f"  {u}" for u in self.under_replicated[:50]]
        return out


async def fsck(settings: Settings, store: BlobStore) -> Report:
    problems = check.check()
    locations = [loc for (loc,) in Part.select(Part.location).tuples()]
    locations += backups.locations()
    missing = await store.missing(locations)
    wanted = settings.replicas if store.kind == "telegram" else 1
    thin = [loc for loc in locations if "empty" not in loc and len(replicas(loc)) < wanted]
    return Report(problems, len(locations), missing, thin)
