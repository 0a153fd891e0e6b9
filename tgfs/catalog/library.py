"""Videos in the tree: publishing a finished ingest, and removing a video folder."""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

from tgfs.catalog import blobs, tree
from tgfs.catalog.schema import Node, NodeKind, Rendition, Segment, Video, db
from tgfs.media.playlists import MASTER_NAME, MEDIA_PLAYLIST_NAME, Variant, target_duration
from tgfs.store.base import PartRef

READ_ONLY_DIR = 0o555
READ_ONLY_FILE = 0o444


@dataclasses.dataclass
class StoredFile:
    """One HLS file after upload."""

    name: str
    size: int
    parts: list[PartRef]
    duration: float = 0.0  # segments only


@dataclasses.dataclass
class StoredRendition:
    name: str
    width: int
    height: int
    frame_rate: float | None
    codecs: str
    bandwidth: int
    average_bandwidth: int
    init: StoredFile
    segments: list[StoredFile]


def video_name(source_name: str) -> str:
    """The folder a dropped video becomes: its name without the extension."""
    stem = PurePosixPath(source_name).stem
    return stem or source_name


def publish(
    source: Node, mode: str, renditions: list[StoredRendition]
) -> Node:
    """Replace the dropped file `source` by its video folder, in one transaction.

    The folder takes the file's name without extension, or "Name (2)" … if that is taken.
    Returns the new folder's node.
    """
    all_durations = [s.duration for r in renditions for s in r.segments]
    with db.atomic():
        video = Video.create(
            source_name=source.name,
            duration=max(sum(s.duration for s in r.segments) for r in renditions),
            mode=mode,
            target_duration=target_duration(all_durations),
        )
        name = tree.free_name(source.parent_id, video_name(source.name))
        owner = {"uid": source.uid, "gid": source.gid}
        folder = tree.create(source.parent_id, name, NodeKind.VIDEO, READ_ONLY_DIR,
                             video=video, **owner)
        tree.create(folder.id, MASTER_NAME, NodeKind.MASTER, READ_ONLY_FILE, video=video,
                    **owner)
        for r in renditions:
            _add_rendition(video, folder, r, owner)
        remove_file(source)
        tree.touch_dir(source.parent_id)
    return folder


def _add_rendition(video: Video, folder: Node, r: StoredRendition, owner: dict) -> None:
    init_blob = blobs.add(r.init.size, r.init.parts)
    rendition = Rendition.create(
        video=video, name=r.name, width=r.width, height=r.height, frame_rate=r.frame_rate,
        codecs=r.codecs, bandwidth=r.bandwidth, average_bandwidth=r.average_bandwidth,
        init_name=r.init.name, init_blob=init_blob,
    )
    rdir = tree.create(folder.id, r.name, NodeKind.RENDITION, READ_ONLY_DIR, video=video,
                       rendition=rendition, **owner)
    tree.create(rdir.id, MEDIA_PLAYLIST_NAME, NodeKind.PLAYLIST, READ_ONLY_FILE, video=video,
                rendition=rendition, **owner)
    tree.create(rdir.id, r.init.name, NodeKind.MEDIA, READ_ONLY_FILE, video=video,
                blob=init_blob, size=r.init.size, **owner)
    for seq, seg in enumerate(r.segments):
        blob = blobs.add(seg.size, seg.parts)
        Segment.create(rendition=rendition, seq=seq, duration=seg.duration, name=seg.name,
                       blob=blob)
        tree.create(rdir.id, seg.name, NodeKind.MEDIA, READ_ONLY_FILE, video=video,
                    blob=blob, size=seg.size, **owner)


def remove_file(node: Node) -> None:
    """Delete an ordinary file's row; its blob (if stored) goes to the garbage list."""
    with db.atomic():
        blob_id = node.blob_id
        node.delete_instance()
        if blob_id is not None:
            blobs.free([blob_id])


def remove_video(video_id: int) -> int:
    """Delete a video, its folder and everything in it; returns store parts queued for delete."""
    with db.atomic():
        renditions = list(Rendition.select().where(Rendition.video == video_id))
        blob_ids = [r.init_blob_id for r in renditions]
        for r in renditions:
            blob_ids += [s.blob_id for s in Segment.select(Segment.blob).where(
                Segment.rendition == r.id)]
        # Children before parents (rendition folders hold files): deepest nodes first.
        Node.delete().where((Node.video == video_id) & (Node.kind == NodeKind.MEDIA)).execute()
        Node.delete().where((Node.video == video_id) & (Node.kind == NodeKind.PLAYLIST)).execute()
        Node.delete().where((Node.video == video_id) & (Node.kind != NodeKind.VIDEO)).execute()
        Node.delete().where(Node.video == video_id).execute()
        Segment.delete().where(Segment.rendition.in_([r.id for r in renditions])).execute()
        Rendition.delete().where(Rendition.video == video_id).execute()
        Video.delete().where(Video.id == video_id).execute()
        return blobs.free(blob_ids)


def variants(video_id: int) -> list[Variant]:
    return [
        Variant(
            uri=f"{r.name}/{MEDIA_PLAYLIST_NAME}", bandwidth=r.bandwidth,
            average_bandwidth=r.average_bandwidth, codecs=r.codecs, width=r.width,
            height=r.height, frame_rate=r.frame_rate,
        )
        for r in Rendition.select().where(Rendition.video == video_id).order_by(Rendition.id)
    ]


def segments(rendition_id: int) -> list[tuple[str, float]]:
    rows = (Segment.select(Segment.name, Segment.duration)
            .where(Segment.rendition == rendition_id).order_by(Segment.seq))
    return [(s.name, s.duration) for s in rows]
