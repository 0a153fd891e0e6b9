"""What the media child tells the daemon: one JSON object per line on its stdout.

    Progress   {"type": "progress", "stage": "copy", "seconds": 12.5, "duration": 60.0}
    Plan       {"type": "plan", "mode": "transcode", "target_duration": 6, "dirs": ["r0"]}
    Rendition  {"type": "rendition", "dir": "r0", "name": "720p", …, "segments": []}
    Segment    {"type": "segment", "dir": "r0", "name": "seg_00000.m4s", "duration": 2.0, …}
    Poster     {"type": "poster", "name": "poster.jpg"}
    Restart    {"type": "restart"}
    FileResult / VideoResult / SubtitlesResult     the last word of a job that ran
    Failure    {"type": "failure", "message": "…", "kind": "media" | "space" | "memory"}

Plan, Rendition and Segment let the daemon publish a video while it is still being made:
every file they name is complete on disk. Restart withdraws everything announced so far (a
hardware encoder failed mid-way and the job starts over in software). A VideoResult lists
everything again, including what was never announced (subtitles).

Both sides use these classes; pydantic checks every line the daemon reads, so a child that
says something malformed is a failed job with a clear reason, never a KeyError later.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated, Literal

import pydantic


class Mode(enum.StrEnum):
    COPY = "copy"  # remuxed: the source's video bitstream, untouched
    TRANSCODE = "transcode"  # re-encoded to H.264
    AUDIO = "audio"  # an audio-only file made HLS (TGFS_AUDIO_HLS)


class TrackKind(enum.StrEnum):
    """What a rendition holds (the catalog's RenditionKind has the same values)."""

    VIDEO = "video"
    AUDIO = "audio"
    SUBTITLES = "subtitles"


class FailureKind(enum.StrEnum):
    """Why a media step failed, which decides what happens to the job."""

    MEDIA = "media"  # the file: judged, kept as an ordinary file
    SPACE = "space"  # the spool's disk is full: try again later
    MEMORY = "memory"  # over TGFS_MEDIA_MEMORY (or the machine's): judged, with that reason
    KILLED = "killed"  # killed by a signal from outside (OOM killer, admin); never sent


@dataclasses.dataclass
class SegmentFile:
    """A finished segment on disk."""

    name: str
    duration: float  # seconds, the EXTINF value
    size: int  # bytes


@dataclasses.dataclass
class Progress:
    stage: str  # "copy", "transcode", "audio"
    seconds: float  # of media done
    duration: float  # of media in all (0: unknown)
    type: Literal["progress"] = "progress"


@dataclasses.dataclass
class Plan:
    """Which renditions there will be (their folders), and their one target duration."""

    mode: Mode
    target_duration: int
    dirs: list[str]
    type: Literal["plan"] = "plan"


@dataclasses.dataclass
class Rendition:
    """One rendition: announced once its first segment is on disk (then `segments` is
    empty: each comes as a Segment), and listed whole in a result."""

    dir: str  # its folder in the job's work directory, e.g. "r0"
    name: str  # the folder name it gets in the video folder, e.g. "720p"
    width: int
    height: int
    frame_rate: float | None
    codecs: str  # RFC 6381 CODECS
    init_name: str  # "" for subtitles (WebVTT has no init segment)
    segments: list[SegmentFile] = dataclasses.field(default_factory=list)
    damaged_packets: int = 0  # packets the decoders rejected and that were skipped
    kind: TrackKind = TrackKind.VIDEO
    language: str | None = None  # audio/subtitles: the track's language tag
    title: str | None = None  # audio/subtitles: the name players show
    default: bool = False  # audio/subtitles: DEFAULT=YES in its group
    type: Literal["rendition"] = "rendition"


@dataclasses.dataclass
class Segment:
    dir: str
    name: str
    duration: float
    size: int
    type: Literal["segment"] = "segment"


@dataclasses.dataclass
class Poster:
    """The video's poster is complete on disk, at the top of the work directory."""

    name: str
    type: Literal["poster"] = "poster"


@dataclasses.dataclass
class Restart:
    type: Literal["restart"] = "restart"


@dataclasses.dataclass
class FileResult:
    """Not made into HLS: the file is kept as it is."""

    reason: str
    failed: bool  # it looked like media but could not be made (said in status)
    type: Literal["file"] = "file"


@dataclasses.dataclass
class VideoResult:
    mode: Mode
    duration: float  # seconds of media in the segments
    note: str  # said about the video in status ("" if nothing): damaged packets …
    start_time: float  # where the segments' timestamps begin, s
    renditions: list[Rendition]
    source_duration: float | None = None  # as the probe found it (for `tgfs check`)
    type: Literal["video"] = "video"


@dataclasses.dataclass
class SubtitlesResult:
    """A subtitle file made into one WebVTT rendition for a video published before it."""

    renditions: list[Rendition]
    type: Literal["subtitles"] = "subtitles"


@dataclasses.dataclass
class Failure:
    message: str
    kind: FailureKind = FailureKind.MEDIA
    type: Literal["failure"] = "failure"


Result = FileResult | VideoResult | SubtitlesResult
Message = Progress | Plan | Rendition | Segment | Poster | Restart | Result | Failure
Announcement = Plan | Rendition | Segment | Poster | Restart  # what a publisher follows

_MESSAGE: pydantic.TypeAdapter[Message] = pydantic.TypeAdapter(
    Annotated[Message, pydantic.Field(discriminator="type")]
)


def encode(message: Message) -> str:
    """One line (no newline) for the child's stdout."""
    return _MESSAGE.dump_json(message).decode()


def decode(line: str | bytes) -> Message:
    """A line from the child; ValueError if it is not a message."""
    try:
        return _MESSAGE.validate_json(line)
    except pydantic.ValidationError as exc:
        raise ValueError(f"media process said something malformed: {exc}") from None
