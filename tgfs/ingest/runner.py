"""The ingest runner: takes queued jobs from the catalog and sees each one through.

For each dropped file:

    probe + copy/transcode (child process)  ──►  upload HLS files  ──►  publish folder
                 │ not a video / media failed
                 └────────────────────────────►  store as ordinary file

What can go wrong, and what happens:
- the media step fails (hostile file, decoder error, crash): the file is stored as an
  ordinary file, byte for byte, and the job is marked failed with the reason;
- the store fails (disk full, a bot down): the job goes back to the queue with a growing
  delay; the file stays readable from the spool meanwhile;
- the file is deleted or rewritten while its job runs: the results are thrown away (their
  store parts are queued for deletion) and the rewritten file gets a job of its own;
- the daemon stops: running jobs restart from scratch on the next start.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tgfs.catalog import Job, Node, blobs, jobs, library, tree
from tgfs.config import Settings
from tgfs.ingest.media_process import MediaFailed, run_worker
from tgfs.ingest.progress import Progress
from tgfs.media import encoders
from tgfs.media.hls import EncodeOptions
from tgfs.media.playlists import bandwidths
from tgfs.media.probe import VIDEO_EXTENSIONS
from tgfs.media.worker import WorkerOptions
from tgfs.spool import Spool
from tgfs.store.base import BlobStore, PartRef, StoreError
from tgfs.store.parts import Upload, put_files

log = logging.getLogger(__name__)

# Store failures are retried after 30 s, doubling up to an hour: long enough to ride out a
# Telegram flood wait or an admin freeing disk space, short enough to notice the fix soon.
RETRY_FIRST = 30.0
RETRY_MAX = 3600.0

# Called after the tree changed under `parent_id`: the names to drop from the kernel's cache.
InvalidateFn = Callable[[int, list[str]], None]


class _Discarded(Exception):
    """The job's file was deleted or rewritten while the job ran."""


class IngestRunner:
    def __init__(self, settings: Settings, store: BlobStore, spool: Spool,
                 invalidate: InvalidateFn) -> None:
        self.settings = settings
        self.store = store
        self.spool = spool
        self.invalidate = invalidate
        self.progress: dict[int, Progress] = {}  # running jobs only
        self._wake = trio.Event()
        # The H.264 encoder for transcodes, decided at start (see tgfs.media.encoders).
        self.encoder = encoders.SOFTWARE
        self.encoder_note: str | None = None

    def wake(self) -> None:
        """Something was queued: look at the queue now."""
        self._wake.set()

    async def run(self) -> None:
        s = self.settings
        self.encoder, self.encoder_note = await trio.to_thread.run_sync(
            encoders.choose, s.enable_hardware_acceleration, s.preferred_encoder,
            s.cache_dir)
        log.info("ingest: transcodes use %s%s", self.encoder,
                 f" ({self.encoder_note})" if self.encoder_note else "")
        requeued = jobs.requeue_interrupted()
        if requeued:
            log.info("ingest: restarting %d job(s) interrupted by the last shutdown", requeued)
        limiter = trio.CapacityLimiter(self.settings.ingest_jobs)
        async with trio.open_nursery() as nursery:
            while True:
                self._wake = trio.Event()
                while limiter.available_tokens and (
                    job := jobs.next_ready(exclude=set(self.progress))
                ):
                    self.progress[job.id] = Progress(size=job.size)
                    await limiter.acquire_on_behalf_of(job.id)
                    nursery.start_soon(self._run_one, job, limiter)
                timeout = 60.0
                if (when := jobs.next_wakeup()) is not None:
                    timeout = max(0.5, min(timeout, when - time.time()))
                with trio.move_on_after(timeout):
                    await self._wake.wait()

    async def _run_one(self, job: Job, limiter: trio.CapacityLimiter) -> None:
        try:
            await self._attempt(job)
        except Exception:
            # A bug, not bad input. The file stays in the spool (nothing is lost); the job
            # is left failed so the queue moves on. Nothing here may raise: an exception
            # escaping this task would end the mount.
            log.exception("job %d (%s): internal error", job.id, job.path)
            with contextlib.suppress(Exception):
                jobs.mark(job, jobs.FAILED, error="internal error (see the daemon log)")
        finally:
            shutil.rmtree(self.spool.work_dir(job.id), ignore_errors=True)
            self.progress.pop(job.id, None)
            limiter.release_on_behalf_of(job.id)
            self.wake()

    async def _attempt(self, job: Job) -> None:
        try:
            await self._process(job)
        except StoreError as exc:
            if self._live_node(job) is None:
                self._discarded(job)  # its file went away mid-upload: that was the cause
                return
            delay = min(RETRY_FIRST * 2**job.attempts, RETRY_MAX)
            log.warning("job %d (%s): store failed, retrying in %.0f s: %s",
                        job.id, job.path, delay, exc)
            jobs.retry_later(job, f"store: {exc} (retrying in {delay:.0f} s)", delay)
        except _Discarded:
            self._discarded(job)

    @staticmethod
    def _discarded(job: Job) -> None:
        log.info("job %d (%s): file deleted or rewritten meanwhile; result dropped",
                 job.id, job.path)
        jobs.mark(job, jobs.DONE, outcome="discarded")

    async def _process(self, job: Job) -> None:
        jobs.mark(job, jobs.RUNNING)
        progress = self.progress[job.id]
        node = self._current_node(job)
        if job.size == 0:
            empty_video = Path(job.path).suffix.lower() in VIDEO_EXTENSIONS
            self._finish_as_file(job, node, [], "empty file; kept as an ordinary file"
                                 if empty_video else None)
            return
        progress.enter("probe")
        workdir = self.spool.work_dir(job.id)
        try:
            result = await run_worker(Path(job.spool), workdir, self._worker_options(job),
                                      lambda event: self._on_media_progress(progress, event))
        except MediaFailed as exc:
            result = {"kind": "file", "reason": str(exc), "failed": True}
        if result["kind"] == "video":
            await self._publish_video(job, progress, workdir, result)
            return
        failed = result.get("failed", False)
        error = f"{result['reason']}; kept as an ordinary file" if failed else None
        if failed:
            log.warning("job %d (%s): %s", job.id, job.path, error)
        progress.enter("store", job.size)
        upload = Upload(Path(job.spool), job.size, f"file-{job.id}")
        parts = (await self._put([upload], progress))[upload.path]
        self._finish_as_file(job, self._current_node(job, parts), parts, error)

    def _worker_options(self, job: Job) -> WorkerOptions:
        s = self.settings
        return WorkerOptions(
            name=job.path, size=job.size, enable_copy_mode=s.enable_copy_mode,
            ladder=list(s.ladder),
            copy_mode_min_size=s.copy_mode_min_size,
            encode=EncodeOptions(segment_seconds=s.segment_seconds,
                                 x264_preset=s.x264_preset, x264_crf=s.x264_crf,
                                 encoder=self.encoder, max_segment_bytes=s.part_size),
        )

    @staticmethod
    def _on_media_progress(progress: Progress, event: dict[str, Any]) -> None:
        if progress.stage != event["stage"]:
            progress.enter(event["stage"], event.get("duration") or 0.0)
        progress.done = event["seconds"]

    @staticmethod
    def _live_node(job: Job) -> Node | None:
        """The job's file as it is now; None if it is gone or has new content."""
        node = tree.get(job.node_id) if job.node_id else None
        return node if node is not None and node.spool == job.spool else None

    def _current_node(self, job: Job, uploaded: list[PartRef] | None = None) -> Node:
        """The job's file as it is now; _Discarded if it is gone or has new content."""
        node = self._live_node(job)
        if node is None:
            if uploaded:
                blobs.queue_locations(p.location for p in uploaded)
            raise _Discarded
        return node

    async def _put(self, uploads: list[Upload], progress: Progress
                   ) -> dict[Path, list[PartRef]]:
        """Store files; if that fails or is cancelled, what got stored is queued for
        deletion (synchronously, so even a cancelled upload leaves nothing behind)."""
        stored: list[PartRef] = []

        def landed(part: PartRef) -> None:
            stored.append(part)
            progress.done += part.size

        try:
            return await put_files(self.store, uploads, self.settings.part_size, landed)
        except BaseException:
            blobs.queue_locations(p.location for p in stored)
            raise

    def _finish_as_file(self, job: Job, node: Node, parts: list[PartRef],
                        error: str | None) -> None:
        if parts:
            node.blob = blobs.add(job.size, parts)
        node.spool = None
        node.save()
        Spool.discard(job.spool)
        jobs.mark(job, jobs.FAILED if error else jobs.DONE, outcome="file", error=error)
        log.info("job %d (%s): stored as an ordinary file", job.id, job.path)

    async def _publish_video(self, job: Job, progress: Progress, workdir: Path,
                             result: dict[str, Any]) -> None:
        sizes = {path: path.stat().st_size
                 for r in result["renditions"]
                 for path in (workdir / r["dir"] / name
                              for name in [r["init_name"], *(s["name"] for s in r["segments"])])}
        progress.enter("upload", sum(sizes.values()))
        stored = await self._put([Upload(path, size, f"job{job.id}-{index}")
                                  for index, (path, size) in enumerate(sizes.items())],
                                 progress)
        uploaded = {path: (sizes[path], parts) for path, parts in stored.items()}
        all_parts = [p for parts in stored.values() for p in parts]
        source = self._current_node(job, all_parts)
        old_parent, old_name = source.parent_id, source.name
        renditions = [self._stored_rendition(workdir, r, uploaded)
                      for r in result["renditions"]]
        folder = library.publish(source, result["mode"], renditions)
        Spool.discard(job.spool)
        note = result.get("note") or None
        jobs.mark(job, jobs.DONE, outcome=f"video ({result['mode']})", error=note)
        self.invalidate(old_parent, [old_name])
        log.info("job %d (%s): published %s (%s, %d segment(s))%s", job.id, job.path,
                 tree.path_of(folder), result["mode"],
                 sum(len(r.segments) for r in renditions), f" — {note}" if note else "")

    @staticmethod
    def _stored_rendition(workdir: Path, r: dict[str, Any],
                          uploaded: dict[Path, tuple[int, list[PartRef]]]
                          ) -> library.StoredRendition:
        folder = workdir / r["dir"]

        def stored(name: str, duration: float = 0.0) -> library.StoredFile:
            size, parts = uploaded[folder / name]
            return library.StoredFile(name=name, size=size, parts=parts, duration=duration)

        segments = [stored(s["name"], s["duration"]) for s in r["segments"]]
        peak, average = bandwidths((s.size, s.duration) for s in segments)
        return library.StoredRendition(
            name=r["name"], width=r["width"], height=r["height"],
            frame_rate=r["frame_rate"], codecs=r["codecs"], bandwidth=peak,
            average_bandwidth=average, init=stored(r["init_name"]), segments=segments,
        )
