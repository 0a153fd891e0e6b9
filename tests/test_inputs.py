"""What users drop: a corpus made at test time with FFmpeg's encoders (nothing committed),
each copied into a real mount and judged by the independent checks in hls_checks.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest

from tests.conftest import TEST_ENV, copy_in
from tests.hls_checks import check_codecs_string, check_video_folder, ffprobe

SEGMENT = 2.0
PATTERN = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=6"]
TONE = ["-f", "lavfi", "-i", "sine=frequency=440:duration=6"]

# name → (ffmpeg arguments after -y, expected mode)
CORPUS = {
    "dvd.mpg": (
        [
            *PATTERN,
            *TONE,
            "-c:v",
            "mpeg2video",
            "-b:v",
            "2M",
            "-flags",
            "+ilme+ildct",
            "-top",
            "1",
            "-c:a",
            "mp2",
        ],
        "transcode",
    ),
    "clip.webm": (
        [*PATTERN, *TONE, "-c:v", "libvpx-vp9", "-b:v", "400k", "-c:a", "libopus"],
        "transcode",
    ),
    "old.ogv": ([*PATTERN, *TONE, "-c:v", "libtheora", "-c:a", "libvorbis"], "transcode"),
    "webcam.avi": ([*PATTERN, *TONE, "-c:v", "mjpeg", "-c:a", "pcm_s16le"], "transcode"),
    "odd.mp4": (
        ["-f", "lavfi", "-i", "testsrc2=size=321x241:rate=25:duration=6", "-c:v", "mpeg4"],
        "transcode",
    ),
    "broadcast.ts": (
        [*PATTERN, *TONE, "-c:v", "libx264", "-b:v", "1M", "-c:a", "aac"],
        "copy",
    ),  # ADTS AAC: needs aac_adtstoasc in fMP4
    "vfr.mkv": (
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30:duration=6,setpts='N/30/TB+gt(N,60)*0.4/TB'",
            "-c:v",
            "libx264",
            "-b:v",
            "1M",
            "-fps_mode",
            "vfr",
        ],
        "copy",
    ),
    "two-languages.mkv": (
        [
            *PATTERN,
            *TONE,
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=660:duration=6",
            "-map",
            "0",
            "-map",
            "1",
            "-map",
            "2",
            "-c:v",
            "libx264",
            "-b:v",
            "1M",
            "-c:a",
            "aac",
            "-metadata:s:a:0",
            "language=eng",
            "-metadata:s:a:1",
            "language=fra",
        ],
        "copy",
    ),
    "longgop.mp4": (
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=16",
            "-c:v",
            "libx264",
            "-b:v",
            "500k",
            "-g",
            "200",
        ],
        "copy",
    ),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, (args, _) in CORPUS.items():
        subprocess.run(["ffmpeg", "-v", "error", "-y", *args, str(folder / name)], check=True)
    # A phone video: H.264 + AAC with a 90° display matrix (set by remuxing).
    plain = folder / "plain.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            *PATTERN,
            *TONE,
            "-c:v",
            "libx264",
            "-b:v",
            "1M",
            "-c:a",
            "aac",
            str(plain),
        ],
        check=True,
    )
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(plain),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            str(folder / "phone.mp4"),
        ],
        check=True,
    )
    return folder


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_input_kind_becomes_valid_hls(mount, corpus, name, tmp_path):
    src = corpus / name
    copy_in(src, mount.path / name)
    mount.wait_idle()
    job = mount.job(name)
    assert job["state"] == "done" and job["outcome"] == f"video ({CORPUS[name][1]})", job
    folder = mount.path / os.path.splitext(name)[0]
    facts = check_video_folder(folder, src, SEGMENT)
    audio = [
        (a["init"], a["first"]) for a in facts["alternatives"] if a["media_tag"].type == "AUDIO"
    ]
    for rendition in facts["renditions"]:
        segments = sorted(rendition["dir"].glob("seg_*.m4s"))
        assert max(p.stat().st_size for p in segments) <= 2**20  # TELEGRAM_MAX_FILE_SIZE
        check_codecs_string(
            rendition["init"],
            segments[0],
            rendition["variant"].stream_info.codecs,
            audio[0] if audio else None,
        )
        if name == "dvd.mpg":  # deinterlaced: FFmpeg's idet finds no combing left
            tff, bff, progressive = _interlace_detection(_joined(rendition, tmp_path))
            assert progressive > 10 * (tff + bff), (tff, bff, progressive)


def test_phone_video_comes_out_upright(mount, corpus, tmp_path):
    src = corpus / "phone.mp4"
    copy_in(src, mount.path / "phone.mp4")
    mount.wait_idle()
    job = mount.job("phone.mp4")
    assert job["outcome"] == "video (transcode)" and "rotated" in job["error"], job
    facts = check_video_folder(mount.path / "phone", src, SEGMENT)
    (rendition,) = facts["renditions"]
    assert rendition["variant"].stream_info.resolution == (240, 320)
    # The first picture matches what the ffmpeg CLI shows (it autorotates), and no display
    # matrix is left to rotate it a second time.
    ours, theirs = tmp_path / "ours.gray", tmp_path / "theirs.gray"
    joined = _joined(rendition, tmp_path)
    for source, out in ((joined, ours), (src, theirs)):
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-i",
                str(source),
                "-frames:v",
                "1",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "gray",
                str(out),
            ],
            check=True,
        )
    a, b = ours.read_bytes(), theirs.read_bytes()
    assert len(a) == len(b) == 240 * 320
    assert sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a) < 3
    side = ffprobe(joined, "-show_entries", "stream_side_data")
    assert "rotation" not in str(side)


def _interlace_detection(path: Path) -> tuple[int, int, int]:
    """(TFF, BFF, progressive) frame counts from FFmpeg's idet filter, which looks for
    combing in the pictures themselves (the interlaced flag alone proves nothing)."""
    out = subprocess.run(
        ["ffmpeg", "-v", "info", "-nostats", "-i", str(path), "-vf", "idet", "-f", "null", "-"],
        capture_output=True,
        text=True,
    ).stderr
    line = next(x for x in out.splitlines() if "Multi frame detection" in x)
    numbers = re.findall(r"(TFF|BFF|Progressive):\s*(\d+)", line)
    counts = {k: int(v) for k, v in numbers}
    return counts["TFF"], counts["BFF"], counts["Progressive"]


def _joined(rendition: dict, folder: Path) -> Path:
    """init + segments as one playable file."""
    path = folder / f"joined-{rendition['dir'].name}.mp4"
    segments = sorted(rendition["dir"].glob("seg_*.m4s"))
    path.write_bytes(rendition["init"].read_bytes() + b"".join(p.read_bytes() for p in segments))
    return path


@pytest.mark.parametrize("copy", [True, False])
def test_joined_recording_keeps_its_whole_length(mount_factory, corpus, tmp_path, copy):
    """Two 3 s MPEG-TS recordings joined with `cat`: the timestamps jump back 3 s in the
    middle (ffprobe even calls the file 3 s long). Both halves must come out, in order."""
    first, second = tmp_path / "a.ts", tmp_path / "b.ts"
    for path, tone in ((first, 440), (second, 660)):
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                *PATTERN[:3],
                PATTERN[3].replace("duration=6", "duration=3"),
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency={tone}:duration=3",
                "-c:v",
                "libx264",
                "-b:v",
                "1M",
                "-c:a",
                "aac",
                str(path),
            ],
            check=True,
        )
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    mount = mount_factory(ENABLE_COPY_MODE=str(copy).lower())
    copy_in(joined, mount.path / "joined.ts")
    mount.wait_idle()
    assert mount.job("joined.ts")["outcome"] == f"video ({'copy' if copy else 'transcode'})"
    check_video_folder(mount.path / "joined", joined, SEGMENT, duration=6.0)


def test_a_picture_held_at_the_end_plays_to_the_end(mount, tmp_path):
    """A title card held for 3 s after 5 s of motion: the last frame's duration says so, and
    players show it that long. It is no damage: the video is published, 8 s long."""
    held = tmp_path / "held.mkv"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            *PATTERN[:3],
            PATTERN[3].replace("duration=6", "duration=5"),
            "-c:v",
            "mpeg4",
            str(tmp_path / "pattern.mkv"),
        ],
        check=True,
    )  # 5 s of motion
    with av.open(str(tmp_path / "pattern.mkv")) as src, av.open(str(held), "w") as out:
        packets = [p for p in src.demux(video=0) if p.size]
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in packets:
            packet.stream = stream
        # the last picture is shown 3 s longer (Matroska keeps it as BlockDuration)
        packets[-1].duration += round(3 / packets[-1].time_base)
        for packet in packets:
            out.mux(packet)
    assert float(
        ffprobe(held, "-show_entries", "format=duration")["format"]["duration"]
    ) == pytest.approx(8.0, abs=0.05)
    copy_in(held, mount.path / "held.mkv")
    mount.wait_idle()
    assert mount.job("held.mkv")["outcome"] == "video (transcode)", mount.job("held.mkv")
    check_video_folder(mount.path / "held", held, SEGMENT, duration=8.0)


def _set_timestamp(data: bytearray, at: int, prefix: int, ticks: int) -> None:
    """Write a 33-bit MPEG PES timestamp (PTS/DTS, 90 kHz) in its 5-byte form."""
    data[at : at + 5] = bytes(
        [
            (prefix << 4) | ((ticks >> 29) & 0xE) | 1,
            (ticks >> 22) & 0xFF,
            ((ticks >> 14) & 0xFE) | 1,
            (ticks >> 7) & 0xFF,
            ((ticks << 1) & 0xFE) | 1,
        ]
    )


def test_a_header_that_lies_about_the_duration_is_measured(mount, tmp_path):
    """An MPEG-1 program stream whose second half has broken timestamps (all 18 ms after the
    start): FFmpeg estimates the duration from the last timestamps and says 0.05 s for
    5.4 s of pictures (162 frames). tgfs measures it instead of calling it a still."""
    good = tmp_path / "good.mpg"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=352x288:rate=30:duration=5.4",
            "-c:v",
            "mpeg1video",
            "-b:v",
            "1M",
            "-f",
            "mpeg",
            str(good),
        ],
        check=True,
    )
    data = bytearray(good.read_bytes())
    stamps = []  # (offset, '0010' PTS only / '0011' PTS + DTS) of each video PES header
    at = 0
    while (at := data.find(b"\x00\x00\x01\xe0", at) + 1) > 0:
        i = at + 5  # after the start code and the length: MPEG-1 stuffing, STD buffer
        while data[i] == 0xFF:
            i += 1
        if data[i] & 0xC0 == 0x40:
            i += 2
        if data[i] >> 4 in (2, 3):
            stamps.append((i, data[i] >> 4))
    first = stamps[0][0]
    start = (
        ((data[first] >> 1) & 7) << 30
        | data[first + 1] << 22
        | (data[first + 2] >> 1) << 15
        | data[first + 3] << 7
        | data[first + 4] >> 1
    )
    for i, kind in stamps[len(stamps) // 2 :]:
        _set_timestamp(data, i, kind, start + 1620)
        if kind == 3:
            _set_timestamp(data, i + 5, 1, start + 1620)
    broken = tmp_path / "broken.mpg"
    broken.write_bytes(bytes(data))
    assert float(ffprobe(broken, "-show_entries", "format=duration")["format"]["duration"]) < 0.2
    still = tmp_path / "still.mpg"  # one picture: measured too, and still a still
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=352x288:rate=30",
            "-frames:v",
            "1",
            "-c:v",
            "mpeg1video",
            "-f",
            "mpeg",
            str(still),
        ],
        check=True,
    )
    copy_in(broken, mount.path / "broken.mpg")
    copy_in(still, mount.path / "still.mpg")
    mount.wait_idle()
    assert mount.job("broken.mpg")["outcome"] == "video (transcode)", mount.job("broken.mpg")
    check_video_folder(mount.path / "broken", broken, SEGMENT, duration=5.4)
    assert mount.job("still.mpg")["outcome"] == "file"
    assert "still image" in str(mount.job("still.mpg")), mount.job("still.mpg")


def test_variable_frame_rate_frames_never_share_a_timestamp(mount_factory, tmp_path):
    """A phone's variable frame rate: frames up to 12 ms early or late, some closer together
    than one frame at the average rate. Transcoded with B-frames (the default preset), the
    output's DTS must still increase for a reader counting in frames: `ffmpeg -v error`
    through the playlist is silent (check_video_folder)."""
    src = tmp_path / "phone-vfr.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30:duration=3,setpts='(N/30+0.012*sin(N*1.7))/TB'",
            *TONE,
            "-fps_mode",
            "passthrough",
            "-video_track_timescale",
            "90000",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            "-shortest",
            str(src),
        ],
        check=True,
    )
    mount = mount_factory(TGFS_X264_PRESET="veryfast", COPY_MODE_MIN_SIZE="20M")
    copy_in(src, mount.path / "phone-vfr.mp4")
    mount.wait_idle()
    assert mount.job("phone-vfr.mp4")["outcome"] == "video (transcode)"
    check_video_folder(mount.path / "phone-vfr", src, SEGMENT)


def test_check_tells_what_the_mount_would_do(tmp_path):
    """`tgfs check` runs the mount's probe and media process on files, with no mount: a
    video is published (how, how long), a picture is kept, a broken video is refused."""
    film = tmp_path / "film.mkv"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *PATTERN, "-c:v", "mpeg4", str(film)], check=True
    )
    photo = tmp_path / "photo.png"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *PATTERN, "-frames:v", "1", str(photo)], check=True
    )
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(film.read_bytes()[:4000])  # the start of a film, cut off
    env = {
        **os.environ,
        **TEST_ENV,
        "TGFS_ENV_FILE": "/dev/null",
        "TGFS_DATA_DIR": str(tmp_path / "data"),
        "TGFS_CACHE_DIR": str(tmp_path / "cache"),
    }

    def check(*files: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tgfs", "check", *map(str, files)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = check(film, photo)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        f"{film}: video (transcode), 6.0 s of 6.0 s; 1 rendition(s): 320x240"
    ), lines
    assert lines[1].startswith(f"{photo}: kept as a file: a still image"), lines
    done = check(broken, film)
    assert done.returncode == 1
    assert done.stdout.startswith(f"{broken}: NOT PUBLISHED, kept as a file: "), done.stdout
    assert "1 of 2 video(s) would not be published" in done.stderr
    assert not list(tmp_path.glob("data/*"))  # nothing stored anywhere


def test_an_avi_that_repeats_its_last_picture_plays_to_the_end(mount, tmp_path):
    """A capture-card style AVI: 5 s of MJPEG, then 3 s of index entries without data
    ("repeat the previous frame"), which the demuxer skips. Published for all 8 s; the same
    file cut off (its end and index lost) is still judged damaged."""
    held = tmp_path / "capture.avi"
    with (
        av.open("testsrc2=size=320x240:rate=25:duration=5", format="lavfi") as src,
        av.open(str(held), "w") as out,
    ):
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuvj420p"
        for n, frame in enumerate(src.decode(video=0)):
            frame = frame.reformat(format="yuvj420p")
            frame.pts, frame.time_base = n, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        for n in range(125, 200):
            repeat = av.Packet(b"")
            repeat.stream, repeat.time_base = stream, Fraction(1, 25)
            repeat.pts = repeat.dts = n
            out.mux(repeat)
    assert float(
        ffprobe(held, "-show_entries", "format=duration")["format"]["duration"]
    ) == pytest.approx(8.0)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(held.read_bytes()[: held.stat().st_size * 6 // 10])
    copy_in(held, mount.path / "capture.avi")
    copy_in(cut, mount.path / "cut.avi")
    mount.wait_idle()
    assert mount.job("capture.avi")["outcome"] == "video (transcode)", mount.job("capture.avi")
    check_video_folder(mount.path / "capture", held, SEGMENT, duration=8.0)
    assert (
        mount.job("cut.avi")["outcome"] == "file" and mount.job("cut.avi")["state"] == "failed"
    ), mount.job("cut.avi")
