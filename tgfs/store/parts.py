"""Blobs larger than one part: split on write, joined on read (above every store)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from tgfs.store.base import BlobStore, PartRef, StoreError

# Stripes are whole read chunks (tgfs.cache.CHUNK), so a chunk never spans two stripes.
STRIPE_UNIT = 2**20


def plan(size: int, part_size: int, stripes: int = 1) -> list[tuple[int, int]]:
    """(offset, size) of each part of a blob of `size` bytes; one empty part for size 0.

    `stripes` > 1 splits a blob smaller than that many parts into up to `stripes` parts
    of whole 1 MiB units instead: a store that puts consecutive parts on different
    backends (bots) then serves the blob from all of them at once.
    """
    if size == 0:
        return [(0, 0)]
    if stripes > 1:
        units = -(-size // STRIPE_UNIT)
        per_stripe = -(-units // min(stripes, units)) * STRIPE_UNIT
        part_size = min(part_size, per_stripe)
    return [(off, min(part_size, size - off)) for off in range(0, size, part_size)]


@dataclasses.dataclass(frozen=True)
class Upload:
    """One local file to store: its parts are named `<key>.part<N>` for the store."""

    path: Path
    size: int
    key: str
    # Read whole, and soon after a wait (an HLS segment): split over the store's backends
    # (`BlobStore.stripe_width` parts) so its bytes come from several at once.
    stripe: bool = False
    everywhere: bool = False  # a copy on every backend (see BlobStore.put)


async def put_files(
    store: BlobStore,
    files: Sequence[Upload],
    part_size: int,
    on_part: Callable[[PartRef], None],
    on_file: Callable[[Path, list[PartRef]], None] | None = None,
) -> dict[Path, list[PartRef]]:
    """Store every file as parts; returns each file's parts in order.

    Parts of all files go up concurrently, `store.parallelism` at a time, in file order (a
    multi-bot store spreads them over its bots). Each part is reported to `on_part` the
    moment it is stored, so if the upload fails or is cancelled the caller already knows
    what to queue for deletion — without awaiting anything. Each file whose parts are all
    stored is reported to `on_file` (a video can be published segment by segment). The
    first store error stops the rest and is raised.
    """
    results: dict[Path, list[PartRef | None]] = {}
    pieces = []
    for upload in files:
        planned = plan(upload.size, part_size, store.stripe_width if upload.stripe else 1)
        results[upload.path] = [None] * len(planned)
        spread = upload.stripe and len(planned) > 1
        pieces += [
            (upload, index, offset, length, spread)
            for index, (offset, length) in enumerate(planned)
        ]
    # A fixed pool of senders taking pieces in order: parts start in file order (a video
    # published while it uploads needs its first segments first), whatever order the
    # scheduler would wake a crowd of waiting tasks in.
    queue = iter(pieces)
    failure: list[StoreError] = []

    async def sender(scope: trio.CancelScope) -> None:
        for upload, index, offset, length, spread in queue:
            try:
                location = await store.put(
                    upload.path,
                    offset,
                    length,
                    f"{upload.key}.part{index}",
                    spread,
                    upload.everywhere,
                )
            except StoreError as exc:
                failure.append(exc)
                scope.cancel()
                return
            parts = results[upload.path]
            parts[index] = ref = PartRef(
                id=None, index=index, offset=offset, size=length, location=location
            )
            on_part(ref)
            if on_file is not None and all(p is not None for p in parts):
                on_file(upload.path, [p for p in parts if p is not None])

    async with trio.open_nursery() as nursery:
        for _ in range(min(store.parallelism, len(pieces))):
            nursery.start_soon(sender, nursery.cancel_scope)
    if failure:
        raise failure[0]
    return {path: [p for p in parts if p is not None] for path, parts in results.items()}


def overlapping(parts: list[PartRef], offset: int, length: int) -> list[PartRef]:
    """The parts that hold bytes [offset, offset+length) of their blob."""
    end = offset + length
    return [p for p in parts if p.offset < end and p.offset + p.size > offset]
