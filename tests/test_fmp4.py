"""tgfs.media.fmp4: HLS renditions made by FFmpeg (one video, two audio languages) merged
into one MP4 file, judged by ffprobe and ffmpeg: its duration, its streams with their
languages, a clean decode, and each language's own tone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import m3u8
import pytest

from tests.test_tracks import _tone
from tgfs.media import fmp4

SECONDS, SEGMENT = 20, 2


def _rendition(out: Path, source: list[str], codec: list[str]) -> list[Path]:
    """An fMP4 HLS rendition as FFmpeg's hls muxer makes one for tgfs; its segments."""
    out.mkdir()
    subprocess.run(
        ["ffmpeg", "-v", "error", *source, *codec, "-f", "hls", "-hls_time", str(SEGMENT),
         "-hls_segment_type", "fmp4", "-hls_list_size", "0",
         "-hls_fmp4_init_filename", "init.mp4",
         "-hls_segment_filename", str(out / "seg_%05d.m4s"), str(out / "index.m3u8")],
        check=True,
    )  # fmt: skip
    return sorted(out.glob("seg_*.m4s"))


def _audio(out: Path, frequency: int, language: str) -> list[Path]:
    return _rendition(
        out,
        ["-f", "lavfi", "-i", f"sine=frequency={frequency}:duration={SECONDS}"],
        ["-c:a", "aac", "-metadata:s:a:0", f"language={language}"],
    )


def _track(segments: list[Path]) -> fmp4.Track:
    """A rendition as the catalog keeps it: its init segment, each segment's size and its
    EXTINF duration."""
    folder = segments[0].parent
    durations = [s.duration for s in m3u8.load(str(folder / "index.m3u8")).segments]
    sizes = [s.stat().st_size for s in segments]
    return fmp4.Track((folder / "init.mp4").read_bytes(), tuple(zip(sizes, durations, strict=True)))


@pytest.fixture(scope="module")
def film(tmp_path_factory) -> Path:
    """The file fmp4.layout makes of a video rendition and English (440 Hz) and French
    (660 Hz) audio renditions, its segments patched as the MP4 view serves them."""
    root = tmp_path_factory.mktemp("fmp4")
    video = _rendition(
        root / "720p",
        ["-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={SECONDS}"],
        ["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p"],
    )
    renditions = [
        video,
        _audio(root / "audio-eng", 440, "eng"),
        _audio(root / "audio-fra", 660, "fra"),
    ]
    layout = fmp4.layout([_track(r) for r in renditions], SECONDS, 0.0)
    out = root / "film.mp4"
    with out.open("wb") as f:
        f.write(layout.header)
        for piece in layout.pieces:
            assert f.tell() == piece.offset
            data = renditions[piece.track][piece.seq].read_bytes()
            patched = fmp4.apply(data, layout.patches(piece, fmp4.fragments(data)))
            assert len(patched) == len(data) == piece.size  # sizes known without reading
            f.write(patched)
        assert f.tell() == layout.size
    # Tracks interleave by time: each video segment is followed by the audio segments
    # that start with it.
    assert [p.track for p in layout.pieces[:6]] == [0, 1, 2, 0, 1, 2]
    return out


def test_ffprobe_sees_the_duration_and_every_track_with_its_language(film):
    probed = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-show_chapters",
             "-of", "json", str(film)],
            capture_output=True, check=True,
        ).stdout
    )  # fmt: skip
    assert abs(float(probed["format"]["duration"]) - SECONDS) < 0.1, probed["format"]
    streams = [(s["codec_type"], s.get("tags", {}).get("language")) for s in probed["streams"]]
    assert streams == [("video", "und"), ("audio", "eng"), ("audio", "fra")], streams
    assert [s["id"] for s in probed["streams"]] == ["0x1", "0x2", "0x3"]


def test_it_decodes_cleanly_and_each_language_has_its_tone(film):
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(film), "-map", "0", "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr[:800]
    assert abs(_tone(film, "0:a:0") - 440) < 20
    assert abs(_tone(film, "0:a:1") - 660) < 20
    frames = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
         "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(film)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert int(frames) == SECONDS * 25


def test_a_segment_that_is_not_fragmented_mp4_is_refused(tmp_path):
    with pytest.raises(fmp4.FormatError):
        fmp4.fragments(b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00")  # no moof
    with pytest.raises(fmp4.FormatError):
        fmp4.fragments(b"\x00\x00\x01\x00moof")  # a box longer than the bytes
    with pytest.raises(fmp4.FormatError):  # a moof whose tfhd is too short for its fields
        fmp4.fragments(
            b"\x00\x00\x00\x28moof\x00\x00\x00\x10mfhd" + bytes(8)
            + b"\x00\x00\x00\x10traf\x00\x00\x00\x08tfhd"
        )  # fmt: skip


def _moofs_parsed(film: Path, *seek: str) -> int:
    """How many moof boxes FFmpeg's mp4 reader parses to play 0.1 s (after a seek)."""
    trace = subprocess.run(
        ["ffmpeg", "-v", "trace", *seek, "-i", str(film), "-t", "0.1", "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    return trace.count("type:'moof'")


def test_ffmpeg_seeks_by_the_front_index(film):
    """A seek near the end reads the index, not every fragment before the target: against
    the same file without its sidx boxes, which makes FFmpeg walk them all; and decodes
    cleanly from there."""
    data = film.read_bytes()
    indexes = [b for b in fmp4.boxes(data) if b.type == b"sidx"]
    assert len(indexes) == 3  # one for each track
    bare = film.with_name("bare.mp4")
    bare.write_bytes(data[: indexes[0].start] + data[indexes[-1].end :])
    assert _moofs_parsed(film, "-ss", "17") < _moofs_parsed(bare, "-ss", "17") / 2
    seek = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", "5", "-i", str(film), "-map", "0", "-t", "1",
         "-f", "null", "-"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert seek.returncode == 0 and seek.stderr == "", seek.stderr[:800]
