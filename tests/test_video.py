"""Videos dropped into a real mount come out as HLS that independent tools accept."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import copy_in, wait_for
from tests.hls_checks import check_codecs_string, check_video_folder
from tests.media import Spec, make

SEGMENT = 2.0  # TGFS_SEGMENT_SECONDS in the test environment


@pytest.mark.parametrize(
    ("source", "mode", "audio"),
    [
        ("h264_aac.mp4", "copy", True),
        ("h264_only.mp4", "copy", False),
        ("hevc.mp4", "copy", True),
        ("tiny_h264.mp4", "transcode", True),  # below COPY_MODE_MIN_SIZE
        ("mpeg4_mp3.avi", "transcode", True),
        ("mpeg4_only.mkv", "transcode", False),
    ],
)
def test_video_becomes_hls(mount, media, source, mode, audio):
    src = media(source)
    if source == "tiny_h264.mp4":
        assert src.stat().st_size < 256 * 1024
    (mount.path / "Movies").mkdir()
    copy_in(src, mount.path / "Movies" / source)
    status = mount.wait_idle()
    job = next(j for j in status["jobs"] if j["path"] == f"Movies/{source}")
    assert job["state"] == "done" and job["outcome"] == f"video ({mode})", job

    folder = mount.path / "Movies" / os.path.splitext(source)[0]
    assert sorted(os.listdir(mount.path / "Movies")) == [folder.name]  # original replaced
    facts = check_video_folder(folder, src, SEGMENT)
    (rendition,) = facts["renditions"]
    codecs = rendition["variant"].stream_info.codecs
    first_segment = rendition["dir"] / rendition["media"].segments[0].uri
    check_codecs_string(rendition["init"], first_segment, codecs)
    assert ("mp4a.40.2" in codecs) == audio
    if mode == "transcode":
        # IDRs are forced on every boundary: all segments but the last are full length.
        durations = [s.duration for s in rendition["media"].segments]
        assert all(abs(d - SEGMENT) < 0.05 for d in durations[:-1]), durations


def test_video_folder_is_read_only_and_removable(mount, media):
    copy_in(media("h264_aac.mp4"), mount.path / "film.mp4")
    mount.wait_idle()
    folder = mount.path / "film"
    rendition = next(p for p in folder.iterdir() if p.is_dir())
    blobs_before = len(mount.blob_files())
    assert blobs_before > 3

    with pytest.raises(OSError) as err:
        (folder / "extra.txt").write_text("no")
    assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        open(folder / "master.m3u8", "a").close()
    assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        os.rename(folder / "master.m3u8", folder / "other.m3u8")
    assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        os.rmdir(folder)
    assert err.value.errno == errno.ENOTEMPTY
    # A stray delete inside the folder hides the entry but corrupts nothing...
    os.unlink(rendition / "playlist.m3u8")
    assert not (rendition / "playlist.m3u8").exists()
    assert len(mount.blob_files()) == blobs_before

    # ...library management is ordinary file management...
    (mount.path / "Archive").mkdir()
    os.rename(folder, mount.path / "Archive" / "film")
    assert os.listdir(mount.path / "Archive") == ["film"]

    # ...and `rm -r` removes the video to the trash; emptying it deletes every blob it had.
    subprocess.run(["rm", "-r", str(mount.path / "Archive" / "film")], check=True)
    assert os.listdir(mount.path / "Archive") == []
    assert len(mount.blob_files()) == blobs_before
    tgfs = [sys.executable, "-m", "tgfs", "trash"]
    subprocess.run([*tgfs, "--empty", str(mount.path)], env=mount.env, check=True)
    wait_for(lambda: not mount.blob_files(), 10, "blobs to be deleted")


def test_library_survives_restart(mount_factory, media):
    m = mount_factory()
    copy_in(media("h264_only.mp4"), m.path / "clip.mp4")
    (m.path / "notes.txt").write_text("remember me\n")
    m.wait_idle()
    folder = m.path / "clip"
    os.unlink(folder / "master.m3u8")  # hidden for this session only
    assert m.stop() == 0

    m2 = mount_factory()
    assert (folder / "master.m3u8").exists()
    assert (m2.path / "notes.txt").read_text() == "remember me\n"
    check_video_folder(folder, media("h264_only.mp4"), SEGMENT)


def test_name_clash_gets_a_numbered_folder(mount, media):
    (mount.path / "Show").mkdir()
    copy_in(media("tiny_h264.mp4"), mount.path / "Show.mp4")
    mount.wait_idle()
    assert sorted(os.listdir(mount.path)) == [".tgfs", "Show", "Show (2)"]
    assert (mount.path / "Show (2)" / "master.m3u8").is_file()


def test_special_characters_in_names(mount, media):
    # '#' is left out on purpose: FFmpeg's HLS reader cuts paths at '#' (README: Limits).
    name = "Amélie 'le \"film\"' 日本 (1).mp4"
    copy_in(media("tiny_h264.mp4"), mount.path / name)
    mount.wait_idle()
    folder = mount.path / name[:-4]
    assert folder.is_dir()
    check_video_folder(folder, media("tiny_h264.mp4"), SEGMENT)


@pytest.mark.parametrize(("codec", "mode"), [("libx264", "copy"), ("mpeg4", "transcode")])
def test_ladder_renditions_share_segment_boundaries(mount_factory, tmp_path, codec, mode):
    src = make(
        tmp_path / f"wide-{codec}.mkv",
        Spec(seconds=9, width=640, height=360, video_codec=codec, bitrate=1_500_000, gop=35),
    )  # keyframes every 1.4 s: copy-mode cuts are not every 2 s
    mount = mount_factory(TGFS_LADDER="1080,360,240,144")  # 1080: never upscaled
    copy_in(src, mount.path / "wide.mkv")
    mount.wait_idle()
    assert mount.job("wide.mkv")["outcome"] == f"video ({mode})"
    facts = check_video_folder(mount.path / "wide", src, SEGMENT)
    sizes = sorted(r["variant"].stream_info.resolution for r in facts["renditions"])
    assert sizes == [(256, 144), (426, 240), (640, 360)]  # aspect kept, even sizes
    # Every rendition's segments start and end at the same instants (within a frame), so a
    # player can switch between them at any segment.
    timelines = [[s.duration for s in r["media"].segments] for r in facts["renditions"]]
    for timeline in timelines[1:]:
        assert len(timeline) == len(timelines[0])
        assert all(abs(a - b) <= 0.041 for a, b in zip(timeline, timelines[0], strict=True))


@pytest.mark.parametrize(("codec", "mode"), [("libx264", "copy"), ("mpeg4", "transcode")])
def test_first_segments_are_short(mount_factory, tmp_path, codec, mode):
    # A player starts once it holds the first segment: 2 s of it arrive sooner than 6 s.
    # A second short one, then each twice as long up to the segment length, in every
    # rendition.
    src = make(
        tmp_path / f"ramp-{codec}.mkv",
        Spec(seconds=20, width=640, height=360, video_codec=codec, bitrate=600_000, gop=25),
    )  # keyframes every second: copy mode can cut on the ramp
    mount = mount_factory(TGFS_SEGMENT_SECONDS="6", TGFS_LADDER="1080,240")
    copy_in(src, mount.path / "ramp.mkv")
    mount.wait_idle()
    assert mount.job("ramp.mkv")["outcome"] == f"video ({mode})"
    facts = check_video_folder(mount.path / "ramp", src, 6.0)
    assert len(facts["renditions"]) == 2
    for rendition in facts["renditions"]:
        durations = [round(s.duration, 2) for s in rendition["media"].segments]
        assert durations == [2.0, 2.0, 4.0, 6.0, 6.0], durations
        assert rendition["media"].target_duration == 6


def _dark_then_bright(path) -> None:
    """4 s at 10 fps: black until 2.5 s (the 10 % and 25 % points), then noise."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(40):
            frame = av.VideoFrame(160, 120, "gray")
            line = frame.planes[0].line_size
            pixels = bytes(line * 120) if i < 25 else os.urandom(line * 120)
            frame.planes[0].update(pixels)
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _mean_luma(jpeg) -> float:
    grey = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(jpeg), "-vf", "format=gray", "-f", "rawvideo", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return sum(grey) / len(grey)


def test_a_video_gets_a_poster_that_is_not_black(mount_factory, media, tmp_path):
    """poster.jpg in each video folder: a JPEG at most 640 wide, upright, from about 10 %
    in, skipping black frames; deleted with its video."""
    m = mount_factory(TGFS_TRASH_DAYS="0")
    copy_in(media("h264_aac.mp4"), m.path / "clip.mp4")
    dark = tmp_path / "dark.mp4"
    _dark_then_bright(dark)
    copy_in(dark, m.path / "dark.mp4")
    m.wait_idle()
    for name in ("clip", "dark"):
        poster = m.path / name / "poster.jpg"
        probed = subprocess.run(
            [
                *("ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height"),
                *("-of", "csv=p=0", str(poster)),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        codec, width, height = probed.split(",")
        assert codec == "mjpeg" and 0 < int(width) <= 640 and int(height) > 0, probed
        assert _mean_luma(poster) > 40, name  # the dark film's poster is from after 2.5 s
        assert (poster.stat().st_mode & 0o222) == 0  # read-only, like the folder's files
    assert "poster.jpg" in os.listdir(m.path / "clip")

    # library.json follows the catalog at once: a move, then a delete.
    def listed() -> dict[str, dict]:
        text = (m.path / ".tgfs" / "library.json").read_text()
        return {v["path"]: v for v in json.loads(text)["videos"]}

    assert set(listed()) == {"clip", "dark"}
    assert listed()["dark"]["poster"] == "dark/poster.jpg"
    (m.path / "Films").mkdir()
    os.rename(m.path / "clip", m.path / "Films" / "Holiday")
    assert set(listed()) == {"Films/Holiday", "dark"}
    assert listed()["Films/Holiday"]["poster"] == "Films/Holiday/poster.jpg"
    subprocess.run(["rm", "-r", str(m.path / "dark")], check=True)
    assert set(listed()) == {"Films/Holiday"}
    m.store_matches_catalog()  # the dark film's poster's parts went with it
