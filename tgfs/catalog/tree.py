"""The mounted tree: nodes (inodes) and the entries (names) that make directories.

Invariants (checked by tgfs.catalog.check):
- every entry's parent is a directory node; a (parent, name) pair is unique;
- a directory has exactly one entry (no hard links to directories), the root none;
- `Node.links` is the number of the node's entries (the root counts 1, for its mount
  point); a node with none is an orphan: unlinked, but still open or known to the kernel.
  Orphans are purged when the kernel forgets them or at the next start (`unlinked`).
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import peewee as pw
from peewee import JOIN

from tgfs.catalog.schema import (
    ROOT_ID,
    Entry,
    Node,
    NodeKind,
    Trash,
    db,
    name_upper_bound,
    now_ns,
)

NAME_MAX = 255  # bytes in one name, as on ext4; longer names get ENAMETOOLONG


def get(inode: int) -> Node | None:
    """A node by inode number, orphans included."""
    return Node.get_or_none(Node.id == inode)


def _named(query) -> list[Node]:
    return [e.node.found_as(e) for e in query]


def _entries():
    return Entry.select(Entry, Node).join(Node, on=(Entry.node == Node.id))


def child(parent_id: int, name: str) -> Node | None:
    """The node named `name` in a directory, found as that name."""
    found = _named(_entries().where((Entry.parent == parent_id) & (Entry.name == name)))
    return found[0] if found else None


def children(parent_id: int, after: int = 0, limit: int = 1000) -> list[Node]:
    """Entries of a directory in entry order, so `after` (an entry id, `node.entry.id`) is
    a stable readdir offset."""
    return _named(
        _entries()
        .where((Entry.parent == parent_id) & (Entry.id > after))
        .order_by(Entry.id)
        .limit(limit)
    )


def children_named_from(parent_id: int, prefix: str) -> list[Node]:
    """Entries of a directory whose names start with `prefix` (a range on the index)."""
    query = (Entry.parent == parent_id) & (Entry.name >= prefix)
    upper = name_upper_bound(prefix)
    if upper is not None:
        query &= Entry.name < upper
    return _named(_entries().where(query))


def has_children(parent_id: int) -> bool:
    return Entry.select().where(Entry.parent == parent_id).exists()


def path_of(node: Node) -> str:
    """Mount-relative path, e.g. "Movies/Big Buck Bunny.mp4"."""
    parts: list[str] = []
    current: Node | None = node
    while current is not None and current.id != ROOT_ID:
        if current.entry is None:
            parts.append("(unlinked)")
            break
        parts.append(current.name)
        current = get(current.parent_id)
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


def free_name(
    parent_id: int, wanted: str, ignore_id: int | None = None, is_file: bool = False
) -> str:
    """`wanted`, or the first of "wanted (2)", "wanted (3)" … not taken in the folder (a
    file keeps its extension: "stem (2).ext", so players and tools still know it).

    Used when a video folder is published: dropping "A.mp4" next to an existing "A" gives
    "A (2)"; nothing the user has is ever replaced.
    """
    stem, ext = os.path.splitext(wanted) if is_file else (wanted, "")
    candidate, n = wanted, 1
    while (found := child(parent_id, candidate)) is not None and found.id != ignore_id:
        n += 1
        candidate = f"{safe_name(stem)} ({n}){ext}"  # (room for the suffix within NAME_MAX)
    return candidate


class NameTaken(Exception):
    """The name was free when looked at and taken at the insert: by another host, on a
    catalog several hosts share (the unique index on (parent, name) refused the second)."""


def create(
    parent_id: int,
    name: str,
    kind: NodeKind,
    mode: int,
    uid: int = 0,
    gid: int = 0,
    *,
    or_free_name: bool = False,
    **fields,
) -> Node:
    """A new node with its one name. A name taken meanwhile (see NameTaken) is refused,
    or with `or_free_name` the node gets the first free one ("A (2)", "notes (2).txt")."""
    with db.atomic():
        node = Node.create(kind=kind, mode=mode, uid=uid, gid=gid, **fields)
        entry = _add_entry(parent_id, name, node.id, or_free_name, kind is NodeKind.FILE)
        return node.found_as(entry)


def _add_entry(
    parent_id: int, wanted: str, node_id: int, or_free_name: bool, is_file: bool
) -> Entry:
    """The Entry naming `node_id` `wanted` in the folder (see create)."""
    name = wanted
    while True:
        try:
            with db.atomic():  # a savepoint: a refused insert leaves the transaction going
                return Entry.create(parent=parent_id, name=name, node=node_id)
        except pw.IntegrityError:
            if child(parent_id, name) is None:
                raise  # not the name: a bug, not a clash
            if not or_free_name:
                raise NameTaken(name) from None
            name = free_name(parent_id, wanted, is_file=is_file)


def link(node: Node, parent_id: int, name: str, *, or_free_name: bool = False) -> Node:
    """Another name for `node` (a hard link); returns it found as that name (for
    `or_free_name` and NameTaken, see create)."""
    stamp = now_ns()
    with db.atomic():
        entry = _add_entry(parent_id, name, node.id, or_free_name, node.node_kind is NodeKind.FILE)
        Node.update(links=Node.links + 1, ctime_ns=stamp).where(Node.id == node.id).execute()
    node.links += 1
    node.ctime_ns = stamp
    return node.found_as(entry)


def unlink(node: Node) -> bool:
    """Remove the name `node` was found as; True if that was its last (an orphan now)."""
    stamp = now_ns()
    entry = node.entry
    assert entry is not None, "unlink of a node without a name"
    with db.atomic():
        entry.delete_instance()
        Node.update(links=Node.links - 1, ctime_ns=stamp).where(Node.id == node.id).execute()
    node.links -= 1
    node.ctime_ns = stamp
    node.found_as(None)
    return node.links <= 0


def unlinked() -> list[Node]:
    """Nodes without a name (the root aside) that still have a spool file or are not in the
    trash: unlinked while open, left by a stop."""
    trashed = Trash.select(Trash.node)
    query = (
        Node.select(Node)
        .join(Entry, JOIN.LEFT_OUTER, on=(Entry.node == Node.id))
        .where(
            Entry.id.is_null()
            & (Node.id != ROOT_ID)
            & (Node.id.not_in(trashed) | Node.spool.is_null(False))
        )
    )
    return [n.found_as(None) for n in query]


def move(node: Node, new_parent_id: int, new_name: str) -> None:
    """Rename the entry `node` was found as."""
    entry = node.entry
    assert entry is not None, "move of a node without a name"
    Entry.update(parent=new_parent_id, name=new_name).where(Entry.id == entry.id).execute()
    node.found_as(Entry.get_by_id(entry.id))
    node.ctime_ns = now_ns()
    Node.update(ctime_ns=node.ctime_ns).where(Node.id == node.id).execute()


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
        if current.id == ROOT_ID or current.entry is None:
            return False
        current = get(current.parent_id)
    return False
