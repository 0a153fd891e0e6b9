"""The trash as users reach it: `.tgfs/trash.json` on a mount, `tgfs trash` and
`tgfs undelete` (through a mount, or on the data directory with no daemon).

trash.json reads as what the trash holds. A line written to it is a request, carried out
when the file is closed (so `close()` reports a failure): `undelete <id>` or `empty`. A
request the daemon cannot carry out fails the close with ENOENT (no such item) or EINVAL
(not a request); what an undelete brought back, and where, is listed under "restored".
The catalog side (what is kept, how it comes back) is tgfs.catalog.trash.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from tgfs.catalog import trash
from tgfs.config import format_time

RESTORED_SHOWN = 20  # undeletes listed in trash.json (the CLI finds its own among them)


class Action(enum.StrEnum):
    UNDELETE = "undelete"
    EMPTY = "empty"


@dataclasses.dataclass(frozen=True)
class Request:
    action: Action
    item: int | None = None  # the trash id, for UNDELETE

    @classmethod
    def parse(cls, text: str) -> Request:
        """One request line; ValueError if it is not one."""
        words = text.split()
        if words == [Action.EMPTY.value]:
            return cls(Action.EMPTY)
        if len(words) == 2 and words[0] == Action.UNDELETE.value and words[1].isdigit():
            return cls(Action.UNDELETE, int(words[1]))
        raise ValueError(f"not a trash request: {text.strip()[:80]!r}")

    def line(self) -> str:
        return f"{self.action} {self.item}\n" if self.item is not None else f"{self.action}\n"


def snapshot(days: float, restored: list[trash.Restored]) -> dict[str, Any]:
    """trash.json: items newest first, with when each goes for good."""
    found = trash.items()
    return {
        "days": days,
        "items": [
            {
                "id": item.id,
                "path": item.path,
                "kind": item.kind.value,
                "deleted": format_time(item.deleted_ns),
                "expires": format_time(trash.expires_ns(item.deleted_ns, days)),
                "size": item.size,
            }
            for item in found
        ],
        "bytes": sum(item.size for item in found),
        "restored": [{"id": r.id, "path": r.path} for r in restored[-RESTORED_SHOWN:]],
    }
