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

3. What encryption at rest costs: upload throughput and cold read throughput (through the
   read cache, four segments at a time, like a player with prefetch) of the same film, with
   and without an encryption key, in one run: on links like those of 1., and on links with
   no latency or bandwidth limit, where nothing hides the sealing work. The peer is rclone's
   crypt remote (NaCl secretbox in 64 KiB blocks) over a local directory, against the same
   directory without it: `rclone copy` in and `rclone cat` out, the film's files as they
   are. Each figure is the best of `--repeat` runs.

Nothing here talks to Telegram; the figures say what tgfs's code does with the limits the
stand-in models, not what Telegram's servers will do.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from tests.standin import API_HASH, StandIn, StandInClient, token
from tgfs import config
from tgfs.cache import PartCache
from tgfs.keys import generate_key_file
from tgfs.store.parts import Upload, put_files
from tgfs.store.sealing import sealer_for
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


async def sealed_or_not(
    settings: config.Settings, uploads: list[Upload], cache_dir: Path
) -> tuple[float, float]:
    """(upload s, cold read s) of `uploads` as the ingest stores segments (striped) and
    the mount reads them (PartCache), sealed if the settings have a key."""
    store = TelegramStore(settings)
    await store.start()
    sealer = sealer_for(settings)
    try:
        started = time.perf_counter()
        stored = await put_files(store, uploads, settings.part_size, lambda *_: None, None, sealer)
        upload = time.perf_counter() - started
        part_id = iter(range(1, 10**9))
        blobs = [
            [dataclasses.replace(p, id=next(part_id)) for p in stored[u.path]] for u in uploads
        ]
        cache = PartCache(cache_dir, 4 * 2**30, store, 0, sealer)
        todo = iter(zip(uploads, blobs, strict=True))

        async def player() -> None:
            for upload_, parts in todo:
                data = await cache.read(parts, 0, upload_.size)
                assert len(data) == upload_.size

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(player)
        read = time.perf_counter() - started
    finally:
        await store.aclose()
    return upload, read


def encryption_cost(
    root: Path, segments: int, segment_mib: float, latency: float, bandwidth_mib: float, repeat: int
) -> None:
    # Segments of varied sizes, as a film's are (±25 %): a size of exactly 2 MiB would seal
    # into a third part of a few hundred bytes, a case real segments are rarely in.
    rng = random.Random(3)
    folder = root / "film3"
    folder.mkdir()
    uploads = []
    for i in range(segments):
        size = int(segment_mib * MiB * rng.uniform(0.75, 1.25))
        path = folder / f"seg_{i:05d}.m4s"
        path.write_bytes(os.urandom(size))
        uploads.append(Upload(path, size, f"job3-{i}", stripe=True))
    total = sum(u.size for u in uploads) / MiB
    key = root / "bench.key"
    generate_key_file(key)
    print(
        f"\n3. Encryption at rest: {segments} segments of {segment_mib:g} MiB ({total:.0f} MiB) "
        f"up and read back cold, 4 bots; best of {repeat}"
    )
    print(f"{'links':<26} {'':>9}  {'no key':>11}  {'with key':>11}  {'cost':>6}")
    cases = (
        (f"{latency * 1000:.0f} ms, {bandwidth_mib:g} MiB/s per bot", latency, bandwidth_mib * MiB),
        ("no latency, no limit", 0.0, None),
    )
    run = 0
    for label, lat, bandwidth in cases:
        best: dict[bool, list[float]] = {False: [math.inf, math.inf], True: [math.inf, math.inf]}
        for _ in range(repeat):
            for sealed in (False, True):  # alternated, so drift hits both alike
                run += 1
                standin = StandIn(root / f"tg3-{run}", bots=4, latency=lat, bandwidth=bandwidth)
                os.environ["STANDIN_DIR"] = str(standin.root)
                extra = {"TGFS_ENCRYPTION_KEY_FILE": str(key)} if sealed else {}
                settings = settings_for(
                    standin, root / f"data3-{run}", TGFS_BOT_MESSAGES_PER_MINUTE="0", **extra
                )
                times = trio.run(sealed_or_not, settings, uploads, root / f"cache3-{run}")
                best[sealed] = [min(a, b) for a, b in zip(best[sealed], times, strict=True)]
        _cost_lines(label, total, best)
    if shutil.which("rclone") is None:
        print("rclone crypt (peer): rclone is not installed (apt-get install rclone)")
        return
    best = {False: [math.inf, math.inf], True: [math.inf, math.inf]}
    for _ in range(repeat):
        for sealed in (False, True):
            run += 1
            times = rclone_times(root / f"rclone-{run}", folder, sealed)
            best[sealed] = [min(a, b) for a, b in zip(best[sealed], times, strict=True)]
    _cost_lines("rclone crypt, local disk", total, best)


def _cost_lines(label: str, total: float, best: dict[bool, list[float]]) -> None:
    for i, what in enumerate(("upload", "cold read")):
        plain, sealed_rate = total / best[False][i], total / best[True][i]
        cost = (1 - sealed_rate / plain) * 100
        print(
            f"{label if i == 0 else '':<26} {what:>9}  {plain:>6.1f} MiB/s  "
            f"{sealed_rate:>6.1f} MiB/s  {cost:>5.1f}%",
            flush=True,
        )


def rclone_times(dest: Path, film: Path, crypt: bool) -> tuple[float, float]:
    """(copy in s, read out s) of the film's folder through rclone, with its crypt remote
    or plainly, over a local directory (config from the environment, nothing on disk)."""
    password = subprocess.run(
        ["rclone", "obscure", "bench password"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {
        **os.environ,
        "RCLONE_CONFIG": os.devnull,  # settings from here alone, and no notice about it
        "RCLONE_CONFIG_SEALED_TYPE": "crypt",
        "RCLONE_CONFIG_SEALED_REMOTE": str(dest),
        "RCLONE_CONFIG_SEALED_PASSWORD": password,
    }
    remote = "sealed:" if crypt else str(dest)
    started = time.perf_counter()
    subprocess.run(["rclone", "copy", str(film), remote], env=env, check=True)
    copied = time.perf_counter() - started
    subprocess.run(["sync"], check=True)
    # Cold: out of the page cache (as root; elsewhere the figure is a warm read).
    with open("/proc/sys/vm/drop_caches", "w") if os.geteuid() == 0 else open(os.devnull, "w") as f:
        f.write("1\n")
    started = time.perf_counter()
    subprocess.run(["rclone", "cat", remote], env=env, check=True, stdout=subprocess.DEVNULL)
    return copied, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=60)
    parser.add_argument("--segment-mib", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per request")
    parser.add_argument("--bandwidth-mib", type=float, default=4.0, help="per bot")
    parser.add_argument(
        "--scale", type=float, default=60.0, help="speed-up of the 2-hour-film simulation"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure in 3.")
    parser.add_argument(
        "--only", type=int, choices=(1, 2, 3), help="run one of the benchmarks, not all"
    )
    args = parser.parse_args()
    logging.getLogger("tgfs").setLevel(logging.ERROR)  # flood waits are counted, not logged
    with tempfile.TemporaryDirectory(prefix="tgfs-bench-") as tmp:
        root = Path(tmp)
        if args.only in (None, 1):
            throughput(root, args.segments, args.segment_mib, args.latency, args.bandwidth_mib)
        if args.only in (None, 2):
            two_hour_film(root, args.scale, args.latency, args.bandwidth_mib)
        if args.only in (None, 3):
            encryption_cost(
                root,
                args.segments,
                args.segment_mib,
                args.latency,
                args.bandwidth_mib,
                args.repeat,
            )


if __name__ == "__main__":
    main()
