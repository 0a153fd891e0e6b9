"""HLS playlists, written by tgfs from the catalog (never FFmpeg's own).

FFmpeg's master playlist lacks CODECS for some HEVC and never writes FRAME-RATE, so tgfs
renders both playlists itself from what the catalog recorded at ingest. Rules checked by
validators (RFC 8216, Apple's HLS authoring spec) and followed here:
- `#EXTM3U` first; EXT-X-VERSION 7 (EXT-X-MAP in fMP4 playlists needs at least 6);
- every EXTINF, rounded to the nearest integer, ≤ EXT-X-TARGETDURATION, which is one value
  for all renditions of a video (`target_duration`);
- VOD playlists carry EXT-X-PLAYLIST-TYPE:VOD and EXT-X-ENDLIST;
- variant entries carry BANDWIDTH (peak), AVERAGE-BANDWIDTH, CODECS, RESOLUTION, FRAME-RATE;
  with an audio group, BANDWIDTH and CODECS count the audio too (RFC 8216 4.3.4.2);
- EXT-X-INDEPENDENT-SEGMENTS: every segment starts with a keyframe.

A video still being processed has EVENT playlists: segments are only ever appended, there
is no ENDLIST, and players reload them until it appears. EXT-X-START:TIME-OFFSET=0 asks
players to start at the beginning rather than at the "live edge" near the end (hls.js,
Safari and `ffmpeg -prefer_x_start 1` honour it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

HLS_VERSION = 7


@dataclasses.dataclass(frozen=True)
class Variant:
    uri: str  # relative to the master playlist, e.g. "720p/playlist.m3u8"
    bandwidth: int
    average_bandwidth: int
    codecs: str
    width: int
    height: int
    frame_rate: float | None


@dataclasses.dataclass(frozen=True)
class Alternative:
    """An EXT-X-MEDIA entry: one of several audio tracks, or a subtitle track."""

    type: str  # "AUDIO" or "SUBTITLES"
    uri: str
    name: str  # NAME: what a player's track menu shows; unique within its group
    language: str | None
    default: bool
    codecs: str = ""  # audio: added to each variant's CODECS
    bandwidth: int = 0  # audio: peak bit rate, added to each variant's BANDWIDTH
    average_bandwidth: int = 0


AUDIO_GROUP = "audio"
SUBTITLES_GROUP = "subs"


def target_duration(durations: Iterable[float]) -> int:
    """EXT-X-TARGETDURATION: the largest EXTINF rounded to the nearest integer (≥ 1)."""
    return max([1, *(math.floor(d + 0.5) for d in durations)])


def master(variants: list[Variant], alternatives: Iterable[Alternative] = ()) -> str:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    audio = [a for a in alternatives if a.type == "AUDIO"]
    subtitles = [a for a in alternatives if a.type == "SUBTITLES"]
    for group, members in ((AUDIO_GROUP, audio), (SUBTITLES_GROUP, subtitles)):
        for a in members:
            attrs = [f"TYPE={a.type}", f'GROUP-ID="{group}"', f'NAME="{_quoted(a.name)}"']
            if a.language:
                attrs.append(f'LANGUAGE="{_quoted(a.language)}"')
            attrs += [f"DEFAULT={'YES' if a.default else 'NO'}", "AUTOSELECT=YES", f'URI="{a.uri}"']
            lines.append("#EXT-X-MEDIA:" + ",".join(attrs))
    # The worst case a player must budget for: this video plus the heaviest audio track.
    audio_peak = max((a.bandwidth for a in audio), default=0)
    audio_average = max((a.average_bandwidth for a in audio), default=0)
    audio_codecs = list(dict.fromkeys(a.codecs for a in audio if a.codecs))
    for v in sorted(variants, key=lambda v: v.bandwidth, reverse=True):
        attrs = [
            f"BANDWIDTH={v.bandwidth + audio_peak}",
            f"AVERAGE-BANDWIDTH={v.average_bandwidth + audio_average}",
            f'CODECS="{",".join([v.codecs, *audio_codecs])}"',
        ]
        if v.width:  # 0: the variant of an audio-only file
            attrs.append(f"RESOLUTION={v.width}x{v.height}")
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        if audio:
            attrs.append(f'AUDIO="{AUDIO_GROUP}"')
        if subtitles:
            attrs.append(f'SUBTITLES="{SUBTITLES_GROUP}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), v.uri]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """A quoted-string may not hold double quotes or line breaks (RFC 8216 4.2)."""
    return "".join(" " if c in '"\r\n' else c for c in text)


def media(
    target: int, init_name: str | None, segments: Iterable[tuple[str, float]], complete: bool = True
) -> str:
    """A media playlist: VOD once `complete`, else an EVENT playlist that will grow.
    `init_name` None: no init segment (WebVTT subtitles)."""
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{HLS_VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if complete else 'EVENT'}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    if not complete:
        lines.append("#EXT-X-START:TIME-OFFSET=0")
    if init_name:
        lines.append(f'#EXT-X-MAP:URI="{init_name}"')
    for name, duration in segments:
        lines += [f"#EXTINF:{duration:.3f},", name]
    if complete:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def bandwidths(segments: Iterable[tuple[int, float]]) -> tuple[int, int]:
    """(peak, average) bit rate over (size in bytes, duration in s) segments."""
    sizes = list(segments)
    total_bytes = sum(size for size, _ in sizes)
    total_seconds = sum(duration for _, duration in sizes) or 1.0
    peak = max((size * 8 / max(duration, 0.001) for size, duration in sizes), default=0.0)
    return math.ceil(peak), math.ceil(total_bytes * 8 / total_seconds)
