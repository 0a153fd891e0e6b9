"""Node → stat attributes, and how long the kernel may trust them."""

from __future__ import annotations

import stat

import pyfuse3

from tgfs.catalog import Node, NodeKind

# Segments and init segments never change once published: let the kernel keep their
# attributes and names for an hour. Everything else can change behind the kernel's back
# (a video finishing, a file being written), so one second; publishing also invalidates
# the affected names explicitly.
IMMUTABLE_TIMEOUT = 3600.0
MUTABLE_TIMEOUT = 1.0
_BLOCK = 512  # st_blocks unit


_FILE_TYPES = {
    NodeKind.SYMLINK: stat.S_IFLNK,
    NodeKind.FIFO: stat.S_IFIFO,
    NodeKind.SOCKET: stat.S_IFSOCK,
    NodeKind.CHAR_DEVICE: stat.S_IFCHR,
    NodeKind.BLOCK_DEVICE: stat.S_IFBLK,
}


def file_type(kind: NodeKind) -> int:
    """The S_IFMT bits of a kind."""
    return stat.S_IFDIR if kind.is_dir else _FILE_TYPES.get(kind, stat.S_IFREG)


def kind_of(mode: int) -> NodeKind | None:
    """The kind mknod(2) makes for a mode's file type; None for a directory or unknown."""
    kinds = {v: k for k, v in _FILE_TYPES.items() if k is not NodeKind.SYMLINK}
    kinds[stat.S_IFREG] = NodeKind.FILE
    return kinds.get(stat.S_IFMT(mode))


def entry(node: Node, size: int) -> pyfuse3.EntryAttributes:
    kind = node.node_kind
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = node.id
    attrs.generation = 0  # inode numbers are never reused (AUTOINCREMENT), so 0 is safe
    attrs.st_mode = file_type(kind) | node.mode
    # Directories report one link: "link count unknown", as btrfs does; tools like find
    # then do not rely on counting subdirectories. Others: their names (0 once unlinked).
    attrs.st_nlink = 1 if kind.is_dir else node.links
    attrs.st_rdev = node.rdev
    attrs.st_uid = node.uid
    attrs.st_gid = node.gid
    attrs.st_size = size
    attrs.st_blksize = 128 * 1024
    attrs.st_blocks = (size + _BLOCK - 1) // _BLOCK
    attrs.st_atime_ns = node.atime_ns
    attrs.st_mtime_ns = node.mtime_ns
    attrs.st_ctime_ns = node.ctime_ns
    timeout = IMMUTABLE_TIMEOUT if kind is NodeKind.MEDIA else MUTABLE_TIMEOUT
    attrs.entry_timeout = timeout
    attrs.attr_timeout = timeout
    return attrs
