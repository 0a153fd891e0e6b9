"""Files whose bytes tgfs makes on open: a video's playlists (from the catalog) and the
control files of `/.tgfs/` (from the daemon's state).

A complete video never changes, so its playlists are rendered once and kept until the kernel
may have forgotten them (`forget_nodes`); a video still being made has EVENT playlists that
grow, rendered afresh on every open. Control files are always rendered afresh: they are
snapshots of live state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import pyfuse3

from tgfs.catalog import Node, NodeKind, Rendition, RenditionKind, library, tree
from tgfs.media import playlists


def master_entries(video_id: int) -> tuple[list[playlists.Variant], list[playlists.Alternative]]:
    """The master playlist's variant streams and EXT-X-MEDIA entries."""
    variants, alternatives = [], []
    rows = Rendition.select().where(Rendition.video == video_id).order_by(Rendition.id)
    for r in rows:
        uri = f"{r.name}/{library.MEDIA_PLAYLIST_NAME}"
        if r.kind == RenditionKind.VIDEO:
            variants.append(
                playlists.Variant(
                    uri=uri,
                    bandwidth=r.bandwidth,
                    average_bandwidth=r.average_bandwidth,
                    codecs=r.codecs,
                    width=r.width,
                    height=r.height,
                    frame_rate=r.frame_rate,
                )
            )
        else:
            audio = r.kind == RenditionKind.AUDIO
            alternatives.append(
                playlists.Alternative(
                    type="AUDIO" if audio else "SUBTITLES",
                    uri=uri,
                    name=r.title or r.name,
                    language=r.language,
                    default=r.is_default,
                    codecs=r.codecs if audio else "",
                    bandwidth=r.bandwidth if audio else 0,
                    average_bandwidth=r.average_bandwidth if audio else 0,
                )
            )
    return variants, alternatives


class Renderer:
    """Bytes of rendered files."""

    def __init__(self) -> None:
        self._kept: dict[int, bytes] = {}  # playlists of complete (immutable) videos

    def render(self, node: Node, control: Callable[[NodeKind], bytes]) -> bytes:
        """`control` renders a control file kind (status, cache, bots) from the daemon's
        state."""
        kind = node.node_kind
        if kind.is_live:
            return control(kind)
        if node.id in self._kept:
            return self._kept[node.id]
        video = node.video
        if kind is NodeKind.MASTER:
            text = playlists.master(*master_entries(node.video_id))
        else:
            text = playlists.media(
                video.target_duration,
                node.rendition.init_name or None,
                library.segments(node.rendition_id),
                video.complete,
            )
        data = text.encode()
        if video.complete:  # a video still being made has playlists that grow
            self._kept[node.id] = data
        return data

    def forget_nodes(self, inodes: Iterable[int]) -> None:
        """These nodes changed or went: render them afresh if they come back."""
        for inode in inodes:
            self._kept.pop(inode, None)


class Names:
    """What the kernel caches about names, told when the catalog changed behind its back
    (a video published, a dropped file replaced by its folder); playlists rendered for the
    nodes behind those names are dropped too."""

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer

    def invalidate(self, parent_id: int, names: list[str]) -> None:
        for name in names:
            if (node := tree.child(parent_id, name)) is not None:
                self.renderer.forget_nodes([node.id])
            pyfuse3.invalidate_entry_async(parent_id, os.fsencode(name), ignore_enoent=True)
