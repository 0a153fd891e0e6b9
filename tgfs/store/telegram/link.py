"""One bot and its channel, seen from trio: pacing, flood waits, retries, up/down.

A `BotLink` owns everything about one bot that the store needs to decide where a part
goes and how to talk to it:

- pacing: a per-bot message schedule (`tgfs.store.telegram.pacing`), so a 2-hour film trickles in at
  TGFS_BOT_MESSAGES_PER_MINUTE instead of tripping Telegram's flood control;
- flood waits: a FloodWait stops this bot until it is over; the other bots carry on, and a
  wait longer than `DIVERT_AFTER` sends the request to the next bot instead (`BotFlooded`);
- retries: network and server errors are retried with exponential backoff and jitter;
- health: after `DOWN_AFTER` failed operations in a row (or one login/channel error) the bot
  is marked down for a cool-down; new uploads skip it, and the first request after the
  cool-down is the probe that brings it back (or not);
- bot isolation: the client that stored a message is the one that reads and deletes it.

All client calls go through the asyncio bridge; state here is touched only on the trio
thread, so it needs no locks.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from tgfs.config import Bot, Settings
from tgfs.store.base import PartMissing, StoreError
from tgfs.store.slots import URGENT, Priority, Slots
from tgfs.store.telegram import client as tg
from tgfs.store.telegram.bridge import AsyncioBridge
from tgfs.store.telegram.pacing import Pacer, Ticket

log = logging.getLogger(__name__)

T = TypeVar("T")

# A flood wait or pacing delay up to this long is waited out on the same bot (keeping
# placement deterministic); a longer one sends the request to the next bot in its ranking.
DIVERT_AFTER = 5.0
DOWN_AFTER = 2  # failed operations in a row (each after its retries) that mark a bot down
COOL_DOWN_FIRST = 60.0  # seconds a failing bot is skipped; doubles while it keeps failing
COOL_DOWN_MAX = 900.0
ATTEMPTS = 4  # tries per operation for network/server errors
BACKOFF_FIRST = 0.5  # seconds before the first retry; doubles, ±50 % jitter
BACKOFF_MAX = 8.0
# Deadlines for one call: a connection that died silently must not hang a transfer. The
# rate is a floor far below any working link, so only a dead one hits it.
CALL_TIMEOUT = 60.0
SLOWEST_RATE = 128 * 2**10  # bytes/s
# Prefetch downloads one bot runs at once. Its transfers share one link, bytes in flight
# arrive in order, so a read a player waits for arrives after whatever prefetch is already
# in flight on that bot: one prefetch chunk (1 MiB, 0.5 s at 2 MB/s) is the most it may
# wait. One at a time still moves a chunk per round trip + transfer (1.3 MB/s at 300 ms
# and 2 MB/s), more than an 8 Mbps film needs.
PREFETCH_PER_BOT = 1
MESSAGE_CACHE = 4096  # Message objects kept per bot (their file references save a fetch)


class BotFlooded(Exception):
    """The bot is in a long flood wait: try another bot, or this one later."""


class BotFailed(Exception):
    """The bot failed this request (and may now be down): try another bot."""


@dataclasses.dataclass
class Counters:
    messages_sent: int = 0
    bytes_sent: int = 0
    bytes_read: int = 0
    messages_deleted: int = 0
    flood_waits: int = 0
    retries: int = 0


class BotLink:
    def __init__(
        self, bot: Bot, settings: Settings, bridge: AsyncioBridge, factory: Any, session: str
    ) -> None:
        self.number = bot.number
        self.bot_id = bot.bot_id
        self.channel_id = bot.channel_id
        self._bot = bot
        self._settings = settings
        self._bridge = bridge
        self._factory = factory
        self._session = session
        self._client: Any = None
        self._connecting = trio.Lock()
        self.username: str | None = None
        self.up = False
        self.reason: str | None = "not connected yet"
        self._kind: str | None = None  # classify() kind of the last failure
        self._failures = 0
        self._cool_down = COOL_DOWN_FIRST
        self.down_until = 0.0
        self.flood_until = 0.0
        self.pacer = Pacer(settings.bot_messages_per_minute)
        self.uploads = trio.Semaphore(settings.bot_transfers)
        self.inflight = 0  # uploads placed on this bot and not finished
        self.downloads = Slots(settings.bot_transfers, PREFETCH_PER_BOT, yield_to_urgent=True)
        self.counters = Counters()
        self._messages: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()

    def __repr__(self) -> str:  # never the token
        return f"BotLink(bot {self.number}, id {self.bot_id})"

    # ---- health -------------------------------------------------------------------------

    @property
    def session_file(self) -> Path:
        return self._settings.session_dir / f"{self._session}.session"

    def available(self, now: float) -> bool:
        """May new work go to this bot? (A down bot becomes available again for a probe.)"""
        return self.up or now >= self.down_until

    def permanently_failed(self) -> bool:
        return not self.up and self._kind in (tg.AUTH, tg.ACCESS)

    def ready_at(self, now: float) -> float:
        """Earliest time a new message could go: pacing and flood wait."""
        return max(self.pacer.next_slot(now), self.flood_until)

    def reserve(self, now: float) -> Ticket:
        self.inflight += 1  # until send() ends
        return self.pacer.reserve(now)

    def _succeeded(self) -> None:
        if not self.up and self.down_until:
            log.info("bot %d: up again", self.number)
        self.up = True
        self.reason = None
        self._kind = None
        self._failures = 0
        self._cool_down = COOL_DOWN_FIRST

    def _failed(self, kind: str, reason: str) -> None:
        self._failures += 1
        self._kind = kind
        permanent = kind in (tg.AUTH, tg.ACCESS)
        if not (permanent or self._failures >= DOWN_AFTER):
            return
        self.reason = reason
        self.down_until = trio.current_time() + (COOL_DOWN_MAX if permanent else self._cool_down)
        # Logged each time: a down bot is left alone until its cool-down ends, so this
        # line comes at most once per cool-down.
        log.error("bot %d: marked down (%s); new uploads go to other bots", self.number, reason)
        self.up = False
        self._cool_down = min(self._cool_down * 2, COOL_DOWN_MAX)

    def _flooded(self, seconds: float) -> None:
        self.counters.flood_waits += 1
        self.flood_until = max(self.flood_until, trio.current_time() + seconds)
        log.warning(
            "bot %d: Telegram asks to wait %.0f s (flood control); the other bots carry on",
            self.number,
            seconds,
        )

    def snapshot(self, now: float) -> dict[str, Any]:
        """For status output: numbers and reasons, never a secret."""
        return {
            "number": self.number,
            "bot_id": self.bot_id,
            "username": self.username,
            "channel_id": self.channel_id,
            "up": self.up,
            "reason": self.reason,
            "flood_wait_s": round(max(0.0, self.flood_until - now), 1),
            **dataclasses.asdict(self.counters),
        }

    # ---- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Log in and check the channel; on failure the bot is down with the reason.

        The client becomes the link's only once it works, so a login that failed or was
        cancelled (start-up does not wait forever) leaves none behind, and the next
        request logs in again.
        """
        async with self._connecting:
            if self._client is not None:
                return
            attempt = 0
            while True:
                try:
                    self._client = await self._login()
                    break
                except Exception as exc:
                    kind, reason = tg.classify(exc)
                    if kind == tg.TRANSIENT and attempt + 1 < ATTEMPTS:
                        attempt += 1
                        await trio.sleep(_backoff(attempt))
                        continue
                    if kind == tg.FLOOD:  # logging in too often: wait it out, then retry
                        self._flooded(tg.flood_seconds(exc))
                    self._failures = DOWN_AFTER - 1  # one failed login is enough
                    self._failed(kind, f"login: {reason}")
                    self.down_until = max(self.down_until, self.flood_until)
                    raise BotFailed(f"bot {self.number}: {self.reason}") from None
            log.info(
                "bot %d (@%s): connected, channel %d", self.number, self.username, self.channel_id
            )
            self._succeeded()

    async def _login(self) -> Any:
        client = await self._bridge.run(
            tg.make_client, self._factory, self._bot, self._settings, self._session
        )
        try:
            me = await self._call(CALL_TIMEOUT, tg.start, client, self.session_file)
            self.username = getattr(me, "username", None)
            await self._call(CALL_TIMEOUT, tg.check_channel, client, self.channel_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop(client)
            raise
        return client

    async def _stop(self, client: Any) -> None:
        try:
            with trio.move_on_after(10):
                await self._bridge.run(tg.stop, client)
        except Exception as exc:
            log.debug("bot %d: stop failed: %s", self.number, exc)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._stop(client)

    async def close(self) -> None:
        await self._drop_client()

    async def _ready(self, new_work: bool = True) -> None:
        """Connect if needed. A down bot takes no new work, and is not logged in again,
        until its cool-down ends; but a read through a connected bot is still tried: its
        part may have no other copy (the store asks the bots that are up first)."""
        available = self.available(trio.current_time())
        if not available and (new_work or self._client is None):
            raise BotFailed(f"bot {self.number}: down ({self.reason})")
        if self._client is None:
            await self.connect()

    async def _call(self, timeout: float, fn: Any, *args: Any) -> Any:
        return await self._bridge.run(tg.with_timeout, timeout, fn, *args)

    # ---- operations ---------------------------------------------------------------------

    async def send(
        self,
        src: Path,
        offset: int,
        size: int,
        name: str,
        ticket: Ticket,
        cap: trio.CapacityLimiter,
        patient: bool = False,
    ) -> int:
        """Upload one part in its turn (`ticket` from reserve()); returns the message id.

        A flood wait longer than DIVERT_AFTER raises BotFlooded so the part can go to
        another bot, unless `patient` (there is no better bot): then it is waited out.
        """
        try:
            return await self._send(src, offset, size, name, ticket, cap, patient)
        finally:
            self.inflight -= 1
            self.pacer.done(ticket, trio.current_time())

    async def _send(
        self,
        src: Path,
        offset: int,
        size: int,
        name: str,
        ticket: Ticket,
        cap: trio.CapacityLimiter,
        patient: bool,
    ) -> int:
        await self._ready()
        timeout = CALL_TIMEOUT + size / SLOWEST_RATE

        async def upload() -> Any:
            async with cap:
                try:
                    return await self._call(
                        timeout,
                        tg.send_part,
                        self._client,
                        self.channel_id,
                        src,
                        offset,
                        size,
                        name,
                    )
                except tg.SourceUnreadable as exc:
                    raise StoreError(str(exc), retryable=False) from None

        async with self.uploads:
            message = await self._retrying("upload", upload, patient=patient, turn=ticket)
        self._succeeded()
        self.counters.messages_sent += 1
        self.counters.bytes_sent += size
        self._remember(self.channel_id, message)
        return int(message.id)

    async def read(
        self,
        channel_id: int,
        message_id: int,
        offset: int,
        length: int,
        cap: Slots,
        priority: Priority = URGENT,
    ) -> bytes:
        await self._ready(new_work=False)
        timeout = CALL_TIMEOUT + length / SLOWEST_RATE
        data = bytearray()  # a retry resumes after the bytes that arrived

        async def download() -> None:
            async with cap.hold(priority):
                try:
                    message = await self._message(channel_id, message_id)
                    await self._call(
                        timeout,
                        tg.read_range,
                        self._client,
                        message,
                        offset + len(data),
                        length - len(data),
                        data,
                    )
                except PartMissing:
                    raise
                except Exception:
                    self._messages.pop((channel_id, message_id), None)  # fetch it afresh
                    raise

        async with self.downloads.hold(priority):
            await self._retrying("download", download, progress=lambda: len(data))
        self._succeeded()
        self.counters.bytes_read += len(data)
        return bytes(data)

    async def delete(self, channel_id: int, message_ids: list[int]) -> None:
        """Delete messages, ≤ 100 per call; ids already gone are fine."""
        await self._ready()
        for start in range(0, len(message_ids), tg.DELETE_MESSAGES_MAX):
            batch = message_ids[start : start + tg.DELETE_MESSAGES_MAX]
            await self._retried("delete", tg.delete, channel_id, batch)
            for message_id in batch:
                self._messages.pop((channel_id, message_id), None)
            self.counters.messages_deleted += len(batch)
        self._succeeded()

    async def documents(self, channel_id: int, message_ids: list[int]) -> list[Any]:
        """The messages among these ids that exist and hold a document."""
        await self._ready(new_work=False)
        found = []
        for start in range(0, len(message_ids), tg.GET_MESSAGES_MAX):
            batch = message_ids[start : start + tg.GET_MESSAGES_MAX]
            found += await self._retried("look-up", tg.get_many, channel_id, batch)
        self._succeeded()
        return found

    async def pin(self, message_id: int) -> None:
        await self._ready()
        await self._retried("pin", tg.pin, self.channel_id, message_id)
        self._succeeded()

    async def pinned(self) -> Any | None:
        """The message pinned in the bot's channel (with a document), or None."""
        await self._ready(new_work=False)
        message = await self._retried("pinned", tg.pinned, self.channel_id)
        self._succeeded()
        if message is not None:
            self._remember(self.channel_id, message)
        return message

    async def look_up(self, channel_id: int, message_ids: list[int]) -> None:
        """Fetch and keep the messages among these ids that are not kept yet, ≤ 200 per
        call (see `prepare`): their reads then need no look-up of their own."""
        todo = [m for m in dict.fromkeys(message_ids) if (channel_id, m) not in self._messages]
        todo = todo[:MESSAGE_CACHE]  # more would push out the first ones again
        for message in await self.documents(channel_id, todo) if todo else []:
            self._remember(channel_id, message)

    async def _retried(self, what: str, fn: Any, *args: Any) -> Any:
        """One short call, retried (see `_retrying`)."""
        return await self._retrying(what, lambda: self._call(CALL_TIMEOUT, fn, self._client, *args))

    async def _retrying(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        patient: bool = False,
        turn: Ticket | None = None,
        progress: Callable[[], int] = lambda: 0,
    ) -> T:
        """`call()` until it succeeds, or `_handle` gives up on it (BotFlooded, BotFailed).
        Each try first waits for the message's pacing `turn` (uploads) and for any flood
        wait (see `_wait_flood`, `patient`). A StoreError from `call` is final. A try that
        made `progress` (bytes of a read arrived) starts the count of failures again."""
        attempt = 0
        while True:
            while turn is not None and (when := self.pacer.turn(turn)) > trio.current_time():
                await trio.sleep_until(when)
            await self._wait_flood(patient)
            before = progress()
            try:
                return await call()
            except StoreError:
                raise
            except Exception as exc:
                attempt = 0 if progress() > before else attempt
                attempt = await self._handle(exc, attempt, what)

    async def _message(self, channel_id: int, message_id: int) -> Any:
        key = (channel_id, message_id)
        message = self._messages.get(key)
        if message is None:
            message = await self._call(
                CALL_TIMEOUT, tg.get_message, self._client, channel_id, message_id
            )
            if message is None:
                raise PartMissing(
                    f"bot {self.number}: message {message_id} in channel {channel_id} is "
                    "gone (deleted outside tgfs?)"
                )
            self._remember(channel_id, message)
        else:
            self._messages.move_to_end(key)
        return message

    def _remember(self, channel_id: int, message: Any) -> None:
        self._messages[(channel_id, int(message.id))] = message
        while len(self._messages) > MESSAGE_CACHE:
            self._messages.popitem(last=False)

    async def _wait_flood(self, patient: bool = False) -> None:
        wait = self.flood_until - trio.current_time()
        if wait > DIVERT_AFTER and not patient:
            raise BotFlooded(f"bot {self.number}: flood wait, {wait:.0f} s left")
        if wait > 0:
            await trio.sleep(wait)

    async def _handle(self, exc: Exception, attempt: int, what: str) -> int:
        """Decide after a failed call: return the next attempt number to retry, or raise
        BotFlooded/BotFailed."""
        kind, reason = tg.classify(exc)
        if kind == tg.FLOOD:
            self._flooded(tg.flood_seconds(exc))
            return attempt  # not a failure: _wait_flood decides between waiting and diverting
        if kind == tg.EXPIRED and attempt + 1 < ATTEMPTS:
            log.info("bot %d: file reference expired; fetching the message again", self.number)
            return attempt + 1
        if kind == tg.TRANSIENT and attempt + 1 < ATTEMPTS:
            self.counters.retries += 1
            delay = _backoff(attempt)
            log.info(
                "bot %d: %s failed (%s); retry %d in %.1f s",
                self.number,
                what,
                reason,
                attempt + 1,
                delay,
            )
            await trio.sleep(delay)
            return attempt + 1
        self._failed(kind, reason)
        if self.up:  # (marking it down has logged an error already)
            log.warning("bot %d: %s failed: %s", self.number, what, reason)
        raise BotFailed(f"bot {self.number}: {reason}")


def _backoff(attempt: int) -> float:
    """Seconds before retry number `attempt + 1`: exponential, with ±50 % jitter so bots
    and transfers that failed together do not retry in lockstep."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt) * random.uniform(0.5, 1.5)
