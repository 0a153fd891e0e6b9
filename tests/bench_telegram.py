"""Benchmarks of the Telegram store, against the kurigram stand-in. Run: `make bench-telegram`.

1. Upload throughput of a film with 1, 2, 4 and 8 bots, each bot's link at 300 ms latency
   and a bandwidth cap. tgfs's production upload path (`put_files` → TelegramStore) is
   timed against a peer measured in the same run: a serial uploader that sends one
   document at a time, round robin over the same bots (how a naive bot-storage tool
   works).
2. Time to upload a 2-hour film (1,200 six-second segments + init) when each channel
   accepts 20 messages a minute, for 1 and 8 bots paced by tgfs, and 8 bots unpaced
   (driven by FloodWait alone) as the peer. This is simulated k times faster (`--scale`):
   latency, the rate limit's minute, tgfs's pacing window and the segment sizes are all
   divided by k, so the projected time is the measured time × k. The stand-in's FloodWait
   is exactly the time until its window frees; Telegram's are reported to be longer and to
   grow with repeated violations, which is not modelled, so the unpaced peer is a best case.

Nothing here talks to Telegram; the figures say what tgfs's code does with the limits the
stand-in models, not what Telegram's servers will do.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import trio

from tests.standin import API_HASH, StandIn, StandInClient, token
from tgfs import config
from tgfs.store.parts import Upload, put_files
from tgfs.store.telegram.pacing import Pacer
from tgfs.store.telegram.store import TelegramStore

MiB = 2**20


def settings_for(standin: StandIn, data: Path, **extra: str) -> config.Settings:
    env = standin.env(TGFS_DATA_DIR=str(data), HOME=str(data), **extra)
    return config.load(env, env_file=Path("/dev/null"))


def make_film(folder: Path, count: int, size: int) -> list[Upload]:
    folder.mkdir(parents=True, exist_ok=True)
    uploads = []
    for i in range(count):
        path = folder / f"seg_{i:05d}.m4s"
        path.write_bytes(os.urandom(size))
        uploads.append(Upload(path, size, f"job1-{i}"))
    return uploads


async def tgfs_upload(
    settings: config.Settings, uploads: list[Upload], pacing_window: float | None = None
) -> tuple[float, dict]:
    store = TelegramStore(settings)
    await store.start()
    if pacing_window is not None:  # time-scaled simulation: the pacer's minute shrinks too
        for link in store.links.values():
            link.pacer = Pacer(settings.bot_messages_per_minute, window=pacing_window)
    try:
        started = time.perf_counter()
        await put_files(store, uploads, settings.part_size, lambda *_: None)
        elapsed = time.perf_counter() - started
        health = await store.health()
    finally:
        await store.aclose()
    return elapsed, health


def serial_upload(standin: StandIn, uploads: list[Upload], workdir: Path) -> float:
    """The peer: one send_document at a time, round robin over the bots."""

    async def run() -> float:
        clients = []
        for bot_id in standin.bot_ids:
            client = StandInClient(
                f"peer-{bot_id}",
                api_id=1,
                api_hash=API_HASH,
                bot_token=token(bot_id),
                workdir=str(workdir),
            )
            await client.start()
            clients.append((client, standin.channel(bot_id)))
        started = time.perf_counter()
        for i, upload in enumerate(uploads):
            client, channel = clients[i % len(clients)]
            await client.send_document(channel, str(upload.path), file_name=upload.key)
        return time.perf_counter() - started

    return asyncio.run(run())


def throughput(
    root: Path, segments: int, segment_mib: float, latency: float, bandwidth_mib: float
) -> None:
    size = int(segment_mib * MiB)
    uploads = make_film(root / "film", segments, size)
    total = segments * size / MiB
    print(
        f"\n1. Upload throughput: {segments} segments of {segment_mib:g} MiB "
        f"({total:.0f} MiB), {latency * 1000:.0f} ms latency, "
        f"{bandwidth_mib:g} MiB/s per bot"
    )
    print(f"{'bots':>4}  {'tgfs':>10}  {'vs 1 bot':>8}  {'serial peer':>11}  {'tgfs/peer':>9}")
    first = None
    for bots in (1, 2, 4, 8):
        params = {"latency": latency, "bandwidth": bandwidth_mib * MiB}
        standin = StandIn(root / f"tg-{bots}", bots=bots, **params)
        os.environ["STANDIN_DIR"] = str(standin.root)
        settings = settings_for(standin, root / f"data-{bots}", TGFS_BOT_MESSAGES_PER_MINUTE="0")
        elapsed, _ = trio.run(tgfs_upload, settings, uploads)
        rate = total / elapsed
        first = first or rate
        peer_line = ""
        if bots in (1, 8):
            peer = StandIn(root / f"peer-{bots}", bots=bots, **params)
            os.environ["STANDIN_DIR"] = str(peer.root)
            peer_rate = total / serial_upload(peer, uploads, root / f"peer-sessions-{bots}")
            peer_line = f"{peer_rate:>7.1f} MiB/s  {rate / peer_rate:>8.1f}x"
        print(f"{bots:>4}  {rate:>5.1f} MiB/s  {rate / first:>7.1f}x  {peer_line}", flush=True)


def two_hour_film(root: Path, scale: float, latency: float, bandwidth_mib: float) -> None:
    segments = 2 * 3600 // 6 + 1  # six-second segments + the init segment
    size = int(3 * MiB / scale)  # ~4 Mbit/s video, scaled like everything else
    uploads = make_film(root / "film2h", segments, size)
    print(
        f"\n2. A 2-hour film ({segments} messages) at 20 messages/minute per channel "
        f"(simulated {scale:g}x faster)"
    )
    print(f"{'setup':<28} {'simulated':>9}  {'real time':>9}  {'floor':>7}  {'flood waits':>11}")
    for bots, paced in ((1, True), (8, True), (8, False)):
        standin = StandIn(
            root / f"tg2h-{bots}-{paced}",
            bots=bots,
            latency=latency / scale,
            bandwidth=bandwidth_mib * MiB,
            messages_per_minute=20,
            time_scale=scale,
        )
        os.environ["STANDIN_DIR"] = str(standin.root)
        settings = settings_for(
            standin,
            root / f"data2h-{bots}-{paced}",
            TGFS_BOT_MESSAGES_PER_MINUTE="20" if paced else "0",
        )
        elapsed, health = trio.run(tgfs_upload, settings, uploads, 60 / scale)
        floods = sum(b["flood_waits"] for b in health["bots"])
        # The first minute's burst is free; every further 20 messages per bot need a minute.
        floor = math.ceil(segments / (bots * 20)) - 1
        label = f"{bots} bot(s), " + ("paced by tgfs" if paced else "unpaced (peer)")
        print(
            f"{label:<28} {elapsed:>8.1f}s  {elapsed * scale / 60:>6.1f} min  "
            f"{floor:>4d} min  {floods:>11}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=60)
    parser.add_argument("--segment-mib", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per request")
    parser.add_argument("--bandwidth-mib", type=float, default=4.0, help="per bot")
    parser.add_argument(
        "--scale", type=float, default=60.0, help="speed-up of the 2-hour-film simulation"
    )
    args = parser.parse_args()
    logging.getLogger("tgfs").setLevel(logging.ERROR)  # flood waits are counted, not logged
    with tempfile.TemporaryDirectory(prefix="tgfs-bench-") as tmp:
        root = Path(tmp)
        throughput(root, args.segments, args.segment_mib, args.latency, args.bandwidth_mib)
        two_hour_film(root, args.scale, args.latency, args.bandwidth_mib)


if __name__ == "__main__":
    main()
