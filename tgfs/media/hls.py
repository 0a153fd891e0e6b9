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
import io
import itertools
import math
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Protocol, cast

import av
import m3u8
from av.video.frame import PictureType

from tgfs.media import codecs, encoders, messages, subtitles

INIT_NAME = "init.mp4"
SEGMENT_PATTERN = "seg_%05d.m4s"
_FFMPEG_PLAYLIST = "ffmpeg.m3u8"  # FFmpeg's own playlist: read for durations, then dropped
# AAC-LC at 128 kbit/s stereo is transparent enough for film sound and what Apple's HLS
# authoring spec suggests for stereo.
AUDIO_BITRATE = 128_000
AUDIO_RATES = (44100, 48000)  # keep these source rates; resample anything else to 48 kHz
_REPORT_EVERY = 0.5  # seconds between progress reports

ProgressFn = Callable[[float], None]  # media seconds done so far

# A player starts only once it holds the whole first segment, and the store delivers a few
# MB/s per bot after a few hundred ms: 2 s at 8 Mbit/s is 2 MB, 0.5 s of transfer striped
# over two bots where a 6 s segment takes 1.5 s over three. The next segments must then
# arrive while the ones before play, also from one bot at 2 MB/s for 1 MB/s of video (a
# segment is fetched once the one before is in): a second 2 s segment (1.3 s to fetch, 2 s
# to play), then each twice as long up to TGFS_SEGMENT_SECONDS (4 s: 2.3 s for 2 s + the
# time saved so far; 6 s: 3.3 s for 4 s + …). Going 2, 4 at once stalled that player in
# the benchmark. The cost is two more segments (messages) per rendition: 2, 2, 4, 6 s.
FIRST_SEGMENT = Fraction(2)
# The muxer's hls_time when we decide the cuts: it cuts at the first keyframe whose time is
# at least hls_time × (segments so far), which is every keyframe we let through.
_CUT_AT_EVERY_KEYFRAME = "0.001"


@dataclasses.dataclass
class EncodeOptions:
    segment_seconds: float = 6.0
    x264_preset: str = "veryfast"
    x264_crf: int = 21
    encoder: str = "libx264"  # or h264_nvenc / h264_qsv once detected working
    max_segment_bytes: int = 0  # no segment file above this (TELEGRAM_MAX_FILE_SIZE); 0 = any
    # Facts about the source (from the probe) that a transcode must correct:
    rotation: int = 0  # degrees counter-clockwise: turn the picture upright
    deinterlace: bool = False
    # The source repeats its last picture up to the container's end (AVI "repeat" entries:
    # index entries without data, which the demuxer skips): hold it that long.
    hold_to_end: bool = False


def peak_video_rate(opts: EncodeOptions) -> int | None:
    """The VBV max rate (bits/s) that keeps every segment under `max_segment_bytes`.

    With a VBV buffer of one segment's worth at `maxrate`, the bits in any span of S
    seconds are at most maxrate·S + bufsize = 2·maxrate·S. Leave 10 % for the container
    and room for the audio, and solve for maxrate.
    """
    if not opts.max_segment_bytes:
        return None
    seconds = opts.segment_seconds
    budget = 0.9 * opts.max_segment_bytes * 8 - 1.1 * AUDIO_BITRATE * seconds
    return max(100_000, int(budget / (2 * seconds)))


def cut_plan(segment: float, after: list[float] | None = None) -> Iterator[Fraction]:
    """Planned segment boundaries (seconds from the start, the start included): two of
    `FIRST_SEGMENT`, then doubling up to `segment` (2, 2, 4, 6, 6 … for 6), or the given
    cut times (those of a rendition made before, so that this one lines up with it)."""
    yield Fraction(0)
    if after is not None:
        yield from (Fraction(t).limit_denominator(100000) for t in after)
        return
    length = Fraction(segment).limit_denominator(1000)
    step, at = min(FIRST_SEGMENT, length), Fraction(0)
    for n in itertools.count():
        at += step
        yield at
        if n >= 1:  # two short ones, then doubling
            step = min(step * 2, length)


class _Cuts:
    """Decides, frame by frame in time order, which frames start a segment: the first at
    or after each planned boundary. Boundaries passed while waiting for a keyframe are
    skipped, so a late cut (copy mode, long GOPs) is not followed by a short segment."""

    def __init__(self, plan: Iterator[Fraction], slack: Fraction = Fraction(0)) -> None:
        self.plan = plan
        self.slack = slack  # a frame this close before a boundary is on it
        self.next: Fraction | None = next(plan)

    def due(self, elapsed: Fraction) -> bool:
        if self.next is None or elapsed < self.next - self.slack:
            return False
        while self.next is not None and self.next - self.slack <= elapsed:
            self.next = next(self.plan, None)
        return True


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
        out = stack.enter_context(_hls_output(out_dir, _CUT_AT_EVERY_KEYFRAME))
        video = _CopyVideo(tracks.video, out, _Cuts(cut_plan(opts.segment_seconds)))
        paths: Paths = {tracks.video.index: video}
        if tracks.muxed_audio is not None:
            paths[tracks.muxed_audio.index] = _audio_path(tracks.muxed_audio, out, copy=True)
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
        out = stack.enter_context(_hls_output(out_dir, f"{opts.segment_seconds:g}"))
        damaged = _pump(source, ain, {ain.index: _audio_path(ain, out, copy=True)}, report)
    rendition = RenditionOutput(
        name="audio",
        width=0,
        height=0,
        frame_rate=None,
        codecs=_codecs_of(out_dir / INIT_NAME),
        init_name=INIT_NAME,
        segments=_segments_of(out_dir),
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
            stack.enter_context(_hls_output(out_dir, _CUT_AT_EVERY_KEYFRAME))
            for out_dir, _ in targets
        ]
        decoder = _Decoder(vin, opts)
        longest = max(durations) if durations else opts.segment_seconds
        # The size cap must hold for the longest segment these cuts make.
        opts = dataclasses.replace(opts, segment_seconds=max(longest, opts.segment_seconds))
        encoders_ = [
            _EncodeVideo(vin, out, opts, _target_size(decoder.size, height), cuts, longest)
            for out, (_, height) in zip(outs, targets, strict=True)
        ]
        # The container's end, in seconds on the streams' clock (AV_TIME_BASE units: µs).
        container_end = (
            Fraction((source.start_time or 0) + source.duration, 1_000_000)
            if source.duration
            else None
        )
        paths: Paths = {
            vin.index: _VideoFanout(decoder, encoders_, container_end, opts.hold_to_end)
        }
        if tracks.muxed_audio is not None:
            paths[tracks.muxed_audio.index] = _AudioFanout(tracks.muxed_audio, outs)
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
        out = stack.enter_context(_hls_output(out_dir, f"{opts.segment_seconds:g}"))
        paths[ain.index] = _audio_path(ain, out, copy)
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
        collector = _CollectCues(
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
            skeleton.segments = _segments_of(out_dir)
            if skeleton.segments:
                skeleton.codecs = _codecs_of(out_dir / INIT_NAME)
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


def _hls_output(out_dir: Path, hls_time: str):
    return av.open(
        str(out_dir / _FFMPEG_PLAYLIST),
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
    rendition.codecs = _codecs_of(out_dir / INIT_NAME)
    rendition.segments = _segments_of(out_dir)
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


class Timeline:
    """Timestamp discontinuities in MPEG-TS/PS (recordings cut and joined with `cat`, a
    tuner that reset its clock): a jump back, or far ahead, is closed up by shifting every
    later packet of every stream by one offset, so the content keeps its real length. The
    ffmpeg CLI does the same for these formats; without it the muxer sees DTS going back.
    """

    BACK = Fraction(1, 10)  # s: a step back this large is a new clock, not jitter
    AHEAD = Fraction(10)  # s: a gap this large is a new clock, not missing data

    def __init__(self) -> None:
        self.offset = Fraction(0)  # s, added to every timestamp from here on
        self.last: dict[int, Fraction] = {}  # stream index → last end time (s, shifted)

    def fix(self, packet: av.Packet) -> None:
        stamp = packet.dts if packet.dts is not None else packet.pts
        if stamp is None or packet.time_base is None:
            return
        tb = packet.time_base
        at = stamp * tb + self.offset
        last = self.last.get(packet.stream.index)
        if last is not None and (at < last - self.BACK or at > last + self.AHEAD):
            self.offset += last - at
            at = last
        shift = round(self.offset / tb)
        if shift:
            if packet.dts is not None:
                packet.dts += shift
            if packet.pts is not None:
                packet.pts += shift
        self.last[packet.stream.index] = at + (packet.duration or 0) * tb


class StreamPath(Protocol):
    """What `_pump` does with one input stream's packets: each path class (copy or encode,
    video or audio, one output or a fan-out to several, subtitle cues) is one of these."""

    def feed(self, packet: av.Packet) -> None:
        """One packet of the stream, in demux order."""

    def flush(self) -> None:
        """The stream ended: drain decoders and encoders into the outputs."""


Paths = dict[int, StreamPath]  # input stream index → what its packets go through


class _Output:
    """One output stream and the muxer. Every packet goes through `mux`, which keeps DTS
    strictly increasing: muxers reject anything else, and damaged files (or encoders fed
    their damaged timestamps) produce it. Offending packets are bumped forward a tick."""

    def __init__(self, out, stream) -> None:
        self.out = out
        self.stream = stream
        self.last_dts: int | None = None

    def mux(self, packet: av.Packet) -> None:
        packet.stream = self.stream
        if packet.dts is not None:
            if self.last_dts is not None and packet.dts <= self.last_dts:
                packet.dts = self.last_dts + 1
                if packet.pts is not None and packet.pts < packet.dts:
                    packet.pts = packet.dts
            self.last_dts = packet.dts
        self.out.mux(packet)


class _CopyVideo:
    def __init__(self, vin, out, cuts: _Cuts) -> None:
        stream = out.add_stream_from_template(vin)
        if vin.codec_context.name == "hevc":
            # Apple players require hvc1 (parameter sets in the sample entry); the template
            # leaves the tag empty and the muxer would choose hev1.
            stream.codec_tag = "hvc1"
        self.output = _Output(out, stream)
        self.size = (vin.codec_context.width, vin.codec_context.height)
        self.rate = vin.average_rate or vin.guessed_rate
        self.cuts = cuts
        self.start: int | None = None

    def feed(self, packet: av.Packet) -> None:
        # Mux every packet with data; do not drop packets whose DTS is unset (some MKV
        # keyframes have none) — the muxer derives it.
        if packet.size == 0:
            return
        # The muxer cuts at every keyframe with a PTS (see _CUT_AT_EVERY_KEYFRAME): let
        # through only the flags of the keyframes that start a segment.
        if packet.is_keyframe and packet.pts is not None:
            if self.start is None:
                self.start = packet.pts
            if not self.cuts.due((packet.pts - self.start) * packet.time_base):
                packet.is_keyframe = False
        self.output.mux(packet)

    def flush(self) -> None:
        pass


def _encoder_options(opts: EncodeOptions, gop: int) -> dict[str, str]:
    """Good HLS practice for each encoder: a GOP of exactly one segment, no scene-cut
    keyframes (keyframes fall only where we force them, on segment boundaries, as IDRs),
    and a VBV cap so that no segment can outgrow TELEGRAM_MAX_FILE_SIZE."""
    options = {"g": str(gop)}
    if opts.encoder == "h264_nvenc":
        options |= {
            "preset": "p4",
            "rc": "vbr",
            "cq": str(opts.x264_crf + 2),
            "no-scenecut": "1",
            "forced-idr": "1",
        }
    elif opts.encoder == "h264_qsv":
        options |= {
            "preset": "veryfast",
            "global_quality": str(opts.x264_crf + 2),
            "forced_idr": "1",
            "idr_interval": "0",
        }
    else:
        options |= {
            "preset": opts.x264_preset,
            "crf": str(opts.x264_crf),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "forced-idr": "1",
        }
    if (peak := peak_video_rate(opts)) is not None:
        options |= {"maxrate": str(peak), "bufsize": str(int(peak * opts.segment_seconds))}
    return options


class _Decoder:
    """Decode (threaded) and, if needed, deinterlace and turn upright: once per video,
    however many renditions are made from it."""

    def __init__(self, vin, opts: EncodeOptions) -> None:
        vin.codec_context.thread_type = "AUTO"
        width, height = vin.codec_context.width, vin.codec_context.height
        if opts.rotation in (90, 270):
            width, height = height, width
        self.size = (width, height)
        self.filters = _Filters(vin, opts) if opts.rotation or opts.deinterlace else None

    def frames(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        """Frames for a packet; None at the end flushes the filters."""
        if packet is None:
            return self.filters.run(None) if self.filters else []
        decoded = packet.decode()
        if self.filters is None:
            return decoded
        return [out for frame in decoded for out in self.filters.run(frame)]


class _VideoFanout:
    """One decoder feeding one encoder per rendition.

    A source may hold its last picture for a while (a title card at the end, a capture
    that stopped changing): the last frame's duration says so, and players show it that
    long. Encoded as one frame at the output rate it would be gone after 1/25 s, and the
    video would end early (and look truncated), so it is repeated at the output rate up
    to where it ends — never past the container's own duration. With `hold_to_end` (see
    EncodeOptions) it ends there."""

    def __init__(
        self,
        decoder: _Decoder,
        encoders_: list[_EncodeVideo],
        container_end: Fraction | None,
        hold_to_end: bool = False,
    ) -> None:
        self.decoder = decoder
        self.encoders = encoders_
        self.container_end = container_end  # seconds, from the container; None: unknown
        self.last: tuple[av.VideoFrame, int, Fraction] | None = None  # frame, pts, tb
        # seconds: where the last picture stops showing
        self.end = container_end if hold_to_end and container_end else Fraction(0)

    def feed(self, packet: av.Packet) -> None:
        for frame in self.decoder.frames(packet):
            self._encode(frame)

    def flush(self) -> None:
        for frame in self.decoder.frames(None):
            self._encode(frame)
        self._hold_last()
        for encoder in self.encoders:
            encoder.flush()

    def _encode(self, frame: av.VideoFrame) -> None:
        # Encoding rescales a frame's timestamp into the encoder's time base in place, so
        # each encoder gets the decoder's timestamp back (the next one would read 1/25 s
        # ticks as 1/12800 s ones and force no keyframe where it should).
        pts, time_base = frame.pts, frame.time_base
        if pts is not None and time_base is not None:
            self.last = (frame, pts, time_base)
            self.end = max(self.end, (pts + (frame.duration or 0)) * time_base)
        for encoder in self.encoders:
            frame.pts, frame.time_base = pts, time_base
            encoder.encode(frame)

    def _hold_last(self) -> None:
        if self.last is None or not self.encoders or self.container_end is None:
            return
        frame, pts, time_base = self.last
        end = min(self.end, self.container_end)
        step = 1 / Fraction(self.encoders[0].rate)  # s per output frame
        at = pts * time_base + step
        while at + step / 2 <= end:
            frame.pts, frame.time_base = round(at / time_base), time_base
            self._encode(frame)
            at += step


class _EncodeVideo:
    """Scale → H.264 with an IDR exactly on every segment boundary."""

    def __init__(
        self,
        vin,
        out,
        opts: EncodeOptions,
        size: tuple[int, int],
        cuts: list[float] | None,
        longest: float,
    ) -> None:
        self.time_base = vin.time_base
        self.rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        self.size = size
        self.pix_fmt = encoders.PIX_FMT.get(opts.encoder, "yuv420p")
        # Keyframes only where we force them: the GOP limit must not come first (cuts fall
        # on frames, so one frame later than the boundary at most).
        gop = max(1, round(longest * self.rate) + 1)
        self.stream = out.add_stream(
            opts.encoder, rate=self.rate, options=_encoder_options(opts, gop)
        )
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = self.pix_fmt
        # PyAV opens encoders with slice threads; x264's frame threads are what the ffmpeg
        # CLI uses and ~15 % faster at 1080p on 2 cores.
        self.stream.codec_context.thread_type = "FRAME"
        self.stream.time_base = vin.time_base
        self.output = _Output(out, self.stream)
        # Cut times from a playlist are rounded: match the frame within half a frame.
        self.cuts = _Cuts(
            cut_plan(opts.segment_seconds, cuts),
            Fraction(1, 2) / Fraction(self.rate) if cuts else Fraction(0),
        )
        self.last_pts: int | None = None
        self.last_slot: int | None = None  # the frame slot (pts · rate) of the last frame
        self.first_source_pts: int | None = None  # slot 0

    def encode(self, frame: av.VideoFrame) -> None:
        # The encoder counts in frames (PyAV gives it a time base of 1/rate), and so does a
        # player reading the result. Frames of a variable-frame-rate source closer than one
        # frame would share a slot, and their DTS would stand still; so would frames without
        # a timestamp, or with one going back (broken files, MPEG program streams). Each
        # such frame takes the next free slot instead: no picture is lost, and the drift
        # (a frame at most, for phone jitter) closes up at the next gap. Dropping them, as
        # `ffmpeg -fps_mode vfr` does, lost a quarter of the frames of a jittery phone clip
        # whose average rate FFmpeg misjudged.
        # Slots count from the first frame (a grid offset by half a frame would put every
        # other frame of a constant-rate source on the same slot).
        source_pts = frame.pts
        if self.first_source_pts is None and source_pts is not None:
            self.first_source_pts = source_pts
        slot = (
            math.floor(
                (source_pts - self.first_source_pts) * self.time_base * self.rate + Fraction(1, 2)
            )
            if source_pts is not None and self.first_source_pts is not None
            else None
        )
        if slot is None:
            slot = 0 if self.last_slot is None else self.last_slot + 1
        elif self.last_slot is not None and slot <= self.last_slot:
            slot = self.last_slot + 1
        self.last_slot = slot
        pts = (self.first_source_pts or 0) + round(slot / (self.rate * self.time_base))
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        self.last_pts = pts
        out = frame
        if (frame.width, frame.height) != self.size or frame.format.name != self.pix_fmt:
            out = frame.reformat(self.size[0], self.size[1], self.pix_fmt)
        out.pts = pts
        out.time_base = self.time_base
        # The muxer cuts at every keyframe: force exactly the frames that start a segment
        # to be IDRs and clear the source's frame types everywhere else (x264 would turn
        # decoded I frames into extra keyframes).
        if self.cuts.due(slot / Fraction(self.rate)):  # seconds since the first frame
            out.pict_type = PictureType.I
        else:
            out.pict_type = PictureType.NONE
        for packet in self.stream.encode(out):
            self.output.mux(packet)

    def flush(self) -> None:
        for packet in self.stream.encode(None):
            self.output.mux(packet)


# Filters that turn a picture rotated by the display matrix (degrees counter-clockwise)
# upright: the ffmpeg CLI's autorotate choices.
_TURN = {90: ["transpose=cclock"], 180: ["hflip", "vflip"], 270: ["transpose=clock"]}


class _Filters:
    """Deinterlace (bwdif, one frame per frame) and turn the picture upright, with the
    same filters and angles as the ffmpeg CLI's autorotate."""

    def __init__(self, vin, opts: EncodeOptions) -> None:
        self.time_base = vin.time_base
        self.graph = av.filter.Graph()
        chain = [self.graph.add_buffer(template=vin)]
        specs = ["bwdif=mode=send_frame"] if opts.deinterlace else []
        specs += _TURN.get(opts.rotation, [])
        for spec in specs:
            name, _, args = spec.partition("=")
            chain.append(self.graph.add(name, args or None))
        chain.append(self.graph.add("buffersink"))
        for a, b in itertools.pairwise(chain):
            a.link_to(b)
        self.graph.configure()

    def run(self, frame: av.VideoFrame | None) -> list[av.VideoFrame]:
        self.graph.push(frame)
        out: list[av.VideoFrame] = []
        while True:
            try:
                filtered = cast(av.VideoFrame, self.graph.pull())
            except (av.BlockingIOError, av.EOFError):
                return out
            # Deinterlacers halve the time base; the encoder works in the stream's.
            tb = filtered.time_base
            if tb and tb != self.time_base and filtered.pts is not None:
                filtered.pts = round(filtered.pts * tb / self.time_base)
                filtered.time_base = self.time_base
            out.append(filtered)


class _CopyAudio:
    def __init__(self, ain, out) -> None:
        stream = out.add_stream_from_template(ain)
        self.output = _Output(out, stream)
        # ADTS AAC (from MPEG-TS or raw .aac) carries its config in every frame header and
        # has no extradata; fMP4 needs an AudioSpecificConfig instead.
        self.bsf = None
        if not ain.codec_context.extradata:
            self.bsf = av.bitstream.BitStreamFilterContext("aac_adtstoasc", ain, stream)

    def feed(self, packet: av.Packet) -> None:
        if packet.size == 0:
            return
        for p in self.bsf.filter(packet) if self.bsf else [packet]:
            self.output.mux(p)

    def flush(self) -> None:
        if self.bsf:
            for p in self.bsf.filter(None):
                self.output.mux(p)


class _EncodeAudio:
    """Decode → resample to stereo float planar → AAC-LC."""

    def __init__(self, ain, out) -> None:
        rate = ain.codec_context.sample_rate
        rate = rate if rate in AUDIO_RATES else 48000
        self.stream = out.add_stream("aac", rate=rate)
        self.stream.layout = "stereo"
        self.stream.bit_rate = AUDIO_BITRATE
        self.resampler = av.AudioResampler(
            format="fltp", layout="stereo", rate=rate, frame_size=1024
        )
        self.output = _Output(out, self.stream)

    def feed(self, packet: av.Packet) -> None:
        for frame in packet.decode():
            self.encode_frame(cast(av.AudioFrame, frame))

    def encode_frame(self, frame: av.AudioFrame | None) -> None:
        for resampled in self.resampler.resample(frame):
            for packet in self.stream.encode(resampled):
                self.output.mux(packet)

    def flush(self) -> None:
        self.encode_frame(None)
        for packet in self.stream.encode(None):
            self.output.mux(packet)


class _AudioFanout:
    """Decode the audio once, encode AAC into every rendition's output."""

    def __init__(self, ain, outs) -> None:
        self.ain = ain
        self.encoders = [_EncodeAudio(ain, out) for out in outs]

    def feed(self, packet: av.Packet) -> None:
        for frame in packet.decode():
            for encoder in self.encoders:
                encoder.encode_frame(cast(av.AudioFrame, frame))

    def flush(self) -> None:
        for encoder in self.encoders:
            encoder.flush()


class _CollectCues:
    """Decode a text subtitle track into cues, timed from the start of the video."""

    def __init__(self, sin, vin, language: str | None, title: str, default: bool) -> None:
        self.sin = sin
        self.origin = float((vin.start_time or 0) * vin.time_base)
        self.track = subtitles.Track(language=language, title=title, default=default, cues=[])

    def feed(self, packet: av.Packet) -> None:
        if packet.pts is None:
            return
        start = float(packet.pts * self.sin.time_base) - self.origin
        length = float((packet.duration or 0) * self.sin.time_base)
        for sub in packet.decode():
            if isinstance(sub, av.subtitles.subtitle.AssSubtitle):
                self.track.cues.append(subtitles.cue_from_ass(start, length, sub.ass))

    def flush(self) -> None:
        pass


def _audio_path(ain, out, copy: bool):
    if copy and ain.codec_context.name == "aac":
        return _CopyAudio(ain, out)
    return _EncodeAudio(ain, out)


def _codecs_of(init_path: Path) -> str:
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
    return _codecs_of(out_dir / INIT_NAME)


def finished_segments(out_dir: Path) -> list[SegmentFile]:
    """The segments FFmpeg has completed in `out_dir` so far (its playlist lists a segment
    only once the file is whole)."""
    path = out_dir / _FFMPEG_PLAYLIST
    if not path.exists():
        return []
    return [
        SegmentFile(name=s.uri, duration=float(s.duration), size=(out_dir / s.uri).stat().st_size)
        for s in m3u8.load(str(path)).segments
    ]


def _segments_of(out_dir: Path) -> list[SegmentFile]:
    segments = finished_segments(out_dir)
    (out_dir / _FFMPEG_PLAYLIST).unlink(missing_ok=True)
    return segments
