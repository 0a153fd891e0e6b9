"""The ingest runner: takes queued jobs from the catalog and sees each one through.

For each dropped file:

    probe + copy/transcode (child process)  ──►  upload HLS files  ──►  publish folder
                 │        (segments are stored and published while the worker goes on:
                 │         the folder is playable early, see tgfs.ingest.publisher)
                 │ not a video / media failed
                 └────────────────────────────►  store as ordinary file

What can go wrong, and what happens:
- the media step fails because of the file (hostile file, decoder error, a crash, over a
  TGFS_MEDIA_* limit): a half-published video is withdrawn, the file is stored as an
  ordinary file, byte for byte, and the job is marked failed with the reason. Only the
  media pipeline judges a file;
- the machine fails, not the file (the store: a full disk, a bot down; the spool full
  during the media step; the media process killed from outside, up to MEDIA_KILLS times):
  the job goes back to the queue with a growing delay and says why; the file stays
  readable from the spool meanwhile;
- the file is deleted or rewritten while its job runs (or is open with new content on its
  way): the results are thrown away (their store parts are queued for deletion) and the
  new content gets a job of its own;
- the file has the bytes of a video already in its folder (a second `rsync`): it is
  dropped, and the job says so;
- the daemon stops or dies: running jobs restart from scratch on the next start (a
  half-published video is removed first, and parts stored for them are deleted).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tgfs.catalog import Job, Node, blobs, db, jobs, library, tree
from tgfs.catalog.schema import display
from tgfs.config import Settings
from tgfs.ingest.media_process import FailureKind, MediaFailed, run_worker, worker_options
from tgfs.ingest.progress import Progress, Stage
from tgfs.ingest.publisher import VideoPublisher
from tgfs.ingest.sidecars import SidecarSubtitles
from tgfs.media import encoders, messages, subtitles
from tgfs.media.probe import VIDEO_EXTENSIONS
from tgfs.media.worker import WorkerOptions
from tgfs.spool import Spool
from tgfs.store.base import BlobStore, PartRef, StoreError
from tgfs.store.parts import Upload, put_files, read_part
from tgfs.store.sealing import sealer_for
from tgfs.store.slots import Priority

log = logging.getLogger(__name__)

# Jobs stopped by the store or a full disk are retried after TGFS_RETRY_DELAY (30 s by
# default), doubling up to an hour: long enough to ride out a Telegram flood wait or an
# admin freeing disk space, short enough to notice the fix soon.
RETRY_MAX = 3600.0
# A media process killed by a signal (the OOM killer, an admin) is run again this many
# times before the file is judged: a kill says little about the file, but a file that
# crashes its decoder every time must not be retried forever.
MEDIA_KILLS = 2

# Called after the tree changed under `parent_id`: the names to drop from the kernel's cache.
InvalidateFn = Callable[[int, list[str]], None]
# How often a host looks for store-first jobs of hosts that are gone (s): one cheap query,
# and a job of a dead host waits at most this long for another.
ABANDONED_CHECK = 30.0
# Fetching a stored original: bytes per request, and parts (each on its bot) at once.
_FETCH_STEP = 8 * 2**20
_FETCH_PARTS = 4


class Doorbell:
    """Rung when a job is queued (a file accepted at close/fsync): wakes the runner. Made
    before the runner and the write sessions, so neither needs the other to exist."""

    def __init__(self) -> None:
        self._rung = trio.Event()

    def ring(self) -> None:
        self._rung.set()

    def reset(self) -> None:
        """Before looking at the queue: a ring from now on is news."""
        self._rung = trio.Event()

    async def wait(self) -> None:
        await self._rung.wait()


class _Discarded(Exception):
    """The job's file was deleted or rewritten while the job ran."""


class _TryLater(Exception):
    """The machine, not the file, stopped the job (a full spool, a killed media process):
    the job goes back to the queue with a growing delay."""


class IngestRunner(SidecarSubtitles):
    def __init__(
        self,
        settings: Settings,
        store: BlobStore,
        spool: Spool,
        invalidate: InvalidateFn,
        open_for_writing: Callable[[], set[int]] = set,
        freed: Callable[[], None] = lambda: None,
        doorbell: Doorbell | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sealer = sealer_for(settings)
        self.spool = spool
        self.invalidate = invalidate
        # Inodes open for writing: their accepted version waits (a newer one is coming).
        self.open_for_writing = open_for_writing
        self.freed = freed  # store parts were queued for deletion: wake the collector
        self.progress: dict[int, Progress] = {}  # running jobs only
        self.doorbell = doorbell or Doorbell()
        self.store_first = settings.ingest == "store-first"
        self.makes_videos = settings.ingest_jobs > 0
        # The H.264 encoder for transcodes, decided at start (see tgfs.media.encoders).
        self.encoder = encoders.SOFTWARE
        self.encoder_note: str | None = None

    def wake(self) -> None:
        """Something was queued: look at the queue now."""
        self.doorbell.ring()

    async def run(self) -> None:
        s = self.settings
        self.encoder, self.encoder_note = await trio.to_thread.run_sync(
            encoders.choose, s.enable_hardware_acceleration, s.preferred_encoder, s.cache_dir
        )
        log.info(
            "ingest: transcodes use %s%s",
            self.encoder,
            f" ({self.encoder_note})" if self.encoder_note else "",
        )
        if half_made := library.incomplete_videos():
            for video_id in half_made:
                library.remove_video(video_id)  # its job starts over below
            log.info(
                "ingest: removed %d video(s) left half-made by the last shutdown", len(half_made)
            )
        requeued = jobs.requeue_interrupted()
        if requeued:
            log.info("ingest: restarting %d job(s) interrupted by the last shutdown", requeued)
        # (A host that makes no videos still stores what is dropped on it, one at a time.)
        limiter = trio.CapacityLimiter(max(1, self.settings.ingest_jobs))
        looked_for_abandoned = -ABANDONED_CHECK
        async with trio.open_nursery() as nursery:
            while True:
                self.doorbell.reset()
                if (
                    self.store_first
                    and trio.current_time() > looked_for_abandoned + ABANDONED_CHECK
                ):
                    looked_for_abandoned = trio.current_time()
                    jobs.free_abandoned()
                while limiter.available_tokens and (job := self._next_job()):
                    self.progress[job.id] = Progress(size=job.size)
                    await limiter.acquire_on_behalf_of(job.id)
                    nursery.start_soon(self._run_one, job, limiter)
                timeout = ABANDONED_CHECK if self.store_first else 60.0
                if (when := jobs.next_wakeup(self.makes_videos)) is not None:
                    timeout = max(0.5, min(timeout, when - time.time()))
                with trio.move_on_after(timeout):
                    await self.doorbell.wait()

    def _next_job(self) -> Job | None:
        """This host's next job; else, with store-first ingest, one claimed from any host."""
        job = jobs.next_ready(self.progress, self.open_for_writing(), self.makes_videos)
        if job is None and self.store_first and self.makes_videos:
            job = jobs.claim()
        return job

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
            delay = self._retry_delay(job)
            log.warning(
                "job %d (%s): store failed, retrying in %.0f s: %s", job.id, job.path, delay, exc
            )
            jobs.retry_later(job, f"store: {exc} (retrying in {delay:.0f} s)", delay)
        except _Discarded:
            self._discarded(job)
        except _TryLater as exc:
            delay = self._retry_delay(job)
            log.warning("job %d (%s): %s; retrying in %.0f s", job.id, job.path, exc, delay)
            jobs.retry_later(job, f"{exc} (retrying in {delay:.0f} s)", delay)

    def _retry_delay(self, job: Job) -> float:
        return min(self.settings.retry_delay * 2**job.attempts, RETRY_MAX)

    @staticmethod
    def _resource_trouble(job: Job, exc: MediaFailed) -> None:
        """Raise _TryLater if the media step failed for want of resources, not because of
        the file: a full spool always; a kill from outside (the OOM killer, an admin) a
        bounded number of times before the file is judged."""
        if exc.kind is FailureKind.SPACE:
            raise _TryLater(f"no space left for the media work folder ({exc})")
        if exc.kind is FailureKind.KILLED and job.attempts < MEDIA_KILLS:
            raise _TryLater(f"{exc}: killed from outside")

    @staticmethod
    def _discarded(job: Job) -> None:
        log.info(
            "job %d (%s): file deleted or rewritten meanwhile; result dropped", job.id, job.path
        )
        jobs.mark(job, jobs.DONE, outcome="discarded")
        if job.spool not in jobs.live_spools():
            Spool.discard(job.spool)

    async def _process(self, job: Job) -> None:
        node = self._current_node(job)
        # Its name now (a tool may have renamed it since it was written).
        jobs.mark(job, jobs.RUNNING, path=display(tree.path_of(node)))
        progress = self.progress[job.id]
        if job.size == 0:
            empty_video = Path(job.path).suffix.lower() in VIDEO_EXTENSIONS
            self._finish_as_file(
                job, node, [], "empty file; kept as an ordinary file" if empty_video else None
            )
            return
        first = self.store_first and job.source_blob is None
        if (
            first
            and not subtitles.sidecar_stem(node.name)
            and not await self._store_original(job, node, progress)
        ):
            return  # kept as a file, or for another host to make its video
        if job.source_blob is not None:
            await self._fetch_original(job, progress)
        progress.enter(Stage.PROBE)
        workdir = self.spool.work_dir(job.id)
        sidecar_note = None
        if subtitles.sidecar_stem(node.name):
            waiting, sidecar_note = await self._attach_sidecar(job, node, workdir)
            if waiting:
                return  # its video is still being made
        try:
            digest = await trio.to_thread.run_sync(_sha256, job.spool)
        except FileNotFoundError:
            raise _Discarded from None  # deleted or rewritten meanwhile
        node = self._current_node(job)
        if (copy := library.published_copy(node.parent_id, digest)) is not None:
            self._drop_copy(job, node, copy)
            return
        publisher = VideoPublisher(
            job.id,
            workdir,
            lambda uploads, on_file: self._put(job, uploads, on_file),
            lambda: self._current_node(job),
            self.invalidate,
            digest,
            keep_source=job.source_blob is not None and self.settings.keep_originals,
        )
        try:
            result = await self._make_media(job, progress, workdir, publisher)
            if isinstance(result, messages.VideoResult):
                await self._publish_video(job, progress, publisher, result)
                return
        except BaseException:
            publisher.withdraw()
            raise
        publisher.withdraw()  # a failed video may have been half published
        failed = isinstance(result, messages.FileResult) and result.failed
        error = (
            f"{result.reason}; kept as an ordinary file"
            if isinstance(result, messages.FileResult) and failed
            else sidecar_note
        )
        if failed:
            log.warning("job %d (%s): %s", job.id, job.path, error)
        if job.source_blob is not None:  # stored already: only the fetched copy goes
            Spool.discard(job.spool)
            jobs.mark(job, jobs.FAILED if error else jobs.DONE, outcome="file", error=error)
            log.info("job %d (%s): kept as the ordinary file it was stored as", job.id, job.path)
            return
        progress.enter(Stage.STORE, job.size)
        upload = Upload(Path(job.spool), job.size, f"file-{job.id}")
        parts = (await self._put(job, [upload]))[upload.path]
        self._finish_as_file(job, self._current_node(job, parts), parts, error)

    async def _store_original(self, job: Job, node: Node, progress: Progress) -> bool:
        """Store-first ingest: the file is stored as it is before anything else, so it is
        safe and readable from every host at once. Then a file whose name says video is
        this host's to go on with (True: it makes videos, and keeps the spool copy), or
        any host's (released); any other file is done. One transaction either way."""
        spool = job.spool  # (a released job names no spool file)
        progress.enter(Stage.STORE, job.size)
        upload = Upload(Path(spool), job.size, f"file-{job.id}")
        parts = (await self._put(job, [upload]))[upload.path]
        node = self._current_node(job, parts)
        video_like = Path(node.name).suffix.lower() in VIDEO_EXTENSIONS
        go_on = video_like and self.makes_videos
        with db.atomic():
            old_blob = node.blob_id
            node.blob = blob = blobs.add(job.size, parts)
            node.spool = None
            node.save()
            freed = blobs.free([old_blob])
            if go_on:
                jobs.mark(job, jobs.RUNNING, source_blob=blob.id)
            elif video_like:
                jobs.release(job, blob.id)
            else:
                jobs.mark(job, jobs.DONE, outcome="file")
        if freed:
            self.freed()
        if not go_on:
            Spool.discard(spool)
        log.info(
            "job %d (%s): stored as it is first%s",
            job.id,
            job.path,
            "" if go_on else "; its video is any host's to make" if video_like else "",
        )
        return go_on

    async def _fetch_original(self, job: Job, progress: Progress) -> None:
        """A store-first job claimed from another host: its file, fetched from the store
        into this host's spool (again after a restart: a fetch cut short is not trusted).
        Straight from the store, not through the read cache (a film would evict what
        players are watching), as prefetch does: a player's read goes first."""
        if job.spool and _size_of(job.spool) == job.size:
            return  # stored first by this host, which kept its copy (or fetched it before)
        node = self._current_node(job)
        parts = blobs.parts_of(node.blob_id) if node.blob_id is not None else []
        progress.enter(Stage.FETCH, job.size)
        priority = Priority(urgent=False)
        limiter = trio.CapacityLimiter(_FETCH_PARTS)
        path, fd = self.spool.new_file()

        async def fetch(part: PartRef) -> None:
            async with limiter:
                done = 0
                while done < part.size:
                    step = min(_FETCH_STEP, part.size - done)
                    data = await read_part(self.store, self.sealer, part, done, step, priority)
                    if not data:
                        raise StoreError(f"part {part.id} ends at {done} of {part.size} bytes")
                    await Spool.pwrite(fd, data, part.offset + done)
                    done += len(data)
                    progress.done += len(data)

        try:
            async with trio.open_nursery() as nursery:
                for part in parts:
                    nursery.start_soon(fetch, part)
            if sum(p.size for p in parts) != job.size:
                raise StoreError(f"the stored file has not the {job.size} bytes its job says")
            # On disk before the job names it: a restart trusts a file of the right size.
            await trio.to_thread.run_sync(os.fsync, fd)
        except BaseException:
            os.close(fd)
            Spool.discard(path)
            raise
        os.close(fd)
        Spool.discard(job.spool or None)
        jobs.mark(job, jobs.RUNNING, spool=path)

    def _drop_copy(self, job: Job, node: Node, video: Node) -> None:
        """The dropped file has the same bytes as the source of a video already in its
        folder (`rsync` run a second time): the video stays, the copy goes."""
        parent, name = node.parent_id, node.name
        with db.atomic():
            library.remove_file(node)
            tree.touch_dir(parent)
            note = (
                f"same content as the video {display(video.name)!r} already in this "
                "folder; not published again"
            )
            jobs.mark(job, jobs.DONE, outcome="duplicate", note=note)
        self.invalidate(parent, [name])
        Spool.discard(job.spool)
        log.info("job %d (%s): %s", job.id, job.path, note)

    def _worker_options(self, job: Job, **extra: Any) -> WorkerOptions:
        return worker_options(self.settings, job.path, job.size, self.encoder, **extra)

    async def _make_media(
        self, job: Job, progress: Progress, workdir: Path, publisher: VideoPublisher
    ) -> messages.Result:
        """Run the media worker; meanwhile store and publish what it announces."""

        def on_message(message: messages.Progress | messages.Announcement) -> None:
            if not isinstance(message, messages.Progress):
                publisher.on_message(message)
                return
            if progress.stage != message.stage:
                progress.enter(message.stage, message.duration)
            progress.done = message.seconds

        failure: list[BaseException] = []

        async def follow(cancel: trio.CancelScope) -> None:
            try:
                await publisher.follow()
            except Exception as exc:  # a store error, or the file went away: stop the worker
                failure.append(exc)
                cancel.cancel()

        result: messages.Result = messages.FileResult("media process not run", failed=True)
        trouble: MediaFailed | None = None
        options = self._worker_options(job, sidecars=await self._sidecars(job, workdir))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, nursery.cancel_scope)
            try:
                result = await run_worker(
                    Path(job.spool), workdir, options, on_message, self.settings.media_memory
                )
            except MediaFailed as exc:
                nursery.cancel_scope.cancel()
                trouble = exc
                result = messages.FileResult(reason=str(exc), failed=True)
            finally:
                publisher.stop_following()  # after the batch in flight
        if failure:
            raise failure[0]
        if trouble is not None:  # raised here, not inside the nursery (exception groups)
            self._resource_trouble(job, trouble)
        return result

    def _live_node(self, job: Job) -> Node | None:
        """The job's file as it is now; None if it is gone or has new content (accepted,
        or being written: see tgfs.fs.writes)."""
        node = tree.get(job.node_id) if job.node_id else None
        if node is None or node.links == 0 or node.id in self.open_for_writing():
            return None
        if job.source_blob is not None:  # store-first: the stored file, still this host's
            stored = node.blob_id == job.source_blob and node.spool is None
            return node if stored and jobs.still_mine(job) else None
        return node if node.spool == job.spool else None

    def _current_node(self, job: Job, uploaded: list[PartRef] | None = None) -> Node:
        """The job's file as it is now; _Discarded if it is gone or has new content."""
        node = self._live_node(job)
        if node is None:
            if uploaded:
                blobs.queue_locations(p.location for p in uploaded)
            raise _Discarded
        return node

    async def _put(
        self,
        job: Job,
        uploads: list[Upload],
        on_file: Callable[[Path, list[PartRef]], None] | None = None,
    ) -> dict[Path, list[PartRef]]:
        """Store files; if that fails or is cancelled, what got stored is queued for
        deletion (synchronously, so even a cancelled upload leaves nothing behind). Each
        part is in the catalog (Landed) from the moment the store confirms it, so a crash
        cannot orphan it either."""
        stored: list[PartRef] = []
        progress = self.progress[job.id]

        def landed(part: PartRef) -> None:
            blobs.landed(part.location, job.id)
            stored.append(part)
            if progress.stage in (Stage.UPLOAD, Stage.STORE):  # not while the media step runs
                progress.done += part.size

        try:
            return await put_files(
                self.store, uploads, self.settings.part_size, landed, on_file, self.sealer
            )
        except BaseException:
            blobs.queue_locations(p.location for p in stored)
            raise

    def _finish_as_file(
        self, job: Job, node: Node, parts: list[PartRef], error: str | None
    ) -> None:
        # The stored version replaces the previous one in one transaction: a crash leaves
        # one or the other, whole (see tgfs.fs.writes).
        with db.atomic():
            old_blob = node.blob_id
            node.blob = blobs.add(job.size, parts) if parts else None
            node.spool = None
            node.save()
            freed = blobs.free([old_blob])
        Spool.discard(job.spool)
        if freed:
            self.freed()
        jobs.mark(job, jobs.FAILED if error else jobs.DONE, outcome="file", error=error)
        log.info("job %d (%s): stored as an ordinary file", job.id, job.path)

    async def _publish_video(
        self, job: Job, progress: Progress, publisher: VideoPublisher, result: messages.VideoResult
    ) -> None:
        folder = await publisher.finish(result, lambda total: progress.enter(Stage.UPLOAD, total))
        Spool.discard(job.spool)
        note = result.note or None
        mode = result.mode
        outcome = "audio (HLS)" if mode is messages.Mode.AUDIO else f"video ({mode})"
        jobs.mark(job, jobs.DONE, outcome=outcome, error=note)
        log.info(
            "job %d (%s): published %s (%s, %d rendition(s))%s",
            job.id,
            job.path,
            tree.path_of(folder),
            mode,
            len(result.renditions),
            f" — {note}" if note else "",
        )


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB steps (about 1.4 GB/s here: seconds for a film)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()
