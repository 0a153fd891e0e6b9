"""Blobs as parts: split on write, joined on read, sealed on the way out and opened on
the way back when the library has an encryption key — above every store, so every store
gets it for free and none can get it wrong.

Sealing (tgfs.store.sealing) happens between the local file and the store: each part is
sealed into a scratch file beside its source (`.sealing-*`, removed once stored; one a
crash leaves is in the spool or a job's folder, which start-up sweeps), and that file is
what the store uploads, under an opaque name. Reads go the other way: the stored frames
that cover a range are fetched and opened, nothing more.
"""

from __future__ import annotations

import dataclasses
import errno
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from tgfs.store.base import BlobStore, PartRef, StoreError
from tgfs.store.sealing import (
    NoKey,
    SealBroken,
    Sealer,
    new_salt,
    plain_capacity,
    sealed_range,
)
from tgfs.store.slots import URGENT, Priority

# Stripes are whole read chunks (tgfs.cache.CHUNK), so a chunk never spans two stripes.
STRIPE_UNIT = 2**20


def plan(
    size: int, part_size: int, stripes: int = 1, unit: int = STRIPE_UNIT
) -> list[tuple[int, int]]:
    """(offset, size) of each part of a blob of `size` bytes; one empty part for size 0.

    `stripes` > 1 splits a blob smaller than that many parts into up to `stripes` parts
    of whole `unit`s (1 MiB; what seals into 1 MiB when sealed) instead: a store that puts
    consecutive parts on different backends (bots) then serves the blob from all of them
    at once.
    """
    if size == 0:
        return [(0, 0)]
    if stripes > 1:
        units = -(-size // unit)
        per_stripe = -(-units // min(stripes, units)) * unit
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
    sealer: Sealer | None = None,
) -> dict[Path, list[PartRef]]:
    """Store every file as parts; returns each file's parts in order.

    Parts of all files go up concurrently, `store.parallelism` at a time, in file order (a
    multi-bot store spreads them over its bots). Each part is reported to `on_part` the
    moment it is stored, so if the upload fails or is cancelled the caller already knows
    what to queue for deletion — without awaiting anything. Each file whose parts are all
    stored is reported to `on_file` (a video can be published segment by segment). The
    first store error stops the rest and is raised. With a `sealer`, every part is sealed
    (see the module doc) and its PartRef carries its salt.
    """
    results: dict[Path, list[PartRef | None]] = {}
    pieces = []
    # Sealed, a part's plaintext is what seals into the same stored sizes (see
    # tgfs.store.sealing, Alignment): no part over the store's limit, stripes in whole MiBs.
    limit = part_size if sealer is None else plain_capacity(part_size)
    unit = STRIPE_UNIT if sealer is None else plain_capacity(STRIPE_UNIT)
    for upload in files:
        planned = plan(upload.size, limit, store.stripe_width if upload.stripe else 1, unit)
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
                if sealer is None:
                    salt = None
                    location = await store.put(
                        upload.path,
                        offset,
                        length,
                        f"{upload.key}.part{index}",
                        spread,
                        upload.everywhere,
                    )
                else:
                    salt = new_salt()
                    location = await _put_sealed(
                        store, sealer, salt, upload, index, offset, length, spread
                    )
            except StoreError as exc:
                failure.append(exc)
                scope.cancel()
                return
            parts = results[upload.path]
            parts[index] = ref = PartRef(
                id=None, index=index, offset=offset, size=length, location=location, seal=salt
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


async def _put_sealed(
    store: BlobStore,
    sealer: Sealer,
    salt: bytes,
    upload: Upload,
    index: int,
    offset: int,
    length: int,
    spread: bool,
) -> str:
    scratch = upload.path.parent / f".sealing-{uuid.uuid4().hex}"
    try:
        try:
            stored = await trio.to_thread.run_sync(
                sealer.seal_file, salt, upload.path, offset, length, scratch
            )
        except OSError as exc:  # a full disk passes; a file gone is the caller's to see
            raise StoreError(
                f"cannot seal {upload.key} part {index}: {exc.strerror or exc}",
                retryable=exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, None),
            ) from None
        return await store.put(
            scratch, 0, stored, f"{sealer.name(upload.key)}.part{index}", spread, upload.everywhere
        )
    finally:
        scratch.unlink(missing_ok=True)


async def read_part(
    store: BlobStore,
    sealer: Sealer | None,
    part: PartRef,
    offset: int,
    length: int,
    priority: Priority = URGENT,
) -> bytes:
    """Bytes [offset, offset + length) of a part's content (fewer only at its end): as
    stored, or opened from the sealed frames that hold them. A frame that fails
    authentication is SealBroken naming the part; never bytes for a reader."""
    if part.seal is None:
        return await store.get(part.location, offset, length, priority)
    if sealer is None:
        raise NoKey(part.id)
    start, count = sealed_range(offset, length, part.size)
    stored = await store.get(part.location, start, count, priority) if count else b""
    try:  # in a thread: the copies around AES, not AES, take ~1 ms per MiB
        return await trio.to_thread.run_sync(
            sealer.open, part.seal, stored, offset, length, part.size
        )
    except SealBroken as exc:
        raise SealBroken(f"part {part.id} at {part.location}: {exc}") from None


def overlapping(parts: list[PartRef], offset: int, length: int) -> list[PartRef]:
    """The parts that hold bytes [offset, offset+length) of their blob."""
    end = offset + length
    return [p for p in parts if p.offset < end and p.offset + p.size > offset]
