"""tgfs.media.fmp4: HLS renditions made by FFmpeg (one video, two audio languages) merged
into one MP4 file, judged by ffprobe and ffmpeg: its duration, its streams with their
languages, a clean decode, and each language's own tone."""

from __future__ import annotations

import itertools
import json
import struct
import subprocess
from pathlib import Path

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
    video_fragments = len(tracks[0])
    header_size = len(moov) + fmp4.sidx_size(video_fragments)
    body, sequence, at = [], 1, header_size
    index: dict[int, list[tuple[int, int]]] = {}
    for number in range(max(len(t) for t in tracks)):  # (equal segment times: in turn)
        for n, segments in enumerate(tracks):
            if number < len(segments):
                data = segments[number].read_bytes()
                layout = fmp4.fragments(data)
                (old,) = {old for _, old in layout.track_ids}
                body.append(fmp4.apply(data, layout, layout.patches(sequence, {old: n + 1})))
                for moof, _, time in layout.starts:
                    index.setdefault(n + 1, []).append((time, at + moof - layout.skip))
                sequence += len(layout.sequences)
                at += len(body[-1])
    # The video track's subsegments: from each of its fragments to the next (or the end).
    video_at = [offset for _, offset in index[1]] + [at]
    times = [time for time, _ in index[1]]
    scale = fmp4.media_timescale(renditions[0].init)
    durations = [b - a for a, b in itertools.pairwise(times)]
    durations.append(times[0] + SECONDS * scale - times[-1])
    sidx = fmp4.segment_index(
        1,
        scale,
        times[0],
        [(b - a, d) for (a, b), d in zip(itertools.pairwise(video_at), durations, strict=True)],
    )
    assert len(moov + sidx) == header_size
    out = root / "film.mp4"
    out.write_bytes(moov + sidx + b"".join(body) + fmp4.random_access(index))
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


def test_the_random_access_index_points_at_each_fragment(film):
    """mfra at the end, found from mfro; each tfra entry names a moof of its track; and
    ffmpeg starts at a seek target inside the file, decoding cleanly from there."""
    data = film.read_bytes()
    mfra_size = int.from_bytes(data[-4:], "big")
    mfra = next(fmp4.boxes(data, len(data) - mfra_size))
    assert mfra.type == b"mfra"
    tfras = fmp4.children(data, mfra, b"tfra")
    assert len(tfras) == 3
    for tfra in tfras:
        track_id, _, count = struct.unpack_from(">III", data, tfra.body + 4)
        assert count >= SECONDS // SEGMENT  # (FFmpeg may cut one more, shorter)
        times = []
        for n in range(count):
            time, offset = struct.unpack_from(">QQ", data, tfra.body + 16 + n * 19)
            times.append(time)
            moof = next(fmp4.boxes(data, offset))
            tfhd = fmp4.child(data, fmp4.child(data, moof, b"traf"), b"tfhd")
            assert moof.type == b"moof" and data[tfhd.body + 4 : tfhd.body + 8] == bytes(
                [0, 0, 0, track_id]
            )
        assert times == sorted(set(times)), times
    first = subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", "5", "-i", str(film), "-map", "0", "-t", "1",
         "-f", "null", "-"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert first.returncode == 0 and first.stderr == "", first.stderr[:800]
