"""A video can be played while it is still being made: the folder appears with EVENT
playlists as soon as the first segments are stored, they grow, and turn VOD at the end.

The store is the Telegram stand-in with one bot, one transfer at a time and 0.4 s per
request, so storing takes several seconds and the growing state can be watched."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import m3u8
import pytest

from tests.conftest import copy_in, telegram_env, wait_for
from tests.hls_checks import check_video_folder, first_video_packet_is_key, source_duration
from tests.standin import StandIn

SEGMENT = 2.0


def _slow_store(tmp_path, monkeypatch) -> tuple[Path, StandIn, dict[str, str]]:
    """A 16 s MPEG-4 + MP3 source (transcoded), and a store that takes seconds for it."""
    src = tmp_path / "live.avi"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=16",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=16",
            "-c:v",
            "mpeg4",
            "-c:a",
            "libmp3lame",
            str(src),
        ],
        check=True,
    )
    monkeypatch.setenv("STANDIN_DIR", str(tmp_path / "telegram"))
    standin = StandIn(tmp_path / "telegram", bots=1, latency=0.4)
    return src, standin, telegram_env(standin, TGFS_BOT_TRANSFERS="1", TGFS_TRANSFERS="1")


def test_video_is_playable_while_it_is_being_made(mount_factory, tmp_path, monkeypatch):
    src, _, env = _slow_store(tmp_path, monkeypatch)
    mount = mount_factory(**env, TGFS_MP4_VIEW="MP4")
    copy_in(src, mount.path / "live.avi")
    folder = mount.path / "live"
    playlist = folder / "240p" / "playlist.m3u8"
    wait_for(lambda: playlist.exists(), 60, "the video folder")

    # A player started now plays through to the end.
    played = tmp_path / "played.mkv"
    player = subprocess.Popen(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-prefer_x_start",
            "1",
            "-i",
            str(folder / "master.m3u8"),
            "-map",
            "0",
            "-c",
            "copy",
            str(played),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )

    try:
        _watch_it_grow(mount, folder, playlist, src, player, played)
    finally:
        if player.poll() is None:
            player.kill()


def _watch_it_grow(mount, folder, playlist, src, player, played) -> None:
    counts, target = [], None
    in_view = mount.path / "MP4" / "live.mp4"  # the MP4 view shows complete videos only
    while mount.job("live.avi")["state"] == "running":
        library = json.loads((mount.path / ".tgfs" / "library.json").read_text())
        shown = in_view.exists() or "live.mp4" in os.listdir(in_view.parent)
        text = playlist.read_text()
        media = m3u8.loads(text)
        if media.is_endlist:
            break
        assert not shown, "the MP4 view showed a video still being made"
        # Read before the playlist, which still grows: the library says it is processing.
        (entry,) = [v for v in library["videos"] if v["path"] == "live"]
        assert entry["state"] == "processing", entry
        assert entry["percent"] is None or 0 <= entry["percent"] < 100, entry
        assert media.playlist_type == "event" and "#EXT-X-START:TIME-OFFSET=0" in text
        assert media.segments and media.segment_map
        target = target or media.target_duration
        assert media.target_duration == target  # never changes while it grows
        listed = [folder / "240p" / s.uri for s in media.segments]
        assert all(p.exists() for p in listed)
        if not counts:  # the dropped file stays until the video is complete
            assert (mount.path / "live.avi").exists()
            assert first_video_packet_is_key(folder / "240p" / "init.mp4", listed[0])
            assert subprocess.run(["rm", "-rf", str(folder)]).returncode != 0
            with pytest.raises(OSError) as refused:
                (folder / "master.m3u8").unlink()
            assert refused.value.errno == errno.EBUSY
        counts.append(len(media.segments))
    assert len(set(counts)) >= 3, f"saw the playlist grow only as {counts}"
    assert counts == sorted(counts)

    mount.wait_idle()
    assert mount.job("live.avi")["outcome"] == "video (transcode)"
    final = m3u8.load(str(playlist))
    assert final.playlist_type == "vod" and final.is_endlist
    # (the last look may have caught every segment just before the video was complete)
    assert len(final.segments) >= max(counts) and final.target_duration == target
    assert not (mount.path / "live.avi").exists()
    library = json.loads((mount.path / ".tgfs" / "library.json").read_text())
    (entry,) = [v for v in library["videos"] if v["path"] == "live"]
    assert entry["state"] == "ready" and entry["percent"] == 100.0
    check_video_folder(folder, src, SEGMENT)
    assert in_view.stat().st_size > 0 and "live.mp4" in os.listdir(in_view.parent)
    _, errors = player.communicate(timeout=120)
    assert player.returncode == 0, errors
    assert abs(source_duration(played) - source_duration(src)) <= SEGMENT / 2


@pytest.mark.parametrize("how", ["unmount", "kill"])
def test_a_stop_while_a_video_is_being_made_leaves_nothing_behind(
    mount_factory, tmp_path, monkeypatch, how
):
    src, standin, env = _slow_store(tmp_path, monkeypatch)
    mount = mount_factory(**env)
    copy_in(src, mount.path / "live.avi")
    wait_for(lambda: (mount.path / "live" / "master.m3u8").exists(), 60, "the video folder")
    assert mount.job("live.avi")["state"] == "running"
    if how == "unmount":  # the job is cancelled: it withdraws what it published
        assert mount.stop() == 0
    else:  # a crash: the next start finds the half-made video in the catalog
        mount.proc.kill()
        mount.proc.wait()
        mount.proc = None
        subprocess.run(["fusermount3", "-uz", str(mount.path)], check=True)

    # The next start removes the half-made video and makes it again from the spooled file.
    mount.start()
    mount.wait_idle()
    assert sorted(p.name for p in mount.path.iterdir()) == [".tgfs", "live"]
    check_video_folder(mount.path / "live", src, SEGMENT)
    # Every part message in the channel belongs to the catalog: the withdrawn half was
    # deleted (the catalog's own backup, made at the unmount, is not a part of it).
    catalog = {location for (location,) in mount.catalog("SELECT location FROM part")}
    wait_for(
        lambda: len(standin.part_messages()) == len(catalog),
        30,
        "the withdrawn parts to be deleted",
    )
