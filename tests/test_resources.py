"""The machine is not the file: a full spool or a killed media process retries the job;
only the media pipeline decides a file is not a video. Limits keep a tiny hostile file
from taking the machine."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.conftest import copy_in, wait_for
from tests.hls_checks import check_video_folder


def _media_children(mount) -> list[int]:
    """Pids of the daemon's media child processes."""
    out = subprocess.run(
        ["pgrep", "-P", str(mount.proc.pid), "-f", "tgfs.media.worker"],
        capture_output=True,
        text=True,
    ).stdout
    return [int(pid) for pid in out.split()]


def test_full_spool_during_a_transcode_is_retried_not_judged(small_disk, mount_factory, media):
    spool = small_disk("spool", "8m")
    m = mount_factory(TGFS_SPOOL_DIR=str(spool), COPY_MODE_MIN_SIZE="1G", TGFS_RETRY_DELAY="1")
    src = media("mpeg4_mp3.avi")
    with open(m.path / "filler.bin", "wb") as filler:  # open: stays in the spool
        copy_in(src, m.path / "clip.avi")
        free = os.statvfs(spool).f_bavail * os.statvfs(spool).f_frsize
        filler.write(b"\0" * (free - 64 * 1024))  # no room for the transcode's output
        filler.flush()
        job = wait_for(
            lambda: (j := m.job("clip.avi")) and j["attempts"] > 0 and j,
            60,
            "the job to be put back",
        )
        assert job["state"] in ("queued", "running"), job
        assert "no space left" in job["error"], job
        assert (m.path / "clip.avi").read_bytes() == src.read_bytes()
    os.unlink(m.path / "filler.bin")
    m.wait_idle()
    job = m.job("clip.avi")
    assert job["state"] == "done" and job["outcome"] == "video (transcode)", job
    check_video_folder(m.path / "clip", src, 2)


def test_media_process_killed_from_outside_is_retried(mount_factory, media):
    m = mount_factory(COPY_MODE_MIN_SIZE="1G", TGFS_RETRY_DELAY="0.5")
    src = media("film.mp4")  # a 24 s 720p transcode: seconds of work to interrupt
    copy_in(src, m.path / "film.mp4")
    for kill in range(3):  # the first two kills are retried, the third is a verdict
        pid = wait_for(lambda: _media_children(m), 60, "the media process")[0]
        os.kill(pid, signal.SIGKILL)
        if kill < 2:
            wait_for(lambda n=kill: m.job("film.mp4")["attempts"] == n + 1, 30, "a retry")
    m.wait_idle()
    job = m.job("film.mp4")
    assert job["state"] == "failed" and "SIGKILL" in job["error"], job
    assert (m.path / "film.mp4").read_bytes() == src.read_bytes()  # kept as it was

    copy_in(src, m.path / "again.mp4")  # one kill only: the video is made
    pid = wait_for(lambda: _media_children(m), 60, "the media process")[0]
    os.kill(pid, signal.SIGKILL)
    m.wait_idle()
    assert m.job("again.mp4")["outcome"] == "video (transcode)"
    check_video_folder(m.path / "again", src, 2)


def test_limits_keep_a_tiny_hostile_file_from_taking_the_machine(mount_factory, tmp_path):
    # 58 KB of solid-colour 4K H.264: decoding and encoding it needs about a gigabyte.
    big = tmp_path / "4k.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=blue:s=3840x2160:r=25:d=4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            str(big),
        ],
        check=True,
    )
    assert big.stat().st_size < 100_000
    m = mount_factory(TGFS_MEDIA_MEMORY="300M")
    copy_in(big, m.path / "4k.mp4")
    m.wait_idle()
    job = m.job("4k.mp4")
    assert job["state"] == "failed" and "TGFS_MEDIA_MEMORY" in job["error"], job
    assert (m.path / "4k.mp4").read_bytes() == big.read_bytes()
    m.stop()

    m = mount_factory(TGFS_MEDIA_MAX_PIXELS="1920x1080", TGFS_MEDIA_MAX_DURATION="3")
    started = time.monotonic()
    copy_in(big, m.path / "4k-again.mp4")
    m.wait_idle()
    job = m.job("4k-again.mp4")
    assert "3840x2160 is over TGFS_MEDIA_MAX_PIXELS" in job["error"], job
    assert time.monotonic() - started < 20  # refused before any decoding
    long_clip = tmp_path / "long.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x240:r=10:d=5",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            str(long_clip),
        ],
        check=True,
    )
    copy_in(long_clip, m.path / "long.mp4")
    m.wait_idle()
    assert "over TGFS_MEDIA_MAX_DURATION" in m.job("long.mp4")["error"]
    assert (m.path / "long.mp4").read_bytes() == long_clip.read_bytes()
