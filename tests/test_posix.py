"""POSIX on a real mount, with the tools people use (ln, mkfifo, mknod, mv, tar), and what a
kill -9 leaves of hard links, unlinked-but-open files and replacing renames.
(tests/test_fs_api.py pins each handler down in-process; pjdfstest measures the whole,
README "POSIX".)"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tarfile

from tests.conftest import wait_for


def test_hard_links_special_files_and_tar_round_trip(mount_factory, tmp_path):
    m = mount_factory()
    d = m.path / "d"
    d.mkdir()
    data = os.urandom(700_000)
    (d / "a.bin").write_bytes(data)
    subprocess.run(["ln", str(d / "a.bin"), str(m.path / "b.bin")], check=True)
    subprocess.run(["mkfifo", str(d / "pipe")], check=True)
    subprocess.run(["mknod", str(d / "null"), "c", "1", "3"], check=True)
    subprocess.run(["ln", "-s", "a.bin", str(d / "link")], check=True)
    m.wait_idle()  # stored: the store holds one copy for both names
    assert (d / "a.bin").stat().st_nlink == 2
    assert (d / "a.bin").stat().st_ino == (m.path / "b.bin").stat().st_ino
    assert len(m.catalog("SELECT id FROM blob")) == 1
    assert stat.S_ISFIFO((d / "pipe").stat().st_mode)
    assert os.major((d / "null").stat().st_rdev) == 1
    # The kernel, not tgfs, opens a fifo: a writer and a reader meet through it.
    writer = subprocess.Popen(["sh", "-c", f"echo through > {d / 'pipe'}"])
    assert (d / "pipe").read_text() == "through\n"
    assert writer.wait(10) == 0
    # tar keeps hard links as links, and everything else, across the mount.
    archive = tmp_path / "t.tar"
    subprocess.run(["tar", "-C", str(m.path), "-cf", str(archive), "d", "b.bin"], check=True)
    with tarfile.open(archive) as t:
        kinds = {i.name: i.type for i in t.getmembers()}
    assert kinds["b.bin"] == tarfile.LNKTYPE or kinds["d/a.bin"] == tarfile.LNKTYPE
    assert kinds["d/pipe"] == tarfile.FIFOTYPE and kinds["d/link"] == tarfile.SYMTYPE
    restored = m.path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-C", str(restored), "-xf", str(archive)], check=True)
    assert (restored / "d" / "a.bin").stat().st_nlink == 2
    assert (restored / "b.bin").read_bytes() == data
    m.wait_idle()
    m.store_matches_catalog()


def test_unlinked_open_file_survives_until_closed_then_kill_leaves_nothing(mount_factory):
    m = mount_factory(TGFS_TRASH_DAYS="0")  # no trash: the purge at forget is what is tested
    f = m.path / "scratch.bin"
    data = os.urandom(400_000)
    f.write_bytes(data)
    m.wait_idle()  # stored
    with open(f, "rb") as held:  # e.g. a player holding a file that gets deleted
        f.unlink()
        assert os.fstat(held.fileno()).st_nlink == 0
        assert held.read() == data
    # Closed and forgotten: its parts go (the kernel forgets an unlinked inode at close).
    wait_for(lambda: not m.blob_files(), 60, "the unlinked file's parts to be deleted")

    # Unlinked while open, then the daemon dies: the next start purges it.
    g = m.path / "held.bin"
    g.write_bytes(os.urandom(300_000))
    m.wait_idle()
    spool_before = set(os.listdir(m.data / "spool"))
    fd = os.open(g, os.O_RDWR)
    g.unlink()
    os.write(fd, b"more")  # writes to an unlinked file are fine, and go nowhere
    m.kill()
    with contextlib.suppress(OSError):
        os.close(fd)
    m.start()
    assert os.listdir(m.path) == [".tgfs"]
    assert m.catalog("SELECT count(*) FROM node WHERE links = 0 AND id != 1") == [(0,)]
    assert set(os.listdir(m.data / "spool")) == spool_before  # the working file swept
    m.store_matches_catalog()
    assert not m.blob_files()


def test_replacing_rename_then_kill_keeps_one_whole_file(mount_factory):
    """`mv new target` is one catalog transaction: after a kill -9 the target name has the
    new content and the replaced file's parts are deleted, never neither."""
    m = mount_factory(TGFS_TRASH_DAYS="0")  # no trash: the replaced file goes at once
    old, new = os.urandom(500_000), os.urandom(600_000)
    (m.path / "target.bin").write_bytes(old)
    (m.path / "new.bin").write_bytes(new)
    m.wait_idle()
    subprocess.run(["mv", str(m.path / "new.bin"), str(m.path / "target.bin")], check=True)
    m.kill()
    m.start()
    assert sorted(os.listdir(m.path)) == [".tgfs", "target.bin"]
    assert (m.path / "target.bin").read_bytes() == new
    m.store_matches_catalog()
    assert len(m.blob_files()) == 1
