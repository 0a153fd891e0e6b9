"""The output folder of FFmpeg's `hls` muxer: opening it, and reading back what it wrote
(finished segments, CODECS, the first timestamp).

FFmpeg writes each segment and its playlist under a temporary name and renames it when
complete (`hls_flags=temp_file`), so a segment listed in its playlist is whole. That
playlist is only read for segment durations; the playlists users see are rendered by tgfs
from the catalog.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import m3u8

from tgfs.media import codecs, messages

SegmentFile = messages.SegmentFile

INIT_NAME = "init.mp4"
SEGMENT_PATTERN = "seg_%05d.m4s"
FFMPEG_PLAYLIST = "ffmpeg.m3u8"  # FFmpeg's own playlist: read for durations, then dropped


def open_output(out_dir: Path, hls_time: str):
    return av.open(
        str(out_dir / FFMPEG_PLAYLIST),
        "w",
        format="hls",
        options={
            "hls_time": hls_time,
            "hls_segment_type": "fmp4",
            "hls_playlist_type": "event",  # rewritten after every segment (vod: at the end)
            "hls_list_size": "0",
            "hls_flags": "temp_file",
            "hls_fmp4_init_filename": INIT_NAME,
            "hls_segment_filename": str(out_dir / SEGMENT_PATTERN),
        },
    )


def codecs_of_init(init_path: Path) -> str:
    """CODECS for the master playlist, from the configuration records in the init segment."""
    with av.open(str(init_path)) as init:
        entries = [
            codecs.for_stream(s.codec_context.name, s.codec_context.extradata, s.codec_tag or "")
            for s in init.streams
            if s.type in ("video", "audio")
        ]
    return ",".join(entries)


def first_pts(out_dir: Path, first_segment: str) -> float:
    """Where the rendition's timestamps begin (seconds): subtitles are timed from there."""
    data = (out_dir / INIT_NAME).read_bytes() + (out_dir / first_segment).read_bytes()
    with av.open(io.BytesIO(data), "r") as media:
        for packet in media.demux(media.streams.video[0]):
            if packet.pts is not None:
                return float(packet.pts * packet.time_base)
    return 0.0


def codecs_of(out_dir: Path) -> str:
    return codecs_of_init(out_dir / INIT_NAME)


def finished_segments(out_dir: Path) -> list[SegmentFile]:
    """The segments FFmpeg has completed in `out_dir` so far (its playlist lists a segment
    only once the file is whole)."""
    path = out_dir / FFMPEG_PLAYLIST
    if not path.exists():
        return []
    return [
        SegmentFile(name=s.uri, duration=float(s.duration), size=(out_dir / s.uri).stat().st_size)
        for s in m3u8.load(str(path)).segments
    ]


def take_segments(out_dir: Path) -> list[SegmentFile]:
    segments = finished_segments(out_dir)
    (out_dir / FFMPEG_PLAYLIST).unlink(missing_ok=True)
    return segments
