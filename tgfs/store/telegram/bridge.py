"""Run asyncio coroutines (kurigram) from trio (pyfuse3): one loop, in one thread.

kurigram is asyncio; pyfuse3 needs trio. Rather than trio-asyncio (which replaces the
asyncio loop policy process-wide), every Telegram client lives on one asyncio event loop
running in a daemon thread, and trio code calls into it:

    result = await bridge.run(some_coroutine_function, arg1, arg2)

The call submits the coroutine with `asyncio.run_coroutine_threadsafe` and waits on a trio
Event that the future's done-callback sets through the trio token, so no trio worker
thread is tied up per call. Cancelling the trio side cancels the asyncio task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class BridgeClosed(RuntimeError):
    """The asyncio loop is not running (never started, or already closed)."""


class AsyncioBridge:
    def __init__(self, name: str = "tgfs-asyncio") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the loop thread; returns once the loop runs."""
        if self._loop is not None:
            return
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # Whatever is still pending when we stop is abandoned; give it a chance to clean up.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=main, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Await `fn(*args)` on the asyncio loop; its result or exception comes back here."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise BridgeClosed("the Telegram client loop is not running")
        future = asyncio.run_coroutine_threadsafe(fn(*args), loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: concurrent.futures.Future) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # thread-safe: cancels the asyncio task
            raise
        return future.result()

    async def close(self) -> None:
        """Stop the loop (pending coroutines are cancelled) and join its thread."""
        loop, thread = self._loop, self._thread
        self._loop = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        await trio.to_thread.run_sync(thread.join)
