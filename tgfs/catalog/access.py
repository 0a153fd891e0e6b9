"""Who may see what: a reader's view of the tree by its directories' modes, for the control
files that list paths (status.json's jobs, library.json's videos).

With TGFS_ALLOW_OTHER=true other users (nginx's www-data) read the mount, and the kernel
checks each file's mode for them (default_permissions). A control file listing paths
must not tell them of a file in a folder they cannot list: each reader gets the entries
whose folder they could list, as the kernel would judge it (search permission on every
folder above, read and search on the folder itself; owner, then group, then other bits;
root sees everything). Groups are the reader's primary group and supplementary groups.

One query loads every directory's mode and owner; `View` answers for one reader from it.
"""

from __future__ import annotations

import dataclasses
import stat

from tgfs.catalog.schema import ROOT_ID, Entry, NameField, Node, raw_rows

R, X = 4, 1  # the read and search bits of a mode's rwx triple


@dataclasses.dataclass(frozen=True)
class Who:
    uid: int
    gids: frozenset[int]


@dataclasses.dataclass(frozen=True)
class _Dir:
    parent: int
    name: str
    mode: int
    uid: int
    gid: int


class Tree:
    """Every directory (ordinary and video folders): parent, name, mode, owner."""

    def __init__(self) -> None:
        self.dirs: dict[int, _Dir] = {ROOT_ID: _Dir(ROOT_ID, "", *_root())}
        self.children: dict[tuple[int, str], int] = {}
        for node_id, parent, raw, mode, uid, gid in raw_rows(  # (as SQLite gives them: fast)
            Entry.select(Entry.node, Entry.parent, Entry.name, Node.mode, Node.uid, Node.gid)
            .join(Node, on=(Node.id == Entry.node))
            .where(Node.kind.in_(["dir", "video", "rendition"]))
        ):
            name = NameField.decode(raw)
            self.dirs[node_id] = _Dir(parent, name, mode, uid, gid)
            self.children[(parent, name)] = node_id

    def find(self, path: str) -> int | None:
        """The directory at a library-relative path ("Movies/Film"), if there is one."""
        node = ROOT_ID
        for name in filter(None, path.split("/")):
            found = self.children.get((node, name))
            if found is None:
                return None
            node = found
        return node


def _root() -> tuple[int, int, int]:
    row = Node.get_by_id(ROOT_ID)
    return row.mode, row.uid, row.gid


class View:
    """What one reader may list."""

    def __init__(self, tree: Tree, who: Who) -> None:
        self.tree, self.who = tree, who
        self._searchable: dict[int, bool] = {}  # by directory, as found

    def _may(self, d: _Dir, bits: int) -> bool:
        mode = stat.S_IMODE(d.mode)
        if self.who.uid == d.uid:
            have = mode >> 6
        elif d.gid in self.who.gids:
            have = mode >> 3
        else:
            have = mode
        return have & bits == bits

    def searchable(self, dir_id: int) -> bool:
        """Search permission on the directory and every one above it."""
        known = self._searchable.get(dir_id)
        if known is None:
            d = self.tree.dirs.get(dir_id)
            known = (
                d is not None
                and self._may(d, X)
                and (dir_id == ROOT_ID or self.searchable(d.parent))
            )
            self._searchable[dir_id] = known
        return known

    def listable(self, dir_id: int) -> bool:
        """Could `ls` it: searchable, and readable itself."""
        d = self.tree.dirs.get(dir_id)
        return d is not None and self.searchable(dir_id) and self._may(d, R | X)

    def sees_path(self, path: str) -> bool:
        """A file at this library-relative path shows in a folder the reader can list."""
        parent = self.tree.find(path.rpartition("/")[0])
        return parent is not None and self.listable(parent)
