"""Prefetch: the next segments of a rendition are fetched before the player asks for them.

Players read HLS one segment file at a time, in order, a few seconds of media ahead of
what they show. Each segment lives behind hundreds of milliseconds of store latency, so
tgfs follows each viewer and keeps the segments after the one it opened in the cache:

- a *cursor* follows one process (a player, a web server worker) through one rendition.
  Opening segment i of the rendition moves it: once segment i itself is in the cache, the
  next segments up to i + window are fetched in the background, in order, at prefetch
  priority (tgfs.store.slots: a read a player waits for always goes first);
- the window starts at 2 segments and doubles, up to TGFS_PREFETCH_SEGMENTS, while the
  opens stay sequential (the same segment again, or one the cursor already fetched);
- any other open is a seek: what was fetched for the old position and still in flight is
  cancelled, and the window starts again at the new position;
- opening a rendition of another video, or another rendition of the same kind (a player
  switching quality), stops that process's cursor on the old one; a cursor nobody moved
  for IDLE seconds stops too. So prefetch never runs for a rendition nobody watches;
- opening a playlist warms what a player reads next: the init segment and the first
  segment of that rendition (of the first variant and the default audio, for
  master.m3u8);
- the first time a rendition is watched (its track loaded), the store is asked to get
  ready for all its parts (`PartCache.prepare`: Telegram looks up their messages in bulk,
  one call per bot per 200 parts), so a seek anywhere is one round trip shorter.

Failure modes: a fetch that fails only ends that cursor's prefetch of that segment (the
player's own read fetches it again and reports the error); a cursor's state is memory
only, so nothing needs cleaning after a crash. The track of a rendition (its segment blobs
and their parts) is read from the catalog once per rendition and kept while the video is
complete (segments of a video still being made are re-read when a cursor reaches the end).
"""

from __future__ import annotations

import dataclasses
import logging

import trio

from tgfs.cache import PartCache
from tgfs.catalog import RenditionKind, blobs, library
from tgfs.store.base import PartRef, StoreError
from tgfs.store.slots import Priority

log = logging.getLogger(__name__)

FIRST_WINDOW = 2  # segments prefetched after a start or a seek, before the window grows
# A cursor nobody moved for this long stops. Longer than a player with a full buffer waits
# between two segments (one segment duration, 2-10 s), short enough that an abandoned
# player's prefetch does not linger.
IDLE = 60.0
_TRACKS_KEPT = 64  # renditions whose tracks stay in memory


@dataclasses.dataclass
class _Track:
    video_id: int
    kind: RenditionKind
    init: list[PartRef]
    segments: list[list[PartRef]]  # parts of each segment, by seq
    index: dict[int, int]  # segment blob id → seq
    complete: bool


@dataclasses.dataclass(eq=False)
class _Cursor:
    rendition_id: int
    pid: int
    track: _Track
    next: int  # the first segment after the last one opened
    window: int
    fetched_to: int  # segments before this one were scheduled
    last_moved: float
    warming: bool = False  # a segment is being fetched for it now
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    moved: trio.Event = dataclasses.field(default_factory=trio.Event)


class Prefetcher:
    def __init__(self, cache: PartCache, max_window: int) -> None:
        self.cache = cache
        self.max_window = max_window
        self._tracks: dict[int, _Track] = {}
        self._cursors: dict[tuple[int, int], _Cursor] = {}  # (rendition id, pid) → cursor
        self._nursery: trio.Nursery | None = None
        self.seeks = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the cursors for the mount's life, and stops idle ones."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(IDLE / 4)
                now = trio.current_time()
                for cursor in list(self._cursors.values()):
                    if now - cursor.last_moved > IDLE:
                        self._stop(cursor)

    # ---- events from the filesystem ----------------------------------------------------

    def segment_opened(self, rendition_id: int, blob_id: int, pid: int) -> None:
        """A process opened a segment (or init segment) of a rendition for reading."""
        if self._nursery is None or self.max_window <= 0:
            return
        track = self._track(rendition_id)
        if track is None:
            return
        seq = track.index.get(blob_id)  # (a growing video's track is read afresh)
        if seq is None:
            return  # the init segment: the first segment was warmed with the playlist
        now = trio.current_time()
        cursor = self._cursors.get((rendition_id, pid))
        if cursor is not None and cursor.next - 1 <= seq < cursor.fetched_to + 1:
            if seq >= cursor.next:  # sequential: move on, widen
                cursor.next = seq + 1
                cursor.window = min(cursor.window * 2, self.max_window)
            cursor.track = track
            cursor.last_moved = now
            cursor.moved.set()
            return
        if cursor is not None:
            self.seeks += 1
            self._stop(cursor)
        for other in [
            c
            for c in self._cursors.values()
            if c.pid == pid and (c.track.video_id != track.video_id or c.track.kind == track.kind)
        ]:
            self._stop(other)  # moved to another video, or switched quality
        cursor = _Cursor(
            rendition_id,
            pid,
            track,
            next=seq + 1,
            window=min(FIRST_WINDOW, self.max_window),
            fetched_to=seq + 1,
            last_moved=now,
        )
        self._cursors[rendition_id, pid] = cursor
        self._nursery.start_soon(self._follow, cursor)

    def playlist_opened(self, rendition_ids: list[int]) -> None:
        """A player is starting: warm what it reads next, the init segment and the first
        segment of each rendition. Urgent: the player asks for them within milliseconds."""
        if self._nursery is None:
            return
        for rendition_id in rendition_ids:
            track = self._track(rendition_id)
            if track is None:
                continue
            for parts in (track.init, track.segments[0] if track.segments else []):
                if parts:
                    self.cache.fetch_ahead(parts, 0, _size(parts), Priority(urgent=True))

    # ---- cursors ----------------------------------------------------------------------

    async def _follow(self, cursor: _Cursor) -> None:
        with cursor.scope:
            try:
                await self._fetch_ahead_of(cursor)
            except Exception:  # a bug here must cost this viewer's prefetch, not the mount
                log.exception("prefetch: rendition %d stopped", cursor.rendition_id)
                self._stop(cursor)

    async def _fetch_ahead_of(self, cursor: _Cursor) -> None:
        opened = None  # the opened segment last waited for
        while True:
            # The segment the player opened comes first: until it is in, fetching ahead
            # would take bandwidth from the read the player waits for (after a start or a
            # seek). Joining its fetch costs nothing (single flight).
            if cursor.next - 1 != opened:
                opened = cursor.next - 1
                await self._warm(cursor, opened)
            seq = _next_due(cursor)
            if seq is None:
                cursor.moved = trio.Event()
                await cursor.moved.wait()
                continue
            cursor.fetched_to = seq + 1
            await self._warm(cursor, seq)

    async def _warm(self, cursor: _Cursor, seq: int) -> None:
        parts = cursor.track.segments[seq]
        cursor.warming = True
        try:
            await self.cache.warm(parts, 0, _size(parts), Priority(urgent=False))
        except (StoreError, OSError) as exc:
            log.info("prefetch: segment %d of rendition %d: %s", seq, cursor.rendition_id, exc)
        finally:
            cursor.warming = False

    def _stop(self, cursor: _Cursor) -> None:
        cursor.scope.cancel()
        if self._cursors.get((cursor.rendition_id, cursor.pid)) is cursor:
            del self._cursors[cursor.rendition_id, cursor.pid]

    def _track(self, rendition_id: int) -> _Track | None:
        track = self._tracks.get(rendition_id)
        if track is not None:
            return track
        files = library.track_files(rendition_id)
        if files is None:
            return None
        ids = files.segment_blobs + ([files.init_blob] if files.init_blob else [])
        parts = blobs.parts_of_many(ids)
        track = _Track(
            video_id=files.video_id,
            kind=files.kind,
            init=parts[files.init_blob] if files.init_blob else [],
            segments=[parts[b] for b in files.segment_blobs],
            index={b: seq for seq, b in enumerate(files.segment_blobs)},
            complete=files.complete,
        )
        if len(self._tracks) >= _TRACKS_KEPT:
            self._tracks.pop(next(iter(self._tracks)))
        if track.complete:
            self._tracks[rendition_id] = track
            # A viewer is starting on this rendition: let the store get ready for every
            # part of it, so that a seek anywhere starts with its download.
            self.cache.prepare(track.init + [p for parts in track.segments for p in parts])
        return track

    def stats(self) -> dict[str, int]:
        busy = sum(1 for c in self._cursors.values() if c.warming or _next_due(c) is not None)
        return {
            "viewers": len(self._cursors),
            "viewers_fetching": busy,
            "seeks": self.seeks,
            "window_max": self.max_window,
        }


def _next_due(cursor: _Cursor) -> int | None:
    """The next segment to fetch for a cursor, or None if its window is fetched."""
    seq = max(cursor.fetched_to, cursor.next)
    return seq if seq < min(cursor.next + cursor.window, len(cursor.track.segments)) else None


def _size(parts: list[PartRef]) -> int:
    return sum(p.size for p in parts)
