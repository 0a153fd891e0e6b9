"""Publishing a video while the media worker is still making it.

The worker announces a plan (which renditions there will be, and their one target
duration), then each rendition once its first segment is complete on disk, then every
further segment (see `tgfs.media.worker`). The publisher stores what was announced, in
batches, while the worker goes on, and adds it to the catalog in playback order:

- the video folder appears once every planned rendition has its init segment and first
  segment stored, with EVENT playlists (players can start);
- its poster (announced first, before any segment) appears in it once stored;
- each playlist then grows by the segments stored without a gap before them;
- at the end, the worker's result adds what is left (subtitles are made last) and the
  video becomes VOD; the dropped file it came from is removed in the same transaction.

If the job fails or starts over, `withdraw` removes the half-published video and queues
every stored part for deletion: nothing is left behind in the catalog or the store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from tgfs.catalog import Node, Rendition, blobs, library, tree, view
from tgfs.catalog.library import MASTER_NAME, MEDIA_PLAYLIST_NAME
from tgfs.media.messages import (
    Announcement,
    Plan,
    Poster,
    Restart,
    Segment,
    SegmentFile,
    TrackKind,
    VideoResult,
)
from tgfs.media.messages import Rendition as Announced
from tgfs.media.playlists import bandwidths, target_duration
from tgfs.media.subtitles import whole_file
from tgfs.store.base import PartRef
from tgfs.store.parts import Upload

log = logging.getLogger(__name__)

# Store files, reporting each one as soon as all its parts are stored.
PutFn = Callable[
    [list[Upload], Callable[[Path, list[PartRef]], None]], Awaitable[dict[Path, list[PartRef]]]
]
SourceFn = Callable[[], Node]  # the dropped file as it is now; raises if it is gone
InvalidateFn = Callable[[int, list[str]], None]


class VideoPublisher:
    def __init__(
        self,
        job_id: int,
        workdir: Path,
        put: PutFn,
        source: SourceFn,
        invalidate: InvalidateFn,
        source_hash: str | None = None,
        keep_source: bool = False,
    ) -> None:
        self.job_id = job_id
        # The dropped file stays beside its video (TGFS_KEEP_ORIGINALS, store-first ingest)
        self.keep_source = keep_source
        self.source_hash = source_hash  # recorded with the video (duplicate drops)
        self.workdir = workdir
        self._put = put
        self._source = source
        self._invalidate = invalidate
        self.changed = trio.Event()
        self.worker_done = False
        # The poster: announced once, at the start; a restart keeps the file (only what
        # was stored of it goes), so it is stored again.
        self.poster: Path | None = None
        self._reset()

    def _reset(self) -> None:
        self.plan: Plan | None = None
        self.infos: dict[str, Announced] = {}  # dir → its announcement
        self.segments: dict[str, list[SegmentFile]] = {}  # dir → announced, in order
        self.stored: dict[Path, library.StoredFile] = {}
        self.folder: Node | None = None
        self.renditions: dict[str, Rendition] = {}
        self.published: dict[str, int] = {}  # dir → segments in the catalog
        self.poster_published = False
        self._restart = False

    # ---- from the worker -----------------------------------------------------------------

    def on_message(self, message: Announcement) -> None:
        log.debug("job %d: worker says %s", self.job_id, message)
        if isinstance(message, Plan):
            self.plan = message
        elif isinstance(message, Announced):
            self.infos[message.dir] = message
            self.segments.setdefault(message.dir, [])
        elif isinstance(message, Segment):
            self.segments.setdefault(message.dir, []).append(
                SegmentFile(message.name, message.duration, message.size)
            )
        elif isinstance(message, Poster):
            self.poster = self.workdir / message.name
        elif isinstance(message, Restart):
            self._restart = True
        self.changed.set()

    async def follow(self) -> None:
        """Store and publish announcements until the worker is done."""
        while not self.worker_done:
            await self.changed.wait()
            self.changed = trio.Event()
            if self._restart:
                self.withdraw()
                self._reset()
            await self._step()

    def stop_following(self) -> None:
        self.worker_done = True
        self.changed.set()

    # ---- at the end ----------------------------------------------------------------------

    async def finish(self, result: VideoResult, progress_total: Callable[[int], None]) -> Node:
        """Store and publish whatever is left, then complete the video. Returns its folder."""
        renditions = result.renditions
        planned = (
            self.plan.target_duration
            if self.plan
            else target_duration(s.duration for r in renditions for s in r.segments)
        )
        self.plan = Plan(
            mode=result.mode, dirs=[r.dir for r in renditions], target_duration=planned
        )
        for r in renditions:
            self.infos.setdefault(r.dir, r)
            self.segments[r.dir] = r.segments
        progress_total(sum(size for _, size in self._unstored()))
        await self._step()
        source = self._source()
        old_parent, old_name = source.parent_id, source.name
        assert self.folder is not None  # _step published it: every rendition is stored
        for r in renditions:  # what the MP4 view's subtitle files will weigh (before the
            if r.kind == TrackKind.SUBTITLES:  # video is complete, and so in the view)
                texts = [(self.workdir / r.dir / s.name).read_bytes() for s in r.segments]
                view.record_sidecar_size(self.renditions[r.dir].id, len(whole_file(texts)))
        every = [s.duration for r in renditions for s in r.segments]
        library.complete_video(
            self.folder,
            None if self.keep_source else source,
            result.start_time,
            target_duration(every),
        )
        self._invalidate(old_parent, [old_name])
        self._invalidate(self.folder.id, [MASTER_NAME])
        for rendition in self.renditions.values():
            rdir = tree.child(self.folder.id, rendition.name)
            if rdir is not None:
                self._invalidate(rdir.id, [MEDIA_PLAYLIST_NAME])
        return self.folder

    def withdraw(self) -> None:
        """Undo everything: the published part of the video and the stored files."""
        published = set()
        if self.folder is not None:
            for folder, rendition in self.renditions.items():
                published.add(self.workdir / folder / rendition.init_name)
                published.update(
                    self.workdir / folder / s.name
                    for s in self.segments[folder][: self.published[folder]]
                )
            if self.poster_published and self.poster is not None:
                published.add(self.poster)
            library.remove_video(self.folder.video_id)
            self._invalidate(self.folder.parent_id, [self.folder.name])
            log.info("job %d: withdrew the half-published video %s", self.job_id, self.folder.name)
        blobs.queue_locations(
            p.location for path, f in self.stored.items() if path not in published for p in f.parts
        )
        self.folder = None

    # ---- the work ------------------------------------------------------------------------

    def _unstored(self) -> list[tuple[Path, int]]:
        """Announced files not stored yet, in playback order across renditions:
        (path, size). Init segments first (only their size is not announced)."""
        out = []
        for folder, info in self.infos.items():
            init = self.workdir / folder / info.init_name if info.init_name else None
            if init is not None and init not in self.stored:
                out.append((0, init, init.stat().st_size))
            out += [
                (n + 1, path, s.size)
                for n, s in enumerate(self.segments.get(folder, []))
                if (path := self.workdir / folder / s.name) not in self.stored
            ]
        if self.poster is not None and self.poster not in self.stored:
            out.append((1, self.poster, self.poster.stat().st_size))  # with first segments
        return [(path, size) for _, path, size in sorted(out, key=lambda f: f[0])]

    async def _step(self) -> None:
        """Store what is announced and not stored yet, publishing as each file lands."""
        batch = self._unstored()
        sizes = dict(batch)
        failed: list[Exception] = []

        def landed(path: Path, parts: list[PartRef]) -> None:
            log.debug("job %d: stored %s/%s", self.job_id, path.parent.name, path.name)
            self.stored[path] = library.StoredFile(name=path.name, size=sizes[path], parts=parts)
            if not failed:
                try:
                    self._publish()
                except Exception as exc:  # raised below, not inside the upload tasks
                    failed.append(exc)

        if batch:
            await self._put(
                [
                    Upload(
                        path, size, f"job{self.job_id}-{path.parent.name}-{path.name}", stripe=True
                    )
                    for path, size in batch
                ],
                landed,
            )
        if failed:
            raise failed[0]
        self._publish()

    def _ready(self) -> bool:
        """Every planned rendition has its init and first segment stored."""
        if self.plan is None:
            return False
        for folder in self.plan.dirs:
            info = self.infos.get(folder)
            first = self.segments.get(folder)
            if info is None or not first:
                return False
            if info.init_name and self.workdir / folder / info.init_name not in self.stored:
                return False
            if self.workdir / folder / first[0].name not in self.stored:
                return False
        return True

    def _publish(self) -> None:
        if self.plan is None:
            return
        if self.folder is None:
            if not self._ready():
                return
            source = self._source()
            self.folder = library.create_video(
                source, self.plan.mode, self.plan.target_duration, self.job_id, self.source_hash
            )
            self._invalidate(source.parent_id, [self.folder.name])
            log.info(
                "job %d: %s is playable while it is being made",
                self.job_id,
                tree.path_of(self.folder),
            )
        poster = self.stored.get(self.poster) if self.poster is not None else None
        if poster is not None and not self.poster_published:
            name = library.add_poster(self.folder, poster)
            self.poster_published = True
            self._invalidate(self.folder.id, [name])
        for folder in self.plan.dirs:
            if folder not in self.renditions:
                self._add_rendition(self.folder, folder)
            done = self.published[folder]
            ready = []
            for s in self.segments[folder][done:]:
                stored = self.stored.get(self.workdir / folder / s.name)
                if stored is None:
                    break  # keep playback order: no gaps
                stored.duration = s.duration
                ready.append(stored)
            published = self.segments[folder][: done + len(ready)]
            rates = bandwidths(
                (self.stored[self.workdir / folder / s.name].size, s.duration) for s in published
            )
            library.add_segments(self.renditions[folder], ready, rates)
            self.published[folder] = done + len(ready)

    def _add_rendition(self, video_folder: Node, folder: str) -> None:
        info = self.infos[folder]
        path = self.workdir / folder / info.init_name
        init = self.stored[path] if info.init_name else None
        self.renditions[folder] = library.add_rendition(
            video_folder,
            library.RenditionInfo(
                name=info.name,
                kind=info.kind,
                width=info.width,
                height=info.height,
                frame_rate=info.frame_rate,
                codecs=info.codecs,
                language=info.language,
                title=info.title,
                default=info.default,
            ),
            init,
            path.read_bytes() if init else None,  # (a kilobyte, stored a moment ago)
        )
        self.published[folder] = 0
