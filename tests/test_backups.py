"""Catalog backups in the store and restore from the settings alone (issue "Never lose a
library"): made after real changes only, found without the catalog, restored onto a data
directory that lost everything but the store, and the library plays again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import TEST_ENV, copy_in, telegram_env, wait_for
from tests.fsapi import ROOT, FsApi
from tests.hls_checks import check_video_folder
from tgfs.backups import Backups, read_manifest
from tgfs.catalog import Garbage, backups

SEGMENT = float(TEST_ENV["TGFS_SEGMENT_SECONDS"])


@pytest.fixture
async def api(tmp_path):
    api = FsApi(tmp_path)
    yield api
    api.close()


async def test_a_backup_follows_changes_and_not_its_own_bookkeeping(api):
    made = Backups(api.settings, api.store, api.settings.spool_dir)
    first = await made.backup_now("test")
    assert first is not None and first.generation == 1
    assert not made.changed()
    await api.write_file(ROOT, "notes.txt", b"hello")  # a change to the library
    assert made.changed()
    keep = api.settings.backup_keep
    for _ in range(keep + 1):  # the oldest go beyond TGFS_BACKUP_KEEP
        assert (await made.backup_now("test")) is not None
    assert [g.generation for g in backups.generations()] == list(range(keep + 2, 2, -1))
    assert Garbage.select().count() == 2  # generations 1 and 2, one part each
    await api.fs.collector.collect_once()  # the collector deletes them: bookkeeping
    assert Garbage.select().count() == 0
    assert not made.changed()
    manifest = await read_manifest(api.store, None)  # the store alone says where they are
    assert [g.generation for g in manifest.generations] == list(range(keep + 2, 2, -1))
    assert manifest.generations[0].parts == backups.generations()[0].parts


def _tgfs(m, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tgfs", *args], env=m.env, capture_output=True, text=True
    )


def test_restore_from_the_store_alone_then_the_library_plays(mount_factory, media, tmp_path):
    m = mount_factory(TGFS_BACKUP_INTERVAL="1")
    src = media("h264_aac.mp4")
    copy_in(src, m.path / "film.mp4")
    (m.path / "notes.txt").write_bytes(b"kept by the backup")
    m.wait_idle()

    wait_for(
        lambda: json.loads((m.path / ".tgfs" / "backups.json").read_text())["generations"],
        30,
        "an automatic backup",
    )
    forced = _tgfs(m, "backup", str(m.path))  # and one now, after everything
    assert forced.returncode == 0, forced.stderr
    assert m.stop() == 0

    # The machine loses everything but the store: catalog, spool, cache.
    for item in m.data.iterdir():
        if item.name != "blobs":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.rmtree(m.root / "cache", ignore_errors=True)
    listed = _tgfs(m, "backups")
    assert listed.returncode == 0 and listed.stdout.strip(), listed.stderr
    restored = _tgfs(m, "restore")
    assert restored.returncode == 0, restored.stderr
    assert "restored backup" in restored.stdout
    again = _tgfs(m, "restore")  # never over an existing catalog unless told
    assert again.returncode != 0 and "--force" in again.stderr
    forced_restore = _tgfs(m, "restore", "--force")
    assert forced_restore.returncode == 0, forced_restore.stderr
    assert "is now" in forced_restore.stdout and list(m.data.glob("catalog.db.before-restore-*"))

    m.start()
    assert (m.path / "notes.txt").read_bytes() == b"kept by the backup"
    check_video_folder(m.path / "film", src, SEGMENT)
    m.store_matches_catalog()


def test_restore_says_so_when_the_store_has_no_backup(tmp_path):
    env = {
        **os.environ,
        "TGFS_ENV_FILE": "/dev/null",
        "TGFS_DATA_DIR": str(tmp_path / "data"),
        "TGFS_CACHE_DIR": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tgfs", "restore"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "no backup" in result.stderr, result.stderr
    assert not (tmp_path / "data" / "catalog.db").exists()


def test_restore_from_telegram_with_the_first_bot_dead(mount_factory, telegram, media):
    """A machine with nothing but the settings, and one bot gone: the other bots' pinned
    manifests and copies of the backup are enough; once the bot is back, the video plays."""
    m = mount_factory(**telegram_env(telegram))
    src = media("tiny_h264.mp4")
    copy_in(src, m.path / "clip.mp4")
    (m.path / "notes.txt").write_bytes(b"in the backup")
    m.wait_idle()
    made = _tgfs(m, "backup", str(m.path))
    assert made.returncode == 0, made.stderr
    assert m.stop() == 0
    shutil.rmtree(m.data)  # catalog, spool, sessions: all gone
    shutil.rmtree(m.root / "cache", ignore_errors=True)
    telegram.bot(0)["dead"] = True
    telegram.write()
    restored = _tgfs(m, "restore")
    assert restored.returncode == 0, restored.stderr
    telegram.bot(0)["dead"] = False
    telegram.write()
    m.start()
    assert (m.path / "notes.txt").read_bytes() == b"in the backup"
    check_video_folder(m.path / "clip", src, SEGMENT)


def test_a_kill_mid_backup_or_mid_restore_leaves_the_previous_generation(
    mount_factory, telegram, tmp_path
):
    """kill -9 while a backup is being stored: the manifest still names the generation
    before it, the restarted daemon deletes what the half backup stored, and a restore
    killed half-way leaves no catalog behind (the next one succeeds)."""
    telegram.config["latency"] = 0.15  # every request takes a while: room to kill in
    telegram.write()
    m = mount_factory(**telegram_env(telegram))
    (m.path / "a.txt").write_bytes(b"generation one")
    m.wait_idle()
    assert _tgfs(m, "backup", str(m.path)).returncode == 0
    (m.path / "b.txt").write_bytes(b"after generation one")
    m.wait_idle()
    backup = subprocess.Popen(
        [sys.executable, "-m", "tgfs", "backup", str(m.path)],
        env=m.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (m.data / "spool" / "backup").exists(), 30, "the backup to start")
    m.kill()
    backup.wait(30)
    assert m.catalog("SELECT generation FROM backup") == [(1,)]
    m.start()  # the half backup's parts are deleted (they were landed, not recorded)
    assert not (m.data / "spool" / "backup").exists()
    wait_for(
        lambda: not m.catalog("SELECT 1 FROM landed") and m.status()["garbage_pending"] == 0,
        60,
        "the half backup's parts to go",
    )
    assert m.stop() == 0

    # Restore killed while it downloads: no catalog appears; the next restore works.
    shutil.rmtree(m.data)
    restore = subprocess.Popen(
        [sys.executable, "-m", "tgfs", "restore"],
        env=m.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: restore.poll() is not None or list(m.data.glob("catalog.db.restoring*")),
        60,
        "the restore to start downloading",
    )
    restore.kill()
    restore.wait(30)
    assert not (m.data / "catalog.db").exists()
    again = _tgfs(m, "restore")
    assert again.returncode == 0, again.stderr
    assert not list(m.data.glob("catalog.db.restoring*"))
    m.start()
    assert (m.path / "a.txt").read_bytes() == b"generation one"
    assert (m.path / "b.txt").read_bytes() == b"after generation one"  # the at-unmount one
