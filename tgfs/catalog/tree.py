"""Queries on the mounted tree (Node rows)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from tgfs.catalog.schema import ROOT_ID, Node, NodeKind, name_upper_bound, now_ns

NAME_MAX = 255  # bytes in one name, as on ext4; longer names get ENAMETOOLONG


def get(inode: int) -> Node | None:
    return Node.get_or_none(Node.id == inode)


def child(parent_id: int, name: str) -> Node | None:
    return Node.get_or_none((Node.parent == parent_id) & (Node.name == name))


def children(parent_id: int, after_id: int = 0, limit: int = 1000) -> list[Node]:
    """Entries of a directory in inode order, so `after_id` is a stable readdir offset."""
    query = (
        Node.select()
        .where((Node.parent == parent_id) & (Node.id > after_id))
        .order_by(Node.id)
        .limit(limit)
    )
    return list(query)


def children_named_from(parent_id: int, prefix: str) -> list[Node]:
    """Entries of a directory whose names start with `prefix` (a range on the index)."""
    query = (Node.parent == parent_id) & (Node.name >= prefix)
    upper = name_upper_bound(prefix)
    if upper is not None:
        query &= Node.name < upper
    return list(Node.select().where(query))


def has_children(parent_id: int) -> bool:
    return Node.select().where(Node.parent == parent_id).exists()


def path_of(node: Node) -> str:
    """Mount-relative path, e.g. "Movies/Big Buck Bunny.mp4"."""
    parts: list[str] = []
    current: Node | None = node
    while current is not None and current.id != ROOT_ID:
        parts.append(current.name)
        current = get(current.parent_id) if current.parent_id else None
    return str(PurePosixPath(*reversed(parts))) if parts else "/"


def safe_name(wanted: str) -> str:
    """A name made from something tgfs did not choose (a file's stem, a track's language
    tag) that is a valid entry: never empty, ".", "..", with no "/" or NUL, and at most
    NAME_MAX bytes (cut at a character boundary, with room for a " (N)" suffix)."""
    name = wanted.replace("/", "_").replace("\0", "_")
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    raw = os.fsencode(name)
    limit = NAME_MAX - 8
    if len(raw) > limit:
        try:  # a UTF-8 name is cut at a character boundary; other bytes anywhere
            raw.decode()
            name = raw[:limit].decode(errors="ignore")
        except UnicodeDecodeError:
            name = os.fsdecode(raw[:limit])
    return name


def free_name(parent_id: int, wanted: str, ignore_id: int | None = None) -> str:
    """`wanted`, or the first of "wanted (2)", "wanted (3)" … not taken in the folder.

    Used when a video folder is published: dropping "A.mp4" next to an existing "A" gives
    "A (2)"; nothing the user has is ever replaced.
    """
    candidate, n = wanted, 1
    while (found := child(parent_id, candidate)) is not None and found.id != ignore_id:
        n += 1
        candidate = f"{wanted} ({n})"
    return candidate


def create(
    parent_id: int, name: str, kind: NodeKind, mode: int, uid: int = 0, gid: int = 0, **fields
) -> Node:
    return Node.create(
        parent=parent_id, name=name, kind=kind, mode=mode, uid=uid, gid=gid, **fields
    )


def move(node: Node, new_parent_id: int, new_name: str) -> None:
    node.parent = new_parent_id
    node.name = new_name
    node.ctime_ns = now_ns()
    node.save()


def touch_dir(parent_id: int) -> None:
    """A directory's mtime changes when an entry is added, removed or renamed."""
    stamp = now_ns()
    Node.update(mtime_ns=stamp, ctime_ns=stamp).where(Node.id == parent_id).execute()


def is_inside(node_id: int, ancestor_id: int) -> bool:
    """True if `node_id` is `ancestor_id` or below it (a rename must not make a loop)."""
    current = get(node_id)
    while current is not None:
        if current.id == ancestor_id:
            return True
        current = get(current.parent_id) if current.parent_id else None
    return False
