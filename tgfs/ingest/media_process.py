"""Run the media child process (`tgfs.media.worker`) for one job and read its messages
(`tgfs.media.messages`)."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tgfs.config import Settings, format_size
from tgfs.media import messages
from tgfs.media.hls import EncodeOptions
from tgfs.media.messages import (
    Announcement,
    Failure,
    FailureKind,
    FileResult,
    Progress,
    Result,
    SubtitlesResult,
    VideoResult,
)
from tgfs.media.worker import WorkerOptions

RESULTS = (FileResult, VideoResult, SubtitlesResult)  # Result, for isinstance

log = logging.getLogger(__name__)

# The worker reports at least every 0.5 s while it works; this long without a word means a
# decoder is stuck on a hostile file. Kill it and fail the job rather than wedge the queue.
STALL_TIMEOUT = 300.0
_STDERR_KEEP = 4000  # bytes of the child's stderr kept to explain a crash
# How the child is started; a module constant so tests can substitute a crashing child.
WORKER_COMMAND = [sys.executable, "-m", "tgfs.media.worker"]


class MediaFailed(Exception):
    """The media step failed; the message is meant for the user (status output)."""

    def __init__(self, message: str, kind: FailureKind = FailureKind.MEDIA) -> None:
        super().__init__(message)
        self.kind = kind


def worker_options(
    settings: Settings, name: str, size: int, encoder: str, **extra: Any
) -> WorkerOptions:
    """What the media child is told for a file: the mount's jobs and `tgfs check` alike."""
    s = settings
    return WorkerOptions(
        name=name,
        size=size,
        enable_copy_mode=s.enable_copy_mode,
        ladder=list(s.ladder),
        audio_hls=s.audio_hls,
        copy_mode_min_size=s.copy_mode_min_size,
        max_pixels=s.media_max_pixels,
        max_duration=s.media_max_duration,
        encode=EncodeOptions(
            segment_seconds=s.segment_seconds,
            x264_preset=s.x264_preset,
            x264_crf=s.x264_crf,
            encoder=encoder,
            max_segment_bytes=s.part_size,
        ),
        **extra,
    )


def _limit_child(memory: int) -> None:
    """In the child, before exec: lower priority (the mount's own requests should win the
    CPU over a transcode) and cap its address space, so a hostile file cannot take the
    machine's memory (TGFS_MEDIA_MEMORY)."""
    os.nice(10)
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


async def run_worker(
    src: Path,
    workdir: Path,
    options: WorkerOptions,
    on_message: Callable[[Progress | Announcement], None],
    memory: int = 0,
) -> Result:
    """Run the worker to completion; returns its result or raises MediaFailed. Every other
    message (progress, announcements) goes to `on_message` as it comes. `memory` caps the
    child's address space (0: no cap)."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [*WORKER_COMMAND, str(src), str(workdir), options.to_json()]
    proc = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: _limit_child(memory),
        # glibc gives each thread a malloc arena with 64 MiB of address space; under an
        # address-space cap that is room taken from real work.
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
    )
    last: list[Result | Failure] = []
    stderr = bytearray()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, proc.stderr, stderr)
            with trio.CancelScope() as watchdog:
                watchdog.deadline = trio.current_time() + STALL_TIMEOUT
                async for line in _lines(proc.stdout):
                    watchdog.deadline = trio.current_time() + STALL_TIMEOUT
                    try:
                        message = messages.decode(line)
                    except ValueError as exc:
                        proc.kill()
                        raise MediaFailed(str(exc)[:500]) from None
                    if isinstance(message, (*RESULTS, Failure)):
                        last.append(message)
                    else:
                        on_message(message)
            if watchdog.cancelled_caught:
                proc.kill()
                nursery.cancel_scope.cancel()
        if watchdog.cancelled_caught:
            raise MediaFailed(f"media process made no progress for {STALL_TIMEOUT:g} s")
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    for word in last:
        if not isinstance(word, Failure):
            return word
        reason = word.message
        if word.kind is FailureKind.MEMORY and memory:
            reason = (
                f"the media process needed more memory than TGFS_MEDIA_MEMORY "
                f"({format_size(memory)})"
            )
        raise MediaFailed(reason, word.kind)
    raise MediaFailed(
        _crash_reason(code, bytes(stderr)), FailureKind.KILLED if code < 0 else FailureKind.MEDIA
    )


def _crash_reason(code: int, stderr: bytes) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = f"media process crashed ({name})"
    else:
        why = f"media process exited with status {code} and no result"
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    log.warning("%s; last stderr line: %s", why, tail[0])
    return why


async def _lines(stream: trio.abc.ReceiveStream):
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


async def _drain(stream: trio.abc.ReceiveStream, keep: bytearray) -> None:
    async for chunk in stream:
        keep.extend(chunk)
        del keep[:-_STDERR_KEEP]
