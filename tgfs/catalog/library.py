"""Videos in the tree: publishing an ingest step by step, and removing a video folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import PurePosixPath

from peewee import fn

from tgfs.catalog import blobs, tree
from tgfs.catalog.schema import (
    Blob,
    Entry,
    Job,
    JobState,
    Node,
    NodeKind,
    Rendition,
    RenditionKind,
    Segment,
    Trash,
    Video,
    db,
    display,
)
from tgfs.store.base import PartRef

# The names tgfs gives a video folder's playlists.
MASTER_NAME = "master.m3u8"
MEDIA_PLAYLIST_NAME = "playlist.m3u8"
# Video and rendition folders: writable by their owner only so that the kernel lets the
# owner's `rm -r` through (default_permissions checks the folder's w bit before an unlink
# reaches tgfs; 0555 made it fail for everyone but root). tgfs itself keeps them read-only:
# a create or write inside is EROFS, an unlink only hides the entry (see fs.operations).
READ_ONLY_DIR = 0o755
READ_ONLY_FILE = 0o444


@dataclasses.dataclass
class StoredFile:
    """One HLS file after upload."""

    name: str
    size: int
    parts: list[PartRef]
    duration: float = 0.0  # segments only


@dataclasses.dataclass
class RenditionInfo:
    """What the master playlist says about a rendition (from the media worker)."""

    name: str
    kind: str = RenditionKind.VIDEO
    width: int = 0
    height: int = 0
    frame_rate: float | None = None
    codecs: str = ""
    language: str | None = None
    title: str | None = None
    default: bool = False


def video_name(source_name: str) -> str:
    """The folder a dropped video becomes: its name without the extension, made a valid
    name ("..mp4" would give ".": its dots become "_", see tree.safe_name)."""
    return tree.safe_name(PurePosixPath(source_name).stem)


# Publishing happens in steps, so a video can be played while it is still being made:
# create_video (an empty folder, EVENT playlists) → add_rendition once a rendition has its
# first segment → add_segments as more are stored → complete_video (VOD playlists, the
# dropped file removed). A job that finishes at once does all steps in one go.


def create_video(
    source: Node, mode: str, target: int, job_id: int | None, source_hash: str | None = None
) -> Node:
    """The folder for the video `source` is becoming, next to it; returns the folder node.

    It takes the file's name without extension, or "Name (2)" … if that is taken.
    """
    with db.atomic():
        video = Video.create(
            source_name=display(source.name),
            duration=0.0,
            mode=mode,
            target_duration=target,
            complete=False,
            job_id=job_id,
            source_hash=source_hash,
        )
        name = tree.free_name(source.parent_id, video_name(source.name))
        owner = _owner(source)
        folder = tree.create(  # (another host may take the name meanwhile)
            source.parent_id,
            name,
            NodeKind.VIDEO,
            READ_ONLY_DIR,
            or_free_name=True,
            video=video,
            **owner,
        )
        tree.create(folder.id, MASTER_NAME, NodeKind.MASTER, READ_ONLY_FILE, video=video, **owner)
        tree.touch_dir(source.parent_id)
    return folder


def add_rendition(
    folder: Node, info: RenditionInfo, init: StoredFile | None, init_data: bytes | None = None
) -> Rendition:
    """A rendition folder with its playlist and init segment (None for subtitles), whose
    bytes the catalog keeps too (`init_data`: see Rendition.init_data)."""
    with db.atomic():
        init_blob = blobs.add(init.size, init.parts) if init else None
        name = tree.free_name(folder.id, tree.safe_name(info.name))  # from a track's tags
        rendition = Rendition.create(
            video=folder.video_id,
            name=name,
            kind=info.kind,
            language=info.language,
            title=info.title,
            is_default=info.default,
            width=info.width,
            height=info.height,
            frame_rate=info.frame_rate,
            codecs=info.codecs,
            bandwidth=0,
            average_bandwidth=0,
            init_name=init.name if init else "",
            init_blob=init_blob,
            init_data=init_data,
        )
        owner = _owner(folder)
        rdir = tree.create(
            folder.id,
            name,
            NodeKind.RENDITION,
            READ_ONLY_DIR,
            video=folder.video_id,
            rendition=rendition,
            **owner,
        )
        tree.create(
            rdir.id,
            MEDIA_PLAYLIST_NAME,
            NodeKind.PLAYLIST,
            READ_ONLY_FILE,
            video=folder.video_id,
            rendition=rendition,
            **owner,
        )
        if init:
            _media_file(rdir, init.name, init_blob, init.size)
    return rendition


def add_poster(folder: Node, poster: StoredFile) -> str:
    """The video's poster, as a file in its folder; returns the name it got ("poster.jpg",
    unless a rendition folder took that name first)."""
    with db.atomic():
        blob = blobs.add(poster.size, poster.parts)
        Video.update(poster_blob=blob).where(Video.id == folder.video_id).execute()
        name = tree.free_name(folder.id, poster.name)
        _media_file(folder, name, blob, poster.size)
    return name


def _media_file(folder: Node, name: str, blob: Blob | None, size: int) -> None:
    """An immutable stored file of a video (init segment, segment, poster) in `folder`
    (the video's or a rendition's), owned like it."""
    tree.create(
        folder.id,
        name,
        NodeKind.MEDIA,
        READ_ONLY_FILE,
        video=folder.video_id,
        blob=blob,
        size=size,
        **_owner(folder),
    )


def add_segments(
    rendition: Rendition, segments: list[StoredFile], bit_rates: tuple[int, int]
) -> None:
    """Append segments to a rendition (its playlist grows), with its bit rates (peak,
    average, bits/s) over all its segments now (the caller applies HLS's rules)."""
    if not segments:
        return
    with db.atomic():
        rdir = Node.get((Node.rendition == rendition.id) & (Node.kind == NodeKind.RENDITION))
        seq = Segment.select().where(Segment.rendition == rendition.id).count()
        for n, seg in enumerate(segments, start=seq):
            blob = blobs.add(seg.size, seg.parts)
            Segment.create(
                rendition=rendition, seq=n, duration=seg.duration, name=seg.name, blob=blob
            )
            _media_file(rdir, seg.name, blob, seg.size)
        rendition.bandwidth, rendition.average_bandwidth = bit_rates
        rendition.save()


def complete_video(folder: Node, source: Node | None, start_time: float, target: int) -> None:
    """The video is whole: VOD playlists, and the dropped file it was made from is gone.

    `target` is the target duration its segments need: it only grows here, if a segment
    came out longer than planned."""
    with db.atomic():
        video = Video.get_by_id(folder.video_id)
        video.target_duration = max(video.target_duration, target)
        per_rendition = (
            Segment.select(Rendition.id, fn.SUM(Segment.duration))
            .join(Rendition)
            .where((Rendition.video == video.id) & (Rendition.kind == RenditionKind.VIDEO))
            .group_by(Rendition.id)
            .tuples()
        )
        video.duration = max((total for _, total in per_rendition), default=0.0)
        video.start_time = start_time
        video.complete, video.job_id = True, None
        video.save()
        if source is not None:
            remove_file(source)
            tree.touch_dir(source.parent_id)


def attach_rendition(
    folder: Node, info: RenditionInfo, segments: list[StoredFile], sidecar_size: int
) -> None:
    """Add a whole subtitle rendition to a complete video (subtitles dropped after it),
    with its size as one file (Rendition.sidecar_size)."""
    with db.atomic():
        rendition = add_rendition(folder, info, None)
        add_segments(rendition, segments, (0, 0))
        Rendition.update(sidecar_size=sidecar_size).where(Rendition.id == rendition.id).execute()


def video_segment_durations(video_id: int) -> list[float]:
    """Segment durations of a video's first video rendition: where every cut is."""
    first = (
        Rendition.select()
        .where((Rendition.video == video_id) & (Rendition.kind == RenditionKind.VIDEO))
        .order_by(Rendition.id)
        .first()
    )
    return [d for _, d in segments(first.id)] if first else []


def _owner(node: Node) -> dict:
    return {"uid": node.uid, "gid": node.gid}


def published_copy(parent_id: int, source_hash: str) -> Node | None:
    """A video folder in `parent_id` made from a file with these very bytes, if any."""
    folder = (
        Node.select()
        .join(Entry, on=(Entry.node == Node.id))
        .join(Video, on=(Node.video == Video.id), src=Node)
        .where(
            (Entry.parent == parent_id)
            & (Node.kind == NodeKind.VIDEO)
            & (Video.source_hash == source_hash)
        )
        .first()
    )
    return folder


def incomplete_videos() -> list[int]:
    """Videos whose job was cut short (the daemon stopped): they are made again."""
    return [v.id for v in Video.select(Video.id).where(Video.complete == False)]  # noqa: E712


def forget_missing_spools() -> list[str]:
    """After a restore on another machine: files whose newest content was only in a spool
    file that is not here. One with a stored version goes back to it; one without is gone.
    Their jobs go too. Returns what was lost, as paths with what happened."""
    from tgfs.catalog import jobs  # (jobs imports nothing of library)

    lost = []
    with db.atomic():
        for node in list(Node.select().where(Node.spool.is_null(False))):
            if os.path.exists(node.spool):
                continue
            path = tree.path_of(node)
            jobs.cancel(node.id)
            if node.blob_id is not None:
                node.spool = None
                node.save()
                lost.append(f"{display(path)}: newer content lost, its stored version kept")
            else:
                remove_file(node)
                lost.append(f"{display(path)}: never stored, lost")
        active = Job.select().where(
            Job.state.in_([JobState.WRITING, JobState.QUEUED, JobState.RUNNING])
        )
        for job in list(active):
            if not os.path.exists(job.spool):
                job.delete_instance()
    return lost


def remove_file(node: Node) -> None:
    """Delete an ordinary file's row; its blob (if stored) goes to the garbage list."""
    with db.atomic():
        blob_id = node.blob_id
        node.delete_instance()
        if blob_id is not None:
            blobs.free([blob_id])


def purge(node: Node) -> str | None:
    """Delete a node that has no name left, for good: its row, and its blob to the garbage
    list. One in the trash (tgfs.catalog.trash) keeps its row and its stored content and
    loses only a newer version still in the spool. Returns its spool file, for the caller
    to delete."""
    spool = node.spool
    if Trash.select().where(Trash.node == node.id).exists():
        if spool is not None:
            Node.update(spool=None, size=Blob.get_by_id(node.blob_id).size).where(
                Node.id == node.id
            ).execute()
        return spool
    remove_file(node)
    return spool


def purge_unlinked() -> list[str]:
    """At start-up: inodes the last daemon left without a name (unlinked while open) go;
    returns their spool files, for the caller to delete."""
    with db.atomic():
        return [spool for node in tree.unlinked() if (spool := purge(node)) is not None]


def remove_video(video_id: int) -> int:
    """Delete a video, its folder and everything in it; returns store parts queued for delete."""
    with db.atomic():
        renditions = list(Rendition.select().where(Rendition.video == video_id))
        blob_ids = [r.init_blob_id for r in renditions if r.init_blob_id is not None]
        poster = Video.get_by_id(video_id).poster_blob_id
        blob_ids += [poster] if poster is not None else []
        for r in renditions:
            blob_ids += [
                s.blob_id for s in Segment.select(Segment.blob).where(Segment.rendition == r.id)
            ]
        # Children before parents (rendition folders hold files): deepest nodes first.
        Node.delete().where((Node.video == video_id) & (Node.kind == NodeKind.MEDIA)).execute()
        Node.delete().where((Node.video == video_id) & (Node.kind == NodeKind.PLAYLIST)).execute()
        Node.delete().where((Node.video == video_id) & (Node.kind != NodeKind.VIDEO)).execute()
        Node.delete().where(Node.video == video_id).execute()
        Segment.delete().where(Segment.rendition.in_([r.id for r in renditions])).execute()
        Rendition.delete().where(Rendition.video == video_id).execute()
        Video.delete().where(Video.id == video_id).execute()
        return blobs.free(blob_ids)


def segments(rendition_id: int) -> list[tuple[str, float]]:
    rows = (
        Segment.select(Segment.name, Segment.duration)
        .where(Segment.rendition == rendition_id)
        .order_by(Segment.seq)
    )
    return [(s.name, s.duration) for s in rows]


@dataclasses.dataclass(frozen=True)
class TrackFiles:
    """A rendition's stored files in play order, for prefetch."""

    video_id: int
    kind: RenditionKind
    init_blob: int | None
    segment_blobs: list[int]  # by seq
    complete: bool  # the video is finished: no segment will be added


def track_files(rendition_id: int) -> TrackFiles | None:
    r = Rendition.get_or_none(Rendition.id == rendition_id)
    if r is None:
        return None
    rows = (
        Segment.select(Segment.blob).where(Segment.rendition == rendition_id).order_by(Segment.seq)
    )
    return TrackFiles(
        video_id=r.video_id,
        kind=RenditionKind(r.kind),
        init_blob=r.init_blob_id,
        segment_blobs=[s.blob_id for s in rows],
        complete=r.video.complete,
    )


def first_renditions(video_id: int) -> list[int]:
    """The renditions a player starting `video_id` reads first: the first variant listed
    in the master playlist and the default audio rendition, if any."""
    rows = list(
        Rendition.select(Rendition.id, Rendition.kind, Rendition.is_default)
        .where(Rendition.video == video_id)
        .order_by(Rendition.id)
    )
    first = [
        next((r.id for r in rows if r.kind == RenditionKind.VIDEO), None),
        next((r.id for r in rows if r.kind == RenditionKind.AUDIO and r.is_default), None),
    ]
    return [r for r in first if r is not None]
