"""A real mount with the Telegram store selected, against the kurigram stand-in.

The daemon runs tgfs's production adapter; only the client object is the stand-in
(TGFS_TELEGRAM_CLIENT=tests.standin:StandInClient), which keeps its "channels" on disk so
these tests can see what tgfs stored, and break it.
"""

from __future__ import annotations

import errno
import filecmp
import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO, copy_in, telegram_env, wait_for
from tests.hls_checks import check_video_folder
from tests.standin import token
from tgfs.media.hls import EncodeOptions
from tgfs.media.worker import make_hls

SEGMENT = 2.0


def part_locations(mount, name: str) -> list[str]:
    """Store locations of the parts of the entry called `name`, from the catalog (names
    are kept as bytes)."""
    rows = mount.catalog(
        "SELECT p.location FROM entry e JOIN node n ON n.id = e.node_id "
        "JOIN part p ON p.blob_id = n.blob_id WHERE e.name = ? "
        'ORDER BY p."index"',
        os.fsencode(name),
    )
    return [r[0] for r in rows]


def test_film_is_spread_over_bots_plays_back_identical_and_rm_deletes_every_message(
    mount_factory, telegram, media, tmp_path
):
    telegram.config["failure_rate"] = 0.05  # network errors on 5 % of calls, all through
    telegram.write()
    mount = mount_factory(**telegram_env(telegram))
    src = media("film.mp4")
    (mount.path / "Films").mkdir()
    copy_in(src, mount.path / "Films" / "Film.mp4")
    status = mount.wait_idle(timeout=240)
    job = mount.job("Films/Film.mp4")
    assert job["state"] == "done" and job["outcome"] == "video (copy)", job
    assert "segments cut shorter" in job["error"]  # the note: they had to fit 1 MiB

    # Spread: every bot holds some of it, and the catalog agrees with the channels.
    bots = status["store"]["bots"]
    stored = telegram.messages()
    assert all(stored[telegram.channel(b)] for b in telegram.bot_ids), stored
    # Held counts are refreshed every 10 s (HELD_TTL): wait for them to catch up.
    messages = sum(len(ids) for ids in stored.values())
    wait_for(
        lambda: sum(b["parts_held"] for b in mount.status()["store"]["bots"]) == messages,
        15,
        "held counts to match the channels",
    )
    assert sum(b["retries"] for b in bots) > 0  # the injected failures happened

    # Plays back: independent checks, then byte-identical to a local remux of the source
    # made by the same media code outside the mount.
    folder = mount.path / "Films" / "Film"
    check_video_folder(folder, src, SEGMENT)
    reference = tmp_path / "reference"
    _, copied, _ = make_hls(
        src,
        reference,
        True,
        EncodeOptions(segment_seconds=SEGMENT, max_segment_bytes=2**20),
        "",
        lambda stage: lambda seconds: None,
    )
    assert copied
    (rendition,) = [p for p in folder.iterdir() if p.is_dir()]
    names = sorted(p.name for p in reference.iterdir())
    assert len(names) > 20
    assert max((reference / n).stat().st_size for n in names) <= 2**20
    for name in names:
        assert filecmp.cmp(reference / name, rendition / name, shallow=False), name

    # Status and bots.json show the bots; nothing secret in them.
    bots_json = (mount.path / ".tgfs" / "bots.json").read_text()
    cli = subprocess.run(
        [sys.executable, "-m", "tgfs", "status", str(mount.path)],
        capture_output=True,
        text=True,
        env=mount.env,
    )
    assert cli.returncode == 0 and "BOT" in cli.stdout and "@standin" in cli.stdout
    for bot_id in telegram.bot_ids:
        assert token(bot_id) not in bots_json + cli.stdout + mount.log()
        assert f'"bot_id": {bot_id}' in bots_json

    # Session files are private and reused: a restart does not log the bots in again.
    sessions = list((mount.data / "sessions").glob("*.session"))
    assert len(sessions) == 4
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in sessions)
    mount.stop()
    mount = mount_factory(**telegram_env(telegram))
    assert [telegram.logins(i) for i in range(4)] == [1, 1, 1, 1]

    # rm -r puts the film in the trash (every message stays); emptying it deletes every
    # message the film made. What is left is the catalog's backup (made at the unmount
    # above): its parts and each bot's pinned manifest.
    kept = telegram.part_messages()
    subprocess.run(["rm", "-r", str(folder)], check=True)
    wait_for(lambda: mount.status()["garbage_pending"] == 0, 60, "deletes")
    assert telegram.part_messages() == kept
    emptied = subprocess.run(
        [sys.executable, "-m", "tgfs", "trash", "--empty", str(mount.path)],
        env=mount.env,
        capture_output=True,
        text=True,
    )
    assert emptied.returncode == 0 and "1 item(s)" in emptied.stdout, emptied.stderr
    wait_for(lambda: mount.status()["garbage_pending"] == 0, 60, "deletes")
    left = [
        telegram.message_path(channel, m).with_name(f"{m}.name").read_text()
        for channel, ids in telegram.messages().items()
        for m in ids
    ]
    assert all(n.startswith(("backup-", "tgfs-manifest-")) for n in left), left
    assert sum(n.startswith("tgfs-manifest-") for n in left) == 4  # one pinned per bot


def test_deleted_message_gives_eio_and_the_mount_stays_up(mount_factory, telegram, media):
    mount = mount_factory(**telegram_env(telegram))
    copy_in(media("h264_aac.mp4"), mount.path / "clip.mp4")
    mount.wait_idle()
    rendition = next(p for p in (mount.path / "clip").iterdir() if p.is_dir())
    segments = sorted(rendition.glob("seg_*.m4s"))
    (location,) = part_locations(mount, segments[1].name)
    _, _, channel, message_id = location.split(":")
    telegram.message_path(int(channel), int(message_id)).unlink()  # behind tgfs's back

    with pytest.raises(OSError) as failure:
        segments[1].read_bytes()
    assert failure.value.errno == errno.EIO
    assert f"message {message_id} in channel {channel} is gone" in mount.log()
    # The rest of the video and the mount carry on.
    assert segments[0].read_bytes() and segments[2].read_bytes()
    (mount.path / "note.txt").write_bytes(b"still here\n")
    mount.wait_idle()
    assert (mount.path / "note.txt").read_bytes() == b"still here\n"


def test_test_bots_and_a_mount_with_broken_bots(mount_factory, telegram, tmp_path):
    telegram.bot(1)["token"] = "revoked"  # bot 2: wrong token
    telegram.bot(2)["admin"] = False  # bot 3: in its channel, but may not post
    telegram.write()
    env = {
        **os.environ,
        **telegram_env(telegram),
        "TGFS_ENV_FILE": "/dev/null",
        "TGFS_DATA_DIR": str(tmp_path / "check"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tgfs", "test-bots"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(lines) == 4 and lines[0].startswith("bot 1 @standin") and ": ok (" in lines[0]
    assert lines[1].startswith("bot 2 ") and "FAILED at login" in lines[1]
    assert "ACCESS_TOKEN_INVALID" in lines[1]
    assert "FAILED at upload" in lines[2] and "admin" in lines[2]
    assert "2 of 4 bot(s) failed" in result.stderr
    assert all(token(b) not in result.stdout + result.stderr for b in telegram.bot_ids)

    # The mount comes up on the bots that work, and says which ones do not.
    mount = mount_factory(**telegram_env(telegram))
    data = os.urandom(3 * 2**20 + 17)
    (mount.path / "data.bin").write_bytes(data)
    mount.wait_idle()
    assert mount.job("data.bin")["outcome"] == "file"
    assert (mount.path / "data.bin").read_bytes() == data
    stored = telegram.messages()
    assert stored[telegram.channel(telegram.bot_ids[1])] == []
    assert stored[telegram.channel(telegram.bot_ids[2])] == []
    bots = {b["number"]: b for b in mount.status()["store"]["bots"]}
    assert not bots[2]["up"] and "ACCESS_TOKEN_INVALID" in bots[2]["reason"]
    assert "bot 2: marked down" in mount.log()


def test_mount_refuses_to_start_when_no_bot_can_work(telegram, tmp_path):
    for index in range(4):
        telegram.bot(index)["token"] = "revoked"
    telegram.write()
    (tmp_path / "mnt").mkdir()
    env = {
        **os.environ,
        **telegram_env(telegram),
        "TGFS_ENV_FILE": "/dev/null",
        "TGFS_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tgfs", "mount", str(tmp_path / "mnt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "no Telegram bot can be used" in result.stderr
    assert "bot 3: login: the bot token was rejected" in result.stderr
    assert not os.path.ismount(tmp_path / "mnt")
    assert all(token(b) not in result.stderr + result.stdout for b in telegram.bot_ids)
