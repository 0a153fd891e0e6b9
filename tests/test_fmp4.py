"""tgfs.media.fmp4: HLS renditions made by FFmpeg (one video, two audio languages) merged
into one MP4 file, judged by ffprobe and ffmpeg: its duration, its streams with their
languages, a clean decode, and each language's own tone."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import m3u8
import pytest

from tests.test_tracks import _tone
from tgfs.media import fmp4

SECONDS, SEGMENT = 8, 2


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


@pytest.fixture(scope="module")
def film(tmp_path_factory) -> Path:
    """The merged file of a video rendition and English (440 Hz) and French (660 Hz)
    audio renditions, fragments in time order, as a view file would be laid out."""
    root = tmp_path_factory.mktemp("fmp4")
    video = _rendition(
        root / "720p",
        ["-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={SECONDS}"],
        ["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p"],
    )
    tracks = [video, _audio(root / "audio-eng", 440, "eng"), _audio(root / "audio-fra", 660, "fra")]
    renditions = [
        fmp4.Rendition((segments[0].parent / "init.mp4").read_bytes(), (n + 1,))
        for n, segments in enumerate(tracks)
    ]
    moov = fmp4.merged_header(renditions, SECONDS)
    header_size = len(moov) + fmp4.sidx_size(len(tracks[0]))
    body, sequence, at = [], 1, header_size
    video_at = []  # where each video segment begins in the file
    for number in range(max(len(t) for t in tracks)):  # (equal segment times: in turn)
        for n, segments in enumerate(tracks):
            if number < len(segments):
                data = segments[number].read_bytes()
                layout = fmp4.fragments(data)
                (old,) = {old for _, old in layout.track_ids}
                body.append(fmp4.apply(data, layout.patches(sequence, {old: n + 1})))
                assert len(body[-1]) == len(data)  # sizes known without reading segments
                sequence += len(layout.sequences)
                if n == 0:
                    video_at.append(at)
                at += len(data)
    # The video track's subsegments: from each of its segments to the next (or the end),
    # timed by the playlist's EXTINF (what the catalog keeps) in the track's timescale.
    scale = fmp4.media_timescale(renditions[0].init)
    durations = [
        round(s.duration * scale) for s in m3u8.load(str(root / "720p" / "index.m3u8")).segments
    ]
    sizes = [b - a for a, b in itertools.pairwise([*video_at, at])]
    sidx = fmp4.segment_index(1, scale, 0, list(zip(sizes, durations, strict=True)))
    assert len(moov + sidx) == header_size
    out = root / "film.mp4"
    out.write_bytes(moov + sidx + b"".join(body))
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
    the same file without its sidx, which makes FFmpeg walk them all; and decodes cleanly
    from there."""
    data = film.read_bytes()
    sidx = next(b for b in fmp4.boxes(data) if b.type == b"sidx")
    bare = film.with_name("bare.mp4")
    bare.write_bytes(data[: sidx.start] + data[sidx.end :])
    assert _moofs_parsed(film, "-ss", "7") < _moofs_parsed(bare, "-ss", "7") / 2
    seek = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", "5", "-i", str(film), "-map", "0", "-t", "1",
         "-f", "null", "-"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert seek.returncode == 0 and seek.stderr == "", seek.stderr[:800]
