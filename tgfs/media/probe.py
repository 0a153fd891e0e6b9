"""What is this file? A video to turn into HLS, or something to keep as it is.

"Video" means a real moving picture: a video stream that is not cover art (attached_pic),
not a still-image container (JPEG, PNG …) and not an animated GIF (users dropping GIFs
expect them back as GIFs), with a measurable duration.
"""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from pathlib import Path

import av

from tgfs.media import hls

# Demuxers that read single pictures or picture sequences; their "video" is a still.
_IMAGE_FORMATS = {"image2", "gif", "apng", "webp", "ico", "tiff"}
# Shortest media that still counts as a video: below this a "video" is a still frame.
_MIN_DURATION = 0.2
# Names users give video files. Used only to word the outcome: a file with such a name that
# turns out unplayable is reported as a failed video; any other non-media file is just a file.
VIDEO_EXTENSIONS = {
    ".mp4",
    ".m4v",
    ".mkv",
    ".mov",
    ".avi",
    ".webm",
    ".ts",
    ".m2ts",
    ".mts",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".3gp",
    ".ogv",
    ".vob",
    ".mxf",
    ".asf",
    ".divx",
    ".f4v",
}
COPY_VIDEO_CODECS = {"h264", "hevc"}
COPY_AUDIO_CODECS = {"aac", "mp3"}


@dataclasses.dataclass
class Probe:
    is_video: bool
    reason: str  # why it is not a video (empty when it is)
    format_name: str = ""
    duration: float | None = None  # seconds
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int = 0
    height: int = 0
    rotation: int = 0  # degrees counter-clockwise the picture must be turned (phone videos)
    interlaced: bool = False  # fields, not frames (DVD/broadcast MPEG-2): deinterlace
    # The last picture is repeated to the end of the file by entries without data (AVI
    # "repeat" frames of capture cards and Cinepak/MJPEG encoders); see _riff_complete.
    repeats_at_end: bool = False

    @property
    def audio_only(self) -> bool:
        """Sound and no moving picture (cover art does not count): music, podcasts."""
        return not self.is_video and self.audio_codec is not None and self.reason == "audio only"


def probe(path: Path) -> Probe:
    """Open the file with FFmpeg (through PyAV) and classify it. Never raises for bad input."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return _classify(container, path)
    except av.FFmpegError as exc:
        return Probe(False, f"not a media file FFmpeg can read ({_ffmpeg_reason(exc)})")


def _classify(container: av.container.InputContainer, path: Path) -> Probe:
    fmt = container.format.name
    video = _main_video(container)
    audio = container.streams.audio[0] if container.streams.audio else None
    duration = container.duration / 1_000_000 if container.duration else None
    if video is not None and video.duration and video.time_base:
        duration = max(duration or 0.0, float(video.duration * video.time_base))
    if (
        video is not None
        and (not duration or duration < _MIN_DURATION)
        and fmt not in _IMAGE_FORMATS
        and not fmt.endswith("_pipe")
    ):
        # No duration, or one too short to be a video: headers lie (an MPEG program stream
        # whose last timestamps are broken says 18 ms for 5 s of pictures). Measure.
        duration = _measured_duration(path) or duration
    found = Probe(
        False,
        "",
        format_name=fmt,
        duration=duration,
        video_codec=video.codec_context.name if video else None,
        audio_codec=audio.codec_context.name if audio else None,
        width=video.codec_context.width if video else 0,
        height=video.codec_context.height if video else 0,
    )
    if video is None:
        found.reason = "audio only" if audio else "no video stream"
    elif fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
        found.reason = f"a still image ({fmt})"
    elif not duration or duration < _MIN_DURATION:
        found.reason = "no measurable duration (a still image?)"
    elif not found.width or not found.height:
        found.reason = "video stream without a picture size"
    else:
        found.is_video = True
        found.rotation, found.interlaced = _first_frame_facts(container, video)
        found.repeats_at_end = fmt == "avi" and _riff_complete(path)
    return found


def _main_video(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The video stream that is the moving picture (not cover art)."""
    return next(
        (
            s
            for s in container.streams.video
            if not s.disposition & av.stream.Disposition.attached_pic
        ),
        None,
    )


def _measured_duration(path: Path) -> float | None:
    """How long the video stream's packets last, demuxed end to end (no decoding): the span
    of their timestamps (jumps closed up as the segmenter closes them, `hls.Timeline`), or
    the sum of their durations if more (timestamps that stand still say nothing)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            video = _main_video(container)
            if video is None:
                return None
            discontinuous = av.format.Flags.ts_discont in av.format.Flags(container.format.flags)
            timeline = hls.Timeline() if discontinuous else None
            rate = video.average_rate or video.guessed_rate
            frame = 1 / Fraction(rate) if rate else Fraction(0)
            start = end = None
            total = Fraction(0)
            for packet in container.demux(video):
                if not packet.size:
                    continue
                if packet.duration and packet.time_base is not None:
                    length = packet.duration * packet.time_base
                else:
                    length = frame
                total += length
                if packet.pts is None or packet.time_base is None:
                    continue
                if timeline is not None:
                    timeline.fix(packet)
                at = packet.pts * packet.time_base
                start = at if start is None else min(start, at)
                end = max(end if end is not None else at, at + length)
    except av.FFmpegError:
        return None
    span = end - start if start is not None and end is not None else Fraction(0)
    return float(max(span, total)) or None


def _riff_complete(path: Path) -> bool:
    """Whether an AVI was written to its end: its top-level RIFF chunks (the AVI, and the
    AVIX extensions of files over 1 GB) tile the file exactly, and one holds the index.

    The demuxer skips index entries without data ("repeat the previous frame"), so a file
    that ends on them decodes shorter than its declared length, like a truncated file.
    A truncated file ends inside a chunk (and has lost its index, written last); a whole
    one does not: then the missing time is pictures held, not lost."""
    try:
        with open(path, "rb") as f:
            end = os.fstat(f.fileno()).st_size
            at, indexed = 0, False
            while at + 12 <= end:
                f.seek(at)
                head = f.read(12)
                if head[:4] != b"RIFF" or head[8:12] not in (b"AVI ", b"AVIX"):
                    return False
                size = int.from_bytes(head[4:8], "little")
                chunk_end = at + 8 + size + (size & 1)
                if chunk_end > end + (size & 1):
                    return False  # cut off inside this chunk
                inner = at + 12
                while inner + 8 <= min(chunk_end, end):
                    f.seek(inner)
                    name, length = f.read(4), int.from_bytes(f.read(4), "little")
                    indexed |= name in (b"idx1", b"indx")
                    if name == b"LIST" and f.read(4) == b"hdrl":
                        indexed |= b"indx" in f.read(min(length, 1 << 16))
                    inner += 8 + length + (length & 1)
                at = chunk_end
            return indexed and at >= end
    except OSError:
        return False


def _first_frame_facts(
    container: av.container.InputContainer, video: av.video.stream.VideoStream
) -> tuple[int, bool]:
    """Rotation and interlacing, which FFmpeg reports per decoded frame."""
    try:
        for frame in container.decode(video):
            return round(frame.rotation or 0) % 360, bool(frame.interlaced_frame)
    except (av.FFmpegError, ValueError):
        pass  # damage is judged later, by how much of the file decodes
    return 0, False


def copy_mode_allowed(found: Probe, size: int, enabled: bool, min_size: int) -> tuple[bool, str]:
    """The seed's copy-mode rule. Returns (allowed, why not)."""
    if not enabled:
        return False, "copy mode disabled (ENABLE_COPY_MODE=false)"
    if size < min_size:
        return False, "smaller than COPY_MODE_MIN_SIZE"
    if found.rotation:
        return False, "rotated video (e.g. from a phone): transcoded to play upright everywhere"
    if found.video_codec not in COPY_VIDEO_CODECS:
        return False, f"video codec {found.video_codec} is not H.264/HEVC"
    if found.audio_codec is not None and found.audio_codec not in COPY_AUDIO_CODECS:
        return False, f"audio codec {found.audio_codec} is not AAC/MP3"
    return True, ""


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    # str(exc) repeats the file name (a user path); the strerror part is the reason.
    return getattr(exc, "strerror", None) or type(exc).__name__
