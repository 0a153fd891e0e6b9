"""`tgfs fsck`: a whole library passes; a part deleted behind tgfs's back and a part stored
while a bot was down (fewer copies than TGFS_REPLICAS) are found, with a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import telegram_env, wait_for
from tgfs.keys import generate_key_file


def _fsck(m, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tgfs", "fsck", *args], env=m.env, capture_output=True, text=True
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
        "JOIN entry e ON e.node_id = n.id WHERE e.name = ?",
        b"b.bin",
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


def _two_bots_one_dead(telegram) -> None:
    """Bots 1 and 2 only, bot 2 down: with TGFS_REPLICAS=2 every part gets one copy."""
    telegram.config["bots"] = {
        str(b): telegram.config["bots"][str(b)] for b in telegram.bot_ids[:2]
    }
    telegram.bot_ids = telegram.bot_ids[:2]
    telegram.bot(1)["dead"] = True
    telegram.write()


def test_fsck_repair_adds_copies_and_deletes_orphans(mount_factory, telegram):
    _two_bots_one_dead(telegram)
    m = mount_factory(**telegram_env(telegram, TGFS_REPLICAS="2"))
    files = {f"{n}.bin": os.urandom(150_000) for n in "abc"}
    for name, data in files.items():
        (m.path / name).write_bytes(data)
    m.wait_idle()
    assert m.stop() == 0
    telegram.bot(1)["dead"] = False
    telegram.write()
    orphan = telegram.put_document(0, "job77-3.part0", os.urandom(5000))
    m.start()  # more parts after the orphan: it sits in a gap, below the newest message
    files["d.bin"] = os.urandom(150_000)
    (m.path / "d.bin").write_bytes(files["d.bin"])
    m.wait_idle()
    assert m.stop() == 0

    found = _fsck(m)
    assert found.returncode != 0
    assert "orphans: 1 part(s)" in found.stdout and f":{orphan}\n" in found.stdout, found.stdout
    (line,) = [x for x in found.stdout.splitlines() if x.startswith("replicas: ")]
    assert int(line.split()[1]) == 3, found.stdout  # a, b, c: stored while bot 2 was down

    repaired = _fsck(m, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: 3 part(s) given more copies" in repaired.stdout
    assert "repaired: 1 orphan(s) queued for deletion" in repaired.stdout
    assert not telegram.message_path(telegram.channel(telegram.bot_ids[0]), orphan).exists()
    assert all(len(loc.split(",")) == 2 for (loc,) in m.catalog("SELECT location FROM part"))
    assert set(telegram.part_messages()) == m.telegram_messages()  # nothing left behind
    assert _fsck(m).returncode == 0

    telegram.bot(0)["dead"] = True  # the first copies gone with their bot: the new ones serve
    telegram.write()
    m.start()
    for name, data in files.items():
        assert (m.path / name).read_bytes() == data, name


def test_a_kill_mid_repair_is_finished_by_the_next(mount_factory, telegram):
    """kill -9 while fsck --repair adds copies, just after Telegram stored one and before
    its reply came: the next --repair finds that copy (no catalog row names it), deletes
    it, and finishes; nothing is left behind."""
    _two_bots_one_dead(telegram)
    m = mount_factory(**telegram_env(telegram, TGFS_REPLICAS="2"))
    files = {f"{n:02}.bin": os.urandom(40_000) for n in range(4)}
    for name, data in files.items():
        (m.path / name).write_bytes(data)
    m.wait_idle()
    assert m.stop() == 0
    telegram.bot(1)["dead"] = False
    telegram.config["reply_latency"] = 5.0  # a sent copy is stored long before its reply
    telegram.write()

    repair = subprocess.Popen(
        [sys.executable, "-m", "tgfs", "fsck", "--repair"],
        env=m.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: any(n.startswith("repair-") for n in telegram.names(1).values()),
        120,
        "the repair to store a copy on bot 2",
    )
    repair.kill()
    repair.wait(30)
    telegram.config["reply_latency"] = None
    telegram.write()
    assert _fsck(m).returncode != 0  # still short of copies, and an orphan on bot 2

    again = _fsck(m, "--repair")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "repaired: 1 orphan(s) queued for deletion" in again.stdout, again.stdout
    assert _fsck(m).returncode == 0
    assert all(len(loc.split(",")) == 2 for (loc,) in m.catalog("SELECT location FROM part"))
    assert set(telegram.part_messages()) == m.telegram_messages()
    m.start()
    for name, data in files.items():
        assert (m.path / name).read_bytes() == data, name


def test_repair_copies_what_it_can_and_names_what_is_lost(mount_factory, telegram, tmp_path):
    """(With an encryption key: a sealed part's new copy is its sealed bytes, which its
    salt opens from either copy.)"""
    _two_bots_one_dead(telegram)
    key = tmp_path / "library.key"
    generate_key_file(key)
    env = telegram_env(telegram, TGFS_REPLICAS="2", TGFS_ENCRYPTION_KEY_FILE=str(key))
    m = mount_factory(**env)
    kept = os.urandom(50_000)
    (m.path / "kept.bin").write_bytes(kept)
    (m.path / "lost.bin").write_bytes(os.urandom(50_000))
    m.wait_idle()
    assert m.stop() == 0
    telegram.bot(1)["dead"] = False
    telegram.write()
    (location,) = m.catalog(
        "SELECT p.location FROM part p JOIN node n ON n.blob_id = p.blob_id "
        "JOIN entry e ON e.node_id = n.id WHERE e.name = ?",
        b"lost.bin",
    )[0]
    _, _, channel, message = location.split(":")
    telegram.message_path(int(channel), int(message)).unlink()  # its only copy, gone

    repaired = _fsck(m, "--repair")
    assert repaired.returncode != 0  # one file cannot be repaired
    assert "repaired: 1 part(s) given more copies" in repaired.stdout, repaired.stdout
    assert "  lost: lost.bin" in repaired.stdout
    assert "1 part(s) could not be read to copy them" in repaired.stdout
    copies = telegram.names(1).values()  # the new copies are named as opaquely as the rest
    assert copies and all(
        re.fullmatch(r"[0-9a-f]{32}\.part0|tgfs-manifest-\d+\.json", n) for n in copies
    )
    telegram.bot(0)["dead"] = True  # the first copies gone with their bot: the new ones serve
    telegram.write()
    m.start()
    assert (m.path / "kept.bin").read_bytes() == kept
