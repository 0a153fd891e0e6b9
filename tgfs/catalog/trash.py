"""The trash: deleted files and video folders, kept for TGFS_TRASH_DAYS so a delete can be
undone (`tgfs undelete`).

What goes in: a stored file whose last name goes (`rm`, or replaced by a `rename`), and a
complete video folder removed with `rm -r`. What it keeps is the node itself, without a
name, with everything it points at; so the blobs stay referenced, nothing reaches the
garbage list, and bringing it back is giving it a name again. Files whose content never
reached the store (still in the spool, or empty) are deleted at once as before: the trash
keeps what the store holds, and a file's newer version still on its way to the store is
dropped with the delete (its last stored version is what comes back).

Invariants (checked by tgfs.catalog.check): a trashed node has no name; it is a file with
a blob or a video folder. Every change here is one transaction, so a kill leaves an item
in the trash or back in the tree, never neither. Letting an item go (expiry, emptying)
removes the row and then deletes the node as any delete does: a file the kernel still
knows (open) is purged at `forget`, like any unlinked file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import PurePosixPath

from peewee import fn

from tgfs.catalog import library, tree
from tgfs.catalog.schema import (
    ROOT_ID,
    Blob,
    Node,
    NodeKind,
    Rendition,
    Segment,
    Trash,
    Video,
    db,
)

DAY_NS = 86_400 * 10**9


@dataclasses.dataclass(frozen=True)
class Item:
    id: int
    path: str  # where it was (`os.fsdecode` form)
    kind: NodeKind  # FILE or VIDEO
    deleted_ns: int
    size: int  # bytes it keeps in the store


@dataclasses.dataclass(frozen=True)
class Restored:
    id: int
    path: str  # where it is now: its old place, or beside it with a suffix


def wanted(node: Node) -> bool:
    """Would the trash keep this node when its last name goes? (A stored file, or a
    complete video folder.)"""
    kind = node.node_kind
    if kind is NodeKind.FILE:
        return node.blob_id is not None
    return kind is NodeKind.VIDEO and node.video.complete


def put(node: Node) -> None:
    """Keep `node` (about to lose its last name, which it must have been found as) in the
    trash. Call inside the transaction that removes the name."""
    entry = node.entry
    assert entry is not None, "trash.put of a node without a name"
    Trash.create(
        node=node.id,
        parent_id=entry.parent_id,
        name=entry.name,
        path=tree.path_of(node),
        size=_stored_size(node),
    )


def items() -> list[Item]:
    """What the trash holds, newest first."""
    query = (
        Trash.select(Trash, Node.kind)
        .join(Node, on=(Trash.node == Node.id))
        .order_by(Trash.deleted_ns.desc(), Trash.id.desc())
    )
    return [
        Item(row.id, row.path, NodeKind(row.node.kind), row.deleted_ns, row.size) for row in query
    ]


def held() -> tuple[int, int]:
    """(items, bytes) in the trash: what deleting them for good would free in the store."""
    count, size = Trash.select(fn.COUNT(Trash.id), fn.COALESCE(fn.SUM(Trash.size), 0)).scalar(
        as_tuple=True
    )
    return int(count), int(size)


def restore(item_id: int, uid: int = 0, gid: int = 0) -> Restored:
    """Give a trashed item its name back: in its old directory if that still exists, else
    in directories made again along its old path (owned by `uid`/`gid`, mode 0755). If
    the name is taken there, beside it: "Film (2)", "notes (2).txt". KeyError if there
    is no such item."""
    row = Trash.get_or_none(Trash.id == item_id)
    if row is None:
        raise KeyError(item_id)
    with db.atomic():
        parent = tree.get(row.parent_id)
        if parent is None or parent.node_kind is not NodeKind.DIR or _unlinked(parent):
            parent_id = _make_dirs(PurePosixPath(row.path).parent.parts, uid, gid)
        else:
            parent_id = parent.id
        node = Node.get_by_id(row.node_id)
        name = tree.free_name(parent_id, row.name, is_file=node.node_kind is NodeKind.FILE)
        row.delete_instance()
        tree.link(node, parent_id, name, or_free_name=True)
        tree.touch_dir(parent_id)
        return Restored(item_id, tree.path_of(node))


def let_go(
    older_than_ns: int | None, kernel_knows: Callable[[int], bool]
) -> tuple[list[int], list[str]]:
    """Delete for good what was trashed before `older_than_ns` (None: everything).

    Returns (trash ids let go, spool files to delete). A video goes with its folder; a
    file the kernel still knows (it is open) is left unlinked, for `forget` to purge."""
    query = Trash.select()
    if older_than_ns is not None:
        query = query.where(Trash.deleted_ns < older_than_ns)
    gone, spools = [], []
    with db.atomic():
        for row in list(query):
            node = Node.get_by_id(row.node_id)
            row.delete_instance()
            gone.append(row.id)
            if node.node_kind is NodeKind.VIDEO:
                library.remove_video(node.video_id)
            elif not kernel_knows(node.id) and (spool := library.purge(node)) is not None:
                spools.append(spool)
    return gone, spools


def expires_ns(deleted_ns: int, days: float) -> int:
    return deleted_ns + int(days * DAY_NS)


def _stored_size(node: Node) -> int:
    if node.node_kind is NodeKind.FILE:
        return int(Blob.get_by_id(node.blob_id).size)
    renditions = Rendition.select(Rendition.id).where(Rendition.video == node.video_id)
    segments = Segment.select(Segment.blob).where(Segment.rendition.in_(renditions))
    inits = Rendition.select(Rendition.init_blob).where(Rendition.video == node.video_id)
    poster = Video.select(Video.poster_blob).where(Video.id == node.video_id)
    query = Blob.select(fn.COALESCE(fn.SUM(Blob.size), 0)).where(
        Blob.id.in_(segments) | Blob.id.in_(inits) | Blob.id.in_(poster)
    )
    return int(query.scalar())


def _unlinked(node: Node) -> bool:
    return node.id != ROOT_ID and node.links <= 0


def _make_dirs(parts: tuple[str, ...], uid: int, gid: int) -> int:
    """The directory at `parts` below the root, made where missing (mkdir -p)."""
    parent_id = ROOT_ID
    for part in parts:
        found = tree.child(parent_id, part)
        if found is not None and found.node_kind is NodeKind.DIR:
            parent_id = found.id
            continue
        name = part if found is None else tree.free_name(parent_id, part)
        node = tree.create(parent_id, name, NodeKind.DIR, 0o755, uid, gid, or_free_name=True)
        tree.touch_dir(parent_id)
        parent_id = node.id
    return parent_id
