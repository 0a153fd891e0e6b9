"""POSIX behaviour of the handlers, driven in-process (tests/fsapi.py): hard links,
special files, unlink while open, rename over a name, name length, times. pjdfstest
measures the same on a real mount (README, "POSIX"); these pin each behaviour down.
Every test ends with the catalog consistency check (FsApi.close), and runs on the SQLite
catalog and on PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest

from tests.fsapi import ROOT, FsApi
from tgfs.catalog import Garbage, Node, NodeKind, db, library, trash, tree
from tgfs.catalog.check import check
from tgfs.catalog.schema import is_sqlite
from tgfs.store.base import PartRef


@pytest.fixture(params=["sqlite", "postgresql"])
async def api(request, tmp_path):
    """The handlers on each engine the catalog runs on (TGFS_CATALOG_URL)."""
    env = {}
    if request.param == "postgresql":
        env["TGFS_CATALOG_URL"] = request.getfixturevalue("postgres").database()
    api = FsApi(tmp_path, **env)
    yield api
    api.close()


@pytest.fixture
async def sqlite_api(tmp_path):
    """For damage done with SQLite's own statements (the rules are checked alike on both)."""
    api = FsApi(tmp_path)
    yield api
    api.close()


def _errno(excinfo) -> int:
    return excinfo.value.errno


async def test_content_spooled_on_another_host_is_eagain_there(api):
    """A file accepted on another host of a shared catalog is in that host's spool until
    its job stores it: reading it here is EAGAIN ("try again"). On SQLite (one host) a
    missing spool file is damage: EIO."""
    ino = await api.write_file(ROOT, "f", b"accepted")
    (spool,) = Node.select(Node.spool).where(Node.id == ino).tuples()
    Node.update(spool="/nonexistent/another-host/spool").where(Node.id == ino).execute()
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.read_file(ino)
    assert _errno(e) == (errno.EIO if is_sqlite() else errno.EAGAIN)
    Node.update(spool=spool[0]).where(Node.id == ino).execute()
    assert await api.read_file(ino) == b"accepted"


async def test_a_name_taken_since_the_kernel_looked_gives_two_files(api):
    """The kernel creates only a name it found free. On a shared catalog another host may
    take it before the create arrives (here it was, as that host's daemon would have):
    both files are kept, this one as "name (2).ext"; with O_EXCL, EEXIST."""
    other = await api.write_file(ROOT, "clip.mp4", b"the other host's")
    flags = os.O_WRONLY | os.O_CREAT
    info, attrs = await api.fs.create(ROOT, b"clip.mp4", 0o644, flags, api.ctx)
    await api.fs.write(info.fh, 0, b"this host's")
    await api.fs.flush(info.fh)
    await api.fs.release(info.fh)
    assert sorted(await api.listdir(ROOT)) == [".tgfs", "clip (2).mp4", "clip.mp4"]
    assert (await api.lookup(ROOT, "clip (2).mp4")).st_ino == attrs.st_ino
    assert await api.read_file(attrs.st_ino) == b"this host's"
    assert await api.read_file(other) == b"the other host's"
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.fs.create(ROOT, b"clip.mp4", 0o644, flags | os.O_EXCL, api.ctx)
    assert _errno(e) == errno.EEXIST


async def test_hard_links_are_names_of_one_inode(api):
    d = await api.mkdir(ROOT, "d")
    ino = await api.write_file(d, "a", b"content")
    attrs = await api.fs.link(ino, ROOT, b"b", api.ctx)
    assert attrs.st_ino == ino and attrs.st_nlink == 2
    assert (await api.lookup(d, "a")).st_nlink == 2
    await api.fs.setattr(ino, _mode(0o600), _fields(update_mode=True), None, api.ctx)
    assert stat.S_IMODE((await api.lookup(ROOT, "b")).st_mode) == 0o600  # one inode
    await api.fs.unlink(d, b"a", api.ctx)
    assert (await api.fs.getattr(ino, api.ctx)).st_nlink == 1
    assert await api.read_file(ino) == b"content"
    assert sorted(await api.listdir(ROOT)) == [".tgfs", "b", "d"]
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.fs.link(d, ROOT, b"d2", api.ctx)
    assert _errno(e) == errno.EPERM  # no hard links to directories
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.fs.link(ino, ROOT, b"d", api.ctx)
    assert _errno(e) == errno.EEXIST


async def test_unlinked_file_stays_readable_until_the_kernel_forgets_it(api):
    ino = await api.write_file(ROOT, "f", b"x" * 5000)
    store_file = ino  # its content sits in the spool (no ingest runs in-process)
    spool = tree.get(store_file).spool
    info = await api.fs.open(ino, os.O_RDONLY, api.ctx)
    await api.fs.unlink(ROOT, b"f", api.ctx)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.lookup(ROOT, "f")
    assert _errno(e) == errno.ENOENT
    attrs = await api.fs.getattr(ino, api.ctx)  # fstat
    assert attrs.st_nlink == 0 and attrs.st_size == 5000
    assert await api.fs.read(info.fh, 0, 10) == b"x" * 10
    await api.fs.release(info.fh)
    assert tree.get(ino) is not None and os.path.exists(spool)  # the kernel still knows it
    await api.fs.forget([(ino, 1)])  # the one lookup create() gave
    assert tree.get(ino) is None and not os.path.exists(spool)


async def _stored_file(api, name: str, location: str) -> int:
    ino = await api.write_file(ROOT, name, b"")
    node = tree.get(ino)
    with db.atomic():  # as the ingest runner leaves a stored file
        node.blob = library.blobs.add(
            3, [PartRef(id=0, index=0, offset=0, size=3, location=location)]
        )
        node.size, node.spool = 3, None
        node.save()
    return ino


async def test_unlinked_stored_file_frees_its_parts_at_forget(api):
    api.fs.settings = dataclasses.replace(api.fs.settings, trash_days=0)  # no trash
    ino = await _stored_file(api, "f", "aa/stored")
    await api.fs.unlink(ROOT, b"f", api.ctx)
    assert Garbage.select().count() == 0  # still known to the kernel: kept
    await api.fs.forget([(ino, 1)])
    assert [g.location for g in Garbage.select()] == ["aa/stored"]


async def test_stored_files_unlinked_or_replaced_go_to_the_trash(api):
    ino = await _stored_file(api, "f", "aa/one")
    info = await api.fs.open(ino, os.O_RDONLY, api.ctx)
    await api.fs.unlink(ROOT, b"f", api.ctx)
    assert (await api.fs.getattr(ino, api.ctx)).st_nlink == 0  # fstat on the open file
    await api.fs.release(info.fh)
    await api.fs.forget([(ino, 1)])
    other = await _stored_file(api, "g", "aa/two")
    newer = await api.write_file(ROOT, "new", b"newer")
    await api.fs.rename(ROOT, b"new", ROOT, b"g", 0, api.ctx)  # replaces g's content
    await api.fs.forget([(other, 1)])
    assert Garbage.select().count() == 0 and tree.get(ino) is not None
    assert [(i.path, i.size) for i in trash.items()] == [("g", 3), ("f", 3)]
    assert trash.held() == (2, 6)
    for item in trash.items():
        trash.restore(item.id)
    assert sorted(await api.listdir(ROOT)) == [".tgfs", "f", "g", "g (2)"]
    assert (await api.lookup(ROOT, "f")).st_ino == ino
    assert (await api.lookup(ROOT, "g")).st_ino == newer
    gone, _ = trash.let_go(None, lambda _inode: False)
    assert gone == []  # nothing left in it


async def test_a_name_never_looked_up_is_purged_at_once(api):
    ino = await api.write_file(ROOT, "f", b"data")
    await api.fs.forget([(ino, 1)])
    await api.fs.unlink(ROOT, b"f", api.ctx)
    assert tree.get(ino) is None


async def test_special_files_are_entries_with_attributes(api):
    kinds = {
        "fifo": (stat.S_IFIFO, 0),
        "sock": (stat.S_IFSOCK, 0),
        "chr": (stat.S_IFCHR, os.makedev(1, 3)),
        "blk": (stat.S_IFBLK, os.makedev(8, 1)),
    }
    for name, (kind, rdev) in kinds.items():
        attrs = await api.fs.mknod(ROOT, name.encode(), kind | 0o640, rdev, api.ctx)
        assert stat.S_IFMT(attrs.st_mode) == kind and attrs.st_rdev == rdev
        assert stat.S_IMODE(attrs.st_mode) == 0o640 & ~api.ctx.umask
    attrs = await api.fs.mknod(ROOT, b"plain", stat.S_IFREG | 0o644, 0, api.ctx)
    assert stat.S_ISREG(attrs.st_mode) and attrs.st_size == 0
    assert await api.read_file(attrs.st_ino) == b""
    fifo = (await api.lookup(ROOT, "fifo")).st_ino
    await api.fs.link(fifo, ROOT, b"fifo2", api.ctx)
    await api.fs.rename(ROOT, b"fifo2", ROOT, b"chr", 0, api.ctx)  # replaces the device
    assert (await api.lookup(ROOT, "chr")).st_ino == fifo
    assert sorted(await api.listdir(ROOT)) == [".tgfs", "blk", "chr", "fifo", "plain", "sock"]


async def test_names_longer_than_255_bytes_are_refused(api):
    for call in (
        lambda n: api.fs.mkdir(ROOT, n, 0o755, api.ctx),
        lambda n: api.fs.lookup(ROOT, n, api.ctx),
        lambda n: api.fs.create(ROOT, n, 0o644, os.O_WRONLY, api.ctx),
        lambda n: api.fs.symlink(ROOT, n, b"target", api.ctx),
    ):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call(b"n" * 256)
        assert _errno(e) == errno.ENAMETOOLONG
    assert (await api.fs.mkdir(ROOT, "é".encode() * 127 + b"x", 0o755, api.ctx)).st_ino


async def test_rename_over_another_name_of_the_same_file_does_nothing(api):
    ino = await api.write_file(ROOT, "a", b"1")
    await api.fs.link(ino, ROOT, b"b", api.ctx)
    await api.fs.rename(ROOT, b"a", ROOT, b"b", 0, api.ctx)
    assert sorted(await api.listdir(ROOT)) == [".tgfs", "a", "b"]
    assert (await api.lookup(ROOT, "a")).st_nlink == 2


async def test_rename_replaces_a_file_in_one_step(api):
    old = await api.write_file(ROOT, "target", b"old")
    new = await api.write_file(ROOT, "new", b"new")
    await api.fs.rename(ROOT, b"new", ROOT, b"target", 0, api.ctx)
    assert (await api.lookup(ROOT, "target")).st_ino == new
    assert tree.get(old).links == 0  # the kernel may still hold it open
    await api.fs.forget([(old, 1)])
    assert tree.get(old) is None
    assert await api.read_file(new) == b"new"
    d = await api.mkdir(ROOT, "d")
    await api.write_file(d, "x", b"")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.fs.rename(ROOT, b"target", ROOT, b"d", 0, api.ctx)
    assert _errno(e) == errno.EISDIR


async def test_removed_directory_takes_no_new_entries(api):
    d = await api.mkdir(ROOT, "d")
    await api.fs.rmdir(ROOT, b"d", api.ctx)
    assert (await api.fs.getattr(d, api.ctx)).st_ino == d  # someone's cwd: still there
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.fs.mkdir(d, b"x", 0o755, api.ctx)
    assert _errno(e) == errno.ENOENT
    await api.fs.forget([(d, 1)])
    assert tree.get(d) is None


async def test_times_are_set_one_by_one(api):
    ino = await api.write_file(ROOT, "f", b"")
    attr = pyfuse3.EntryAttributes()
    attr.st_atime_ns, attr.st_mtime_ns = 1_000_000_000, 2_000_000_000
    await api.fs.setattr(ino, attr, _fields(update_atime=True), None, api.ctx)
    got = await api.fs.getattr(ino, api.ctx)
    assert got.st_atime_ns == 1_000_000_000 and got.st_mtime_ns != 2_000_000_000
    await api.fs.setattr(ino, attr, _fields(update_mtime=True), None, api.ctx)
    got = await api.fs.getattr(ino, api.ctx)
    assert (got.st_atime_ns, got.st_mtime_ns) == (1_000_000_000, 2_000_000_000)


async def test_set_group_id_directories_pass_their_group_on(api):
    d = await api.mkdir(ROOT, "shared", 0o2775)
    attr = pyfuse3.EntryAttributes()
    attr.st_gid = 4242
    await api.fs.setattr(d, attr, _fields(update_gid=True), None, api.ctx)
    sub = await api.fs.mkdir(d, b"sub", 0o755, api.ctx)
    assert sub.st_gid == 4242 and sub.st_mode & stat.S_ISGID
    f = await api.fs.mknod(d, b"fifo", stat.S_IFIFO | 0o644, 0, api.ctx)
    assert f.st_gid == 4242


async def test_video_folders_stay_read_only(api):
    source = tree.get(await api.write_file(ROOT, "film.mp4", b"not really"))
    folder = library.create_video(source, "copy", 6, job_id=None)
    library.complete_video(folder, None, 0.0, 6)
    master = (await api.lookup(folder.id, "master.m3u8")).st_ino
    for call, err in (
        (api.fs.link(master, ROOT, b"m", api.ctx), errno.EROFS),
        (api.fs.link(source.id, folder.id, b"x", api.ctx), errno.EROFS),
        (api.fs.mknod(folder.id, b"p", stat.S_IFIFO | 0o644, 0, api.ctx), errno.EROFS),
        (api.fs.rename(folder.id, b"master.m3u8", ROOT, b"m", 0, api.ctx), errno.EROFS),
    ):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert _errno(e) == err


async def test_readdir_offsets_survive_changes_between_pages(api):
    for n in range(7):
        await api.write_file(ROOT, f"f{n}", b"")
    real, seen = pyfuse3.readdir_reply, []

    def reply(token, name, attrs, next_id):
        seen.append((os.fsdecode(name), next_id))
        return len(seen) < 3

    pyfuse3.readdir_reply = reply
    try:
        await api.fs.readdir(ROOT, 0, None)
    finally:
        pyfuse3.readdir_reply = real
    await api.fs.unlink(ROOT, b"f0", api.ctx)  # changes before the next page
    await api.fs.link((await api.lookup(ROOT, "f5")).st_ino, ROOT, b"g", api.ctx)
    rest = []

    def reply2(token, name, attrs, next_id):
        rest.append(os.fsdecode(name))
        return True

    pyfuse3.readdir_reply = reply2
    try:
        await api.fs.readdir(ROOT, seen[1][1], None)
    finally:
        pyfuse3.readdir_reply = real
    assert [n for n, _ in seen[:2]] + rest == [
        ".tgfs",
        "f0",
        "f1",
        "f2",
        "f3",
        "f4",
        "f5",
        "f6",
        "g",
    ]


# ---- the consistency check itself -------------------------------------------------------


@pytest.mark.parametrize(
    "damage, rule",
    [
        ("UPDATE node SET links = 5 WHERE kind = 'file'", "links counts"),
        (
            "UPDATE entry SET parent_id = (SELECT id FROM node WHERE kind = 'file') "
            "WHERE node_id = (SELECT id FROM node WHERE kind = 'dir' AND id != 1)",
            "parent is a directory",
        ),
        (
            "UPDATE entry SET parent_id = node_id WHERE node_id = "
            "(SELECT id FROM node WHERE kind = 'dir' AND id != 1)",
            "reached from the root",
        ),
        ("UPDATE entry SET name = CAST('a/b' AS BLOB) WHERE name = CAST('f' AS BLOB)", "no '/'"),
        ("UPDATE blob SET size = size + 1", "sum of its parts"),
        ("DELETE FROM node WHERE kind = 'file'", "every blob is used"),
        (
            "INSERT INTO garbage (location, attempts) SELECT location, 0 FROM part",
            "not on the garbage list",
        ),
        ("UPDATE job SET state = 'lost'", "job state is known"),
        (
            "INSERT INTO trash (node_id, parent_id, name, path, deleted_ns, size) "
            "SELECT id, 1, CAST('f' AS BLOB), CAST('d/f' AS BLOB), 0, 0 FROM node "
            "WHERE kind = 'file'",
            "a trashed node has no name",
        ),
    ],
)
async def test_the_check_finds_damage(sqlite_api, damage, rule):
    api = sqlite_api
    d = await api.mkdir(ROOT, "d")
    ino = await api.write_file(d, "f", b"")
    node = tree.get(ino)
    with db.atomic():
        node.blob = library.blobs.add(
            3, [PartRef(id=0, index=0, offset=0, size=3, location="aa/stored")]
        )
        node.save()
    assert check() == []
    db.execute_sql("PRAGMA foreign_keys=OFF")
    db.execute_sql(damage)
    db.execute_sql("PRAGMA foreign_keys=ON")
    problems = check()
    assert any(rule in p.rule for p in problems), problems
    db.execute_sql("PRAGMA foreign_keys=OFF")  # leave a sound catalog for close()
    for table in ("entry", "part", "garbage", "job", "blob", "landed"):
        db.execute_sql(f"DELETE FROM {table} WHERE 1")
    db.execute_sql("DELETE FROM node WHERE id > 5 OR kind = 'file'")
    db.execute_sql("UPDATE node SET links = 1")
    for parent, name, node_id in (
        (1, ".tgfs", 2),
        (2, "status.json", 3),
        (2, "bots.json", 4),
        (2, "cache.json", 5),
    ):
        db.execute_sql(
            "INSERT INTO entry (parent_id, name, node_id) VALUES (?, ?, ?)",
            (parent, os.fsencode(name), node_id),
        )
    db.execute_sql("PRAGMA foreign_keys=ON")
    assert Node.get_by_id(2).node_kind is NodeKind.CONTROL_DIR


def _mode(mode: int) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = mode
    return attr


def _fields(**set_: bool) -> SimpleNamespace:
    """What pyfuse3.SetattrFields says (its attributes cannot be set from Python)."""
    names = (
        "update_atime",
        "update_mtime",
        "update_ctime",
        "update_mode",
        "update_uid",
        "update_gid",
        "update_size",
    )
    return SimpleNamespace(**{name: set_.get(name, False) for name in names})
