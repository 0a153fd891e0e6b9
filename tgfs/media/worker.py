"""The media child process: probe one spooled file and, if it is a video, write its HLS.

Run as `python -m tgfs.media.worker SRC WORKDIR OPTIONS_JSON`. It never touches the catalog
or the store; it talks to the daemon through typed messages, one JSON line each on stdout
(`tgfs.media.messages`): progress, then a plan, renditions and segments as they are ready
(so the daemon publishes while the video is being made), and one last word: a result or a
failure.

Being a separate process is the point: FFmpeg decoding a hostile file may crash or hang, and
CPU-heavy encoding must not hold the daemon's GIL while FUSE requests wait. The daemon
treats a missing result (crash, kill) as a failed job.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import pydantic

from tgfs.media import hls, messages, subtitles
from tgfs.media.encoders import SOFTWARE
from tgfs.media.hls import (
    EncodeOptions,
    ProgressFn,
    RenditionOutput,
    SegmentFile,
    SideTracks,
    make_ladder,
    make_rendition,
)
from tgfs.media.playlists import target_duration
from tgfs.media.poster import NAME as POSTER
from tgfs.media.poster import make_poster
from tgfs.media.probe import VIDEO_EXTENSIONS, copy_mode_allowed, probe

_RECUTS = 4  # copy-mode attempts at shorter segments before transcoding instead


class DamagedMedia(Exception):
    """The file is a video, but too much of it cannot be decoded to publish it."""


@dataclasses.dataclass
class Sidecar:
    """A subtitle file dropped beside the video, fetched into the work directory."""

    path: str
    language: str | None  # from its name ("Film.fr.srt"), if it says


@dataclasses.dataclass
class SubtitlesFor:
    """The published video a subtitle file is made for: where its segments are cut."""

    durations: list[float]  # of its first video rendition's segments
    start_time: float  # where its timestamps begin, s
    language: str | None


@dataclasses.dataclass
class WorkerOptions:
    """What the daemon tells the media child (its third argument, as JSON)."""

    name: str  # the dropped file's name (only its extension is used)
    size: int
    enable_copy_mode: bool
    copy_mode_min_size: int
    encode: EncodeOptions
    ladder: list[int] = dataclasses.field(default_factory=list)  # TGFS_LADDER heights
    audio_hls: bool = False  # TGFS_AUDIO_HLS: audio-only files become HLS too
    sidecars: list[Sidecar] = dataclasses.field(default_factory=list)
    # Set when SRC is itself a subtitle file for a published video: only WebVTT is
    # written then.
    subtitles_for: SubtitlesFor | None = None
    # Limits (0 = none): pixels per frame (TGFS_MEDIA_MAX_PIXELS), seconds of media
    # (TGFS_MEDIA_MAX_DURATION). A file over one is kept as an ordinary file, unread.
    max_pixels: int = 0
    max_duration: float = 0.0

    def to_json(self) -> str:
        return _OPTIONS.dump_json(self).decode()

    @classmethod
    def from_json(cls, text: str) -> WorkerOptions:
        return _OPTIONS.validate_json(text)


_OPTIONS = pydantic.TypeAdapter(WorkerOptions)


def _emit(message: messages.Message) -> None:
    sys.stdout.write(messages.encode(message) + "\n")
    sys.stdout.flush()


def _message(folder: Path, r: RenditionOutput, segments: bool = True) -> messages.Rendition:
    fields = dataclasses.asdict(r)
    fields["segments"] = list(r.segments) if segments else []
    return messages.Rendition(dir=folder.name, **fields)


class _Announcer:
    """Tells the daemon about renditions and segments as they are completed on disk."""

    def __init__(self, emit: Callable[[messages.Message], None] = _emit) -> None:
        self.emit = emit
        self.pending: dict[Path, RenditionOutput] = {}  # started, no segment yet
        self.announced: dict[Path, int] = {}  # folder → segments announced so far
        self.next_plan: tuple[str, int] | None = None  # (mode, target) to plan at start

    def plan(self, mode: str, target: int, dirs: list[Path]) -> None:
        """Say which renditions there will be, and their one target duration."""
        self.emit(
            messages.Plan(
                mode=messages.Mode(mode), target_duration=target, dirs=[d.name for d in dirs]
            )
        )

    def started(self, outputs: list[tuple[Path, RenditionOutput]]) -> None:
        if self.next_plan is not None:
            self.plan(*self.next_plan, [folder for folder, _ in outputs])
            self.next_plan = None
        for folder, rendition in outputs:
            if folder not in self.announced:
                self.pending[folder] = rendition

    def finished(self, folder: Path, rendition: RenditionOutput) -> None:
        """A rendition made in full before anything was announced (copy mode)."""
        self._announce(folder, rendition)
        self._segments(folder, rendition.segments)

    def tick(self) -> None:
        for folder, rendition in list(self.pending.items()):
            segments = hls.finished_segments(folder)
            if segments:
                del self.pending[folder]
                rendition.codecs = hls.codecs_of(folder)
                self._announce(folder, rendition)
        for folder in self.announced:
            self._segments(folder, hls.finished_segments(folder))

    def restart(self) -> None:
        self.pending.clear()
        self.announced.clear()
        self.emit(messages.Restart())

    def _announce(self, folder: Path, rendition: RenditionOutput) -> None:
        self.emit(_message(folder, rendition, segments=False))
        self.announced[folder] = 0

    def _segments(self, folder: Path, segments: list[SegmentFile]) -> None:
        for segment in segments[self.announced[folder] :]:
            self.emit(
                messages.Segment(
                    dir=folder.name, name=segment.name, duration=segment.duration, size=segment.size
                )
            )
        self.announced[folder] = max(self.announced[folder], len(segments))


def run(src: Path, workdir: Path, opts: WorkerOptions) -> int:
    if opts.subtitles_for is not None:
        return _sidecar_only(src, workdir, opts.subtitles_for)
    found = probe(src)
    if not found.is_video and opts.audio_hls and found.audio_only:
        return _audio_only(src, workdir, opts, found.duration or 0.0)
    if not found.is_video:
        # A file named like a video that isn't one is worth telling the user about; a PDF
        # is just a PDF.
        looks_like_video = Path(opts.name).suffix.lower() in VIDEO_EXTENSIONS
        _emit(messages.FileResult(reason=found.reason, failed=looks_like_video))
        return 0
    duration = found.duration or 0.0
    if over := _over_limits(found.width, found.height, duration, opts):
        _emit(messages.FileResult(reason=over, failed=True))
        return 0
    copy, why_not = copy_mode_allowed(
        found, opts.size, opts.enable_copy_mode, opts.copy_mode_min_size
    )
    note = "" if copy else why_not
    workdir.mkdir(parents=True, exist_ok=True)
    if make_poster(src, duration, found.rotation, workdir / POSTER):
        _emit(messages.Poster(name=POSTER))

    announcer = _Announcer()

    def report(stage: str):
        def progress(seconds: float) -> None:
            _emit(messages.Progress(stage=stage, seconds=seconds, duration=duration))
            announcer.tick()

        return progress

    encode = dataclasses.replace(
        opts.encode,
        rotation=found.rotation,
        deinterlace=found.interlaced,
        hold_to_end=found.repeats_at_end,
    )
    # The source rendition's height (upright, even); ladder heights below it are added, so
    # nothing is upscaled and no two renditions share a height (their folder names).
    top = (found.width if found.rotation in (90, 270) else found.height) & ~1
    lower = [(workdir / f"r{i + 1}", h) for i, h in enumerate(h for h in opts.ladder if h < top)]
    side = SideTracks(root=workdir)
    renditions, copy, note = make_hls(
        src, workdir / "r0", copy, encode, note, report, lower, side, announcer
    )
    rendition = renditions[0]
    got = sum(s.duration for s in rendition.segments)
    if not rendition.segments:
        raise DamagedMedia("no decodable video frames")
    # The user's original is discarded once its video folder is published, so a video that
    # lost a real part of itself must not be published: keep the file as it is instead.
    if duration and duration - got > max(opts.encode.segment_seconds / 2, 1.0):
        raise DamagedMedia(
            f"only {got:.1f} s of {duration:.1f} s could be decoded (damaged or incomplete file)"
        )
    if rendition.damaged_packets:
        note = "; ".join(
            filter(None, [note, f"{rendition.damaged_packets} damaged packet(s) skipped"])
        )
    start_time = hls.first_pts(workdir / "r0", rendition.segments[0].name)
    for sidecar in opts.sidecars:
        language = sidecar.language
        try:
            cues = subtitles.load_sidecar(Path(sidecar.path))
        except (OSError, subtitles.SubtitleError) as exc:
            note = "; ".join(filter(None, [note, f"subtitle file skipped: {exc}"]))
            continue
        side.subtitles.append(
            subtitles.Track(
                language=language, title=language or "Subtitles", default=False, cues=cues
            )
        )
    # An audio track without a single packet makes no rendition.
    outputs = [(workdir / f"r{i}", r) for i, r in enumerate(renditions)]
    outputs += [(folder, r) for folder, r in side.audio if r.segments]
    outputs += _subtitle_renditions(side.subtitles, rendition.segments, workdir, start_time)
    _emit(
        messages.VideoResult(
            mode=messages.Mode.COPY if copy else messages.Mode.TRANSCODE,
            duration=got,
            source_duration=duration,
            note=note,
            start_time=start_time,
            renditions=[_message(folder, r) for folder, r in outputs],
        )
    )
    return 0


def _over_limits(width: int, height: int, duration: float, opts: WorkerOptions) -> str:
    """Why this video is not made (too many pixels per frame, too long); "" if it is fine.
    Checked before decoding anything: a 60 KB file can declare 16K frames."""
    if opts.max_pixels and width * height > opts.max_pixels:
        return (
            f"{width}x{height} is over TGFS_MEDIA_MAX_PIXELS ({opts.max_pixels} pixels per frame)"
        )
    if opts.max_duration and duration > opts.max_duration:
        return f"{duration:.0f} s is over TGFS_MEDIA_MAX_DURATION ({opts.max_duration:.0f} s)"
    return ""


def _audio_only(src: Path, workdir: Path, opts: WorkerOptions, duration: float) -> int:
    """TGFS_AUDIO_HLS: one audio rendition (AAC copied, anything else encoded to AAC)."""

    def report(seconds: float) -> None:
        _emit(messages.Progress(stage="audio", seconds=seconds, duration=duration))

    rendition = hls.make_audio_only(src, workdir / "r0", opts.encode, report)
    if not rendition.segments:
        raise DamagedMedia("no decodable audio")
    got = sum(s.duration for s in rendition.segments)
    if duration and duration - got > max(opts.encode.segment_seconds / 2, 1.0):
        raise DamagedMedia(
            f"only {got:.1f} s of {duration:.1f} s could be decoded (damaged or incomplete file)"
        )
    _emit(
        messages.VideoResult(
            mode=messages.Mode.AUDIO,
            duration=got,
            note="",
            start_time=0.0,
            renditions=[_message(workdir / "r0", rendition)],
        )
    )
    return 0


def _sidecar_only(src: Path, workdir: Path, timeline: SubtitlesFor) -> int:
    """A subtitle file for a video published before it arrived."""
    try:
        cues = subtitles.load_sidecar(src)
    except subtitles.SubtitleError as exc:
        _emit(messages.FileResult(reason=f"subtitles not added: {exc}", failed=True))
        return 0
    language = timeline.language
    track = subtitles.Track(
        language=language, title=language or "Subtitles", default=False, cues=cues
    )
    video = [SegmentFile("", d, 0) for d in timeline.durations]
    ((folder, rendition),) = _subtitle_renditions([track], video, workdir, timeline.start_time)
    _emit(messages.SubtitlesResult(renditions=[_message(folder, rendition)]))
    return 0


def _subtitle_renditions(
    tracks: list[subtitles.Track], video: list[SegmentFile], workdir: Path, start_time: float
) -> list[tuple[Path, RenditionOutput]]:
    """WebVTT renditions for the text subtitle tracks, cut where the video is cut."""
    out = []
    names: set[str] = set()
    for n, track in enumerate(t for t in tracks if t.cues):
        folder = workdir / f"s{n}"
        written = subtitles.write_segments(
            track.cues, [s.duration for s in video], folder, start_time
        )
        name = hls.unique_name(f"subtitles-{track.language or n + 1}", names)
        out.append(
            (
                folder,
                RenditionOutput(
                    name=name,
                    width=0,
                    height=0,
                    frame_rate=None,
                    codecs="wvtt",
                    init_name="",
                    segments=[SegmentFile(*w) for w in written],
                    kind=messages.TrackKind.SUBTITLES,
                    language=track.language,
                    title=track.title,
                    default=track.default,
                ),
            )
        )
    return out


def make_hls(
    src: Path,
    out: Path,
    copy: bool,
    encode: EncodeOptions,
    note: str,
    report: Callable[[str], ProgressFn],
    lower: Sequence[tuple[Path, int]] = (),
    side: SideTracks | None = None,
    announcer: _Announcer | None = None,
) -> tuple[list[RenditionOutput], bool, str]:
    """The source rendition in `out` (copied if allowed, else transcoded; with fallbacks),
    plus transcoded `lower` renditions (folder, height) whose segments line up with it, and
    the `side` tracks (audio group, subtitle cues). Returns (renditions, copied, note).

    With an `announcer`, renditions and segments are announced as they are completed: a
    copy-mode rendition once it is final (it may be cut again to fit), transcoded ones
    segment by segment."""
    announcer = announcer or _Announcer(emit=lambda message: None)
    notes = [note] if note else []

    def audio_dirs() -> list[Path]:  # known once the first pass has set up its outputs
        return [folder for folder, _ in side.audio] if side else []

    if copy:
        top = None
        try:
            top = make_rendition(src, out, True, encode, report("copy"), side)
            top = _fit_copy(src, out, top, encode, report, notes, side)
        except (av.FFmpegError, ValueError, StopIteration) as exc:
            # Copy mode can trip over timestamps or bitstreams the muxer refuses;
            # re-encoding normalises them. Say so: this one takes longer.
            notes.append(f"copy mode failed ({_reason(exc)}); transcoded instead")
        if top is not None:
            durations = [seg.duration for seg in top.segments]
            announcer.plan(
                "copy",
                target_duration(durations),
                [out, *(folder for folder, _ in lower), *audio_dirs()],
            )
            announcer.finished(out, top)
            for folder, rendition in side.audio if side else []:
                announcer.finished(folder, rendition)
            rest = _transcode(src, list(lower), encode, report, notes, announcer, durations)
            return [top, *rest], True, "; ".join(notes)
        shutil.rmtree(out, ignore_errors=True)
        for folder in audio_dirs():
            shutil.rmtree(folder, ignore_errors=True)
    renditions = _transcode(src, [(out, None), *lower], encode, report, notes, announcer, side=side)
    return renditions, False, "; ".join(notes)


def _transcode(
    src: Path,
    targets: list[tuple[Path, int | None]],
    encode: EncodeOptions,
    report: Callable[[str], ProgressFn],
    notes: list[str],
    announcer: _Announcer,
    durations: list[float] | None = None,
    side: SideTracks | None = None,
) -> list[RenditionOutput]:
    if not targets:
        return []
    if durations is None:
        # Every segment is cut at the first frame at or after n × segment_seconds.
        announcer.next_plan = ("transcode", target_duration([encode.segment_seconds]))
    try:
        return make_ladder(
            src, targets, encode, report("transcode"), durations, side, announcer.started
        )
    except av.FFmpegError as exc:
        if encode.encoder == SOFTWARE:
            raise
        # The hardware encoder passed its test but failed on this job: software it is.
        for folder, _ in targets:
            shutil.rmtree(folder, ignore_errors=True)
        for folder, _ in side.audio if side else []:
            shutil.rmtree(folder, ignore_errors=True)
        notes.append(f"{encode.encoder} failed ({_reason(exc)}); encoded with {SOFTWARE}")
        announcer.restart()
        return _transcode(
            src,
            targets,
            dataclasses.replace(encode, encoder=SOFTWARE),
            report,
            notes,
            announcer,
            durations,
            side,
        )


def _fit_copy(
    src: Path,
    out: Path,
    rendition: RenditionOutput,
    encode: EncodeOptions,
    report: Callable[[str], ProgressFn],
    notes: list[str],
    side: SideTracks | None = None,
) -> RenditionOutput | None:
    """Copy mode can only cut at the source's keyframes, so a segment may outgrow
    TELEGRAM_MAX_FILE_SIZE. Cut again with a shorter segment length, so the muxer cuts at
    earlier keyframes, until every segment fits; None if that stops helping (one keyframe
    interval alone is over the cap: then the caller transcodes)."""
    cap = encode.max_segment_bytes
    biggest = max((seg.size for seg in rendition.segments), default=0)
    if not cap or biggest <= cap:
        return rendition
    seconds = encode.segment_seconds
    for _ in range(_RECUTS):
        seconds *= cap / biggest * 0.9
        shutil.rmtree(out, ignore_errors=True)
        shorter = dataclasses.replace(encode, segment_seconds=max(seconds, 0.001))
        rendition = make_rendition(src, out, True, shorter, report("copy"), side)
        before, biggest = biggest, max((seg.size for seg in rendition.segments), default=0)
        if biggest <= cap:
            notes.append(
                f"segments cut shorter than {encode.segment_seconds:g} s to stay "
                f"under TELEGRAM_MAX_FILE_SIZE ({cap / 2**20:g} MiB)"
            )
            return rendition
        if biggest >= before:
            break  # already one keyframe interval per segment
    notes.append(
        "a keyframe interval of the source is over TELEGRAM_MAX_FILE_SIZE "
        f"({cap / 2**20:g} MiB); transcoded instead"
    )
    return None


def _reason(exc: BaseException) -> str:
    """An error message without the file paths FFmpeg likes to repeat."""
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def main(argv: list[str]) -> int:
    src, workdir, options = Path(argv[0]), Path(argv[1]), WorkerOptions.from_json(argv[2])
    try:
        return run(src, workdir, options)
    except DamagedMedia as exc:  # already worded for the user
        # FFmpeg's HLS muxer logs a failed segment write and carries on, so a full disk
        # looks like a file with nothing decodable in it. The disk says which it was.
        _emit(
            messages.Failure(
                message=str(exc),
                kind=messages.FailureKind.SPACE
                if _disk_full(workdir)
                else messages.FailureKind.MEDIA,
            )
        )
        return 1
    except MemoryError:
        _emit(messages.Failure(message="out of memory", kind=messages.FailureKind.MEMORY))
        return 1
    except Exception as exc:  # anything else: report it as this job's failure, in one line
        _emit(
            messages.Failure(
                message=f"{type(exc).__name__}: {_reason(exc)}", kind=_resource_kind(exc, workdir)
            )
        )
        return 1


# Free bytes below which the work folder's disk counts as full when something fails there.
_FULL_BELOW = 2**20


def _disk_full(workdir: Path) -> bool:
    try:
        st = os.statvfs(workdir)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BELOW


def _resource_kind(exc: BaseException, workdir: Path) -> messages.FailureKind:
    """SPACE or MEMORY when the machine, not the file, is the problem (the daemon then
    tries again later, or reports the memory limit); MEDIA otherwise."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or _disk_full(workdir):
        return messages.FailureKind.SPACE
    if code == errno.ENOMEM or _near_memory_cap():
        return messages.FailureKind.MEMORY
    return messages.FailureKind.MEDIA


def _near_memory_cap() -> bool:
    """Did this process reach its address-space cap? Encoders report a failed allocation
    in their own words (libx264: "Generic error in an external library"), so the
    process's peak is the reliable witness."""
    cap, _ = resource.getrlimit(resource.RLIMIT_AS)
    if cap == resource.RLIM_INFINITY:
        return False
    try:
        with open("/proc/self/status") as status:
            peak = next(
                int(line.split()[1]) * 1024 for line in status if line.startswith("VmPeak:")
            )
    except (OSError, StopIteration, ValueError):
        return False
    return peak >= cap * 0.9


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
