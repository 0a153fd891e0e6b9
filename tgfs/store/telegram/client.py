"""Everything that touches the kurigram client API, as coroutines for the asyncio loop.

These functions run on the bridge's asyncio loop (see `bridge.py`) and are the only code
that calls client methods. The calls used, and what they rest on (checked in kurigram
2.2 sources):

- `send_document(chat_id, document=<io.IOBase>, file_name=…, force_document=True,
  disable_notification=True)` uploads from a file object: kurigram accepts only a path or
  an `io.IOBase`, and refuses an empty file. A part is a byte range of a larger spooled
  file, so `RangeReader` presents that range as a file of its own.
- `get_messages(chat_id, [ids])` (≤ 200 ids) returns a Message with `empty=True` for a
  deleted one: the catalog is the only index (bots cannot list history).
- `stream_media(message, offset=, limit=)` counts in 1 MiB chunks and holds the client's
  download semaphore until the generator is closed, so `read_range` always closes it.
- `delete_messages(chat_id, ids)` (≤ 100 ids per call) returns how many went away;
  ids already gone are not an error.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyrogram import errors

from tgfs.config import Bot, Settings

CHUNK = 2**20  # stream_media's unit: offsets and limits count 1 MiB chunks
DELETE_MESSAGES_MAX = 100


def load_factory(spec: str) -> Callable[..., Any]:
    """`module:callable` (TGFS_TELEGRAM_CLIENT) → the callable that makes a client."""
    module, _, name = spec.partition(":")
    target: Any = importlib.import_module(module)
    for attr in name.split("."):
        target = getattr(target, attr)
    return target


async def make_client(
    factory: Callable[..., Any], bot: Bot, settings: Settings, session: str
) -> Any:
    """A client for `bot`, built on the loop thread (kurigram binds the running loop)."""
    settings.session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    assert settings.api_hash is not None
    return factory(
        session,
        api_id=settings.api_id,
        api_hash=settings.api_hash.reveal(),
        bot_token=bot.token.reveal(),
        workdir=str(settings.session_dir),
        # Several transfers per bot: kurigram's default of 1 would serialise everything.
        max_concurrent_transmissions=settings.bot_transfers,
        # Every FloodWait comes back to tgfs, which paces that bot and lets the others go
        # on; kurigram's own sleep would hide waits from status and pacing.
        sleep_threshold=0,
        no_updates=True,  # a storage bot needs no update stream
    )


async def start(client: Any, session_file: Path) -> Any:
    """Log in (reusing the session file when there is one); returns the bot's User."""
    await client.start()
    # kurigram creates the session file with the process umask; it holds the bot's auth key.
    if session_file.exists():
        os.chmod(session_file, 0o600)
    return await client.get_me()


async def stop(client: Any) -> None:
    if getattr(client, "is_connected", False):
        await client.stop()


async def check_channel(client: Any, channel_id: int) -> Any:
    return await client.get_chat(channel_id)


class RangeReader(io.RawIOBase):
    """Bytes [offset, offset+size) of a file, as a read-only seekable file of its own."""

    def __init__(self, path: Path, offset: int, size: int, name: str) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._start = offset
        self._size = size
        self._pos = 0
        self.name = name  # kurigram uses it as the document's file name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        data = os.pread(self._file.fileno(), want, self._start + self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


class SourceUnreadable(Exception):
    """The local file to upload cannot be opened (deleted meanwhile): not the bot's fault."""


async def send_part(client: Any, chat_id: int, src: Path, offset: int, size: int, name: str) -> Any:
    """Upload one part as a document; returns the Message."""
    try:
        reader = RangeReader(src, offset, size, name)
    except OSError as exc:
        raise SourceUnreadable(f"cannot read {src.name}: {exc.strerror}") from None
    with reader:
        return await client.send_document(
            chat_id,
            reader,
            file_name=name,
            force_document=True,
            disable_notification=True,
        )


async def get_message(client: Any, chat_id: int, message_id: int) -> Any | None:
    """The message, or None if it is gone (deleted, or not a document)."""
    found = await client.get_messages(chat_id, [message_id])
    message = found[0] if found else None
    if message is None or getattr(message, "empty", False) or not message.document:
        return None
    return message


GET_MESSAGES_MAX = 200


async def get_many(client: Any, chat_id: int, message_ids: list[int]) -> list[Any]:
    """The messages with these ids that exist and hold a document (≤ 200 ids)."""
    assert len(message_ids) <= GET_MESSAGES_MAX
    found = await client.get_messages(chat_id, message_ids)
    return [m for m in found if m is not None and not getattr(m, "empty", False) and m.document]


async def read_range(client: Any, message: Any, offset: int, length: int, into: bytearray) -> None:
    """Append bytes [offset, offset+length) of a message's document to `into` (fewer only
    at the document's end), fetching only the 1 MiB chunks that hold them.

    Bytes are appended chunk by chunk, so after a failure `into` holds what did arrive and
    the caller resumes from there instead of starting over.
    """
    first = offset // CHUNK
    skip = offset - first * CHUNK
    count = -(-(skip + length) // CHUNK)
    end = len(into) + length
    stream = client.stream_media(message, offset=first, limit=count)
    try:
        async for chunk in stream:
            into += chunk[skip : skip + end - len(into)]
            skip = 0
            if len(into) >= end:
                break
    finally:
        await stream.aclose()  # releases the client's download slot at once


async def pin(client: Any, chat_id: int, message_id: int) -> None:
    """Pin a message in the channel (the bot needs the right to edit messages there).
    A channel shows no notification for it; the service message it makes is not kept."""
    await client.pin_chat_message(chat_id, message_id, disable_notification=True)


async def pinned(client: Any, chat_id: int) -> Any | None:
    """The channel's pinned message (its latest pin), if it holds a document."""
    chat = await client.get_chat(chat_id)
    message = getattr(chat, "pinned_message", None)
    if message is None or getattr(message, "empty", False) or not message.document:
        return None
    return message


async def delete(client: Any, chat_id: int, message_ids: list[int]) -> int:
    assert len(message_ids) <= DELETE_MESSAGES_MAX
    return await client.delete_messages(chat_id, message_ids)


async def with_timeout(seconds: float, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a call with a deadline on the asyncio side (a dead connection can hang forever)."""
    return await asyncio.wait_for(fn(*args), seconds)


# ---- errors --------------------------------------------------------------------------------

FLOOD = "flood"  # wait `seconds`, then the same call may succeed
EXPIRED = "expired"  # the file reference is stale: fetch the message again, then retry
AUTH = "auth"  # the bot cannot log in: nothing helps until the configuration changes
ACCESS = "access"  # the bot cannot use its channel: idem
TRANSIENT = "transient"  # network or server trouble: retry with backoff
REJECTED = "rejected"  # Telegram refused this request; another bot may accept it

_AUTH = (
    errors.AccessTokenInvalid,
    errors.AccessTokenExpired,
    errors.AuthKeyUnregistered,
    errors.SessionRevoked,
    errors.UserDeactivated,
    errors.ApiIdInvalid,
)
_ACCESS = (
    errors.ChannelInvalid,
    errors.ChannelPrivate,
    errors.PeerIdInvalid,
    errors.ChatAdminRequired,
    errors.ChatWriteForbidden,
    errors.UserBannedInChannel,
    errors.ChatForbidden,
)
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    errors.InternalServerError,
    errors.ServiceUnavailable,
)


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, a one-line reason safe to log and show) for an error from a client call."""
    if isinstance(exc, (errors.FloodWait, errors.FloodPremiumWait)):
        return FLOOD, f"flood wait of {exc.value} s"
    if isinstance(exc, (errors.FileReferenceExpired, errors.FileReferenceInvalid)):
        return EXPIRED, "file reference expired"
    if isinstance(exc, errors.ApiIdInvalid):
        return AUTH, "TELEGRAM_API_ID/TELEGRAM_API_HASH were rejected (API_ID_INVALID)"
    if isinstance(exc, _AUTH):
        return AUTH, f"the bot token was rejected ({exc.ID}); check it with @BotFather"
    if isinstance(exc, _ACCESS):
        return ACCESS, (
            f"cannot post to its channel ({exc.ID}): add the bot to the channel "
            "as an admin with the Post Messages and Delete Messages rights"
        )
    if isinstance(exc, _TRANSIENT):
        text = str(exc) or type(exc).__name__
        return TRANSIENT, f"network or server error: {text[:200]}"
    if isinstance(exc, errors.RPCError):
        return REJECTED, f"Telegram refused the request ({exc.ID or exc.NAME})"
    return TRANSIENT, f"{type(exc).__name__}: {str(exc)[:200]}"


def flood_seconds(exc: BaseException) -> float:
    value = getattr(exc, "value", None)
    return float(value) if isinstance(value, (int, float)) else 5.0
