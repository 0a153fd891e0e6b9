"""The Telegram store: parts as documents in private channels, one channel per bot.

Placement: every part has a key ("job12-3.part0"); each bot gets a score from a hash of
(bot id, key) and the bots are ranked by it — rendezvous hashing. The top-ranked bot that
is up takes the part, so parts spread evenly, the choice is reproducible, and adding a bot
moves only the share of parts that the new bot wins (about 1/n). A bot that is paced or
in a flood wait for more than `DIVERT_AFTER` seconds passes the part to the next bot in
the ranking; with TGFS_REPLICAS=R the part goes to the first R distinct bots.

Locations record where each copy actually went, as comma-separated replicas:

    tg:<bot user id>:<channel id>:<message id>[,tg:…]

The bot's user id is the public half of its token, so renumbering TELEGRAM_BOT_TOKEN_N
does not orphan anything; reads and deletes go through the bot that made the message
(file ids and access hashes are only valid for the account that saw the message).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from tgfs.config import Settings
from tgfs.store.base import REPLICA_SEPARATOR, BlobStore, PartMissing, StoreError
from tgfs.store.base import replicas as replica_locations
from tgfs.store.slots import URGENT, Priority, Slots
from tgfs.store.telegram import client as tg
from tgfs.store.telegram.bridge import AsyncioBridge
from tgfs.store.telegram.link import DIVERT_AFTER, BotFailed, BotFlooded, BotLink

log = logging.getLogger(__name__)

START_WAIT = 20.0  # seconds start() waits for logins before mounting anyway
# Finding parts a crash left behind (see `orphans`): around the highest message id each
# bot is known to have sent into its channel. Behind it, because replies to concurrent
# uploads can arrive out of order; ahead, for the uploads in flight (at most
# TGFS_BOT_TRANSFERS per bot) and any service messages between them.
SCAN_BEHIND = 64
SCAN_AHEAD = 200
_PART_NAME = re.compile(r".+\.part\d+")  # how put() names documents: "<key>.part<N>"
# The backup manifest's document: "tgfs-manifest-<sequence>.json" (see save_manifest).
MANIFEST_PREFIX = "tgfs-manifest-"
PROBE_NAME = "fsck-probe.part0"  # see TelegramStore._newest_id
EMPTY = "tg:empty"  # a zero-byte part: Telegram refuses empty documents, and needs none
_PREFIX = "tg:"


@dataclasses.dataclass(frozen=True)
class Replica:
    bot_id: int
    channel_id: int
    message_id: int

    def __str__(self) -> str:
        return f"{_PREFIX}{self.bot_id}:{self.channel_id}:{self.message_id}"


def parse_location(location: str) -> list[Replica]:
    replicas = []
    for item in replica_locations(location):
        head, _, rest = item.partition(":")
        fields = rest.split(":")
        if head + ":" != _PREFIX or len(fields) != 3:
            raise StoreError(f"not a Telegram-store location: {location!r}", retryable=False)
        try:
            replicas.append(Replica(*(int(f) for f in fields)))
        except ValueError:
            raise StoreError(
                f"not a Telegram-store location: {location!r}", retryable=False
            ) from None
    return replicas


def rank(bot_ids: list[int], key: str) -> list[int]:
    """Bots in rendezvous order for `key`: highest hash of (bot, key) first."""

    def score(bot_id: int) -> bytes:
        return hashlib.blake2b(f"{bot_id}/{key}".encode(), digest_size=8).digest()

    return sorted(bot_ids, key=score, reverse=True)


_PART_KEY = re.compile(r"^(.*)\.part(\d+)$")


def placement(bot_ids: list[int], key: str) -> list[int]:
    """Bots in order of preference for the part named `key` ("<blob key>.part<N>").

    The blob's rendezvous ranking, rotated by N: consecutive parts of one blob start on
    consecutive bots, so a striped segment (or a large file) is read from several bots at
    once, and each part still has a stable first choice."""
    match = _PART_KEY.match(key)
    if match is None:
        return rank(bot_ids, key)
    order = rank(bot_ids, match[1])
    turn = int(match[2]) % len(order) if order else 0
    return order[turn:] + order[:turn]


class TelegramStore(BlobStore):
    kind = "telegram"

    def __init__(self, settings: Settings, factory: Any = None, session_suffix: str = "") -> None:
        self.settings = settings
        self.replicas = settings.replicas
        self._bridge = AsyncioBridge()
        factory = factory or tg.load_factory(settings.telegram_client)
        self.links = {
            bot.bot_id: BotLink(
                bot, settings, self._bridge, factory, f"bot-{bot.bot_id}{session_suffix}"
            )
            for bot in settings.bots
        }
        self._upload_cap = trio.CapacityLimiter(settings.transfers)
        # Half of all download slots at most for prefetch (see tgfs.store.slots).
        self._download_cap = Slots(settings.transfers, settings.transfers // 2)
        # "<bot id>:<channel id>" → the highest message id it is known to have sent there.
        self._marks_path = settings.session_dir / f"marks{session_suffix}.json"
        self._marks: dict[str, int] = self._load_marks()

    def _load_marks(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self._marks_path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _mark(self, replica: Replica) -> None:
        """Remember the highest message id sent per channel: where to look after a crash.
        Written at once (a small file, replaced whole): the window around it is wide."""
        key = f"{replica.bot_id}:{replica.channel_id}"
        if replica.message_id <= self._marks.get(key, 0):
            return
        self._marks[key] = replica.message_id
        self._save_marks()

    def _sending(self, link: BotLink) -> None:
        """Before a send to a channel this data directory has no mark for: mark 0, so a
        crash before the first reply is looked for from the channel's first message (a
        channel with no mark is never scanned: it may be another library's)."""
        key = f"{link.bot_id}:{link.channel_id}"
        if key not in self._marks:
            self._marks[key] = 0
            self._save_marks()

    def _save_marks(self) -> None:
        try:
            self._marks_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self._marks_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._marks))
            os.replace(tmp, self._marks_path)
        except OSError as exc:
            log.warning("store: cannot record the channel marks: %s", exc)

    @property
    def stripe_width(self) -> int:
        return min(self.settings.stripe_width, len(self.links))

    @property
    def parallelism(self) -> int:
        # Enough puts in flight to keep every bot's transfer slots busy.
        return max(self.settings.transfers, len(self.links) * self.settings.bot_transfers)

    async def start(self) -> None:
        """Log every bot in. Fails only if no bot can work at all because of its settings
        (tokens, channels); a bot that is merely unreachable is retried later."""
        self._bridge.start()
        # Bots that are slow to answer finish logging in on first use: the mount comes up.
        with trio.move_on_after(START_WAIT):
            async with trio.open_nursery() as nursery:
                for link in self.links.values():
                    nursery.start_soon(self._connect, link)
        if all(link.permanently_failed() for link in self.links.values()):
            reasons = "; ".join(f"bot {link.number}: {link.reason}" for link in self.links.values())
            await self.aclose()
            raise StoreError(f"no Telegram bot can be used: {reasons}", retryable=False)

    @staticmethod
    async def _connect(link: BotLink) -> None:
        # Each call inside has its own deadline; a failure is logged and kept by the link.
        with contextlib.suppress(BotFailed):
            await link.connect()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for link in self.links.values():
                await link.close()
            await self._bridge.close()

    # ---- put ----------------------------------------------------------------------------

    async def put(
        self,
        src: Path,
        offset: int,
        size: int,
        key: str,
        spread: bool = False,
        everywhere: bool = False,
    ) -> str:
        if size == 0:
            return EMPTY
        placed: list[Replica] = []
        failed: set[int] = set()
        reasons: list[str] = []
        wanted = len(self.links) if everywhere else self.replicas
        while len(placed) < wanted:
            exclude = failed | {r.bot_id for r in placed}
            link, patient = self._choose(key, exclude, spread)
            if link is None:
                if placed:
                    log.warning(
                        "%s: stored on %d of %d bots (%s)",
                        key,
                        len(placed),
                        wanted,
                        "; ".join(reasons) or "no other bot is up",
                    )
                    break
                raise StoreError(
                    f"no bot could take {key}: " + ("; ".join(reasons) or self._down_summary())
                )
            ticket = link.reserve(trio.current_time())
            self._sending(link)
            try:
                message_id = await link.send(
                    src, offset, size, key, ticket, self._upload_cap, patient
                )
            except BotFlooded:
                continue  # its flood_until now steers _choose to another bot
            except BotFailed as exc:
                failed.add(link.bot_id)
                reasons.append(str(exc))
                log.info("%s: %s; trying the next bot", key, exc)
                continue
            placed.append(Replica(link.bot_id, link.channel_id, message_id))
            self._mark(placed[-1])
        return REPLICA_SEPARATOR.join(str(r) for r in placed)

    def _choose(
        self, key: str, exclude: set[int], spread: bool = False
    ) -> tuple[BotLink | None, bool]:
        """(bot, patient): the first bot in the key's ranking that is up, can send soon
        and has a free transfer slot. Under load that is not the first-ranked bot for every
        key, which keeps all bots busy; the location records the bot actually used. If
        every bot is paced or flood-waiting, the one free first, and it is waited for
        (`patient`). A `spread` part (a stripe) skips the free-slot rule: its siblings
        rank other bots first, and bending under load put two stripes of one segment on
        one bot (a seek then read 4 MiB from one 2 MB/s link)."""
        now = trio.current_time()
        candidates = [
            self.links[b]
            for b in placement(list(self.links), key)
            if b not in exclude and self.links[b].available(now)
        ]
        if not candidates:
            return None, False
        soon = [link for link in candidates if link.ready_at(now) - now <= DIVERT_AFTER]
        if not soon:
            return min(candidates, key=lambda link: link.ready_at(now)), True
        if spread:
            return soon[0], False
        slots = self.settings.bot_transfers
        return next(
            (link for link in soon if link.inflight < slots),
            min(soon, key=lambda link: link.inflight),
        ), False

    def _down_summary(self) -> str:
        return (
            "; ".join(
                f"bot {link.number}: {link.reason}" for link in self.links.values() if not link.up
            )
            or "all bots are busy"
        )

    # ---- get ----------------------------------------------------------------------------

    async def get(
        self, location: str, offset: int, length: int, priority: Priority = URGENT
    ) -> bytes:
        if location == EMPTY:
            return b""
        now = trio.current_time()
        replicas = parse_location(location)
        # Replicas on bots that are up first; the others are still tried as a last resort.
        replicas.sort(
            key=lambda r: not (r.bot_id in self.links and self.links[r.bot_id].available(now))
        )
        missing: list[str] = []
        problems: list[str] = []
        for replica in replicas:
            link = self.links.get(replica.bot_id)
            if link is None:
                problems.append(f"bot id {replica.bot_id} is no longer configured")
                continue
            try:
                return await link.read(
                    replica.channel_id,
                    replica.message_id,
                    offset,
                    length,
                    self._download_cap,
                    priority,
                )
            except PartMissing as exc:
                missing.append(str(exc))
            except (BotFlooded, BotFailed) as exc:
                problems.append(str(exc))
        if missing and not problems:
            raise PartMissing("; ".join(missing))
        raise StoreError("; ".join(missing + problems))

    async def prepare(self, locations: list[str]) -> None:
        """Look up the messages of these parts in bulk, through the bot that made each
        (first replica): a read then starts with its download, not a look-up."""
        wanted: dict[tuple[int, int], list[int]] = {}  # (bot id, channel) → message ids
        for location in locations:
            if location == EMPTY:
                continue
            replica = parse_location(location)[0]
            if replica.bot_id in self.links:
                wanted.setdefault((replica.bot_id, replica.channel_id), []).append(
                    replica.message_id
                )
        async with trio.open_nursery() as nursery:
            for (bot_id, channel_id), message_ids in wanted.items():
                nursery.start_soon(self._prepare_on, self.links[bot_id], channel_id, message_ids)

    @staticmethod
    async def _prepare_on(link: BotLink, channel_id: int, message_ids: list[int]) -> None:
        try:
            await link.look_up(channel_id, message_ids)
        except (BotFlooded, BotFailed, StoreError) as exc:
            log.info("store: looking up messages ahead on bot %d: %s", link.number, exc)

    # ---- delete -------------------------------------------------------------------------

    async def delete(self, location: str) -> None:
        failures = await self.delete_many([location])
        if failures:
            raise StoreError(failures[location])

    async def delete_many(self, locations: list[str]) -> dict[str, str]:
        """Delete in batches of ≤ 100 messages per bot and channel, all bots at once."""
        groups: dict[tuple[int, int], list[tuple[int, str]]] = {}
        failures: dict[str, str] = {}
        for location in locations:
            if location == EMPTY:
                continue
            try:
                replicas = parse_location(location)
            except StoreError as exc:
                failures[location] = str(exc)
                continue
            for r in replicas:
                groups.setdefault((r.bot_id, r.channel_id), []).append((r.message_id, location))

        async def delete_group(bot_id: int, channel_id: int, items: list[tuple[int, str]]) -> None:
            link = self.links.get(bot_id)
            try:
                if link is None:
                    raise BotFailed(f"bot id {bot_id} is no longer configured")
                await link.delete(channel_id, [message_id for message_id, _ in items])
            except (BotFailed, BotFlooded) as exc:
                for _, location in items:
                    failures[location] = str(exc)

        async with trio.open_nursery() as nursery:
            for (bot_id, channel_id), items in groups.items():
                nursery.start_soon(delete_group, bot_id, channel_id, items)
        return failures

    # ---- after a crash --------------------------------------------------------------------

    async def orphans(self, referenced: Callable[[str], bool], whole: bool = False) -> list[str]:
        """Documents tgfs sent that no catalog row names: an upload that Telegram accepted
        as the daemon died, whose message id tgfs never learned. Bots cannot list a
        channel's history, but message ids in a channel are consecutive, and every upload
        in flight at a crash got an id near the highest one recorded (see `_mark`): look
        at those, and keep to documents named like tgfs's parts.

        `whole` (fsck): every id from 1 to the channel's newest, 200 per call, which finds
        the gaps too; the newest is learned by sending a tiny probe document (named like a
        part, so one a kill leaves behind is found as an orphan next time) and deleting it.
        Manifests other than the one pinned are orphans too (a save cut short). All bots
        at once: each has its own pacing."""

        async def scan(link: BotLink) -> list[str]:
            if whole:
                pinned = await link.pinned()
                ids = list(range(1, await self._newest_id(link) + 1))
            else:
                pinned = None
                mark = self._marks.get(f"{link.bot_id}:{link.channel_id}")
                if mark is None:
                    return []  # this data directory never sent anything there (_sending)
                ids = list(range(max(1, mark - SCAN_BEHIND), mark + SCAN_AHEAD + 1))
            found = []
            for message in await link.documents(link.channel_id, ids) if ids else []:
                name = getattr(message.document, "file_name", None) or ""
                replica = Replica(link.bot_id, link.channel_id, int(message.id))
                stale_manifest = (
                    whole
                    and _manifest_seq(message) is not None
                    and (pinned is None or int(message.id) != int(pinned.id))
                )
                if (_PART_NAME.fullmatch(name) or stale_manifest) and not referenced(str(replica)):
                    found.append(str(replica))
                    self._mark(replica)
            return found

        return await _on_bots(
            [(link, functools.partial(scan, link)) for link in self.links.values()]
        )

    async def missing(self, locations: list[str]) -> list[str]:
        """Asks each bot for its messages in batches of 200 (get_messages), all bots at
        once: a replica whose message is gone, or holds no document, is missing. A bot
        that cannot be asked makes this a StoreError: fsck must not call parts missing it
        cannot see."""
        wanted: dict[tuple[int, int], set[int]] = {}
        for location in locations:
            if location == EMPTY:
                continue
            for r in parse_location(location):
                wanted.setdefault((r.bot_id, r.channel_id), set()).add(r.message_id)

        async def ask(link: BotLink, channel_id: int, ids: set[int]) -> list[str]:
            found = {int(m.id) for m in await link.documents(channel_id, sorted(ids))}
            return [str(Replica(link.bot_id, channel_id, m)) for m in sorted(ids - found)]

        work = []
        for (bot_id, channel_id), ids in wanted.items():
            link = self.links.get(bot_id)
            if link is None:
                raise StoreError(f"bot {bot_id} is not configured: cannot check its parts")
            work.append((link, functools.partial(ask, link, channel_id, ids)))
        return await _on_bots(work)

    async def _newest_id(self, link: BotLink) -> int:
        """The id of the newest message in the bot's channel (ids are consecutive per
        channel): one below a probe's, which is deleted at once."""
        path = self.settings.session_dir / f".probe-{link.bot_id}"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        await trio.to_thread.run_sync(path.write_bytes, b"\0")
        try:
            ticket = link.reserve(trio.current_time())
            probe = await link.send(path, 0, 1, PROBE_NAME, ticket, self._upload_cap, patient=True)
        finally:
            path.unlink(missing_ok=True)
        await link.delete(link.channel_id, [probe])
        return probe - 1

    async def add_copy(self, location: str, src: Path, size: int, key: str) -> str | None:
        """One more copy on the first bot in the key's ranking that has none and is up."""
        held = {r.bot_id for r in parse_location(location)}
        failed: set[int] = set()
        while True:
            link, patient = self._choose(key, held | failed)
            if link is None:
                return None
            ticket = link.reserve(trio.current_time())
            self._sending(link)
            try:
                message_id = await link.send(src, 0, size, key, ticket, self._upload_cap, patient)
            except BotFlooded:
                continue
            except BotFailed as exc:
                log.info("%s: %s; trying the next bot", key, exc)
                failed.add(link.bot_id)
                continue
            replica = Replica(link.bot_id, link.channel_id, message_id)
            self._mark(replica)
            return str(replica)

    # ---- the backup manifest -------------------------------------------------------------

    async def save_manifest(self, data: bytes) -> None:
        """Every bot that is up sends the manifest as a document and pins it in its
        channel, then deletes the manifest it pinned before: any one surviving bot is
        enough to find the backups. The document's name carries a sequence number, so the
        newest is known when bots disagree (one was down during a save)."""
        name = f"{MANIFEST_PREFIX}{time.time_ns()}.json"
        path = self.settings.session_dir / f".{name}"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        await trio.to_thread.run_sync(path.write_bytes, data)
        saved, reasons = 0, []
        try:
            for link in self.links.values():
                try:
                    old = await link.pinned()
                    ticket = link.reserve(trio.current_time())
                    message_id = await link.send(
                        path, 0, len(data), name, ticket, self._upload_cap, patient=True
                    )
                    await link.pin(message_id)
                    if old is not None and _manifest_seq(old) is not None:
                        await link.delete(link.channel_id, [int(old.id)])
                    saved += 1
                except (BotFailed, BotFlooded, StoreError) as exc:
                    reasons.append(f"bot {link.number}: {exc}")
        finally:
            path.unlink(missing_ok=True)
        if reasons:
            log.warning("backup manifest: not kept by every bot: %s", "; ".join(reasons))
        if not saved:
            raise StoreError("no bot could keep the backup manifest: " + "; ".join(reasons))

    async def load_manifest(self) -> bytes | None:
        """The newest manifest any bot has pinned (bots that are down are skipped)."""
        newest: tuple[int, BotLink, Any] | None = None
        reasons = []
        for link in self.links.values():
            try:
                message = await link.pinned()
            except (BotFailed, BotFlooded, StoreError) as exc:
                reasons.append(f"bot {link.number}: {exc}")
                continue
            seq = _manifest_seq(message) if message is not None else None
            if seq is not None and (newest is None or seq > newest[0]):
                newest = (seq, link, message)
        if newest is None:
            if reasons and len(reasons) == len(self.links):
                raise StoreError(
                    "no bot could be asked for the backup manifest: " + "; ".join(reasons)
                )
            return None
        _, link, message = newest
        try:
            return await link.read(
                link.channel_id,
                int(message.id),
                0,
                int(message.document.file_size),
                self._download_cap,
            )
        except (BotFailed, BotFlooded) as exc:
            raise StoreError(f"bot {link.number}: {exc}") from None

    # ---- health -------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        now = trio.current_time()
        # Each bot says which locations are its copies (status counts what it holds).
        bots = [
            {**link.snapshot(now), "location_prefix": f"{_PREFIX}{link.bot_id}:"}
            for link in self.links.values()
        ]
        return {
            "kind": self.kind,
            "up": any(b["up"] for b in bots),
            "replicas": self.replicas,
            "bots": bots,
        }


async def _on_bots(work: Sequence[tuple[BotLink, Callable[[], Awaitable[list[str]]]]]) -> list[str]:
    """Run each bot's share at once; the results joined. A bot that failed makes the whole
    a StoreError (after the others finished), naming it."""
    results: list[str] = []
    failures: list[str] = []

    async def one(link: BotLink, job: Callable[[], Awaitable[list[str]]]) -> None:
        try:
            results.extend(await job())
        except (BotFailed, BotFlooded, StoreError) as exc:
            failures.append(f"bot {link.number}: {exc}")

    async with trio.open_nursery() as nursery:
        for link, job in work:
            nursery.start_soon(one, link, job)
    if failures:
        raise StoreError("; ".join(failures))
    return sorted(results)


def _manifest_seq(message: Any) -> int | None:
    """The sequence number of a manifest document; None for any other message."""
    name = getattr(message.document, "file_name", None) or ""
    number = name.removeprefix(MANIFEST_PREFIX).removesuffix(".json")
    return int(number) if name.startswith(MANIFEST_PREFIX) and number.isdigit() else None
