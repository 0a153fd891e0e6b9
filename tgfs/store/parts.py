"""Blobs larger than one part: split on write, joined on read (above every store)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tgfs.store.base import BlobStore, PartRef

log = logging.getLogger(__name__)


def plan(size: int, part_size: int) -> list[tuple[int, int]]:
    """(offset, size) of each part of a blob of `size` bytes; one empty part for size 0."""
    if size == 0:
        return [(0, 0)]
    return [(off, min(part_size, size - off)) for off in range(0, size, part_size)]


async def put_file(
    store: BlobStore,
    src: Path,
    size: int,
    part_size: int,
    key: str,
    on_progress: Callable[[int], None] | None = None,
) -> list[PartRef]:
    """Store `src` (of `size` bytes) as parts; returns them in order.

    On failure the parts already stored are deleted again (best effort) before the error
    propagates, so a failed put leaves nothing behind in the store.
    """
    done: list[PartRef] = []
    try:
        for index, (offset, length) in enumerate(plan(size, part_size)):
            location = await store.put(src, offset, length, f"{key}.part{index}")
            done.append(PartRef(id=None, index=index, offset=offset, size=length,
                                location=location))
            if on_progress:
                on_progress(length)
    except BaseException:
        for part in done:
            try:
                await store.delete(part.location)
            except Exception as exc:  # the original error matters more
                log.warning("could not remove part %s after a failed put: %s",
                            part.location, exc)
        raise
    return done


def overlapping(parts: list[PartRef], offset: int, length: int) -> list[PartRef]:
    """The parts that hold bytes [offset, offset+length) of their blob."""
    end = offset + length
    return [p for p in parts if p.offset < end and p.offset + p.size > offset]
