"""`tgfs fsck`: a whole library passes; a part deleted behind tgfs's back and a part stored
while a bot was down (fewer copies than TGFS_REPLICAS) are found, with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import telegram_env


def _fsck(m) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tgfs", "fsck"], env=m.env, capture_output=True, text=True
    )


def test_fsck_finds_a_part_missing_from_the_store(mount_factory):
    m = mount_factory()
    (m.path / "a.bin").write_bytes(os.urandom(200_000))
    (m.path / "b.bin").write_bytes(os.urandom(300_000))
    m.wait_idle()
    assert m.stop() == 0
    whole = _fsck(m)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "the library is whole" in whole.stdout
    (location,) = m.catalog(
        "SELECT p.location FROM part p JOIN node n ON n.blob_id = p.blob_id "
        "JOIN entry e ON e.node_id = n.id WHERE e.name = CAST('b.bin' AS BLOB)"
    )[0:1]
    (m.data / "blobs" / location[0]).unlink()  # behind tgfs's back
    broken = _fsck(m)
    assert broken.returncode != 0
    assert f"missing: {location[0]}" in broken.stdout and "1 replica(s) missing" in broken.stdout


def test_fsck_finds_parts_with_fewer_copies_than_wanted(mount_factory, telegram):
    telegram.bot(1)["dead"] = True  # of 2 bots: every part gets one copy, not two
    telegram.config["bots"] = {
        str(b): telegram.config["bots"][str(b)] for b in telegram.bot_ids[:2]
    }
    telegram.bot_ids = telegram.bot_ids[:2]
    telegram.write()
    m = mount_factory(**telegram_env(telegram, TGFS_REPLICAS="2"))
    (m.path / "a.bin").write_bytes(os.urandom(100_000))
    m.wait_idle()
    assert m.stop() == 0
    telegram.bot(1)["dead"] = False
    telegram.write()
    result = _fsck(m)
    assert result.returncode != 0
    assert "0 replica(s) missing" in result.stdout
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("replicas: ")]
    assert int(line.split()[1]) >= 1, result.stdout  # a.bin's part (and the backup's)
