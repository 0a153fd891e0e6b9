"""The library as a list of its videos, for `.tgfs/library.json` (what a web page shows).

Cheap for a large library: five queries, whatever the number of videos (no per-video or
per-folder query): folders' names and parents, video folders, their renditions, their
posters; paths are put together in memory. Videos in the trash have no name and are not
listed. Paths are library-relative, names shown as status output shows them (bytes that
are not UTF-8 as \\xNN).
"""

from __future__ import annotations

import dataclasses

from peewee import JOIN

from tgfs.catalog.schema import (
    ROOT_ID,
    Entry,
    NameField,
    Node,
    NodeKind,
    Rendition,
    RenditionKind,
    Video,
    display,
    raw_rows,
)


@dataclasses.dataclass(frozen=True)
class Track:
    """One rendition of a video."""

    name: str  # its folder, e.g. "720p", "audio-fra"
    kind: str  # "video", "audio" or "subtitles"
    width: int
    height: int
    bandwidth: int  # peak bits/s (0 until its first segment)
    language: str | None
    title: str | None


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    folder_id: int  # its folder's inode (who may see it: tgfs.catalog.access)
    path: str  # its folder, library-relative: "Movies/Film"
    title: str  # the folder's name
    duration: float  # seconds (0 until it is complete)
    width: int  # of its best video rendition
    height: int
    renditions: list[Track]
    audio: list[str]  # languages of its audio renditions (those that say)
    subtitles: list[str]  # languages of its subtitle renditions
    poster: str | None  # library-relative path of poster.jpg
    added_ns: int  # when it was made
    complete: bool  # False while its job is still adding segments
    job_id: int | None  # that job


def videos() -> list[VideoEntry]:
    """Every named video, by path."""
    # Rows as SQLite gives them (raw_rows), not models or peewee's tuples: converting every
    # value was most of the time (make bench-library).
    folders = {
        node_id: (parent_id, display(NameField.decode(name)))
        for node_id, parent_id, name in raw_rows(
            Node.select(Node.id, Entry.parent, Entry.name)
            .join(Entry, on=(Entry.node == Node.id))
            .where(Node.kind.in_([NodeKind.DIR, NodeKind.VIDEO]))
        )
    }
    video_folders = raw_rows(
        Node.select(Node.id, Node.video)
        .join(Entry, on=(Entry.node == Node.id))
        .where(Node.kind == NodeKind.VIDEO)
    )
    info = {  # (every video: an IN list of those named would hit SQLite's limit)
        row[0]: row[1:]
        for row in raw_rows(
            Video.select(Video.id, Video.duration, Video.created_ns, Video.complete, Video.job_id)
        )
    }
    tracks: dict[int, list[Track]] = {}
    for video_id, *track in raw_rows(
        Rendition.select(
            Rendition.video,
            Rendition.name,
            Rendition.kind,
            Rendition.width,
            Rendition.height,
            Rendition.bandwidth,
            Rendition.language,
            Rendition.title,
        ).order_by(Rendition.id)  # (the table's order: each video's own in order)
    ):
        tracks.setdefault(video_id, []).append(Track(*track))
    # Each video's poster, by the folder it is in: from the videos (CROSS JOIN keeps SQLite
    # to that order: by the blob's index to its node, then to its name; left to itself,
    # with no statistics, it scanned every name in the library).
    posters = {
        parent_id: NameField.decode(name)
        for parent_id, name in raw_rows(
            Video.select(Entry.parent, Entry.name)
            .join(Node, JOIN.CROSS)
            .join(Entry, JOIN.CROSS)
            .where((Node.blob == Video.poster_blob) & (Entry.node == Node.id))
        )
    }

    def path(node_id: int) -> str:
        parts = []
        while node_id != ROOT_ID and node_id in folders:
            node_id, name = folders[node_id]
            parts.append(name)
        return "/".join(reversed(parts))

    out = []
    for folder_id, video_id in video_folders:
        (duration, created_ns, complete, job_id), where = info[video_id], path(folder_id)
        own = tracks.get(video_id, [])
        pictures = [t for t in own if t.kind == RenditionKind.VIDEO]
        best = max(pictures, key=lambda t: (t.height, t.bandwidth), default=None)
        poster = posters.get(folder_id)
        out.append(
            VideoEntry(
                folder_id=folder_id,
                path=where,
                title=folders[folder_id][1],
                duration=duration,
                width=best.width if best else 0,
                height=best.height if best else 0,
                renditions=own,
                audio=[t.language for t in own if t.kind == RenditionKind.AUDIO and t.language],
                subtitles=[
                    t.language for t in own if t.kind == RenditionKind.SUBTITLES and t.language
                ],
                poster=f"{where}/{display(poster)}" if poster else None,
                added_ns=created_ns,
                complete=bool(complete),
                job_id=job_id,
            )
        )
    return sorted(out, key=lambda v: v.path)
