"""`tgfs test-bots`: a round trip through every configured bot, one line each.

Each bot logs in, opens its channel, uploads a small document, reads it back, compares,
and deletes it. It uses its own session file (`bot-<id>-check.session`): a running mount
holds the bot's main session, and two processes sharing one session file make Telegram
answer AUTH_KEY_DUPLICATED.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from tgfs.config import Bot, Settings
from tgfs.store.slots import Slots
from tgfs.store.telegram import client as tg
from tgfs.store.telegram.bridge import AsyncioBridge
from tgfs.store.telegram.link import BotFailed, BotFlooded, BotLink

PROBE_SIZE = 64 * 2**10  # big enough to be a real upload, small enough to be instant
_TIMEOUT = 120.0


@dataclasses.dataclass
class BotCheck:
    bot: Bot
    username: str | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # step → seconds
    failed_step: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_step is None

    def line(self) -> str:
        name = f"bot {self.bot.number}"
        if self.username:
            name += f" @{self.username}"
        name += f" (id {self.bot.bot_id}, channel {self.bot.channel_id})"
        if not self.ok:
            return f"{name}: FAILED at {self.failed_step}: {self.reason}"
        steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in self.timings.items())
        return f"{name}: ok ({steps})"


async def check_bots(settings: Settings, factory: Any = None) -> list[BotCheck]:
    factory = factory or tg.load_factory(settings.telegram_client)
    bridge = AsyncioBridge()
    bridge.start()
    results = [BotCheck(bot) for bot in settings.bots]
    try:
        with tempfile.TemporaryDirectory(prefix="tgfs-test-bots-") as tmp:
            probe = Path(tmp) / "probe"
            payload = os.urandom(PROBE_SIZE)
            probe.write_bytes(payload)
            async with trio.open_nursery() as nursery:
                for result in results:
                    link = BotLink(
                        result.bot, settings, bridge, factory, f"bot-{result.bot.bot_id}-check"
                    )
                    nursery.start_soon(_check_one, link, result, probe, payload)
    finally:
        await bridge.close()
    return results


async def _check_one(link: BotLink, result: BotCheck, probe: Path, payload: bytes) -> None:
    cap = trio.CapacityLimiter(1)
    step = "login"
    try:
        with trio.fail_after(_TIMEOUT):
            started = time.monotonic()
            await link.connect()
            result.username = link.username
            result.timings[step] = time.monotonic() - started

            step, started = "upload", time.monotonic()
            ticket = link.reserve(trio.current_time())
            message_id = await link.send(probe, 0, len(payload), "tgfs-test-bots.bin", ticket, cap)
            result.timings[step] = time.monotonic() - started

            step, started = "download", time.monotonic()
            data = await link.read(link.channel_id, message_id, 0, len(payload), Slots(1, 1))
            result.timings[step] = time.monotonic() - started
            if data != payload:
                raise BotFailed(
                    f"bot {link.number}: the document came back different "
                    f"({len(data)} of {len(payload)} bytes)"
                )

            step, started = "delete", time.monotonic()
            await link.delete(link.channel_id, [message_id])
            result.timings[step] = time.monotonic() - started
    except (BotFailed, BotFlooded) as exc:
        result.failed_step = step
        result.reason = str(exc).removeprefix(f"bot {link.number}: ").removeprefix("login: ")
    except trio.TooSlowError:
        result.failed_step = step
        result.reason = f"no answer within {_TIMEOUT:.0f} s"
    except Exception as exc:  # PartMissing, a stand-in bug…: report, never crash the check
        result.failed_step = step
        result.reason = str(exc) or type(exc).__name__
    finally:
        await link.close()
