"""Pure pieces: codec strings, playlists, part planning, the cache, the media child guard."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import m3u8
import pytest
import trio
import trio.testing

from tgfs.cache import PartCache
from tgfs.ingest import media_process
from tgfs.media import codecs, playlists
from tgfs.media.hls import EncodeOptions
from tgfs.media.worker import WorkerOptions
from tgfs.store.base import PartRef
from tgfs.store.local import LocalStore
from tgfs.store.parts import Upload, overlapping, plan, put_files
from tgfs.store.slots import URGENT, Priority, Slots


def test_codec_strings():
    assert codecs.avc1(bytes([1, 0x64, 0x00, 0x1F, 0xFF])) == "avc1.64001f"
    # Apple's example: HEVC Main, level 3.1, constraint byte B0 → hvc1.1.6.L93.B0
    hvcc = bytes([1, 0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 93])
    assert codecs.hvc1(hvcc) == "hvc1.1.6.L93.B0"
    main10_high_tier = bytes([1, 0x22, 0x20, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 150])
    assert codecs.hvc1(main10_high_tier) == "hvc1.2.4.H150.90"
    assert codecs.mp4a(bytes([0x12, 0x10])) == "mp4a.40.2"  # AAC-LC
    assert codecs.mp4a(bytes([0x2B, 0x92])) == "mp4a.40.5"  # HE-AAC
    with pytest.raises(codecs.CodecStringError):
        codecs.avc1(b"")


def test_playlists_follow_the_rules():
    segments = [("seg_00000.m4s", 6.006), ("seg_00001.m4s", 6.006), ("seg_00002.m4s", 2.5)]
    target = playlists.target_duration(d for _, d in segments)
    assert target == 6  # 6.006 rounds to 6
    text = playlists.media(target, "init.mp4", segments)
    parsed = m3u8.loads(text)
    assert parsed.target_duration == 6 and parsed.is_endlist and parsed.playlist_type == "vod"
    assert [s.duration for s in parsed.segments] == [6.006, 6.006, 2.5]
    assert parsed.segment_map[0].uri == "init.mp4"
    master = m3u8.loads(
        playlists.master(
            [
                playlists.Variant(
                    "720p/playlist.m3u8",
                    3_000_000,
                    2_000_000,
                    "avc1.64001f,mp4a.40.2",
                    1280,
                    720,
                    24.0,
                )
            ]
        )
    )
    info = master.playlists[0].stream_info
    assert (info.bandwidth, info.average_bandwidth, info.frame_rate) == (3_000_000, 2_000_000, 24.0)
    assert playlists.bandwidths([(750_000, 6.0), (1_500_000, 6.0)]) == (2_000_000, 1_500_000)


def test_part_plan():
    assert plan(0, 10) == [(0, 0)]
    assert plan(25, 10) == [(0, 10), (10, 10), (20, 5)]
    parts = [PartRef(i, i, o, s, f"l{i}") for i, (o, s) in enumerate(plan(25, 10))]
    assert [p.index for p in overlapping(parts, 9, 2)] == [0, 1]
    assert [p.index for p in overlapping(parts, 20, 100)] == [2]


class CountingStore(LocalStore):
    """The local store, counting and slowing down gets (like a remote one). A get of a
    (location, offset) in `held` waits until the test releases it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: list[tuple[int, int]] = []
        self.urgent: list[bool] = []  # each get's priority when it started
        self.in_flight = 0
        self.most_in_flight = 0
        self.held: dict[tuple[str, int], trio.Event] = {}

    async def get(
        self, location: str, offset: int, length: int, priority: Priority = URGENT
    ) -> bytes:
        self.gets.append((offset, length))
        self.urgent.append(priority.urgent)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await trio.sleep(0.05)
            if (location, offset) in self.held:
                await self.held[location, offset].wait()
            return await super().get(location, offset, length)
        finally:
            self.in_flight -= 1


async def _stored(
    tmp_path: Path, size: int, part_size: int
) -> tuple[CountingStore, bytes, list[PartRef]]:
    store = CountingStore(tmp_path / "store")
    src = tmp_path / "blob"
    data = os.urandom(size)
    src.write_bytes(data)
    refs = (await put_files(store, [Upload(src, len(data), "k")], part_size, lambda *_: None))[src]
    return (
        store,
        data,
        [PartRef(i + 1, p.index, p.offset, p.size, p.location) for i, p in enumerate(refs)],
    )


async def test_cache_single_flight_per_chunk_and_bounds(tmp_path):
    store, data, parts = await _stored(tmp_path, 3 * 2**20, 2**20)
    cache = PartCache(tmp_path / "cache", 2 * 2**20, store)
    results = []

    async def reader():
        results.append(await cache.read(parts, 10, 100))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
    assert results == [data[10:110]] * 5
    assert store.gets == [(0, 2**20)]  # five readers, one fetch of one chunk
    assert await cache.read(parts, 2**20 - 5, 10) == data[2**20 - 5 : 2**20 + 5]
    assert await cache.read(parts, 0, len(data)) == data
    assert cache.stats()["used_bytes"] <= 2 * 2**20  # evicted down to capacity


async def test_a_read_waits_only_for_its_chunks_fetched_in_parallel(tmp_path):
    store, data, parts = await _stored(tmp_path, 6 * 2**20, 8 * 2**20)  # one 6 MiB part
    cache = PartCache(tmp_path / "cache", 64 * 2**20, store)
    store.held[parts[0].location, 5 * 2**20] = gate = trio.Event()  # the last chunk waits
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)  # fetches ahead run in its nursery
        # A read inside chunk 1 returns although the part is far from complete.
        with trio.fail_after(5):
            assert await cache.read(parts, 2**20 + 7, 1000) == data[2**20 + 7 : 2**20 + 1007]
        assert cache.stats()["partial_parts"] == 1
        # A read across four chunks fetches them at once, not one after another.
        store.most_in_flight = 0
        assert await cache.read(parts, 0, 4 * 2**20) == data[: 4 * 2**20]
        assert store.most_in_flight >= 3
        # Asked to, the cache fetches the rest ahead of the reader (a segment is read
        # whole): the read returns while the last chunk is still held back.
        with trio.fail_after(5):
            assert await cache.read(parts, 0, 10, ahead=len(data)) == data[:10]
        gate.set()
        with trio.fail_after(5):
            while cache.stats()["partial_parts"]:  # the background fill completes it
                await trio.sleep(0.01)
        assert sorted(store.gets) == [(i * 2**20, 2**20) for i in range(6)]  # each once
        nursery.cancel_scope.cancel()


async def test_partial_parts_survive_a_restart(tmp_path):
    store, data, parts = await _stored(tmp_path, 4 * 2**20, 8 * 2**20)
    cache = PartCache(tmp_path / "cache", 64 * 2**20, store)
    assert await cache.read(parts, 0, 10) == data[:10]
    assert await cache.read(parts, 2 * 2**20, 10) == data[2 * 2**20 : 2 * 2**20 + 10]
    await cache.flush()
    again = PartCache(tmp_path / "cache", 64 * 2**20, store)  # a restart
    assert again.stats()["partial_parts"] == 1 and again.stats()["used_bytes"] == 2 * 2**20
    fetched = len(store.gets)
    assert await again.read(parts, 2 * 2**20, 2**20) == data[2 * 2**20 : 3 * 2**20]
    assert len(store.gets) == fetched  # served from the recorded chunk
    assert await again.read(parts, 0, len(data)) == data
    assert len(store.gets) == fetched + 2  # only the two chunks never fetched


async def test_eviction_spares_parts_being_read(tmp_path):
    store, data, parts = await _stored(tmp_path, 4 * 2**20, 2**20)  # four 1 MiB parts
    cache = PartCache(tmp_path / "cache", 2 * 2**20, store)
    store.held[parts[0].location, 0] = gate = trio.Event()
    async with trio.open_nursery() as nursery:
        got = []

        async def slow_reader():
            got.append(await cache.read(parts[:1], 0, 2**20))

        nursery.start_soon(slow_reader)
        with trio.fail_after(5):
            while not cache.stats()["fetches_in_flight"]:  # its fetch has started
                await trio.sleep(0.01)
        assert await cache.read(parts, 2**20, 3 * 2**20) == data[2**20 :]  # over capacity
        gate.set()
    assert got == [data[: 2**20]]  # its part was not evicted under it


async def test_a_film_watched_once_does_not_flush_what_people_come_back_to(tmp_path):
    store, data, parts = await _stored(tmp_path, 40 * 2**20, 2**20)  # 40 parts of 1 MiB
    cache = PartCache(tmp_path / "cache", 10 * 2**20, store)
    hot, film = parts[:4], parts[4:]

    async def open_and_read(part):  # one open file reading a whole part, in 4 reads
        seen: set[int] = set()
        for k in range(4):
            off = part.offset + k * 2**18
            assert await cache.read(parts, off, 2**18, seen=seen) == data[off : off + 2**18]

    for _ in range(2):  # the hot parts are opened twice: used again
        for part in hot:
            await open_and_read(part)
    for part in film:  # a 36 MiB scan, each part once, through a 10 MiB cache
        await open_and_read(part)
    fetched = len(store.gets)
    for part in hot:
        await open_and_read(part)
    assert len(store.gets) == fetched  # every hot part was still there
    assert cache.stats()["used_bytes"] <= 10 * 2**20


async def test_deleted_parts_leave_the_cache(tmp_path):
    store, data, parts = await _stored(tmp_path, 4 * 2**20, 2**20)
    cache = PartCache(tmp_path / "cache", 64 * 2**20, store)
    await cache.read(parts, 0, len(data))
    cache_files = {p.name for p in (tmp_path / "cache").iterdir()}
    assert {str(p.id) for p in parts} <= cache_files
    assert cache.drop_unknown(lambda ids: {parts[0].id, parts[3].id} & set(ids)) == 2
    left = {p.name.removesuffix(".map") for p in (tmp_path / "cache").iterdir()}
    assert left == {str(parts[0].id), str(parts[3].id)}
    assert cache.stats()["used_bytes"] == 2 * 2**20


async def test_slots_serve_urgent_requests_before_prefetch():
    slots = Slots(4, prefetch_max=2)
    release = trio.Event()
    holding: list[str] = []

    async def hold(name: str, priority: Priority) -> None:
        async with slots.hold(priority):
            holding.append(name)
            await release.wait()

    async with trio.open_nursery() as nursery:
        waiting = [Priority(urgent=False) for _ in range(6)]
        for n, priority in enumerate(waiting):
            nursery.start_soon(hold, f"prefetch {n}", priority)
        await trio.testing.wait_all_tasks_blocked()
        assert len(holding) == 2  # two slots stay free for readers
        nursery.start_soon(hold, "read", URGENT)
        await trio.testing.wait_all_tasks_blocked()
        assert holding[-1] == "read"  # at once, though six prefetches came first
        queued = next(n for n in range(6) if f"prefetch {n}" not in holding)
        waiting[queued].raise_to_urgent()  # a reader now waits for that prefetch's bytes
        await trio.testing.wait_all_tasks_blocked()
        assert holding[-1] == f"prefetch {queued}" and slots.busy == 4
        release.set()
    assert slots.busy == 0 and sorted(holding) == sorted(
        ["read"] + [f"prefetch {n}" for n in range(6)]
    )


@pytest.mark.parametrize("yield_to_urgent", [True, False])
async def test_prefetch_on_a_link_waits_for_reads_to_finish(yield_to_urgent):
    # A bot's transfers share its bandwidth: with yield_to_urgent no prefetch starts
    # while a read holds a slot, and the queued prefetch starts when the read ends.
    slots = Slots(4, prefetch_max=2, yield_to_urgent=yield_to_urgent)
    read_done = trio.Event()
    started: list[str] = []

    async def hold(name: str, priority: Priority, until: trio.Event) -> None:
        async with slots.hold(priority):
            started.append(name)
            await until.wait()

    never = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "read", URGENT, read_done)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "prefetch", Priority(urgent=False), never)
        await trio.testing.wait_all_tasks_blocked()
        assert started == (["read"] if yield_to_urgent else ["read", "prefetch"])
        read_done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert started == ["read", "prefetch"]
        nursery.cancel_scope.cancel()


async def test_a_read_goes_before_heavy_prefetch(tmp_path):
    store, data, parts = await _stored(tmp_path, 64 * 2**20, 2**20)  # 64 parts of 1 MiB
    cache = PartCache(tmp_path / "cache", 256 * 2**20, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        prefetch = Priority(urgent=False)
        cache.fetch_ahead(parts, 0, 60 * 2**20, prefetch)  # 60 chunks queued ahead
        await trio.testing.wait_all_tasks_blocked()
        started_before = len(store.gets)
        with trio.fail_after(5):
            assert await cache.read(parts, 63 * 2**20, 100) == data[63 * 2**20 :][:100]
        # Prefetch holds only its share of the fetch slots, and the read's fetch starts
        # next, not behind the 52 prefetch fetches still queued.
        assert started_before == 8
        assert store.urgent.index(True) == started_before
        nursery.cancel_scope.cancel()


async def test_media_child_crash_fails_the_job_only(tmp_path, monkeypatch):
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(media_process, "WORKER_COMMAND", [sys.executable, "-c", crash])
    options = WorkerOptions("x.mp4", 1, True, 0, EncodeOptions())
    with pytest.raises(media_process.MediaFailed, match=r"crashed \(SIGSEGV\)"):
        await media_process.run_worker(tmp_path / "x", tmp_path / "w", options, print)


async def test_media_child_that_hangs_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(
        media_process, "WORKER_COMMAND", [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    monkeypatch.setattr(media_process, "STALL_TIMEOUT", 0.5)
    options = WorkerOptions("x.mp4", 1, True, 0, EncodeOptions())
    with trio.fail_after(10), pytest.raises(media_process.MediaFailed, match="no progress"):
        await media_process.run_worker(tmp_path / "x", tmp_path / "w", options, print)
