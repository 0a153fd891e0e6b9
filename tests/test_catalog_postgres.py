"""The catalog in PostgreSQL (TGFS_CATALOG_URL) through a real mount, on the tests' own
server (tests/postgres.py): a library made, changed, killed and mounted again works as on
SQLite, and the consistency check passes on it (mount_factory runs it on PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import Mount, copy_in, wait_for
from tests.hls_checks import decode_errors


def test_a_library_in_postgresql(mount_factory, postgres, media, tmp_path):
    url = postgres.database()
    mount = mount_factory(TGFS_CATALOG_URL=url)
    (mount.path / "Movies").mkdir()
    copy_in(media("h264_aac.mp4"), mount.path / "Movies" / "Clip.mp4")
    odd = os.fsdecode(b"notes \xff.txt")  # a name that is not UTF-8: bytes in bytea
    (mount.path / odd).write_bytes(b"kept as bytes")
    mount.wait_idle()
    assert mount.job("Movies/Clip.mp4")["outcome"] == "video (copy)"
    assert decode_errors(mount.path / "Movies" / "Clip" / "master.m3u8") == ""
    assert not (mount.data / "catalog.db").exists()  # nothing of it in SQLite
    os.link(mount.path / odd, mount.path / "second name")

    def listed() -> list[str]:
        library = json.loads((mount.path / ".tgfs" / "library.json").read_text())
        return [v["path"] for v in library["videos"]]

    # library.json, kept until the catalog changes, follows a change at once (any writer's:
    # the catalog's change mark is the write-ahead log's insert position).
    assert listed() == ["Movies/Clip"]
    (mount.path / "Movies" / "Clip").rename(mount.path / "Movies" / "Film")
    assert listed() == ["Movies/Film"]
    # A host is a data directory: a copy of this one (its host id with it) is refused the
    # catalog, since the two would take each other's jobs for a crash's leftovers.
    (tmp_path / "copy" / "data").mkdir(parents=True)
    shutil.copy(mount.data / "host", tmp_path / "copy" / "data" / "host")
    copy = Mount(tmp_path / "copy", {"TGFS_CATALOG_URL": url})
    with pytest.raises(AssertionError, match="another tgfs daemon with this host's id"):
        copy.start()

    # A file accepted (closed) just before a kill -9 is there after the restart.
    (mount.path / "last.bin").write_bytes(b"accepted" * 1000)
    mount.kill()
    mount.start()
    mount.wait_idle()
    assert (mount.path / "last.bin").read_bytes() == b"accepted" * 1000
    assert (mount.path / "second name").read_bytes() == b"kept as bytes"
    assert os.stat(mount.path / odd).st_nlink == 2
    assert sorted(os.listdir(mount.path / "Movies")) == ["Film"]
    assert decode_errors(mount.path / "Movies" / "Film" / "master.m3u8") == ""
    mount.store_matches_catalog()
    assert mount.catalog("SELECT count(*) FROM video WHERE complete") == [(1,)]

    # The server restarts under the mount: the daemon's connection is made again (and the
    # catalog's lock taken again) at its next statement; nothing fails.
    postgres.restart()
    (mount.path / "after.txt").write_text("after a restart")
    assert "after.txt" in os.listdir(mount.path)
    mount.wait_idle()
    assert (mount.path / "after.txt").read_text() == "after a restart"
    assert "OperationalError" not in mount.log()


def test_the_password_in_the_url_is_never_shown(postgres, tmp_path):
    url = postgres.database().replace("postgres@", "postgres:sw0rdfish-secret@")
    env = {**os.environ, "TGFS_CATALOG_URL": url, "TGFS_DATA_DIR": str(tmp_path)}
    shown = subprocess.run(
        [sys.executable, "-m", "tgfs", "config"], env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "TGFS_CATALOG_URL" in shown.stdout and "postgres:***@" in shown.stdout
    assert "sw0rdfish" not in shown.stdout + shown.stderr


def test_a_catalog_that_cannot_be_reached_is_one_clear_line(tmp_path):
    url = "postgresql://tgfs:sw0rdfish-secret@/tgfs?host=/nonexistent"
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "TGFS_CATALOG_URL": url, "TGFS_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "tgfs", "mount", str(tmp_path / "mnt")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "cannot open the PostgreSQL catalog" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "sw0rdfish" not in done.stdout + done.stderr


def _tgfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tgfs", *args], env=env, capture_output=True, text=True
    )


def _tree(root) -> dict[str, tuple]:
    """Every entry below `root` but the control folder: its inode and what it holds."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.split("/")[0] == ".tgfs":
            continue
        st = path.lstat()
        if path.is_symlink():
            what: object = ("link", os.readlink(path))
        elif path.is_dir():
            what = "dir"
        else:
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        found[rel] = (st.st_ino, st.st_nlink, st.st_mtime_ns, what)
    return found


def _library(m: Mount, media) -> None:
    """A small library with what a copy could get wrong: a video, names as bytes, a hard
    link, a symlink, an item in the trash, and inodes handed out and deleted."""
    (m.path / "Movies").mkdir()
    copy_in(media("h264_aac.mp4"), m.path / "Movies" / "Clip.mp4")
    odd = os.fsdecode(b"caf\xe9.txt")
    (m.path / odd).write_bytes(b"Latin-1 name")
    os.link(m.path / odd, m.path / "Movies" / "same file")
    (m.path / "link").symlink_to("Movies/Clip")
    (m.path / "trashed.txt").write_text("in the trash")
    m.wait_idle()
    (m.path / "trashed.txt").unlink()
    for n in range(5):  # the newest inodes go: a copy must not hand them out again
        (m.path / f"gone{n}").write_text("x")
        (m.path / f"gone{n}").unlink()


def test_tgfs_catalog_copy_moves_a_library_to_postgresql_and_back(
    mount_factory, postgres, media, tmp_path
):
    m = mount_factory()
    _library(m, media)
    before = _tree(m.path)
    newest = max(m.catalog("SELECT max(id) FROM node")[0][0], 5)
    assert m.stop() == 0

    url = postgres.database().replace("postgres@", "postgres:copy-s3cret@")
    env = {**m.env, "TGFS_CATALOG_URL": ""}
    copied = _tgfs(env, "catalog", "copy", str(m.data / "catalog.db"), url)
    assert copied.returncode == 0, copied.stderr
    assert "copied" in copied.stdout and "copy-s3cret" not in copied.stdout + copied.stderr
    again = _tgfs(env, "catalog", "copy", str(m.data / "catalog.db"), url)
    assert again.returncode != 0 and "(it holds a library)" in again.stderr

    # The same data directory on PostgreSQL: the same library, inode for inode.
    m.env["TGFS_CATALOG_URL"] = url
    m.start()
    assert _tree(m.path) == before
    assert decode_errors(m.path / "Movies" / "Clip" / "master.m3u8") == ""
    trash = json.loads((m.path / ".tgfs" / "trash.json").read_text())
    assert [item["path"] for item in trash["items"]] == ["trashed.txt"]
    (m.path / "new.txt").write_text("made on PostgreSQL")
    assert (m.path / "new.txt").stat().st_ino > newest  # ids never reused
    m.wait_idle()
    after = _tree(m.path)
    assert m.stop() == 0

    # And back into a new SQLite file.
    back = tmp_path / "back.db"
    returned = _tgfs(env, "catalog", "copy", url, str(back))
    assert returned.returncode == 0, returned.stderr
    (m.data / "catalog.db").rename(tmp_path / "first.db")
    back.rename(m.data / "catalog.db")
    m.env["TGFS_CATALOG_URL"] = ""
    m.start()
    assert _tree(m.path) == after
    (m.path / "newer.txt").write_text("back on SQLite")
    assert (m.path / "newer.txt").stat().st_ino > (m.path / "new.txt").stat().st_ino
    m.wait_idle()
    m.store_matches_catalog()


def test_a_postgresql_catalog_is_backed_up_into_the_store_and_restored(
    mount_factory, postgres, media, tmp_path
):
    m = mount_factory(TGFS_CATALOG_URL=postgres.database())
    _library(m, media)
    made = _tgfs(m.env, "backup", str(m.path))  # through the mount: the daemon makes it
    assert made.returncode == 0, made.stderr
    before = _tree(m.path)
    assert m.stop() == 0
    store = str(m.data / "blobs")

    # Into a new, empty database: the same library.
    fresh = postgres.database()
    env = {**m.env, "TGFS_CATALOG_URL": fresh}
    restored = _tgfs(env, "restore")
    assert restored.returncode == 0, restored.stderr
    assert "into the PostgreSQL catalog" in restored.stdout
    refused = _tgfs(env, "restore")  # never into a database that holds a catalog
    assert refused.returncode != 0 and "(it holds a library)" in refused.stderr
    m.env["TGFS_CATALOG_URL"] = fresh
    m.start()
    assert _tree(m.path) == before
    assert decode_errors(m.path / "Movies" / "Clip" / "master.m3u8") == ""
    assert m.stop() == 0

    # And into SQLite, on another machine with nothing but the settings and the store.
    other = Mount(tmp_path / "other", {"TGFS_LOCAL_STORE_DIR": store})
    restored = _tgfs(other.env, "restore")
    assert restored.returncode == 0, restored.stderr
    other.start()
    try:
        assert _tree(other.path) == before
        other.store_matches_catalog()
    finally:
        assert other.stop() == 0


def test_a_copy_killed_midway_leaves_a_new_catalog_and_runs_again(
    mount_factory, postgres, media, tmp_path
):
    m = mount_factory()
    _library(m, media)
    before = _tree(m.path)
    assert m.stop() == 0
    env = {**m.env, "TGFS_CATALOG_URL": ""}
    url = postgres.database()
    # A database a daemon made a catalog in and nothing more is new: while the daemon is
    # mounted on it, it is refused.
    empty = mount_factory(tmp_path / "empty", TGFS_CATALOG_URL=url)
    source = str(m.data / "catalog.db")
    refused = _tgfs(env, "catalog", "copy", source, url)
    assert refused.returncode != 0 and "(a tgfs daemon is mounted on it)" in refused.stderr
    assert empty.stop() == 0

    # Killed while it loads (its insert waits behind the test's lock on a table): nothing
    # of the copy is left, and the next one goes through.
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE entry IN ACCESS EXCLUSIVE MODE")
    copying = subprocess.Popen(
        [sys.executable, "-m", "tgfs", "catalog", "copy", source, url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def waiting() -> bool:  # (asked on a session of its own: pg_stat_activity is read
        # once per transaction, and the blocker's lasts)
        sql = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return _catalog_rows(url, sql) == [(1,)]

    try:
        wait_for(waiting, 30, "the copy waiting for the table")
    finally:  # (a failure must not leave the copy waiting and the database locked)
        copying.kill()
        copying.wait()
        blocker.rollback()
    wait_for(lambda: not waiting(), 30, "the killed copy's session to end")
    blocker.close()
    made = "SELECT count(*) FROM node WHERE kind IN ('dir', 'file', 'video') AND id <> 1"
    assert _catalog_rows(url, made) == [(0,)]
    again = _tgfs(env, "catalog", "copy", source, url)
    assert again.returncode == 0, again.stderr

    # A SQLite copy killed midway leaves only its file under another name: cleared.
    back = tmp_path / "back.db"
    for leftover in ("back.db.copying", "back.db.copying-wal"):
        (tmp_path / leftover).write_bytes(b"a killed copy's")
    assert _tgfs(env, "catalog", "copy", url, str(back)).returncode == 0
    assert sorted(p.name for p in tmp_path.glob("back.db*")) == ["back.db"]
    m.env["TGFS_CATALOG_URL"] = url
    m.start()
    assert _tree(m.path) == before
    assert m.stop() == 0
    (m.data / "catalog.db").unlink()
    back.rename(m.data / "catalog.db")
    m.env["TGFS_CATALOG_URL"] = ""
    m.start()
    assert _tree(m.path) == before


def _catalog_rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()
