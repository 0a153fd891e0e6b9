"""The media child process: probe one spooled file and, if it is a video, write its HLS.

Run as `python -m tgfs.media.worker SRC WORKDIR OPTIONS_JSON`. It never touches the catalog
or the store; it talks to the daemon through JSON lines on stdout:

    {"event": "progress", "stage": "copy"|"transcode", "seconds": 12.5, "duration": 60.0}
    {"event": "result", "kind": "file", "reason": "no video stream", "failed": false}
    {"event": "result", "kind": "video", "mode": "copy", "duration": 60.0, "note": "",
     "renditions": [{"name": "720p", "dir": "720p", …, "segments": [...]}]}
    {"event": "error", "message": "…"}

Being a separate process is the point: FFmpeg decoding a hostile file may crash or hang, and
CPU-heavy encoding must not hold the daemon's GIL while FUSE requests wait. The daemon
treats a missing result (crash, kill) as a failed job.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import av

from tgfs.media.encoders import SOFTWARE
from tgfs.media.hls import (
    EncodeOptions,
    ProgressFn,
    RenditionOutput,
    make_ladder,
    make_rendition,
)
from tgfs.media.probe import VIDEO_EXTENSIONS, copy_mode_allowed, probe

_RECUTS = 4  # copy-mode attempts at shorter segments before transcoding instead


class DamagedMedia(Exception):
    """The file is a video, but too much of it cannot be decoded to publish it."""


@dataclasses.dataclass
class WorkerOptions:
    name: str  # the dropped file's name (only its extension is used)
    size: int
    enable_copy_mode: bool
    copy_mode_min_size: int
    encode: EncodeOptions
    ladder: list[int] = dataclasses.field(default_factory=list)  # TGFS_LADDER heights

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerOptions:
        raw = json.loads(text)
        raw["encode"] = EncodeOptions(**raw["encode"])
        return cls(**raw)


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def run(src: Path, workdir: Path, opts: WorkerOptions) -> int:
    found = probe(src)
    if not found.is_video:
        # A file named like a video that isn't one is worth telling the user about; a PDF
        # is just a PDF.
        looks_like_video = Path(opts.name).suffix.lower() in VIDEO_EXTENSIONS
        _emit(event="result", kind="file", reason=found.reason, failed=looks_like_video)
        return 0
    duration = found.duration or 0.0
    copy, why_not = copy_mode_allowed(found, opts.size, opts.enable_copy_mode,
                                      opts.copy_mode_min_size)
    note = "" if copy else why_not

    def report(stage: str):
        return lambda seconds: _emit(event="progress", stage=stage, seconds=seconds,
                                     duration=duration)

    encode = dataclasses.replace(opts.encode, rotation=found.rotation,
                                 deinterlace=found.interlaced)
    # The source rendition's height (upright, even); ladder heights below it are added, so
    # nothing is upscaled and no two renditions share a height (their folder names).
    top = (found.width if found.rotation in (90, 270) else found.height) & ~1
    lower = [(workdir / f"r{i + 1}", h)
             for i, h in enumerate(h for h in opts.ladder if h < top)]
    renditions, copy, note = make_hls(src, workdir / "r0", copy, encode, note, report, lower)
    rendition = renditions[0]
    got = sum(s.duration for s in rendition.segments)
    if not rendition.segments:
        raise DamagedMedia("no decodable video frames")
    # The user's original is discarded once its video folder is published, so a video that
    # lost a real part of itself must not be published: keep the file as it is instead.
    if duration and duration - got > max(opts.encode.segment_seconds / 2, 1.0):
        raise DamagedMedia(f"only {got:.1f} s of {duration:.1f} s could be decoded "
                           "(damaged or incomplete file)")
    if rendition.damaged_packets:
        note = "; ".join(filter(None, [note, f"{rendition.damaged_packets} damaged "
                                       "packet(s) skipped"]))
    _emit(
        event="result",
        kind="video",
        mode="copy" if copy else "transcode",
        duration=got,
        note=note,
        renditions=[{"dir": f"r{i}", **dataclasses.asdict(r)}
                    for i, r in enumerate(renditions)],
    )
    return 0


def make_hls(src: Path, out: Path, copy: bool, encode: EncodeOptions, note: str,
             report: Callable[[str], ProgressFn],
             lower: Sequence[tuple[Path, int]] = ()) -> tuple[list[RenditionOutput], bool, str]:
    """The source rendition in `out` (copied if allowed, else transcoded; with fallbacks),
    plus transcoded `lower` renditions (folder, height) whose segments line up with it.
    Returns (renditions, copied, note for the user)."""
    notes = [note] if note else []
    if copy:
        top = None
        try:
            top = make_rendition(src, out, True, encode, report("copy"))
            top = _fit_copy(src, out, top, encode, report, notes)
        except (av.FFmpegError, ValueError, StopIteration) as exc:
            # Copy mode can trip over timestamps or bitstreams the muxer refuses;
            # re-encoding normalises them. Say so: this one takes longer.
            notes.append(f"copy mode failed ({_reason(exc)}); transcoded instead")
        if top is not None:
            durations = [seg.duration for seg in top.segments]
            rest = _transcode(src, list(lower), encode, report, notes, durations)
            return [top, *rest], True, "; ".join(notes)
        shutil.rmtree(out, ignore_errors=True)
    renditions = _transcode(src, [(out, None), *lower], encode, report, notes)
    return renditions, False, "; ".join(notes)


def _transcode(src: Path, targets: list[tuple[Path, int | None]], encode: EncodeOptions,
               report: Callable[[str], ProgressFn], notes: list[str],
               durations: list[float] | None = None) -> list[RenditionOutput]:
    if not targets:
        return []
    try:
        return make_ladder(src, targets, encode, report("transcode"), durations)
    except av.FFmpegError as exc:
        if encode.encoder == SOFTWARE:
            raise
        # The hardware encoder passed its test but failed on this job: software it is.
        for folder, _ in targets:
            shutil.rmtree(folder, ignore_errors=True)
        notes.append(f"{encode.encoder} failed ({_reason(exc)}); encoded with {SOFTWARE}")
        return make_ladder(src, targets, dataclasses.replace(encode, encoder=SOFTWARE),
                           report("transcode"), durations)


def _fit_copy(src: Path, out: Path, rendition: RenditionOutput, encode: EncodeOptions,
              report: Callable[[str], ProgressFn], notes: list[str]
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
        rendition = make_rendition(src, out, True, shorter, report("copy"))
        before, biggest = biggest, max((seg.size for seg in rendition.segments), default=0)
        if biggest <= cap:
            notes.append(f"segments cut shorter than {encode.segment_seconds:g} s to stay "
                         f"under TELEGRAM_MAX_FILE_SIZE ({cap / 2**20:g} MiB)")
            return rendition
        if biggest >= before:
            break  # already one keyframe interval per segment
    notes.append("a keyframe interval of the source is over TELEGRAM_MAX_FILE_SIZE "
                 f"({cap / 2**20:g} MiB); transcoded instead")
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
        _emit(event="error", message=str(exc))
        return 1
    except Exception as exc:  # anything else: report it as this job's failure, in one line
        _emit(event="error", message=f"{type(exc).__name__}: {_reason(exc)}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
