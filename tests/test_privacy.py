"""Private by default (issue "Runs as a service, private by default"): everything tgfs
writes under its data, cache and spool directories is the user's alone (directories 0700,
files 0600), the control folder is its owner's, and known fake secrets (bot tokens, the
API hash) appear in no output and no file, through a mount, an ingest, a bot whose login
fails, `test-bots`, `config` and `status`; with an encryption key, no document name in
Telegram says what it holds."""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import copy_in, telegram_env
from tests.standin import API_HASH, token


def _not_private(root: Path) -> list[str]:
    """Paths under `root` (itself included) that others could read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if mode & 0o077:
            found.append(f"{path} {stat.filemode(mode)}")
    return found


def test_what_tgfs_writes_is_private_and_holds_no_secret(mount_factory, telegram, media):
    bad = f"{telegram.bot_ids[1]}:AAFwrongTokenForThisTestOnly0000000"  # bot 2 cannot log in
    key = base64.urlsafe_b64encode(b"known fake key for this test...!").decode()
    env = telegram_env(
        telegram, TELEGRAM_BOT_TOKEN_2=bad, TGFS_LOG_LEVEL="DEBUG", TGFS_ENCRYPTION_KEY=key
    )
    m = mount_factory(**env)
    outputs = []
    copy_in(media("h264_aac.mp4"), m.path / "clip.mp4")
    (m.path / "notes.txt").write_bytes(os.urandom(100_000))
    m.wait_idle()
    os.truncate(m.path / ".tgfs" / "cache.json", 0)  # then read through the cache
    assert (m.path / "clip" / "master.m3u8").read_text().startswith("#EXTM3U")
    for segment in sorted((m.path / "clip").glob("*/*.m4s"))[:3]:
        segment.read_bytes()
    control = (m.path / ".tgfs").stat()
    assert stat.S_IMODE(control.st_mode) == 0o500 and control.st_uid == os.getuid()
    assert stat.S_IMODE((m.path / ".tgfs" / "status.json").stat().st_mode) == 0o400
    for args in (["status", str(m.path)], ["config"], ["test-bots"]):
        done = subprocess.run(
            [sys.executable, "-m", "tgfs", *args], env=m.env, capture_output=True, text=True
        )
        outputs.append(done.stdout + done.stderr)
    assert "FAILED at login" in outputs[2]  # the bad bot was really tried
    cmdline = Path(f"/proc/{m.proc.pid}/cmdline").read_bytes().decode()
    assert m.stop() == 0

    secrets = [token(b) for b in telegram.bot_ids] + [bad, API_HASH, key]
    texts = [*outputs, m.log(), cmdline]
    for secret in secrets:
        assert not any(secret in text for text in texts), secret
    for root in (m.data, m.root / "cache"):
        for path in root.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in content, (path, secret)

    # With the key, what Telegram holds is named by no file or folder name: opaque parts
    # and the backup manifests.
    names = [n for i in range(len(telegram.bot_ids)) for n in telegram.names(i).values()]
    assert names and all(
        re.fullmatch(r"[0-9a-f]{32}\.part\d+|tgfs-manifest-\d+\.json", n) for n in names
    ), names

    assert (m.data / "sessions" / f"bot-{telegram.bot_ids[1]}.session").exists()  # failed
    for root in (m.data, m.root / "cache", m.data / "spool"):
        assert _not_private(root) == [], root
