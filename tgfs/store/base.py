"""The `BlobStore` interface: put, ranged get, delete, health — of parts.

A store keeps opaque pieces of bytes ("parts") and hands back a *location* string for each;
only the store that made a location interprets it. Splitting a blob into parts no larger
than TELEGRAM_MAX_FILE_SIZE, and joining them on read, happens above the store
(`tgfs.store.parts`), so every store gets it for free and none can get it wrong.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tgfs.store.slots import URGENT, Priority


@dataclasses.dataclass(frozen=True)
class PartRef:
    """A part as the catalog records it."""

    id: int | None  # catalog row id (None before it is recorded); names the part in the cache
    index: int  # position within its blob
    offset: int  # first byte within its blob
    size: int  # bytes of the blob it holds (the store may hold more: see `seal`)
    location: str
    seal: bytes | None = None  # its salt if sealed (tgfs.store.sealing); None: as it is


# A location may name several copies of a part, one per backend (Telegram: one message per
# bot): their locations joined by this separator. Whoever needs single copies (the crash
# scan, status's per-bot counts) splits with `replicas`; only the store that made a
# location knows what each copy means.
REPLICA_SEPARATOR = ","


def replicas(location: str) -> list[str]:
    return location.split(REPLICA_SEPARATOR)


class StoreError(Exception):
    """A store operation failed. `retryable` says whether trying again later may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class PartMissing(StoreError):
    """The store no longer has this part (deleted behind tgfs's back): retrying won't help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class BlobStore(abc.ABC):
    """Async part storage. Implementations must be safe to call concurrently."""

    kind: str = "abstract"

    @property
    def parallelism(self) -> int:
        """How many puts the ingest runner keeps in flight; stores with many backends
        raise it."""
        return 4

    @property
    def stripe_width(self) -> int:
        """Into how many parts a striped blob is split (tgfs.store.parts.plan): stores that
        put consecutive parts of a blob on different backends, read in parallel, raise
        it."""
        return 1

    @abc.abstractmethod
    async def put(
        self,
        src: Path,
        offset: int,
        size: int,
        key: str,
        spread: bool = False,
        everywhere: bool = False,
    ) -> str:
        """Store `size` bytes of `src` from `offset`; return the new part's location.

        `key` is a stable name for the content (e.g. "blob-17.part0"); stores that spread
        parts over several backends use it to choose one deterministically. `spread`: the
        part is one stripe of a blob striped over backends (see `stripe_width`), to be kept
        on the backend its key chooses, not moved to a less busy one. `everywhere`: a copy
        on every backend that is up, not TGFS_REPLICAS (the catalog's backups: any one
        surviving bot must be enough to restore).
        """

    @abc.abstractmethod
    async def get(
        self, location: str, offset: int, length: int, priority: Priority = URGENT
    ) -> bytes:
        """Bytes [offset, offset+length) of a part; fewer only at the part's end.

        `priority` says whether a reader waits for them or they are fetched ahead (see
        tgfs.store.slots): a store with limited transfer slots serves urgent gets first.
        """

    async def prepare(self, locations: list[str]) -> None:  # noqa: B027 - optional hook
        """These parts are likely to be read soon (a player opened their video): do now,
        in bulk, what a first read of each would do alone. Best effort: errors are the
        caller's to log and ignore. The Telegram store looks up the parts' messages (one
        call per bot per 200), so a seek's first read is one round trip shorter."""

    @abc.abstractmethod
    async def delete(self, location: str) -> None:
        """Remove a part. Deleting a part that is already gone is not an error."""

    async def delete_many(self, locations: list[str]) -> dict[str, str]:
        """Delete several parts; returns {location: why} for those that failed.

        Stores that can delete in batches (Telegram: 100 messages per call) override it.
        """
        failures = {}
        for location in locations:
            try:
                await self.delete(location)
            except StoreError as exc:
                failures[location] = str(exc)
        return failures

    async def orphans(self, referenced: Callable[[str], bool], whole: bool = False) -> list[str]:
        """Parts this store holds that no catalog row names (`referenced` says which do):
        what a crash in the middle of a put left behind. Called at start-up after an
        unclean stop, before any new put. `whole`: look through the entire store, not
        only where a crash leaves parts (`tgfs fsck`; slower, and a StoreError if the
        store cannot be asked). Stores that cannot tell return []."""
        return []

    async def add_copy(self, location: str, src: Path, size: int, key: str) -> str | None:
        """Store one more copy of a part (its bytes are in `src`) where the location has
        none (`tgfs fsck --repair`: a part stored while bots were down); returns the new
        copy's single location, or None if there is nowhere else to put it. Stores that
        keep one copy return None."""
        return None

    async def missing(self, locations: list[str]) -> list[str]:
        """The replicas among `locations` that the store no longer holds (for `tgfs
        fsck`), asked in bulk where the store can. Raises StoreError if it cannot tell."""
        return []

    async def save_manifest(self, data: bytes) -> None:
        """Keep `data` (a few KB: where the catalog's backups are, see tgfs.backups) where
        it can be found with nothing but the settings: no catalog, no location. A new
        manifest replaces the old one only once it is safely kept, so a failure leaves the
        previous one readable."""
        raise StoreError(f"the {self.kind} store cannot keep a backup manifest", retryable=False)

    async def load_manifest(self) -> bytes | None:
        """The manifest last saved (None if there is none)."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect before first use; the local store has nothing to connect."""

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]:
        """A JSON-able summary for status output. Must not contain secrets."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default store has none."""
