"""Private by default (issue "Runs as a service, private by default"): everything tgfs
writes under its data, cache and spool directories is the user's alone (directories 0700,
files 0600), the control folder is its owner's, and known fake secrets (bot tokens, the
API hash) appear in no output and no file, through a mount, an ingest, a bot whose login
fails, `test-bots`, `config` and `status`; with an encryption key, no document name in
Telegram says what it holds."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import copy_in, telegram_env, traversable
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
    assert stat.S_IMODE(control.st_mode) == 0o555 and control.st_uid == os.getuid()
    assert stat.S_IMODE((m.path / ".tgfs" / "status.json").stat().st_mode) == 0o444
    assert stat.S_IMODE((m.path / ".tgfs" / "trash.json").stat().st_mode) == 0o600
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


_WWW_DATA = ("setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups")


def _as_www_data(path: Path) -> str:
    """The file as www-data reads it (nginx's user on Debian), by its own process."""
    done = subprocess.run(
        [*_WWW_DATA, "cat", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_other_users_are_told_only_of_what_they_could_list(mount_factory, media):
    """With allow_other, status.json and library.json answer each reader with the entries
    in folders they could list: a video and a file in a 0700 folder are the owner's news
    alone; the owner (and root) see everything."""
    m = mount_factory(TGFS_ALLOW_OTHER="true")
    traversable(m.path)
    for folder, mode in (("private", 0o700), ("public", 0o755)):
        (m.path / folder).mkdir()
        os.chmod(m.path / folder, mode)
        copy_in(media("tiny_h264.mp4"), m.path / folder / "clip.mp4")
        (m.path / folder / "my-secret-diagnosis.pdf").write_bytes(b"%PDF" + os.urandom(1000))
    m.wait_idle()
    assert (m.path / "private" / "clip" / "poster.jpg").exists()
    control = m.path / ".tgfs"
    # The test runs as root: its own reads see everything.
    assert {v["path"] for v in json.loads((control / "library.json").read_text())["videos"]} == {
        "private/clip",
        "public/clip",
    }
    assert any(j["path"].startswith("private/") for j in m.status()["jobs"])

    library = json.loads(_as_www_data(control / "library.json"))
    assert [v["path"] for v in library["videos"]] == ["public/clip"]
    status = json.loads(_as_www_data(control / "status.json"))
    paths = {j["path"] for j in status["jobs"]}
    assert "public/my-secret-diagnosis.pdf" in paths
    assert not any(p.startswith("private/") for p in paths), paths
    denied = subprocess.run(
        [*_WWW_DATA, "cat", str(control / "trash.json")],
        capture_output=True,
    )
    assert denied.returncode != 0  # the trash lists deleted paths: its owner's alone
