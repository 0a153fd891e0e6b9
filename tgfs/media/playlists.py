"""HLS playlists, written by tgfs from the catalog (never FFmpeg's own).

FFmpeg's master playlist lacks CODECS for some HEVC and never writes FRAME-RATE, so tgfs
renders both playlists itself from what the catalog recorded at ingest. Rules checked by
validators (RFC 8216, Apple's HLS authoring spec) and followed here:
- `#EXTM3U` first; EXT-X-VERSION 7 (EXT-X-MAP in fMP4 playlists needs at least 6);
- every EXTINF, rounded to the nearest integer, ≤ EXT-X-TARGETDURATION, which is one value
  for all renditions of a video (`target_duration`);
- VOD playlists carry EXT-X-PLAYLIST-TYPE:VOD and EXT-X-ENDLIST;
- variant entries carry BANDWIDTH (peak), AVERAGE-BANDWIDTH, CODECS, RESOLUTION, FRAME-RATE;
- EXT-X-INDEPENDENT-SEGMENTS: every segment starts with a keyframe.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

HLS_VERSION = 7
MASTER_NAME = "master.m3u8"
MEDIA_PLAYLIST_NAME = "playlist.m3u8"


@dataclasses.dataclass(frozen=True)
class Variant:
    uri: str  # relative to the master playlist, e.g. "720p/playlist.m3u8"
    bandwidth: int
    average_bandwidth: int
    codecs: str
    width: int
    height: int
    frame_rate: float | None


def target_duration(durations: Iterable[float]) -> int:
    """EXT-X-TARGETDURATION: the largest EXTINF rounded to the nearest integer (≥ 1)."""
    return max([1, *(math.floor(d + 0.5) for d in durations)])


def master(variants: list[Variant]) -> str:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in sorted(variants, key=lambda v: v.bandwidth, reverse=True):
        attrs = [
            f"BANDWIDTH={v.bandwidth}",
            f"AVERAGE-BANDWIDTH={v.average_bandwidth}",
            f'CODECS="{v.codecs}"',
            f"RESOLUTION={v.width}x{v.height}",
        ]
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), v.uri]
    return "\n".join(lines) + "\n"


def media(target: int, init_name: str, segments: Iterable[tuple[str, float]]) -> str:
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{HLS_VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{init_name}"',
    ]
    for name, duration in segments:
        lines += [f"#EXTINF:{duration:.3f},", name]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def bandwidths(segments: Iterable[tuple[int, float]]) -> tuple[int, int]:
    """(peak, average) bit rate over (size in bytes, duration in s) segments."""
    sizes = list(segments)
    total_bytes = sum(size for size, _ in sizes)
    total_seconds = sum(duration for _, duration in sizes) or 1.0
    peak = max((size * 8 / max(duration, 0.001) for size, duration in sizes), default=0.0)
    return math.ceil(peak), math.ceil(total_bytes * 8 / total_seconds)
