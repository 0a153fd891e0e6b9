"""Bad input gets a clear reason in `tgfs status`, loses nothing, and never hurts the mount."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import copy_in


def tgfs_status(mount) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tgfs", "status", str(mount.path)],
        capture_output=True,
        text=True,
        env=mount.env,
        check=True,
    )
    return out.stdout


def _kept_with_reason(mount, name: str, data: bytes, reason: str) -> None:
    job = mount.job(name)
    assert job["state"] == "failed" and job["outcome"] == "file", job
    assert reason in job["error"] and "kept as an ordinary file" in job["error"]
    assert (mount.path / name).read_bytes() == data
    assert reason in tgfs_status(mount)


def test_broken_files_are_kept_with_a_reason(mount, media, tmp_path):
    good = media("mpeg4_mp3.avi")
    faststart = tmp_path / "fs.mov"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(good),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(faststart),
        ],
        check=True,
    )
    whole = faststart.read_bytes()
    cases = {
        "empty.mp4": (b"", "empty file"),
        "random.mp4": (os.urandom(300_000), "not a media file"),
        "truncated.mp4": (media("h264_aac.mp4").read_bytes()[:100_000], "not a media file"),
        # moov up front, media data cut in half: decodes, then stops half-way
        "half.mov": (whole[: len(whole) // 2], "could be decoded"),
    }
    for name, (data, _) in cases.items():
        (mount.path / name).write_bytes(data)
    mount.wait_idle()
    for name, (data, reason) in cases.items():
        _kept_with_reason(mount, name, data, reason)
    # The mount still works after all that.
    copy_in(media("tiny_h264.mp4"), mount.path / "ok.mp4")
    mount.wait_idle()
    assert (mount.path / "ok" / "master.m3u8").is_file()


def test_file_over_max_upload_size_is_refused(mount_factory, tmp_path):
    m = mount_factory(MAX_UPLOAD_SIZE="1M")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * 2**20))
    result = subprocess.run(
        ["cp", str(src), str(m.path / "big.bin")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "File too large" in result.stderr
    m.wait_idle()
    assert not (m.path / "big.bin").exists()  # nothing half-stored
    (m.path / "small.txt").write_text("fine")
    m.wait_idle()
    assert (m.path / "small.txt").read_text() == "fine"


def test_full_spool_disk_gives_enospc_and_stores_nothing(small_disk, mount_factory, tmp_path):
    spool = small_disk("spool", "4m")
    m = mount_factory(TGFS_SPOOL_DIR=str(spool))
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8 * 2**20))
    result = subprocess.run(
        ["cp", str(src), str(m.path / "big.bin")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "No space left" in result.stderr
    m.wait_idle()
    assert not (m.path / "big.bin").exists()
    assert m.blob_files() == []
    assert os.listdir(spool) == ["tgfs.lock"]  # the partial spool file is gone too
    (m.path / "after.txt").write_text("still works")
    m.wait_idle()
    assert (m.path / "after.txt").read_text() == "still works"


def test_failed_write_error_codes(mount):
    with pytest.raises(OSError) as err:
        os.mkdir(mount.path / ".tgfs" / "x")
    assert err.value.errno == errno.EPERM
    with pytest.raises(OSError) as err:
        os.unlink(mount.path / ".tgfs" / "status.json")
    assert err.value.errno == errno.EPERM
    assert shutil.disk_usage(mount.path).free > 0
