"""Catalog latency through the mount, SQLite against PostgreSQL. Run: `make bench-catalog`.

The same library operations through a mount on the local store, with the catalog in the
SQLite file and in PostgreSQL over TCP on 127.0.0.1 (the network stack, as from another
host, without a network's delay: a floor for a remote database). Timed one call at a
time, each a request the daemon answers from its catalog:

- create: `open(O_CREAT)` + `close` of an empty file in a folder (a catalog insert, a
  commit, and the ingest job's durable commit at close);
- stat: `os.stat` of a file whose attributes the kernel no longer holds (after their
  1 s timeout): a lookup;
- readdir: `os.listdir` of the 1,000-entry folder (pages of 500 entries).

Prints p50 and p99 in milliseconds for each.

Then the same PostgreSQL behind a delay line (`--rtt`, default 2 ms: a LAN; try 20 for a
database in another city), with the catalog's reads on the FUSE thread
(TGFS_CATALOG_READERS=0) and on four reader threads (the default):

- stat, one at a time; then four loops, each in a folder of its own, of lookups of names
  that are not there (each one a catalog query: the kernel keeps no negative answer), each
  call's time;
- a player's read during those four loops: a warm segment (no catalog query to open it)
  read whole from tgfs's cache, page cache dropped first.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import MEDIA_SPECS, Mount
from tests.media import make
from tests.postgres import server

FILES = 1000


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def _timed(calls: list[Callable[[], object]]) -> list[float]:
    times = []
    for call in calls:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def measure(root: Path, env: dict[str, str], rounds: int) -> dict[str, tuple[float, float]]:
    m = Mount(root, {"TGFS_LOG_LEVEL": "INFO", **env}).start()
    try:
        folder = m.path / "many"
        folder.mkdir()

        def create(n: int) -> Callable[[], object]:
            return lambda: os.close(os.open(folder / f"f{n:04}", os.O_CREAT | os.O_WRONLY, 0o644))

        creates = _timed([create(n) for n in range(FILES)])
        m.wait_idle(600)
        stats: list[float] = []
        for _ in range(rounds):
            time.sleep(1.2)  # the kernel's attributes and names expire (1 s)
            names = random.sample(range(FILES), 100)
            stats += _timed([lambda n=n: os.stat(folder / f"f{n:04}") for n in names])
        lists = _timed([lambda: os.listdir(folder) for _ in range(20 * rounds)])
        return {
            "create": _percentiles(creates),
            "stat": _percentiles(stats),
            "readdir (1,000)": _percentiles(lists),
        }
    finally:
        m.stop()


class DelayLine:
    """A TCP relay from 127.0.0.1:`port` to `target` that holds every chunk `delay` s in
    each direction, like a network with a round trip of twice that (a chunk's delay does
    not add to the next one's: it is a line, not a queue)."""

    def __init__(self, port: int, target: int, delay: float) -> None:
        self.delay, self.target = delay, target
        self.listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server_side = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, server_side), (server_side, client)):
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                line: collections.deque = collections.deque()
                ready = threading.Condition()
                threading.Thread(target=self._take, args=(a, b, line, ready), daemon=True).start()
                threading.Thread(target=self._give, args=(b, line, ready), daemon=True).start()

    def _take(self, src: socket.socket, dst: socket.socket, line, ready) -> None:
        while data := _recv(src):
            with ready:
                line.append((time.monotonic() + self.delay, data))
                ready.notify()
        with ready:
            line.append((0.0, b""))
            ready.notify()

    def _give(self, dst: socket.socket, line, ready) -> None:
        while True:
            with ready:
                while not line:
                    ready.wait()
                due, data = line.popleft()
            if not data:
                dst.close()
                return
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def over_a_network(root: Path, url: str, readers: int, rounds: int) -> dict:
    """stat alone, stat four at once, and a warm segment's read during those (see above)."""
    m = Mount(
        root,
        {"TGFS_LOG_LEVEL": "INFO", "TGFS_CATALOG_URL": url, "TGFS_CATALOG_READERS": str(readers)},
    ).start()
    try:
        folder = m.path / "many"
        folder.mkdir()
        for n in range(FILES // 4):
            os.close(os.open(folder / f"f{n:04}", os.O_CREAT | os.O_WRONLY, 0o644))
        clip = root / "clip.mp4"
        make(clip, MEDIA_SPECS["film.mp4"])  # copy mode: segments of up to 1 MiB
        subprocess.run(["cp", str(clip), str(m.path / "clip.mp4")], check=True)
        m.wait_idle(600)
        segment = next((m.path / "clip").glob("*/*.m4s"))
        segment.read_bytes()  # warm: in tgfs's cache, and its open needs no query
        alone: list[float] = []
        for _ in range(rounds):
            time.sleep(1.2)  # the kernel's attributes and names expire (1 s)
            names = random.sample(range(FILES // 4), 50)
            alone += _timed([lambda n=n: os.stat(folder / f"f{n:04}") for n in names])
        together: list[float] = []
        reads: list[float] = []
        stop = threading.Event()

        def missing(where: Path, n: int) -> None:
            with contextlib.suppress(FileNotFoundError):
                os.stat(where / f"f{n:04}.srt")

        def stats(where: Path) -> None:
            # Names that are not there: the kernel keeps no negative answer, so each is a
            # lookup in the catalog (a web server's 404s, a media scanner's probes for
            # subtitle files); names that are, it would answer itself for a second. Each
            # loop in a folder of its own: the kernel sends one lookup at a time per
            # folder (measured here: four loops in one folder take turns).
            where.mkdir()
            while not stop.is_set():
                n = random.randrange(FILES // 4)
                together.extend(_timed([lambda n=n: missing(where, n) for _ in range(20)]))

        loops = [threading.Thread(target=stats, args=(m.path / f"d{k}",)) for k in range(4)]
        for t in loops:
            t.start()
        try:
            for _ in range(40 * rounds):
                fd = os.open(segment, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # from tgfs, not the kernel
                started = time.perf_counter()
                while os.read(fd, 1 << 20):
                    pass
                reads.append(time.perf_counter() - started)
                os.close(fd)
                time.sleep(0.02)
        finally:
            stop.set()
            for t in loops:
                t.join()
        return {
            "stat, alone": _percentiles(alone),
            "4 lookups at once": _percentiles(together),
            "segment read then": _percentiles(reads),
        }
    finally:
        m.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="stat rounds of 100 files")
    parser.add_argument("--port", type=int, default=54329, help="PostgreSQL's TCP port")
    parser.add_argument("--rtt", type=float, default=2.0, help="the delay line's round trip, ms")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tgfs-bench-catalog-"))
    pg = server(args.port)
    try:
        (work / "sqlite").mkdir()
        (work / "pg").mkdir()
        sqlite = measure(work / "sqlite", {}, args.rounds)
        postgres = measure(work / "pg", {"TGFS_CATALOG_URL": pg.database(tcp=True)}, args.rounds)
        line = DelayLine(args.port + 1, args.port, args.rtt / 2000)
        far = {}
        for readers in (0, 4):
            (work / f"far{readers}").mkdir()
            url = pg.database(tcp=True).replace(f":{args.port}/", f":{args.port + 1}/")
            far[readers] = over_a_network(work / f"far{readers}", url, readers, args.rounds)
        line.close()
    finally:
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncatalog latency through the mount, {FILES} files; ms, p50 / p99")
    print(f"{'':18}| {'SQLite (catalog.db)':22}| PostgreSQL (TCP, 127.0.0.1)")
    for what in sqlite:
        a, b = sqlite[what], postgres[what]
        print(f"{what:18}| {a[0]:6.2f} / {a[1]:6.2f}{'':7}| {b[0]:6.2f} / {b[1]:6.2f}")

    print(f"\nPostgreSQL behind a {args.rtt:g} ms round trip; ms, p50 / p99")
    print(f"{'':18}| {'reads on the FUSE thread':25}| 4 reader threads (default)")
    for what in far[0]:
        a, b = far[0][what], far[4][what]
        print(f"{what:18}| {a[0]:6.2f} / {a[1]:6.2f}{'':10}| {b[0]:6.2f} / {b[1]:6.2f}")


if __name__ == "__main__":
    main()
