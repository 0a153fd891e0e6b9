"""Streaming through the mount: prefetch ahead of a player, seeks, the cache's lifetime.

Which segments the daemon fetched is judged from outside: the cache directory holds one
data file per part it started fetching (named by the part's catalog id), and the catalog
(read with the sqlite3 module, or psycopg) says which segment each part belongs to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Mount, copy_in, telegram_env, wait_for
from tests.media import Spec, make


@pytest.fixture(scope="module")
def film(tmp_path_factory) -> Path:
    # 30 one-second segments (keyframe every second) of a small picture: many segments,
    # few bytes.
    path = tmp_path_factory.mktemp("film") / "film.mp4"
    return make(path, Spec(seconds=30, gop=25, audio_codec=None))


SEGMENT_ENV = {"TGFS_SEGMENT_SECONDS": "1", "TGFS_PREFETCH_SEGMENTS": "8"}


def _publish(mount_factory, film: Path, **env: str) -> Mount:
    """Publish the film, then restart with an empty cache (a cold library)."""
    m = mount_factory(**SEGMENT_ENV, **env)
    copy_in(film, m.path / "film.mp4")
    m.wait_idle()
    m.stop()
    shutil.rmtree(m.root / "cache")
    return m.start()


def _segments(m: Mount) -> list[tuple[Path, list[int]]]:
    """The video rendition's segment files in play order, with their parts' ids."""
    rows = m.catalog(
        "SELECT s.seq, s.name, r.name, p.id FROM segment s "
        "JOIN rendition r ON s.rendition_id = r.id JOIN part p ON p.blob_id = s.blob_id "
        "WHERE r.kind = 'video' ORDER BY s.seq, p.id"
    )
    segments: dict[int, tuple[Path, list[int]]] = {}
    for seq, name, rendition, part_id in rows:
        path = m.path / "film" / rendition / name
        segments.setdefault(seq, (path, []))[1].append(part_id)
    return [segments[seq] for seq in sorted(segments)]


def _fetched(m: Mount, segments: list[tuple[Path, list[int]]]) -> set[int]:
    """Segments (by seq) whose parts the cache has started to fetch."""
    root = next((m.root / "cache").iterdir())
    parts = {int(p.name) for p in root.iterdir() if p.name.isdigit()}
    return {seq for seq, (_, ids) in enumerate(segments) if parts & set(ids)}


def _stored(m: Mount, part_ids: list[int]) -> bytes:
    """A blob's bytes straight from the local store's files, not through the mount."""
    locations = dict(m.catalog("SELECT id, location FROM part"))
    return b"".join((m.data / "blobs" / locations[i]).read_bytes() for i in part_ids)


def _settled(m: Mount) -> dict:
    """Wait until no viewer's prefetch is running and no fetch is in flight."""

    def quiet():
        cache = m.status()["cache"]
        idle = cache["prefetch"]["viewers_fetching"] == 0 and cache["fetches_in_flight"] == 0
        return cache if idle else None

    return wait_for(quiet, 30, "prefetch to settle")


def test_prefetch_window_grows_while_sequential_and_resets_on_a_seek(mount_factory, film):
    m = _publish(mount_factory, film)
    segments = _segments(m)
    assert len(segments) >= 25
    assert _fetched(m, segments) == set()

    segments[0][0].read_bytes()  # start: window 2
    _settled(m)
    assert _fetched(m, segments) == {0, 1, 2}
    segments[1][0].read_bytes()  # sequential: window 4 after segment 1
    _settled(m)
    assert _fetched(m, segments) == set(range(6))
    segments[2][0].read_bytes()  # window 8 (the maximum) after segment 2
    _settled(m)
    assert _fetched(m, segments) == set(range(11))

    segments[20][0].read_bytes()  # a seek: back to a window of 2 from the new position
    cache = _settled(m)
    assert _fetched(m, segments) == set(range(11)) | {20, 21, 22}
    assert cache["prefetch"]["seeks"] == 1 and cache["prefetch"]["viewers"] == 1
    for path, ids in segments[:3] + segments[20:23]:  # every byte as stored
        assert path.read_bytes() == _stored(m, ids)


def test_a_seek_leaves_no_prefetch_running(mount_factory, film, telegram):
    # A slow store (100 ms per request, 16 KB/s per bot): a window of 8 segments takes
    # many seconds, so the seek lands while prefetch for the old position is in flight.
    m = _publish(mount_factory, film, **telegram_env(telegram))
    telegram.config.update(latency=0.1, bandwidth=16_000)
    telegram.write()
    segments = _segments(m)
    for path, _ in segments[:3]:
        path.read_bytes()
    assert m.status()["cache"]["prefetch"]["viewers_fetching"] == 1  # still fetching ahead
    before_seek = _fetched(m, segments)
    segments[25][0].read_bytes()
    cache = _settled(m)
    fetched = _fetched(m, segments)
    # What was queued for the old position was dropped: nothing between the old window's
    # start and the seek point was fetched afterwards, and nothing is left waiting.
    assert {25, 26, 27} <= fetched and not fetched & set(range(11, 25))
    # (one more may have started between our look and the seek)
    assert len(fetched - before_seek - {25, 26, 27}) <= 1, (before_seek, fetched)
    assert cache["prefetch"]["viewers"] == 1 and cache["fetches_in_flight"] == 0


def test_prefetch_waits_for_the_segment_the_player_opened(mount_factory, film, telegram):
    # After a seek the player waits for one segment: fetching the next ones meanwhile would
    # share the bots' bandwidth with it. They start only once it has arrived.
    m = _publish(mount_factory, film, **telegram_env(telegram))
    telegram.config.update(latency=0.1, bandwidth=16_000)
    telegram.write()
    segments = _segments(m)
    samples: list[tuple[float, set[int]]] = []  # (when, segments being fetched)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), _fetched(m, segments)))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        data = segments[20][0].read_bytes()  # ~1 s at 16 KB/s
        returned = time.monotonic()
    finally:
        done.set()
        watcher.join()
    assert data and len(data) == segments[20][0].stat().st_size
    # Judged over the first 80 % of the read, when the segment has certainly not arrived:
    # in its last moments it may have, and the next ones may rightly start before the
    # read returns (a fetch started at once would show all along).
    while_waiting = [f for t, f in samples if t < started + 0.8 * (returned - started)]
    assert len(while_waiting) > 10 and {20} in while_waiting
    assert all(fetched <= {20} for fetched in while_waiting), while_waiting[-1]
    _settled(m)
    assert _fetched(m, segments) == {20, 21, 22}  # then the window, as before


def test_cache_figures_clearing_and_deleted_videos(mount_factory, film):
    m = _publish(mount_factory, film, TGFS_TRASH_DAYS="0")  # a deleted video goes at once
    segments = _segments(m)
    # A player's first seconds: it reads a segment, then plays it while the next ones are
    # prefetched (waiting for that, not racing it, keeps the figures exact).
    for path, ids in segments[:5]:
        assert path.read_bytes() == _stored(m, ids)
        _settled(m)
    stats = json.loads((m.path / ".tgfs" / "cache.json").read_text())
    assert stats["misses"] >= 1 and stats["prefetch_hit_bytes"] > 0
    assert stats["served_bytes"] >= sum(len(_stored(m, ids)) for _, ids in segments[:5])
    assert stats["used_bytes"] > 0 and stats["prefetch"]["viewers"] == 1
    shown = _tgfs("cache", "stats", str(m.path))
    assert "hit ratio" in shown and "prefetched" in shown

    # Clearing is safe while mounted and a file is open: its next read fetches again.
    with open(segments[6][0], "rb") as held:
        assert "cache cleared" in _tgfs("cache", "clear", str(m.path))
        assert _fetched(m, segments) == set()
        assert held.read() == _stored(m, segments[6][1])
    assert json.loads((m.path / ".tgfs" / "cache.json").read_text())["used_bytes"] > 0

    # Deleting the video takes its parts out of the cache, not only out of the store.
    assert _fetched(m, segments)
    shutil.rmtree(m.path / "film")
    wait_for(lambda: not _fetched(m, segments), 60, "the deleted video's cached parts to go")
    m.store_matches_catalog()


def _tgfs(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tgfs", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_warm_segment_opens_without_a_catalog_query(mount_factory, film):
    # The hot path: once a segment was opened, opening it again needs nothing from the
    # catalog (judged from the daemon's DEBUG log of every SQL statement it runs).
    m = _publish(mount_factory, film)
    path, ids = _segments(m)[3]
    assert path.read_bytes() == _stored(m, ids)
    _settled(m)
    mark = len(m.log())
    assert path.read_bytes() == _stored(m, ids)
    _settled(m)
    lines = m.log()[mark:].splitlines()
    # The open handler's lines: from its own to the next request's (the kernel's getattr
    # and release come after it; the garbage collector's pass may run meanwhile, but it
    # reads only its own tables).
    opened = next(i for i, line in enumerate(lines) if "tgfs.fs.operations: open(" in line)
    after = next(i for i, line in enumerate(lines) if i > opened and "tgfs.fs.operations:" in line)
    opening = [
        line
        for line in lines[opened:after]
        if "peewee:" in line
        and ('"node"' in line or '"rendition"' in line or '"blob_id" = ?' in line)
    ]
    assert not opening, opening
