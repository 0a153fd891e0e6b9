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
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Mount
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="stat rounds of 100 files")
    parser.add_argument("--port", type=int, default=54329, help="PostgreSQL's TCP port")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tgfs-bench-catalog-"))
    pg = server(args.port)
    try:
        (work / "sqlite").mkdir()
        (work / "pg").mkdir()
        sqlite = measure(work / "sqlite", {}, args.rounds)
        postgres = measure(work / "pg", {"TGFS_CATALOG_URL": pg.database(tcp=True)}, args.rounds)
    finally:
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncatalog latency through the mount, {FILES} files; ms, p50 / p99")
    print(f"{'':18}| {'SQLite (catalog.db)':22}| PostgreSQL (TCP, 127.0.0.1)")
    for what in sqlite:
        a, b = sqlite[what], postgres[what]
        print(f"{what:18}| {a[0]:6.2f} / {a[1]:6.2f}{'':7}| {b[0]:6.2f} / {b[1]:6.2f}")


if __name__ == "__main__":
    main()
