"""Independent checks of a published video folder: ffmpeg/ffprobe and the m3u8 parser.

Nothing here imports tgfs: the point is to judge its output with other people's tools.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from pathlib import Path

import m3u8

# ffprobe profile names → H.264 profile_idc, to check the avc1 CODECS string independently.
H264_PROFILE_IDC = {
    "Baseline": 66,
    "Constrained Baseline": 66,
    "Main": 77,
    "High": 100,
    "High 10": 110,
    "High 4:2:2": 122,
    "High 4:4:4 Predictive": 244,
}


def ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def source_duration(path: Path) -> float:
    return float(ffprobe(path, "-show_entries", "format=duration")["format"]["duration"])


def decode_errors(playlist: Path) -> str:
    """ffmpeg's complaints while decoding every stream of the playlist (empty = clean)."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(playlist), "-map", "0", "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stderr.strip()


def video_span(playlist: Path) -> float:
    """Seconds from the first video packet to the end of the last, as ffprobe reads them."""
    packets = ffprobe(
        playlist, "-select_streams", "v:0", "-show_entries", "packet=pts_time,duration_time"
    )["packets"]
    times = [
        (float(p["pts_time"]), float(p.get("duration_time") or 0))
        for p in packets
        if p.get("pts_time") not in (None, "N/A")
    ]
    start = min(t for t, _ in times)
    end = max(t + d for t, d in times)
    return end - start


def probe_segment(init: Path, segment: Path, *args: str) -> dict:
    """ffprobe a media segment (with its init segment in front, as a player sees it)."""
    with tempfile.NamedTemporaryFile(suffix=".mp4") as joined:
        joined.write(init.read_bytes() + segment.read_bytes())
        joined.flush()
        return ffprobe(Path(joined.name), *args)


def first_video_packet_is_key(init: Path, segment: Path) -> bool:
    packets = probe_segment(
        init,
        segment,
        "-select_streams",
        "v:0",
        "-read_intervals",
        "%+#1",
        "-show_entries",
        "packet=flags",
    )["packets"]
    return bool(packets) and packets[0]["flags"].startswith("K")


def check_media_playlist(media_path: Path) -> m3u8.M3U8:
    """RFC 8216 rules for a finished media playlist; returns it parsed."""
    text = media_path.read_text()
    assert text.startswith("#EXTM3U\n")
    media = m3u8.loads(text)
    assert media.playlist_type == "vod" and media.is_endlist
    assert media.is_independent_segments
    assert media.segments
    for seg in media.segments:
        assert math.floor(seg.duration + 0.5) <= media.target_duration
        assert (media_path.parent / seg.uri).suffix in (".m4s", ".mp4", ".ts", ".vtt")
    return media


def check_video_folder(
    folder: Path, source: Path, segment_seconds: float, duration: float | None = None
) -> dict:
    """Assert every rule DESIGN.md lists; return facts for further assertions.

    Audio and subtitle renditions (EXT-X-MEDIA) are checked too: audio as fMP4 with its
    init segment, subtitles as WebVTT; all share the video's target duration. `duration`:
    the source's real length, where ffprobe cannot tell it."""
    master_path = folder / "master.m3u8"
    master_text = master_path.read_text()
    assert master_text.startswith("#EXTM3U\n")
    master = m3u8.loads(master_text)
    assert master.is_variant and master.playlists
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in master_text
    targets, renditions, alternatives = set(), [], []
    groups = {(m.type, m.group_id) for m in master.media}
    for variant in master.playlists:
        info = variant.stream_info
        assert info.bandwidth and info.average_bandwidth and info.codecs
        assert info.resolution and info.frame_rate
        assert info.bandwidth >= info.average_bandwidth
        if info.audio:
            assert ("AUDIO", info.audio) in groups
        if info.subtitles:
            assert ("SUBTITLES", info.subtitles) in groups
        media_path = folder / variant.uri
        media = check_media_playlist(media_path)
        assert media.version >= 6, "EXT-X-MAP needs EXT-X-VERSION 6+"
        assert media.segment_map and media.segment_map[0].uri
        targets.add(media.target_duration)
        init = media_path.parent / media.segment_map[0].uri
        for seg in media.segments:
            seg_path = media_path.parent / seg.uri
            assert first_video_packet_is_key(init, seg_path), f"{seg.uri} starts without IDR"
        renditions.append(
            {"variant": variant, "media": media, "init": init, "dir": media_path.parent}
        )
    for alt in master.media:
        assert alt.type in ("AUDIO", "SUBTITLES") and alt.uri and alt.name
        media_path = folder / alt.uri
        media = check_media_playlist(media_path)
        targets.add(media.target_duration)
        first = media_path.parent / media.segments[0].uri
        if alt.type == "AUDIO":
            assert media.segment_map and media.segment_map[0].uri
            init = media_path.parent / media.segment_map[0].uri
            streams = probe_segment(init, first, "-show_entries", "stream=codec_type")
            assert [s["codec_type"] for s in streams["streams"]] == ["audio"]
        else:
            assert not media.segment_map, "WebVTT has no init segment"
            init = None
            for seg in media.segments:
                assert (media_path.parent / seg.uri).read_text().startswith("WEBVTT")
        alternatives.append(
            {
                "media_tag": alt,
                "media": media,
                "init": init,
                "first": first,
                "dir": media_path.parent,
            }
        )
    for type_ in ("AUDIO", "SUBTITLES"):
        defaults = [a for a in master.media if a.type == type_ and a.default == "YES"]
        assert len(defaults) <= 1
    if any(a.type == "AUDIO" for a in master.media):
        assert sum(a.type == "AUDIO" and a.default == "YES" for a in master.media) == 1
    assert len(targets) == 1, "one target duration across renditions"
    assert decode_errors(master_path) == ""
    span = video_span(master_path)
    expected = source_duration(source) if duration is None else duration
    assert abs(span - expected) <= segment_seconds / 2, (span, expected)
    return {"renditions": renditions, "alternatives": alternatives, "span": span}


def check_codecs_string(
    init: Path, segment: Path, codecs: str, audio: tuple[Path, Path] | None = None
) -> None:
    """CODECS in the master agrees with what ffprobe reads from the rendition's streams
    (plus, with an audio group, from an audio rendition's `(init, segment)`)."""
    streams = probe_segment(
        init, segment, "-show_entries", "stream=codec_name,codec_tag_string,profile,level"
    )["streams"]
    if audio is not None:
        streams += probe_segment(
            *audio, "-show_entries", "stream=codec_name,codec_tag_string,profile,level"
        )["streams"]
    entries = codecs.split(",")
    assert len(entries) == len(streams), (entries, streams)
    for stream, entry in zip(streams, entries, strict=True):
        if stream["codec_name"] == "h264":
            profile_idc = int(entry[5:7], 16)
            level = int(entry[9:11], 16)
            assert entry.startswith("avc1.")
            assert profile_idc == H264_PROFILE_IDC[stream["profile"]], (entry, stream)
            assert level == stream["level"], (entry, stream)
        elif stream["codec_name"] == "hevc":
            assert stream["codec_tag_string"] == "hvc1"
            assert entry.startswith("hvc1.")
            assert entry.split(".")[3] in (f"L{stream['level']}", f"H{stream['level']}")
        elif stream["codec_name"] == "aac":
            assert stream["profile"] == "LC" and entry == "mp4a.40.2"
        else:
            raise AssertionError(f"unexpected stream {stream}")
