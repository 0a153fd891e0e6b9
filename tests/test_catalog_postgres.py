"""The catalog in PostgreSQL (TGFS_CATALOG_URL) through a real mount, on the tests' own
server (tests/postgres.py): a library made, changed, killed and mounted again works as on
SQLite, and the consistency check passes on it (mount_factory runs it on PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import Mount, copy_in
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
