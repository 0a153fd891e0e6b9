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
from pathlib import Path

import av

from tgfs.media.hls import EncodeOptions, make_rendition
from tgfs.media.probe import VIDEO_EXTENSIONS, copy_mode_allowed, probe


class DamagedMedia(Exception):
    """The file is a video, but too much of it cannot be decoded to publish it."""


@dataclasses.dataclass
class WorkerOptions:
    name: str  # the dropped file's name (only its extension is used)
    size: int
    enable_copy_mode: bool
    copy_mode_min_size: int
    encode: EncodeOptions

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

    try:
        rendition = make_rendition(src, workdir / "r0", copy, opts.encode,
                                   report("copy" if copy else "transcode"))
    except (av.FFmpegError, ValueError, StopIteration) as exc:
        if not copy:
            raise
        # Copy mode can trip over timestamps or bitstreams the muxer refuses; re-encoding
        # normalises them. Say so, so the user knows why this one took longer.
        shutil.rmtree(workdir / "r0", ignore_errors=True)
        note = f"copy mode failed ({_reason(exc)}); transcoded instead"
        copy = False
        rendition = make_rendition(src, workdir / "r0", False, opts.encode,
                                   report("transcode"))
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
        renditions=[{"dir": "r0", **dataclasses.asdict(rendition)}],
    )
    return 0


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
