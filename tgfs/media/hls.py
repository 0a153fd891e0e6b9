"""Turn one media file into an fMP4 HLS rendition with FFmpeg's `hls` muxer (via PyAV).

Two ways, decided by the caller:
- copy: the video packets are remuxed as they are (no re-encode, seconds for a film);
  segments can then only be cut at the source's keyframes (the first one at or after each
  planned boundary; the others reach the muxer without their keyframe flag, so that it does
  not cut there — the bitstream is unchanged, and decoders still see them as keyframes).
  MP3 audio is re-encoded to AAC on the way, because MP3 in fMP4 does not play in browsers
  (hls.js); AAC is copied, with `aac_adtstoasc` when it comes as ADTS (MPEG-TS sources).
- transcode: decode once, encode H.264 (libx264) + AAC, and force an IDR frame exactly on
  every segment boundary, so every segment starts with a keyframe and is exactly as long as
  planned.

Planned boundaries (`cut_plan`): the first two segments are `FIRST_SEGMENT` long and each
next one twice as long, up to the segment length (2, 2, 4, 6, 6 … s), so that a player can
start after a small fetch. The muxer runs with a tiny `hls_time` and so cuts at every
keyframe it is given: where the cuts fall is decided here, for both ways.

One audio track is muxed into every video rendition. Several tracks become an audio group
instead: each its own audio-only rendition (video renditions then carry none), which is how
HLS lets a player offer a language menu. Text subtitle tracks are decoded on the same pass
and become WebVTT renditions (`tgfs.media.subtitles`).

FFmpeg writes each segment and its playlist under a temporary name and renames it when
complete (`hls_flags=temp_file`), so a file listed in its playlist is whole: the worker
hands segments on while the rest is still being encoded.

Packets are streamed from demuxer to muxer: memory stays flat whatever the file size.
The playlists FFmpeg writes are only read back for segment durations; the playlists users
see are rendered by tgfs from the catalog (`tgfs.media.playlists`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av

from tgfs.media import messages, subtitles
from tgfs.media.cutting import (
    AUDIO_BITRATE,
    AUDIO_RATES,
    CUT_AT_EVERY_KEYFRAME,
    FIRST_SEGMENT,
    Cuts,
    EncodeOptions,
    ProgressFn,
    cut_plan,
    peak_video_rate,
)
from tgfs.media.muxer import (
    INIT_NAME,
    SEGMENT_PATTERN,
    codecs_of,
    codecs_of_init,
    finished_segments,
    first_pts,
    open_output,
    take_segments,
)
from tgfs.media.paths import (
    AudioFanout,
    CollectCues,
    CopyVideo,
    Decoder,
    EncodeVideo,
    Paths,
    VideoFanout,
    audio_path,
)
from tgfs.media.timeline import Timeline

# Used by callers through this module, the media step's entry point.
__all__ = [
    "AUDIO_BITRATE",
    "AUDIO_RATES",
    "FIRST_SEGMENT",
    "INIT_NAME",
    "SEGMENT_PATTERN",
    "EncodeOptions",
    "ProgressFn",
    "RenditionOutput",
    "SegmentFile",
    "SideTracks",
    "Timeline",
    "codecs_of",
    "cut_plan",
    "finished_segments",
    "first_pts",
    "make_audio_only",
    "make_ladder",
    "make_rendition",
    "peak_video_rate",
    "unique_name",
]

_REPORT_EVERY = 0.5  # seconds between progress reports

SegmentFile = messages.SegmentFile  # a finished segment on disk (named in messages)


@dataclasses.dataclass
class RenditionOutput:
    name: str  # folder name, e.g. "720p"
    width: int
    height: int
    frame_rate: float | None
    codecs: str
    init_name: str
    segments: list[SegmentFile]
    damaged_packets: int = 0  # packets the decoders rejected and that were skipped
    # VIDEO, AUDIO (one track of an audio group) or SUBTITLES
    kind: messages.TrackKind = messages.TrackKind.VIDEO
    language: str | None = None  # audio/subtitles: the track's language tag
    title: str | None = None  # audio/subtitles: the name players show
    default: bool = False  # audio/subtitles: DEFAULT=YES in its group


@dataclasses.dataclass
class SideTracks:
    """What the first pass over a source makes besides its video: each audio track of an
    audio group in `root / a<N>`, and the cues of every text subtitle track."""

    root: Path
    audio: list[tuple[Path, RenditionOutput]] = dataclasses.field(default_factory=list)
    subtitles: list[subtitles.Track] = dataclasses.field(default_factory=list)


# Called once the outputs are set up, before any media is written: (folder, rendition with
# its size and rate but no codecs or segments yet) for each output.
StartFn = Callable[[list[tuple[Path, RenditionOutput]]], None]


def make_rendition(
    src: Path,
    out_dir: Path,
    copy: bool,
    opts: EncodeOptions,
    report: ProgressFn,
    side: SideTracks | None = None,
) -> RenditionOutput:
    """Write init.mp4 + seg_NNNNN.m4s for `src` into `out_dir`; describe what was written."""
    if not copy:
        return make_ladder(src, [(out_dir, None)], opts, report, side=side)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(av.open(str(src), metadata_errors="ignore"))
        tracks = _Tracks(source)
        out = stack.enter_context(open_output(out_dir, CUT_AT_EVERY_KEYFRAME))
        video = CopyVideo(tracks.video, out, Cuts(cut_plan(opts.segment_seconds)))
        paths: Paths = {tracks.video.index: video}
        if tracks.muxed_audio is not None:
            paths[tracks.muxed_audio.index] = audio_path(tracks.muxed_audio, out, copy=True)
        finish_side = _side_paths(stack, tracks, side, opts, paths, copy=True)
        damaged = _pump(source, tracks.video, paths, report)
    finish_side()
    return _describe(out_dir, video.size, video.rate, damaged)


def make_audio_only(
    src: Path, out_dir: Path, opts: EncodeOptions, report: ProgressFn
) -> RenditionOutput:
    """An audio-only rendition of the first audio track (TGFS_AUDIO_HLS): AAC is copied,
    anything else (MP3, FLAC, Opus …) encoded to AAC, which every HLS player decodes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(av.open(str(src), metadata_errors="ignore"))
        ain = source.streams.audio[0]
        out = stack.enter_context(open_output(out_dir, f"{opts.segment_seconds:g}"))
        damaged = _pump(source, ain, {ain.index: audio_path(ain, out, copy=True)}, report)
    rendition = RenditionOutput(
        name="audio",
        width=0,
        height=0,
        frame_rate=None,
        codecs=codecs_of_init(out_dir / INIT_NAME),
        init_name=INIT_NAME,
        segments=take_segments(out_dir),
        damaged_packets=damaged,
    )
    return rendition


def make_ladder(
    src: Path,
    targets: list[tuple[Path, int | None]],
    opts: EncodeOptions,
    report: ProgressFn,
    durations: list[float] | None = None,
    side: SideTracks | None = None,
    on_start: StartFn | None = None,
) -> list[RenditionOutput]:
    """Transcode `src` once into several renditions: (folder, height) each, None = the
    source's size. One decode feeds every encoder.

    All renditions get IDR frames at the same instants, so their segments line up: every
    `segment_seconds`, or after the given segment `durations` (those of a copy-mode
    rendition made before, so that it and these line up too).
    """
    cuts = list(itertools.accumulate(durations[:-1])) if durations else None
    for out_dir, _ in targets:
        out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(av.open(str(src), metadata_errors="ignore"))
        tracks = _Tracks(source)
        vin = tracks.video
        outs = [
            stack.enter_context(open_output(out_dir, CUT_AT_EVERY_KEYFRAME))
            for out_dir, _ in targets
        ]
        decoder = Decoder(vin, opts)
        longest = max(durations) if durations else opts.segment_seconds
        # The size cap must hold for the longest segment these cuts make.
        opts = dataclasses.replace(opts, segment_seconds=max(longest, opts.segment_seconds))
        encoders_ = [
            EncodeVideo(vin, out, opts, _target_size(decoder.size, height), cuts, longest)
            for out, (_, height) in zip(outs, targets, strict=True)
        ]
        # The container's end, in seconds on the streams' clock (AV_TIME_BASE units: µs).
        container_end = (
            Fraction((source.start_time or 0) + source.duration, 1_000_000)
            if source.duration
            else None
        )
        paths: Paths = {vin.index: VideoFanout(decoder, encoders_, container_end, opts.hold_to_end)}
        if tracks.muxed_audio is not None:
            paths[tracks.muxed_audio.index] = AudioFanout(tracks.muxed_audio, outs)
        finish_side = _side_paths(stack, tracks, side, opts, paths, copy=False)
        if on_start is not None:
            on_start(
                [
                    (out_dir, _skeleton(enc.size, enc.rate))
                    for (out_dir, _), enc in zip(targets, encoders_, strict=True)
                ]
                + (side.audio if side else [])
            )
        damaged = _pump(source, vin, paths, report)
    finish_side()
    return [
        _describe(out_dir, enc.size, enc.rate, damaged)
        for (out_dir, _), enc in zip(targets, encoders_, strict=True)
    ]


# Subtitle codecs FFmpeg decodes to text; bitmap subtitles (DVD, PGS, DVB) cannot become
# WebVTT without OCR and are left out.
_TEXT_SUBTITLES = {
    "subrip",
    "srt",
    "ass",
    "ssa",
    "mov_text",
    "webvtt",
    "text",
    "subviewer",
    "microdvd",
    "sami",
    "realtext",
    "jacosub",
    "mpl2",
    "pjs",
    "vplayer",
}


class _Tracks:
    """Which source streams become what: the video; one audio track muxed in, or several as
    an audio group; text subtitle tracks."""

    def __init__(self, source) -> None:
        self.video = next(
            s
            for s in source.streams.video
            if not s.disposition & av.stream.Disposition.attached_pic
        )
        audio = list(source.streams.audio)
        self.muxed_audio = audio[0] if len(audio) == 1 else None
        self.group_audio = audio if len(audio) > 1 else []
        self.subtitles = [
            s for s in source.streams.subtitles if s.codec_context.name in _TEXT_SUBTITLES
        ]


def _side_paths(
    stack: contextlib.ExitStack,
    tracks: _Tracks,
    side: SideTracks | None,
    opts: EncodeOptions,
    paths: Paths,
    copy: bool,
) -> Callable[[], None]:
    """Add the audio-group outputs and subtitle collectors to `paths`; returns what to call
    once the muxers are closed."""
    if side is None:
        return lambda: None
    pending: list[tuple[Path, RenditionOutput]] = []
    names: set[str] = set()
    for n, ain in enumerate(tracks.group_audio):
        out_dir = side.root / f"a{n}"
        out_dir.mkdir(parents=True, exist_ok=True)
        out = stack.enter_context(open_output(out_dir, f"{opts.segment_seconds:g}"))
        paths[ain.index] = audio_path(ain, out, copy)
        language, title = _track_label(ain, n)
        name = unique_name(f"audio-{language or n + 1}", names)
        pending.append(
            (
                out_dir,
                RenditionOutput(
                    name=name,
                    width=0,
                    height=0,
                    frame_rate=None,
                    codecs="",
                    init_name=INIT_NAME,
                    segments=[],
                    kind=messages.TrackKind.AUDIO,
                    language=language,
                    title=title,
                    default=_is_default(ain, tracks.group_audio),
                ),
            )
        )
    side.audio = pending
    collectors = []
    for n, sin in enumerate(tracks.subtitles):
        language, title = _track_label(sin, n)
        # Subtitles show by default only when the file says so (DEFAULT=YES turns them on).
        collector = CollectCues(
            sin,
            tracks.video,
            language,
            title,
            default=bool(sin.disposition & av.stream.Disposition.default),
        )
        paths[sin.index] = collector
        collectors.append(collector)

    def finish() -> None:
        for out_dir, skeleton in pending:
            skeleton.segments = take_segments(out_dir)
            if skeleton.segments:
                skeleton.codecs = codecs_of_init(out_dir / INIT_NAME)
        side.subtitles = [c.track for c in collectors]

    return finish


def _track_label(stream, n: int) -> tuple[str | None, str]:
    """(language, title) of an audio or subtitle track, from its tags."""
    language = stream.metadata.get("language") or stream.metadata.get("LANGUAGE")
    if not language or language.lower() in ("und", "unknown"):
        language = None
    title = stream.metadata.get("title") or stream.metadata.get("TITLE")
    return language, title or (language or f"Track {n + 1}")


def _is_default(stream, group: list) -> bool:
    flagged = [s for s in group if s.disposition & av.stream.Disposition.default]
    return stream is (flagged[0] if flagged else group[0])


def unique_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


def _skeleton(size: tuple[int, int], rate) -> RenditionOutput:
    width, height = size
    return RenditionOutput(
        name=f"{height}p",
        width=width,
        height=height,
        frame_rate=float(rate) if rate else None,
        codecs="",
        init_name=INIT_NAME,
        segments=[],
    )


def _describe(out_dir: Path, size: tuple[int, int], rate, damaged: int) -> RenditionOutput:
    rendition = _skeleton(size, rate)
    rendition.codecs = codecs_of_init(out_dir / INIT_NAME)
    rendition.segments = take_segments(out_dir)
    rendition.damaged_packets = damaged
    return rendition


def _target_size(source: tuple[int, int], height: int | None) -> tuple[int, int]:
    """Even dimensions (4:2:0 needs them); a lower rendition keeps the aspect ratio."""
    width, full = source
    if height is not None and height < full:
        width, full = round(width * height / full), height
    return width & ~1, full & ~1


def _pump(source, vin, paths: Paths, report: ProgressFn) -> int:
    """Demux once, hand each packet to its stream's path (by stream index), then flush all.

    A packet a decoder rejects as invalid is skipped and counted, so one damaged spot does
    not sink a whole film; the caller judges the damage by how much duration survived.
    Returns the number of skipped packets.
    """
    streams = [s for s in source.streams if s.index in paths]
    last_report = 0.0
    start = vin.start_time or 0
    damaged = 0
    timeline = Timeline() if source.format.flags & av.format.Flags.ts_discont.value else None
    for packet in source.demux(*streams):
        if timeline is not None:
            timeline.fix(packet)
        try:
            paths[packet.stream.index].feed(packet)
        except av.InvalidDataError:
            damaged += 1
            continue
        now = time.monotonic()
        if packet.stream is vin and packet.pts is not None and now - last_report > _REPORT_EVERY:
            last_report = now
            report(max(0.0, float((packet.pts - start) * vin.time_base)))
    for path in paths.values():
        path.flush()
    return damaged
