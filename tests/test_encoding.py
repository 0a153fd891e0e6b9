"""Encoder choice and segment size: hardware fallback, and no segment over the part size."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import copy_in
from tests.media import Spec, make
from tgfs.media import messages
from tgfs.media.hls import EncodeOptions
from tgfs.media.worker import WorkerOptions, make_hls

CAP = 256 * 2**10


def no_report(stage):
    return lambda seconds: None


def test_transcode_keeps_every_segment_under_the_cap(tmp_path):
    # Noisy 720p: libx264 at CRF 21 spends far more than 256 KiB on 2 s of it.
    src = make(
        tmp_path / "noisy.mkv",
        Spec(
            seconds=6,
            width=1280,
            height=720,
            video_codec="mpeg4",
            bitrate=20_000_000,
            filters="noise=alls=60:allf=t",
        ),
    )
    encode = EncodeOptions(segment_seconds=2, x264_preset="ultrafast")
    (free,), _, _ = make_hls(src, tmp_path / "free", False, encode, "", no_report)
    assert max(s.size for s in free.segments) > CAP  # the cap below is doing the work
    (capped,), _, _ = make_hls(
        src,
        tmp_path / "capped",
        False,
        EncodeOptions(segment_seconds=2, x264_preset="ultrafast", max_segment_bytes=CAP),
        "",
        no_report,
    )
    sizes = [p.stat().st_size for p in (tmp_path / "capped").glob("seg_*.m4s")]
    assert len(sizes) == len(capped.segments) >= 3 and max(sizes) <= CAP, sizes


def test_copy_mode_cuts_shorter_or_transcodes_when_a_gop_is_too_big(tmp_path):
    # Keyframes every 2 s at ~1.5 MB per GOP: no cut can make a segment fit 256 KiB.
    src = make(
        tmp_path / "longgop.mp4",
        Spec(
            seconds=6,
            width=640,
            height=360,
            bitrate=6_000_000,
            gop=50,
            filters="noise=alls=40:allf=t",
        ),
    )
    encode = EncodeOptions(segment_seconds=2, x264_preset="ultrafast", max_segment_bytes=CAP)
    (rendition,), copied, note = make_hls(src, tmp_path / "out", True, encode, "", no_report)
    assert not copied and "keyframe interval" in note and "transcoded" in note
    assert max(s.size for s in rendition.segments) <= CAP


def test_a_failing_hardware_encoder_falls_back_to_software_per_job(tmp_path, media):
    # The media child is told NVENC works (as after a passing probe), and it fails for
    # real: without the driver ("Cannot load libcuda.so.1"), and with it too, since
    # CUDA_VISIBLE_DEVICES=-1 hides every GPU from CUDA. The job must still succeed.
    options = WorkerOptions(
        name="tiny.mp4",
        size=1,
        enable_copy_mode=False,
        copy_mode_min_size=0,
        encode=EncodeOptions(segment_seconds=2, x264_preset="ultrafast", encoder="h264_nvenc"),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tgfs.media.worker",
            str(media("tiny_h264.mp4")),
            str(tmp_path / "work"),
            options.to_json(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"},
    )
    said = [messages.decode(line) for line in result.stdout.splitlines()]
    final = said[-1]
    assert result.returncode == 0 and isinstance(final, messages.VideoResult), said[-1]
    assert final.mode is messages.Mode.TRANSCODE
    assert "h264_nvenc failed" in final.note and "libx264" in final.note
    assert any(isinstance(m, messages.Restart) for m in said)  # what it announced, withdrawn


def test_mount_reports_an_unavailable_hardware_encoder(mount_factory, media):
    mount = mount_factory(ENABLE_HARDWARE_ACCELERATION="true", PREFERRED_ENCODER="vaapi")
    copy_in(media("tiny_h264.mp4"), mount.path / "tiny.mp4")
    status = mount.wait_idle()
    assert mount.job("tiny.mp4")["outcome"] == "video (transcode)"
    assert status["encoder"]["name"] == "libx264"
    assert "vaapi unavailable" in status["encoder"]["note"]
