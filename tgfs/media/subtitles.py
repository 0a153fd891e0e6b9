"""Subtitles → segmented WebVTT, the subtitle format HLS players (hls.js, Safari) read.

Cues come from a text subtitle track inside a video (FFmpeg decodes every text format to
ASS markup) or from a sidecar file dropped next to it (`Film.srt`, `Film.en.vtt`, parsed
by pysubs2, which also turns ASS markup into WebVTT's <i>/<b>). HLS wants subtitles as a
playlist of WebVTT segments on the video's segment boundaries: each segment holds every
cue that shows during it — a cue spanning a boundary is repeated, which RFC 8216 3.5
allows — and an X-TIMESTAMP-MAP header tying its clock to the video's timestamps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import pysubs2

SIDECAR_EXTENSIONS = (".srt", ".vtt", ".ass", ".ssa")
# A subtitle file for a film is tens of KiB; anything this big is not one, and parsing it
# would only cost memory in the daemon.
MAX_SIDECAR_BYTES = 8 * 2**20
# A decoded cue without a duration (some muxers leave it out) stays up this long.
DEFAULT_CUE_SECONDS = 3.0
SEGMENT_PATTERN = "seg_{:05d}.vtt"
_MPEG_CLOCK = 90_000  # X-TIMESTAMP-MAP counts MPEG-2 ticks


class SubtitleError(ValueError):
    """A sidecar file that is not a subtitle file pysubs2 can read."""


@dataclasses.dataclass
class Cue:
    start: float  # seconds from the start of the video
    end: float
    text: str  # ASS markup (pysubs2's own form): {\i1}…{\i0}, \N for line breaks


@dataclasses.dataclass
class Track:
    language: str | None
    title: str
    default: bool
    cues: list[Cue]


def cue_from_ass(start: float, length: float, ass: bytes) -> Cue:
    """A cue from one decoded subtitle: FFmpeg's ASS event line
    `ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text` (Text may hold commas)."""
    text = ass.decode("utf-8", "replace").split(",", 8)[-1]
    return Cue(start, start + (length if length > 0 else DEFAULT_CUE_SECONDS), text)


def sidecar_stem(name: str) -> tuple[str, str | None] | None:
    """For a sidecar file name, (the video stem it belongs to, its language tag or None);
    None if the name is not a subtitle file. `Film.srt` → ("Film", None),
    `Film.en.srt` → ("Film", "en"); a longer middle part is part of the stem."""
    path = PurePosixPath(name)
    if path.suffix.lower() not in SIDECAR_EXTENSIONS or not path.stem:
        return None
    inner = PurePosixPath(path.stem)
    tag = inner.suffix[1:]
    if inner.stem and 2 <= len(tag) <= 3 and tag.isalpha():
        return inner.stem, tag.lower()
    return path.stem, None


def load_sidecar(path: Path) -> list[Cue]:
    """Cues of a .srt/.vtt/.ass file. UTF-8 (with or without BOM), else Windows-1252,
    the usual encoding of older .srt files; SubtitleError if it is not subtitles."""
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise SubtitleError(f"over {MAX_SIDECAR_BYTES // 2**20} MiB: not a subtitle file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", "replace")
    try:
        parsed = pysubs2.SSAFile.from_string(text)
    except Exception as exc:  # pysubs2 raises several kinds for unknown formats
        raise SubtitleError(f"not a subtitle file pysubs2 can read ({exc})") from None
    cues = [
        Cue(e.start / 1000, e.end / 1000, e.text)
        for e in parsed
        if not e.is_comment and e.end > e.start
    ]
    if not cues:
        raise SubtitleError("no subtitles found in it")
    return cues


def write_segments(
    cues: list[Cue], durations: list[float], out_dir: Path, start_time: float
) -> list[tuple[str, float, int]]:
    """WebVTT segments on the given segment boundaries; returns (name, duration, size) each.

    `start_time` is where the video's timestamps begin (seconds): cue times count from
    there, and X-TIMESTAMP-MAP says so to players."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{round(start_time * _MPEG_CLOCK)},LOCAL:00:00:00.000\n"
    )
    written = []
    begin = 0.0
    for n, duration in enumerate(durations):
        end = begin + duration if n < len(durations) - 1 else float("inf")
        page = pysubs2.SSAFile()
        for cue in cues:
            if cue.start < end and cue.end > begin:
                page.append(
                    pysubs2.SSAEvent(
                        start=round(cue.start * 1000), end=round(cue.end * 1000), text=cue.text
                    )
                )
        text = page.to_string("vtt").replace("WEBVTT\n", header, 1)
        name = SEGMENT_PATTERN.format(n)
        (out_dir / name).write_text(text, encoding="utf-8")
        written.append((name, duration, len(text.encode())))
        begin += duration
    return written


def whole(segments: Iterable[str]) -> str:
    """One WebVTT file from a rendition's segments (as `write_segments` wrote them): every
    cue once (a cue spanning a boundary is in each segment it shows in), in order, with
    its times as they are, counted from the start of the video, as in the file the cues
    came from. For the MP4 view's sidecar files (`Film.eng.vtt`).

    Plain text work on tgfs's own output, and no library's: the result's size is recorded
    when the video is published, and an upgrade of pysubs2 must not change these bytes."""
    cues: dict[str, None] = {}  # (an ordered set)
    for text in segments:
        for block in text.replace("\r\n", "\n").split("\n\n"):
            lines = block.strip("\n").split("\n")
            timing = next((n for n, line in enumerate(lines) if "-->" in line), None)
            if timing is not None:
                cues.setdefault("\n".join(lines[timing:]))
    body = "".join(f"{n}\n{cue}\n\n" for n, cue in enumerate(cues, start=1))
    return "WEBVTT\n\n" + body


def whole_file(segments: Iterable[bytes]) -> bytes:
    """`whole` of segments as stored, as bytes: what the view serves, and what its size is
    worked out from when the segments are published (the same steps, so the same bytes)."""
    return whole(s.decode("utf-8", "replace") for s in segments).encode()
