"""Subtitle files dropped beside a video (`Film.fr.srt` next to `Film.mkv`).

Two ways in, both ending as WebVTT renditions of the video:
- the subtitle file is already stored when its video's job runs: the job fetches it and
  the media child makes it one of the video's renditions (`sidecars`);
- it arrives after the video was published (or while the video is still being made: its job
  waits for the video): its own job makes it a rendition cut where the video is cut, and
  attaches it to the complete video (`attach_sidecar`).
The subtitle file itself is kept as an ordinary file either way.

A mixin of the ingest runner: it uses the runner's store, uploads and media child.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tgfs.catalog import Job, Node, NodeKind, blobs, jobs, library, tree
from tgfs.config import Settings
from tgfs.ingest.media_process import MediaFailed, run_worker
from tgfs.media import messages, subtitles
from tgfs.media.probe import VIDEO_EXTENSIONS
from tgfs.media.worker import Sidecar, SubtitlesFor, WorkerOptions
from tgfs.store.base import BlobStore, PartRef, StoreError
from tgfs.store.parts import Upload, read_part
from tgfs.store.sealing import Sealer

log = logging.getLogger(__name__)

# A subtitle file whose video is still being made looks again this often.
SIDECAR_WAIT = 5.0


class SidecarSubtitles:
    settings: Settings
    store: BlobStore
    sealer: Sealer | None
    invalidate: Callable[[int, list[str]], None]  # names changed under a directory

    @abstractmethod
    def _current_node(self, job: Job, uploaded: list[PartRef] | None = None) -> Node: ...

    @abstractmethod
    def _worker_options(self, job: Job, **extra: Any) -> WorkerOptions: ...

    @abstractmethod
    async def _put(self, job: Job, uploads: list[Upload]) -> dict[Path, list[PartRef]]: ...

    @abstractmethod
    def _resource_trouble(self, job: Job, exc: MediaFailed) -> None: ...

    async def _sidecars(self, job: Job, workdir: Path) -> list[Sidecar]:
        """The subtitle files already stored beside a video file, fetched into `workdir`.

        Ones still being written or ingested are left to their own job, which adds them
        to the video once it is complete; so none is added twice."""
        node = self._current_node(job)
        if Path(node.name).suffix.lower() not in VIDEO_EXTENSIONS:
            return []
        stem = library.video_name(node.name)
        found = []
        for sibling in tree.children_named_from(node.parent_id, stem):
            match = subtitles.sidecar_stem(sibling.name)
            if (
                match is None
                or match[0] != stem
                or sibling.node_kind is not NodeKind.FILE
                or sibling.blob_id is None
                or sibling.spool is not None
                or sibling.size > subtitles.MAX_SIDECAR_BYTES
                or jobs.active_for(sibling.id)
            ):
                continue
            path = workdir / f"sidecar-{sibling.id}{Path(sibling.name).suffix}"
            try:
                data = [
                    await read_part(self.store, self.sealer, p, 0, p.size)
                    for p in blobs.parts_of(sibling.blob_id)
                ]
            except StoreError as exc:
                log.warning("job %d: subtitle file %s left out: %s", job.id, sibling.name, exc)
                continue
            workdir.mkdir(parents=True, exist_ok=True)
            await trio.to_thread.run_sync(path.write_bytes, b"".join(data))
            found.append(Sidecar(str(path), match[1]))
        return found

    async def _attach_sidecar(self, job: Job, node: Node, workdir: Path) -> tuple[bool, str | None]:
        """A subtitle file dropped beside an already published video becomes one of its
        subtitle renditions (the file itself is kept too). Returns (waiting: its video is
        still being made and the job was put back, why the subtitles were not added)."""
        match = subtitles.sidecar_stem(node.name)
        assert match is not None  # (the caller checked)
        stem, language = match
        folder = tree.child(node.parent_id, stem)
        is_video = folder is not None and folder.node_kind is NodeKind.VIDEO
        # Its video is being made, or still queued (`cp Film.mkv Film.srt` closes the
        # video first): wait for it rather than miss it.
        if (folder is not None and is_video and not folder.video.complete) or (
            not is_video
            and any(
                library.video_name(n.name) == stem
                and n.node_kind is NodeKind.FILE
                and Path(n.name).suffix.lower() in VIDEO_EXTENSIONS
                and jobs.active_for(n.id)
                for n in tree.children_named_from(node.parent_id, stem)
            )
        ):
            jobs.mark(
                job,
                jobs.QUEUED,
                error=f"waiting for video {stem} to be complete",
                not_before=time.time() + SIDECAR_WAIT,
            )
            return True, None
        if folder is None or not is_video:
            return False, None
        video = folder.video
        options = self._worker_options(
            job,
            subtitles_for=SubtitlesFor(
                durations=library.video_segment_durations(video.id),
                start_time=video.start_time,
                language=language,
            ),
        )
        try:
            result = await run_worker(
                Path(job.spool), workdir, options, lambda _: None, self.settings.media_memory
            )
        except MediaFailed as exc:
            self._resource_trouble(job, exc)
            result = messages.FileResult(reason=str(exc), failed=True)
        if not isinstance(result, messages.SubtitlesResult):
            reason = result.reason if isinstance(result, messages.FileResult) else "no subtitles"
            log.warning("job %d (%s): %s", job.id, job.path, reason)
            return False, reason
        (r,) = result.renditions
        files = [workdir / r.dir / s.name for s in r.segments]
        stored = await self._put(
            job,
            [
                Upload(path, path.stat().st_size, f"job{job.id}-{r.dir}-{path.name}")
                for path in files
            ],
        )
        parts = [p for file_parts in stored.values() for p in file_parts]
        self._current_node(job, parts)  # the subtitle file itself still there?
        folder = tree.child(node.parent_id, stem)
        if folder is None or folder.node_kind is not NodeKind.VIDEO:  # removed meanwhile
            blobs.queue_locations(p.location for p in parts)
            return False, None
        name = tree.free_name(folder.id, tree.safe_name(r.name))
        library.attach_rendition(
            folder,
            library.RenditionInfo(
                name=name, kind=r.kind, codecs=r.codecs, language=r.language, title=r.title
            ),
            [
                library.StoredFile(path.name, path.stat().st_size, stored[path], s.duration)
                for path, s in zip(files, r.segments, strict=True)
            ],
            len(subtitles.whole_file(path.read_bytes() for path in files)),
        )
        self.invalidate(folder.id, [library.MASTER_NAME, name])
        log.info("job %d (%s): added as subtitles to %s", job.id, job.path, tree.path_of(folder))
        return False, None
