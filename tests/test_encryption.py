"""Encryption at rest through a real mount (issue "Runs as a service, private by default,
encrypted at rest"): with a key, the store holds nothing readable (parts, catalog backups,
the manifest); what was written reads back byte for byte and plays; a tampered or cut-short
part is EIO with a log line naming it while the mount goes on; a library made without a key
keeps reading after one is added; a wrong key is refused before anything is written; a
restore needs the key and says so; a kill while a sealed part is on its way loses nothing
and leaves nothing behind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_in, telegram_env, wait_for
from tgfs.keys import generate_key_file
from tgfs.store.sealing import SEALED_FRAME

MARKER = b"my-secret-diagnosis "  # what must not be found in the store


def _key(tmp_path: Path, name: str) -> dict[str, str]:
    path = tmp_path / name
    generate_key_file(path)
    return {"TGFS_ENCRYPTION_KEY_FILE": str(path)}


def _drop_cache(m) -> None:
    os.truncate(m.path / ".tgfs" / "cache.json", 0)


def _parts_of(m, name: str) -> list[Path]:
    rows = m.catalog(
        "SELECT p.location FROM part p JOIN node n ON n.blob_id = p.blob_id "
        'JOIN entry e ON e.node_id = n.id WHERE e.name = ? ORDER BY p."index"',
        os.fsencode(name),
    )
    return [m.data / "blobs" / loc for (loc,) in rows]


def _read_errno(path: Path) -> int | None:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


def test_a_sealed_library_shows_the_store_nothing_and_reads_back(mount_factory, tmp_path, media):
    key = _key(tmp_path, "library.key")
    m = mount_factory(TGFS_LOG_LEVEL="INFO", **key)
    secret = MARKER * 20_000  # 400 KB: seven frames
    (m.path / "diagnosis.txt").write_bytes(secret)
    for name in ("tampered.txt", "cut.txt"):
        (m.path / name).write_bytes(MARKER * 10_000)
    copy_in(media("h264_aac.mp4"), m.path / "holiday.mp4")
    m.wait_idle()

    seals = m.catalog("SELECT seal FROM part")
    assert seals and all(s is not None and len(s) == 32 for (s,) in seals)
    assert len({s for (s,) in seals}) == len(seals)  # a salt, so a key, per part
    for blob in m.blob_files():
        assert MARKER not in blob.read_bytes(), blob

    _drop_cache(m)
    assert (m.path / "diagnosis.txt").read_bytes() == secret
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(m.path / "holiday" / "master.m3u8"), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr

    # One flipped bit in the second frame; another part cut short at a frame boundary.
    (tampered,) = _parts_of(m, "tampered.txt")
    with open(tampered, "r+b") as f:
        f.seek(SEALED_FRAME + 100)
        byte = f.read(1)
        f.seek(SEALED_FRAME + 100)
        f.write(bytes([byte[0] ^ 1]))
    (cut,) = _parts_of(m, "cut.txt")
    os.truncate(cut, 2 * SEALED_FRAME)
    assert _read_errno(m.path / "tampered.txt") == errno.EIO
    assert _read_errno(m.path / "cut.txt") == errno.EIO
    log = m.log()
    part_of = dict(m.catalog("SELECT location, id FROM part"))
    tampered_id = part_of[f"{tampered.parent.name}/{tampered.name}"]
    assert f"part {tampered_id} at " in log and "failed authentication" in log
    cut_id = part_of[f"{cut.parent.name}/{cut.name}"]
    assert f"part {cut_id}: the store returned {2 * SEALED_FRAME} of " in log
    _drop_cache(m)  # the mount goes on: the others still read
    assert (m.path / "diagnosis.txt").read_bytes() == secret
    assert m.stop() == 0  # a clean unmount backs the catalog up

    # The backups and their manifest are sealed too; a restore needs the key, says so,
    # and with it brings the library back.
    manifest = (m.data / "blobs" / "manifest.json").read_bytes()
    assert manifest.startswith(b"tgfs-sealed-manifest-v1\n")
    backups = [loc for (parts,) in m.catalog("SELECT parts FROM backup") for loc in [parts]]
    assert backups and all(s for (s,) in m.catalog("SELECT seal FROM backup"))
    os.replace(m.data / "catalog.db", tmp_path / "catalog.before")
    env = {k: v for k, v in m.env.items() if not k.startswith("TGFS_ENCRYPTION")}

    def restore(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tgfs", "restore"],
            env={**env, **extra},
            capture_output=True,
            text=True,
        )

    without = restore()
    assert without.returncode != 0 and "manifest is encrypted" in without.stderr
    wrong = restore(**_key(tmp_path, "other.key"))
    assert wrong.returncode != 0 and "does not open" in wrong.stderr
    assert not (m.data / "catalog.db").exists()  # neither wrote a catalog
    done = restore(**key)
    assert done.returncode == 0, done.stderr
    m = mount_factory(**key)
    _drop_cache(m)
    assert (m.path / "diagnosis.txt").read_bytes() == secret


def test_a_library_made_without_a_key_reads_on_when_one_is_added(mount_factory, tmp_path):
    plain_bytes, sealed_bytes = os.urandom(300_000), os.urandom(300_000)
    m = mount_factory()
    (m.path / "before.bin").write_bytes(plain_bytes)
    m.wait_idle()
    assert m.stop() == 0

    key = _key(tmp_path, "library.key")
    m = mount_factory(**key)
    (m.path / "after.bin").write_bytes(sealed_bytes)
    m.wait_idle()
    _drop_cache(m)
    assert (m.path / "before.bin").read_bytes() == plain_bytes
    assert (m.path / "after.bin").read_bytes() == sealed_bytes
    assert m.stop() == 0
    sealed = {
        bytes(name): seal is not None
        for name, seal in m.catalog(
            "SELECT e.name, p.seal FROM entry e JOIN node n ON n.id = e.node_id "
            "JOIN part p ON p.blob_id = n.blob_id"
        )
    }
    assert sealed == {b"before.bin": False, b"after.bin": True}

    with pytest.raises(AssertionError, match="not the key this library was encrypted with"):
        mount_factory(**_key(tmp_path, "another.key"))

    # Without the key: the plain file reads, the sealed one is EIO and the log says why.
    m = mount_factory()
    _drop_cache(m)
    assert (m.path / "before.bin").read_bytes() == plain_bytes
    assert _read_errno(m.path / "after.bin") == errno.EIO
    assert "is encrypted and no encryption key is set" in m.log()


def test_a_kill_while_a_sealed_part_is_on_its_way_loses_nothing(mount_factory, tmp_path, telegram):
    """kill -9 after a part was sealed and sent, before Telegram's reply: the restart
    deletes the sent copy (named like a part, though opaque), removes the sealing scratch
    file, stores the file again, and it reads back; Telegram holds exactly what the catalog
    names."""
    data = os.urandom(300_000)
    m = mount_factory(**telegram_env(telegram, **_key(tmp_path, "library.key")))
    telegram.config["reply_latency"] = 30.0  # the part is stored long before its reply
    telegram.write()
    (m.path / "kept.bin").write_bytes(data)  # close() returned: accepted
    wait_for(
        lambda: telegram.part_messages() and list(m.data.rglob(".sealing-*")),
        60,
        "a sealed part sent, its reply held back",
    )
    m.kill()
    telegram.config["reply_latency"] = None
    telegram.write()
    m.start()
    m.wait_idle()
    wait_for(lambda: m.status()["garbage_pending"] == 0, 60, "the sent copy to be deleted")
    assert list(m.data.rglob(".sealing-*")) == []
    _drop_cache(m)
    assert (m.path / "kept.bin").read_bytes() == data
    assert set(telegram.part_messages()) == m.telegram_messages()
