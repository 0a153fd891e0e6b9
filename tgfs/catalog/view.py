"""The MP4 view as the catalog sees it: its folder at the root, and what each video's file
is made of.

The view (the issue "every video also as one ordinary MP4 file") is a read-only mirror of
the library's folders in which every complete video is one MP4 file (`Movies/Film.mp4`,
laid out by tgfs.media.fmp4 from its best video rendition and every audio rendition), for
media servers (Jellyfin, Plex, Kodi) and plain downloads. Only its folder is a row: a VIEW
node with an entry at the root, named by TGFS_MP4_VIEW (`place`). What is inside it is
worked out from the tree at every request (tgfs.fs.view), so it cannot disagree with the
tree, and there is nothing in it to keep consistent, crash-proof or back up.

A video's file follows from these rows alone: the renditions' init segments
(`Rendition.init_data`), and the sizes and durations of their segments. Renditions made
before the catalog kept init segments (schema 8) have theirs read from the store once and
recorded (`record_init`).
"""

from __future__ import annotations

import dataclasses
import os

from tgfs.catalog import tree
from tgfs.catalog.schema import (
    ROOT_ID,
    Blob,
    Entry,
    Node,
    NodeKind,
    Rendition,
    RenditionKind,
    Segment,
    Video,
    db,
)


def place(name: str) -> int | None:
    """Put the view's folder at the root as `name` ("": no view) and return its inode.
    None if there is no view, or if a user's entry at the root has that name: the user's
    entry wins (the caller says so). A new name is a new folder (a new inode)."""
    with db.atomic():
        view = Node.get_or_none(Node.kind == NodeKind.VIEW)
        taken = tree.child(ROOT_ID, name) if name else None
        if view is not None and taken is not None and taken.id == view.id:
            return view.id  # as it was
        if view is not None:
            Entry.delete().where(Entry.node == view.id).execute()
            view.delete_instance()
        if not name or taken is not None:
            return None
        return tree.create(ROOT_ID, name, NodeKind.VIEW, 0o555, os.getuid(), os.getgid()).id


@dataclasses.dataclass(frozen=True)
class TrackSource:
    """One rendition a video's file carries."""

    rendition_id: int
    init_blob: int | None  # where its init segment is stored
    init_data: bytes | None  # its init segment (None: not recorded yet, see record_init)
    language: str | None  # an audio rendition's language, as tagged
    segments: tuple[tuple[int, int, float], ...]  # (blob id, bytes, seconds) by seq


@dataclasses.dataclass(frozen=True)
class Source:
    """What a complete video's file is made of: the best video rendition first (most
    pixels, then the highest bit rate), then every audio rendition in the order the master
    playlist lists them. Subtitles are not in it (they are sidecar files)."""

    video_id: int
    duration: float
    start_time: float
    audio_only: bool  # an audio-only file's "video" rendition (TGFS_AUDIO_HLS)
    tracks: tuple[TrackSource, ...]


def source(video_id: int) -> Source | None:
    """The file of a complete video; None if it is not complete or has no video rendition."""
    video = Video.get_or_none(Video.id == video_id)
    if video is None or not video.complete:
        return None
    rows = list(
        Rendition.select(
            Rendition.id,
            Rendition.kind,
            Rendition.width,
            Rendition.height,
            Rendition.bandwidth,
            Rendition.init_blob,
            Rendition.init_data,
            Rendition.language,
        )
        .where(
            (Rendition.video == video_id)
            & Rendition.kind.in_([RenditionKind.VIDEO, RenditionKind.AUDIO])
        )
        .order_by(Rendition.id)
    )
    pictures = [r for r in rows if r.kind == RenditionKind.VIDEO]
    if not pictures:
        return None
    best = max(pictures, key=lambda r: (r.width * r.height, r.bandwidth))  # first of equals
    chosen = [best, *(r for r in rows if r.kind == RenditionKind.AUDIO)]
    segments: dict[int, list[tuple[int, int, float]]] = {r.id: [] for r in chosen}
    query = (
        Segment.select(Segment.rendition, Segment.blob, Blob.size, Segment.duration)
        .join(Blob)
        .where(Segment.rendition.in_(list(segments)))
        .order_by(Segment.rendition, Segment.seq)
        .tuples()
    )
    for rendition_id, blob_id, size, duration in query:
        segments[rendition_id].append((blob_id, size, duration))
    return Source(
        video_id=video_id,
        duration=video.duration,
        start_time=video.start_time,
        audio_only=best.width == 0,
        tracks=tuple(
            TrackSource(
                r.id,
                r.init_blob_id,
                bytes(r.init_data) if r.init_data is not None else None,
                r.language,
                tuple(segments[r.id]),
            )
            for r in chosen
        ),
    )


def record_init(rendition_id: int, data: bytes) -> None:
    """Keep a rendition's init segment, read from the store (a rendition made before the
    catalog kept them)."""
    Rendition.update(init_data=data).where(Rendition.id == rendition_id).execute()


def complete(video_ids: list[int]) -> set[int]:
    """Which of these videos are complete (a video being made is not in the view)."""
    found: set[int] = set()
    for start in range(0, len(video_ids), 500):  # under SQLite's parameter limit
        batch = video_ids[start : start + 500]
        query = Video.select(Video.id).where(Video.id.in_(batch) & (Video.complete == True))  # noqa: E712
        found.update(v.id for v in query)
    return found


@dataclasses.dataclass(frozen=True)
class Subtitles:
    """A subtitle rendition, as the view shows it: one WebVTT file beside the video."""

    folder_id: int  # its rendition folder's node (the sidecar's inode is numbered from it)
    rendition_id: int
    language: str | None
    size: int | None  # Rendition.sidecar_size (None: not worked out yet)


def subtitles(video_id: int) -> list[Subtitles]:
    """A video's subtitle renditions, in the order the master playlist lists them."""
    query = (
        Rendition.select(Node.id, Rendition.id, Rendition.language, Rendition.sidecar_size)
        .join(Node, on=((Node.rendition == Rendition.id) & (Node.kind == NodeKind.RENDITION)))
        .where((Rendition.video == video_id) & (Rendition.kind == RenditionKind.SUBTITLES))
        .order_by(Rendition.id)
        .tuples()
    )
    return [Subtitles(*row) for row in query]


def subtitle_segments(rendition_id: int) -> list[int]:
    """The blob of each of a subtitle rendition's segments, in order."""
    query = (
        Segment.select(Segment.blob).where(Segment.rendition == rendition_id).order_by(Segment.seq)
    )
    return [s.blob_id for s in query]


def record_sidecar_size(rendition_id: int, size: int) -> None:
    """The size of a subtitle rendition as one WebVTT file (Rendition.sidecar_size)."""
    Rendition.update(sidecar_size=size).where(Rendition.id == rendition_id).execute()
