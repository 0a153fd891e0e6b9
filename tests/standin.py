"""A stand-in for kurigram's `Client`, for tests and benchmarks (Telegram is out of reach).

tgfs's adapter code runs unchanged; only the client object is replaced, by pointing
TGFS_TELEGRAM_CLIENT at `tests.standin:StandInClient`. What it keeps faithful to kurigram
2.2 and Telegram (see tgfs/store/telegram/client.py for the calls tgfs makes):

- the same constructor and method names and signatures tgfs calls, returning objects with
  the attributes tgfs reads (Message.id/.empty/.document, Document.file_size …);
- pyrogram's own error classes: AccessTokenInvalid for a wrong token, ChannelInvalid for a
  channel the bot is not in, ChatAdminRequired when it may not post, FloodWait (`.value`
  seconds) above a per-chat message rate, FileReferenceExpired after `file_reference_ttl`,
  network errors (OSError, TimeoutError, ServiceUnavailable) at `failure_rate`;
- message ids per channel that only grow; a deleted message comes back from get_messages
  as an empty Message; bots cannot see other bots' channels;
- `send_document` takes a path or an io.IOBase only, refuses empty and > 2000 MiB files,
  and reads the file in 512 KiB parts; `stream_media` counts offset/limit in 1 MiB chunks,
  pays one round trip per chunk (GetFile is sequential), and holds the client's download
  semaphore (`max_concurrent_transmissions`) until the generator is closed;
- `delete_messages` takes at most 100 ids (a guard: tgfs must batch) and returns the count;
  deleting the pinned message leaves the channel with none pinned;
- `pin_chat_message` needs admin rights, refuses a message that is not there
  (MessageIdInvalid) and makes a service message with the next id (no document);
  `get_chat` returns the channel with `pinned_message` fetched by get_messages, as
  kurigram's Chat._parse_full does;
- a per-bot bandwidth shared by that bot's transfers, and a latency per request; a sent
  document is stored half-way through its request's latency, so a client killed while
  waiting for the reply leaves it in the channel without knowing its id, as on Telegram;
- session files in `workdir` (a login only when the file is missing, counted per bot).

State lives in a directory (STANDIN_DIR): `config.json` (re-read when it changes, so a test
can inject a fault mid-run), `channels/<chat>/<message id>` (the documents), and
`logins/<bot id>`. So a test can look at what tgfs stored, delete a message behind its back,
or restart the mount against the same "Telegram".
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import io
import json
import math
import os
import random
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from pyrogram import errors

CHUNK = 2**20
UPLOAD_PART = 512 * 2**10
MAX_FILE = 2000 * 2**20
DEFAULTS: dict[str, Any] = {
    "latency": 0.0,  # seconds per request
    # Seconds between a sent document being stored and its reply reaching the client
    # (None: half the latency). Long, it leaves room to kill a client that has sent.
    "reply_latency": None,
    "bandwidth": 0,  # bytes/s per bot, shared by its transfers; 0 = unlimited
    "messages_per_minute": 0,  # per chat; more gives FloodWait; 0 = unlimited
    "failure_rate": 0.0,  # share of calls that fail with a network error
    "file_reference_ttl": 0,  # seconds a fetched message's file reference lasts; 0 = ever
    # Benchmarks only: run the rate limit k times faster (its minute becomes 60/k s, and
    # FloodWait values are fractions of a second instead of whole seconds).
    "time_scale": 1,
    "seed": 1,
    # bot id (str) → {"token", "channels": [ids], "admin": bool, "dead": bool,
    #                 "die_after_sends": int, "flood_until": epoch seconds}
    "bots": {},
}


# ---- what the client returns ------------------------------------------------------------


@dataclasses.dataclass
class User:
    id: int
    username: str
    is_bot: bool = True


@dataclasses.dataclass
class Chat:
    id: int
    title: str
    type: str = "channel"
    pinned_message: Message | None = None  # get_chat fetches it, as kurigram's _parse_full


@dataclasses.dataclass
class Document:
    file_id: str
    file_unique_id: str
    file_size: int
    file_name: str
    mime_type: str = "application/octet-stream"


@dataclasses.dataclass
class Message:
    id: int
    chat: Chat | None = None
    document: Document | None = None
    empty: bool = False
    # Stand-in bookkeeping (a real file_id encodes the same facts):
    _bot_id: int = 0
    _fetched_at: float = 0.0


# ---- the shared "Telegram" ----------------------------------------------------------------

_WORLDS: dict[Path, _World] = {}


class _World:
    """State shared by every client in this process, keyed by the state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._mtime = -1.0
        self.config: dict[str, Any] = dict(DEFAULTS)
        self.rng = random.Random(1)
        self.sends: dict[int, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )  # chat → recent send times
        self.wire_free: dict[int, float] = collections.defaultdict(float)  # bot → time
        self.sent_by: collections.Counter[int] = collections.Counter()
        self.lock = asyncio.Lock()

    @classmethod
    def at(cls, root: Path) -> _World:
        root = root.absolute()
        if root not in _WORLDS:
            _WORLDS[root] = cls(root)
        return _WORLDS[root]

    def refresh(self) -> None:
        path = self.root / "config.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            self._mtime = mtime
            self.config = {**DEFAULTS, **json.loads(path.read_text())}
            self.rng = random.Random(self.config["seed"])

    def bot(self, bot_id: int) -> dict[str, Any] | None:
        return self.config["bots"].get(str(bot_id))

    def channel_dir(self, chat_id: int) -> Path:
        path = self.root / "channels" / str(chat_id)
        path.mkdir(parents=True, exist_ok=True)
        return path


class StandInClient:
    """Same constructor as pyrogram.Client for the arguments tgfs passes."""

    def __init__(
        self,
        name: str,
        api_id: int | None = None,
        api_hash: str | None = None,
        bot_token: str | None = None,
        workdir: str = ".",
        max_concurrent_transmissions: int = 1,
        sleep_threshold: int = 10,
        no_updates: bool | None = None,
        in_memory: bool | None = None,
        **_: Any,
    ) -> None:
        self.name = name
        self.api_id = api_id
        self.api_hash = api_hash
        self.bot_token = bot_token
        self.workdir = Path(workdir)
        self.sleep_threshold = sleep_threshold
        self.save_file_semaphore = asyncio.Semaphore(max_concurrent_transmissions)
        self.get_file_semaphore = asyncio.Semaphore(max_concurrent_transmissions)
        self.is_connected = False
        self.me: User | None = None
        self._world = _World.at(Path(os.environ["STANDIN_DIR"]))
        self._bot_id = 0

    # ---- helpers ------------------------------------------------------------------------

    async def _request(
        self, rpc: str, chat_id: int | None = None, post: bool = False, half: bool = False
    ) -> dict[str, Any]:
        """One round trip: latency, faults, access checks. Returns this bot's config.
        `half`: only the way there; the caller sleeps the way back (`_reply`) after it
        has changed the world."""
        world = self._world
        world.refresh()
        await asyncio.sleep(world.config["latency"] / (2 if half else 1))
        bot = world.bot(self._bot_id) or {}
        if bot.get("dead"):
            raise OSError(f"[stand-in] connection to the DC lost during {rpc}")
        flood_until = bot.get("flood_until", 0)
        if flood_until > time.time():
            raise errors.FloodWait(value=math.ceil(flood_until - time.time()), rpc_name=rpc)
        if world.rng.random() < world.config["failure_rate"]:
            raise world.rng.choice(
                [
                    OSError(f"[stand-in] connection reset during {rpc}"),
                    TimeoutError(f'Failed to invoke "{rpc}" after 3 retries'),
                    errors.ServiceUnavailable(value="[-503 Timeout]", rpc_name=rpc),
                ]
            )
        if chat_id is not None:
            if chat_id not in bot.get("channels", []):
                raise errors.ChannelInvalid(rpc_name=rpc)
            if post and not bot.get("admin", True):
                raise errors.ChatAdminRequired(rpc_name=rpc)
        return bot

    async def _reply(self) -> None:
        config = self._world.config
        delay = config["reply_latency"]
        await asyncio.sleep(config["latency"] / 2 if delay is None else delay)

    async def _wire(self, nbytes: int) -> None:
        """Move bytes over this bot's link (its transfers share the bandwidth)."""
        bandwidth = self._world.config["bandwidth"]
        if not bandwidth:
            return
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._world.wire_free[self._bot_id])
        done = start + nbytes / bandwidth
        self._world.wire_free[self._bot_id] = done
        await asyncio.sleep(done - loop.time())

    def _check_started(self) -> None:
        if not self.is_connected:
            raise ConnectionError("Client has not been started yet")

    # ---- the client API tgfs uses ---------------------------------------------------------

    async def start(self) -> StandInClient:
        if self.is_connected:
            raise ConnectionError("Client is already connected")
        session = self.workdir / f"{self.name}.session"
        token = self.bot_token or ""
        bot_id = int(token.split(":")[0]) if token.split(":")[0].isdigit() else 0
        self._bot_id = bot_id
        if not session.exists() or session.read_bytes() != SESSION:
            if not (self.api_id and self.api_hash):
                raise AttributeError("The API key is required for new authorizations.")
            # kurigram's storage opens (creates) the session file before authorizing, so a
            # failed login leaves one behind, unauthorized, with the process's umask mode.
            self.workdir.mkdir(parents=True, exist_ok=True)
            session.touch()
            await self._request("auth.ImportBotAuthorization")
            bot = self._world.bot(bot_id)
            if bot is None or bot.get("token") != token:
                raise errors.AccessTokenInvalid(rpc_name="auth.ImportBotAuthorization")
            logins = self._world.root / "logins"
            logins.mkdir(parents=True, exist_ok=True)
            with open(logins / str(bot_id), "a") as f:
                f.write(f"{time.time()}\n")
            self.workdir.mkdir(parents=True, exist_ok=True)
            session.write_bytes(SESSION)  # umask-default mode, like sqlite
        else:
            await self._request("updates.GetState")
        self.is_connected = True
        self.me = User(id=bot_id, username=f"standin{bot_id}_bot")
        return self

    async def stop(self) -> StandInClient:
        self._check_started()
        self.is_connected = False
        return self

    async def get_me(self) -> User:
        self._check_started()
        await self._request("users.GetFullUser")
        assert self.me is not None
        return self.me

    async def get_chat(self, chat_id: int, force_full: bool = True) -> Chat:
        """channels.GetFullChannel; the pinned message is then fetched with get_messages,
        as kurigram does (one more round trip), and is an empty Message if it was
        deleted."""
        self._check_started()
        await self._request("channels.GetFullChannel", chat_id)
        chat = Chat(id=chat_id, title=f"stand-in channel {chat_id}")
        pinned = self._world.channel_dir(chat_id) / "pinned"
        if pinned.exists():
            chat.pinned_message = await self.get_messages(chat_id, int(pinned.read_text()))
        return chat

    async def pin_chat_message(
        self,
        chat_id: int,
        message_id: int,
        disable_notification: bool = False,
        both_sides: bool = False,
        business_connection_id: str | None = None,
    ) -> Message | None:
        """messages.UpdatePinnedMessage: needs admin rights in a channel; the message must
        exist (MessageIdInvalid); makes a service message ("pinned a message") with the
        next id, which is returned, as kurigram does."""
        self._check_started()
        await self._request("messages.UpdatePinnedMessage", chat_id, post=True)
        folder = self._world.channel_dir(chat_id)
        if not (folder / str(message_id)).exists():
            raise errors.MessageIdInvalid(rpc_name="messages.UpdatePinnedMessage")
        async with self._world.lock:
            counter = folder / "next_id"
            service_id = int(counter.read_text()) if counter.exists() else 1
            counter.write_text(str(service_id + 1))
            (folder / f"{service_id}.service").write_text(str(message_id))
            (folder / "pinned").write_text(str(message_id))
        return Message(id=service_id, chat=Chat(id=chat_id, title=f"stand-in channel {chat_id}"))

    async def send_document(
        self,
        chat_id: int,
        document: Any,
        file_name: str | None = None,
        force_document: bool | None = None,
        disable_notification: bool | None = None,
        **_: Any,
    ) -> Message:
        self._check_started()
        if isinstance(document, (str, os.PathLike)):
            fp: Any = open(document, "rb")  # noqa: SIM115
        elif isinstance(document, io.IOBase):
            fp = document
        else:
            raise ValueError(
                "Invalid file. Expected a file path as string or a binary (not text) file pointer"
            )
        world = self._world
        async with self.save_file_semaphore:
            bot = await self._request("upload.SaveFilePart")
            fp.seek(0, os.SEEK_END)
            size = fp.tell()
            fp.seek(0)
            if size == 0:
                raise ValueError("File size equals to 0 B")
            if size > MAX_FILE:
                raise ValueError("Can't upload files bigger than 2000 MiB")
            die_after = bot.get("die_after_sends")
            dying = die_after is not None and world.sent_by[self._bot_id] >= die_after
            data = bytearray()
            while chunk := fp.read(UPLOAD_PART):
                await self._wire(len(chunk))
                data += chunk
                if dying and len(data) >= size / 2:
                    bot["dead"] = True  # the bot dies mid-upload and stays dead
                    raise OSError("[stand-in] connection lost mid-upload")
            if isinstance(document, (str, os.PathLike)):
                fp.close()
        await self._request("messages.SendMedia", chat_id, post=True, half=True)
        async with world.lock:
            limit = world.config["messages_per_minute"]
            scale = world.config["time_scale"]
            window = 60 / scale
            recent = world.sends[chat_id]
            now = time.monotonic()
            while recent and recent[0] <= now - window:
                recent.popleft()
            if limit and len(recent) >= limit:
                wait = recent[0] + window - now
                raise errors.FloodWait(
                    value=math.ceil(wait) if scale == 1 else wait, rpc_name="messages.SendMedia"
                )
            recent.append(now)
            folder = world.channel_dir(chat_id)
            counter = folder / "next_id"
            message_id = int(counter.read_text()) if counter.exists() else 1
            counter.write_text(str(message_id + 1))
            (folder / str(message_id)).write_bytes(bytes(data))
            (folder / f"{message_id}.name").write_text(file_name or "document")
            world.sent_by[self._bot_id] += 1
        await self._reply()  # stored; the reply is on its way
        return self._message(chat_id, message_id, size, file_name or "document")

    def _message(self, chat_id: int, message_id: int, size: int, name: str) -> Message:
        return Message(
            id=message_id,
            chat=Chat(id=chat_id, title=f"stand-in channel {chat_id}"),
            document=Document(
                file_id=f"standin-{self._bot_id}-{chat_id}-{message_id}",
                file_unique_id=f"u{chat_id}{message_id}",
                file_size=size,
                file_name=name,
            ),
            _bot_id=self._bot_id,
            _fetched_at=time.monotonic(),
        )

    async def get_messages(self, chat_id: int, message_ids: int | list[int]) -> Any:
        self._check_started()
        ids = [message_ids] if isinstance(message_ids, int) else list(message_ids)
        if not ids:
            raise errors.MessageIdsEmpty(rpc_name="channels.GetMessages")
        if len(ids) > 200:
            raise errors.LimitInvalid(rpc_name="channels.GetMessages")  # stand-in guard
        await self._request("channels.GetMessages", chat_id)
        found = []
        for message_id in ids:
            path = self._world.channel_dir(chat_id) / str(message_id)
            if path.exists():
                name = path.with_name(f"{message_id}.name")
                found.append(
                    self._message(
                        chat_id,
                        message_id,
                        path.stat().st_size,
                        name.read_text() if name.exists() else "document",
                    )
                )
            elif path.with_name(f"{message_id}.service").exists():  # no document
                found.append(Message(id=message_id, chat=Chat(id=chat_id, title="")))
            else:
                found.append(Message(id=message_id, empty=True))
        return found if not isinstance(message_ids, int) else found[0]

    async def stream_media(
        self, message: Any, limit: int = 0, offset: int = 0
    ) -> AsyncGenerator[bytes, None]:
        if not isinstance(message, Message) or message.document is None:
            raise ValueError("This message doesn't contain any downloadable media")
        self._check_started()
        world = self._world
        async with self.get_file_semaphore:  # held until the generator is closed
            sent = 0
            index = offset
            while True:
                await self._request("upload.GetFile")
                ttl = world.config["file_reference_ttl"]
                if message._bot_id != self._bot_id:
                    raise errors.FileReferenceInvalid(rpc_name="upload.GetFile")
                chat_id = message.chat.id if message.chat else 0
                path = world.channel_dir(chat_id) / str(message.id)
                stale = ttl and time.monotonic() - message._fetched_at > ttl
                if stale or not path.exists():
                    raise errors.FileReferenceExpired(rpc_name="upload.GetFile")
                with open(path, "rb") as f:
                    chunk = os.pread(f.fileno(), CHUNK, index * CHUNK)
                await self._wire(len(chunk))
                if not chunk:
                    return
                yield chunk
                sent += 1
                index += 1
                if len(chunk) < CHUNK or (limit and sent >= limit):
                    return

    async def delete_messages(
        self, chat_id: int, message_ids: int | list[int], revoke: bool = True
    ) -> int:
        self._check_started()
        ids = [message_ids] if isinstance(message_ids, int) else list(message_ids)
        if len(ids) > 100:
            raise errors.LimitInvalid(rpc_name="channels.DeleteMessages")  # stand-in guard
        await self._request("channels.DeleteMessages", chat_id, post=True)
        deleted = 0
        for message_id in ids:
            path = self._world.channel_dir(chat_id) / str(message_id)
            if path.exists():
                path.unlink()
                path.with_name(f"{message_id}.name").unlink(missing_ok=True)
                pinned = path.with_name("pinned")
                if pinned.exists() and pinned.read_text() == str(message_id):
                    pinned.unlink()
                deleted += 1
        return deleted


# ---- for tests: set up and inspect the stand-in ---------------------------------------------

API_HASH = "0123456789abcdef0123456789abcdef"
SESSION = b"stand-in session\n"  # an authorized session file's content


def token(bot_id: int) -> str:
    return f"{bot_id}:AAF{bot_id:07d}standinTokenForTestsOnly0"


class StandIn:
    """A stand-in "Telegram" in a directory, and the tgfs settings that point at it."""

    def __init__(self, root: Path, bots: int = 4, **params: Any) -> None:
        self.root = root
        self.bot_ids = [7000001 + i for i in range(bots)]
        self.config: dict[str, Any] = {
            **DEFAULTS,
            **params,
            "bots": {
                str(b): {"token": token(b), "channels": [self.channel(b)], "admin": True}
                for b in self.bot_ids
            },
        }
        self.write()

    @staticmethod
    def channel(bot_id: int) -> int:
        return -1000000000000 - bot_id

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "config.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config))
        os.replace(tmp, path)
        # mtime granularity: make sure a rewrite within the same tick is seen
        os.utime(path, (time.time(), time.time() + random.random()))

    def bot(self, index: int) -> dict[str, Any]:
        return self.config["bots"][str(self.bot_ids[index])]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "TGFS_TELEGRAM_CLIENT": "tests.standin:StandInClient",
            "STANDIN_DIR": str(self.root),
            "TELEGRAM_API_ID": "12345",
            "TELEGRAM_API_HASH": API_HASH,
        }
        for n, bot_id in enumerate(self.bot_ids, start=1):
            env[f"TELEGRAM_BOT_TOKEN_{n}"] = token(bot_id)
            env[f"TELEGRAM_CHANNEL_ID_{n}"] = str(self.channel(bot_id))
        env.update(extra)
        return env

    def messages(self, bot_index: int | None = None) -> dict[int, list[int]]:
        """channel → message ids currently stored (for one bot, or all)."""
        ids = self.bot_ids if bot_index is None else [self.bot_ids[bot_index]]
        found = {}
        for bot_id in ids:
            folder = self.root / "channels" / str(self.channel(bot_id))
            found[self.channel(bot_id)] = (
                sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit())
                if folder.exists()
                else []
            )
        return found

    def part_messages(self) -> list[tuple[int, int]]:
        """(channel, id) of the messages that hold parts of the library: not the catalog's
        backups nor the pinned backup manifests (tgfs.backups)."""
        return [
            (channel, m)
            for channel, ids in self.messages().items()
            for m in ids
            if not self.message_path(channel, m)
            .with_name(f"{m}.name")
            .read_text()
            .startswith(("backup-", "tgfs-manifest-"))
        ]

    def put_document(self, bot_index: int, name: str, data: bytes) -> int:
        """A document in a bot's channel that tgfs did not record (left by a crash on
        another machine, or after an older backup was restored): the next id, as the bot
        sending it would get. Call while no daemon is sending there."""
        folder = self.root / "channels" / str(self.channel(self.bot_ids[bot_index]))
        folder.mkdir(parents=True, exist_ok=True)
        counter = folder / "next_id"
        message_id = int(counter.read_text()) if counter.exists() else 1
        counter.write_text(str(message_id + 1))
        (folder / str(message_id)).write_bytes(data)
        (folder / f"{message_id}.name").write_text(name)
        return message_id

    def names(self, bot_index: int) -> dict[int, str]:
        """message id → document name, of the messages in a bot's channel."""
        channel = self.channel(self.bot_ids[bot_index])
        return {
            m: self.message_path(channel, m).with_name(f"{m}.name").read_text()
            for m in self.messages(bot_index)[channel]
            if self.message_path(channel, m).with_name(f"{m}.name").exists()
        }

    def message_path(self, channel: int, message_id: int) -> Path:
        return self.root / "channels" / str(channel) / str(message_id)

    def logins(self, bot_index: int) -> int:
        path = self.root / "logins" / str(self.bot_ids[bot_index])
        return len(path.read_text().splitlines()) if path.exists() else 0
