"""The Telegram store's production code against the kurigram stand-in, in-process.

Placement, pacing, flood waits, dying bots, replicas, missing messages, expired file
references and batched deletes. Whole-film behaviour through a real mount is in
test_telegram.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.standin import StandIn, StandInClient, token
from tgfs import config
from tgfs.store.base import PartMissing, StoreError
from tgfs.store.parts import Upload, plan, put_files
from tgfs.store.telegram.bridge import AsyncioBridge
from tgfs.store.telegram.pacing import Pacer
from tgfs.store.telegram.store import EMPTY, TelegramStore, parse_location, placement, rank


@pytest.fixture
def standin(tmp_path, monkeypatch) -> StandIn:
    monkeypatch.setenv("STANDIN_DIR", str(tmp_path / "telegram"))
    return StandIn(tmp_path / "telegram", bots=4, latency=0.002)


def settings_for(standin: StandIn, tmp_path: Path, **extra: str) -> config.Settings:
    # Unpaced unless a test says otherwise: pacing has its own test.
    extra = {"TGFS_BOT_MESSAGES_PER_MINUTE": "0", **extra}
    env = standin.env(TGFS_DATA_DIR=str(tmp_path / "data"), HOME=str(tmp_path), **extra)
    return config.load(env, env_file=Path("/dev/null"))


@contextlib.asynccontextmanager
async def running_store(
    standin: StandIn, tmp_path: Path, **extra: str
) -> AsyncIterator[TelegramStore]:
    store = TelegramStore(settings_for(standin, tmp_path, **extra))
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def blob(tmp_path) -> tuple[Path, bytes]:
    data = os.urandom(3 * 2**20 + 12345)  # several 1 MiB stream_media chunks, ragged end
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


def bot_of(location: str) -> int:
    return parse_location(location)[0].bot_id


# ---- pure parts -------------------------------------------------------------------------


def test_a_striped_segment_spreads_over_distinct_bots():
    bots = list(range(1, 9))
    for blob in range(200):
        planned = plan(6 * 2**20 - 1000, 64 * 2**20, stripes=4)
        assert [size for _, size in planned] == [2 * 2**20, 2 * 2**20, 2 * 2**20 - 1000]
        firsts = [placement(bots, f"job1-720p-seg{blob}.part{i}")[0] for i in range(len(planned))]
        assert len(set(firsts)) == len(firsts)  # every stripe on a bot of its own
        assert sorted(placement(bots, f"k{blob}.part3")) == bots
    assert plan(500_000, 64 * 2**20, stripes=4) == [(0, 500_000)]  # one unit: one part
    assert plan(3 * 2**20, 2**20, stripes=2) == [
        (0, 2**20),
        (2**20, 2**20),
        (2 * 2**20, 2**20),
    ]  # parts stay ≤ size


def test_rendezvous_is_deterministic_even_and_moves_little_when_a_bot_is_added():
    bots = list(range(1, 9))
    keys = [f"job{j}-{i}.part0" for j in range(50) for i in range(200)]
    first = {k: rank(bots, k)[0] for k in keys}
    assert first == {k: rank(list(reversed(bots)), k)[0] for k in keys}  # order-free
    counts = collections.Counter(first.values())
    expected = len(keys) / len(bots)
    assert all(abs(n - expected) < 0.1 * expected for n in counts.values()), counts
    after = {k: rank([*bots, 9], k)[0] for k in keys}
    moved = [k for k in keys if after[k] != first[k]]
    assert all(after[k] == 9 for k in moved)  # only to the new bot
    assert abs(len(moved) - len(keys) / 9) < 0.1 * len(keys) / 9


def test_pacer_never_exceeds_the_rate_in_any_window():
    pacer = Pacer(per_minute=3)
    tickets = [pacer.reserve(100.0) for _ in range(7)]
    assert [pacer.turn(t) for t in tickets] == [100.0] * 3 + [160.0] * 3 + [220.0]
    pacer.done(tickets[0], 105.0)  # its upload ended later than planned: the 4th waits
    assert pacer.turn(tickets[3]) == 165.0
    assert pacer.turn(pacer.reserve(500.0)) == 500.0  # idle long enough: at once again
    unpaced = Pacer(per_minute=0)
    assert [unpaced.turn(unpaced.reserve(5.0)) for _ in range(50)] == [5.0] * 50


async def test_bridge_returns_raises_and_cancels():
    bridge = AsyncioBridge()
    bridge.start()
    cancelled = asyncio.Event()

    async def add(a, b):
        await asyncio.sleep(0.01)
        return a + b

    async def fail():
        raise KeyError("boom")

    async def hang():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        assert await bridge.run(add, 2, 3) == 5
        with pytest.raises(KeyError):
            await bridge.run(fail)
        with trio.move_on_after(0.1):
            await bridge.run(hang)
        with trio.fail_after(5):  # the asyncio task is cancelled with the trio caller
            while not cancelled.is_set():
                await trio.sleep(0.01)
    finally:
        await bridge.close()


# ---- the store ----------------------------------------------------------------------------


async def test_round_trip_ranges_spread_and_batched_delete(standin, tmp_path, blob):
    path, data = blob
    async with running_store(standin, tmp_path) as store:
        locations = [await store.put(path, 0, len(data), f"job1-{i}.part0") for i in range(40)]
        held = collections.Counter(bot_of(loc) for loc in locations)
        assert len(held) == 4 and min(held.values()) >= 4, held  # spread over every bot
        for offset, length in [
            (0, len(data)),
            (2**20 - 7, 20),
            (1000, 2 * 2**20 + 5),
            (len(data) - 10, 10),
        ]:
            assert await store.get(locations[0], offset, length) == data[offset : offset + length]
        assert await store.put(path, 0, 0, "empty.part0") == EMPTY
        assert await store.get(EMPTY, 0, 0) == b""
        # 250 messages on one bot: deletes must go in batches of ≤ 100 (the stand-in refuses
        # more), and deleting twice is fine.
        many = [await store.put(path, 0, 10, "same-key.part0") for _ in range(250)]
        assert len({bot_of(loc) for loc in many}) == 1
        assert await store.delete_many(locations + many) == {}
        assert await store.delete_many(locations) == {}
        assert all(ids == [] for ids in standin.messages().values())


async def test_flood_wait_on_one_bot_does_not_hold_up_the_others(standin, tmp_path, blob):
    path, _ = blob
    async with running_store(standin, tmp_path) as store:
        flooded = standin.bot_ids[0]
        standin.bot(0)["flood_until"] = time.time() + 30
        standin.write()
        started = time.monotonic()
        locations = [await store.put(path, 0, 1000, f"k{i}.part0") for i in range(24)]
        elapsed = time.monotonic() - started
        # Serving the flooded bot's share would take 30 s; the others took it meanwhile.
        assert elapsed < 15, elapsed
        assert flooded not in {bot_of(loc) for loc in locations}
        bots = {b["bot_id"]: b for b in (await store.health())["bots"]}
        assert bots[flooded]["flood_wait_s"] > 10 and bots[flooded]["up"]


async def test_when_every_bot_is_flooded_the_upload_waits(standin, tmp_path, blob, monkeypatch):
    path, _ = blob
    # Divert after 0.2 s instead of 5 s, so a 2 s flood wait counts as long.
    monkeypatch.setattr("tgfs.store.telegram.link.DIVERT_AFTER", 0.2)
    monkeypatch.setattr("tgfs.store.telegram.store.DIVERT_AFTER", 0.2)
    async with running_store(standin, tmp_path) as store:
        for index in range(4):
            standin.bot(index)["flood_until"] = time.time() + 2
        standin.write()
        started = time.monotonic()
        location = await store.put(path, 0, 1000, "k.part0")  # no spinning, no failure
        assert 1.0 < time.monotonic() - started < 10
        assert await store.get(location, 0, 1000) == path.read_bytes()[:1000]


async def test_bot_that_dies_mid_upload_loses_nothing(standin, tmp_path, blob):
    path, data = blob
    dead = standin.bot_ids[1]
    standin.bot(1)["die_after_sends"] = 2
    standin.write()
    # Keys whose first choice is the bot that dies: two land, then it dies mid-upload.
    keys = [
        k for k in (f"k{i}.part0" for i in range(200)) if placement(standin.bot_ids, k)[0] == dead
    ][:5] + [f"other{i}.part0" for i in range(8)]
    async with running_store(standin, tmp_path) as store:
        locations = [await store.put(path, 0, len(data), key) for key in keys]
        assert [bot_of(loc) == dead for loc in locations[:5]] == [True, True, False, False, False]
        bots = {b["bot_id"]: b for b in (await store.health())["bots"]}
        assert not bots[dead]["up"] and "network" in bots[dead]["reason"]
        for loc in locations[2:]:
            assert await store.get(loc, 0, len(data)) == data
        with pytest.raises(StoreError):  # its own messages are unreachable while it is down
            await store.get(locations[0], 0, 10)


async def test_replicas_serve_reads_when_a_bot_is_down(standin, tmp_path, blob):
    path, data = blob
    async with running_store(standin, tmp_path, TGFS_REPLICAS="2") as store:
        locations = [await store.put(path, 0, len(data), f"k{i}.part0") for i in range(8)]
        assert all(len({r.bot_id for r in parse_location(loc)}) == 2 for loc in locations)
        for index in range(4):
            standin.bot(index)["dead"] = index in (0, 1)
        standin.write()
        for loc in locations:
            if {r.bot_id for r in parse_location(loc)} <= set(standin.bot_ids[:2]):
                continue  # both copies on dead bots
            assert await store.get(loc, 5, 2**20) == data[5 : 5 + 2**20]


async def test_missing_message_and_expired_reference(standin, tmp_path, blob):
    path, data = blob
    standin.config["file_reference_ttl"] = 0.2
    standin.write()
    async with running_store(standin, tmp_path) as store:
        keep, gone = [await store.put(path, 0, len(data), f"k{i}.part0") for i in range(2)]
        await trio.sleep(0.3)  # the cached message's file reference is now stale
        assert await store.get(keep, 0, 100) == data[:100]
        replica = parse_location(gone)[0]
        standin.message_path(replica.channel_id, replica.message_id).unlink()
        with pytest.raises(PartMissing, match="gone"):
            await store.get(gone, 0, 100)


async def test_prepared_parts_are_read_without_a_look_up(standin, tmp_path, blob, monkeypatch):
    # A player opening a video makes the store look up all its parts' messages in bulk:
    # one GetMessages per bot (not per part), and then each read goes straight to GetFile.
    path, data = blob
    async with running_store(standin, tmp_path) as store:
        locations = [await store.put(path, 0, 2**20, f"k{i}.part0") for i in range(12)]
    looked_up: list[int] = []
    get_messages = StandInClient.get_messages

    async def counted(self, chat_id, message_ids):
        looked_up.append(len(message_ids) if isinstance(message_ids, list) else 1)
        return await get_messages(self, chat_id, message_ids)

    monkeypatch.setattr(StandInClient, "get_messages", counted)
    async with running_store(standin, tmp_path) as store:  # a restart: nothing kept
        await store.prepare([*locations, EMPTY])
        bots = {bot_of(location) for location in locations}
        assert len(looked_up) == len(bots) > 1 and sum(looked_up) == len(locations)
        for location in locations:
            assert await store.get(location, 5, 100) == data[5:105]
        assert len(looked_up) == len(bots)  # no look-up of its own for any read
        looked_up.clear()
        await store.prepare(locations)  # already known: nothing to ask
        assert looked_up == []


async def test_network_errors_are_retried(standin, tmp_path, blob):
    path, data = blob
    standin.config["failure_rate"] = 0.05
    standin.write()
    async with running_store(standin, tmp_path) as store:
        locations: dict[int, str] = {}

        async def put_and_check(i: int) -> None:
            locations[i] = await store.put(path, 0, len(data), f"k{i}.part0")
            assert await store.get(locations[i], 0, len(data)) == data

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(put_and_check, i)
        assert len(locations) == 30
        retries = sum(b["retries"] for b in (await store.health())["bots"])
        assert retries > 0  # failures happened and were absorbed


async def test_wrong_tokens_are_named_by_number_never_shown(standin, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    standin.bot(2)["token"] = "revoked"
    standin.write()
    store = TelegramStore(settings_for(standin, tmp_path))
    await store.start()  # three bots still work
    bots = {b["number"]: b for b in (await store.health())["bots"]}
    await store.aclose()
    assert not bots[3]["up"] and "ACCESS_TOKEN_INVALID" in bots[3]["reason"]
    assert "bot 3: marked down" in caplog.text
    assert token(standin.bot_ids[2]) not in caplog.text + str(bots)

    for index in range(4):
        standin.bot(index)["token"] = "revoked"
    standin.write()
    store = TelegramStore(settings_for(standin, tmp_path / "fresh"))
    with pytest.raises(StoreError, match="no Telegram bot can be used") as failure:
        await store.start()
    assert all(token(b) not in str(failure.value) for b in standin.bot_ids)


async def test_slow_logins_do_not_hold_up_the_mount(standin, tmp_path, blob, monkeypatch):
    path, data = blob
    monkeypatch.setattr("tgfs.store.telegram.store.START_WAIT", 0.3)
    standin.config["latency"] = 0.5  # a login takes several round trips
    standin.write()
    store = TelegramStore(settings_for(standin, tmp_path))
    started = time.monotonic()
    await store.start()
    try:
        assert time.monotonic() - started < 1.0
        location = await store.put(path, 0, 1000, "k.part0")  # logs in on first use
        assert await store.get(location, 0, 1000) == data[:1000]
    finally:
        await store.aclose()


async def test_parts_a_crash_left_in_a_channel_are_found_and_nothing_else(standin, tmp_path, blob):
    """An upload Telegram accepted as the daemon died leaves a message whose id tgfs never
    learned; bots cannot list a channel. The next start finds it near the channel's mark,
    and leaves alone what the catalog names and what tgfs did not send."""
    from tgfs.store.telegram import client as tg

    path, _ = blob
    async with running_store(standin, tmp_path) as store:
        known = [await store.put(path, 0, 1000, f"job1-r0-seg{n}.part0") for n in range(3)]
        link = store.links[bot_of(known[0])]
        for name in ("job1-r0-seg9.part0", "holiday.jpg"):  # sent, answer lost / not ours
            await link._bridge.run(tg.send_part, link._client, link.channel_id, path, 0, 1000, name)
    async with running_store(standin, tmp_path) as store:  # the next start
        found = await store.orphans(lambda location: location in known)
        assert len(found) == 1 and bot_of(found[0]) == link.bot_id, found
        assert found[0] not in known
        # Deleting it leaves the channel with the catalog's messages and the stranger's.
        assert await store.delete_many(found) == {}
        assert await store.orphans(lambda location: location in known) == []
    assert sum(len(ids) for ids in standin.messages().values()) == len(known) + 1


async def test_striped_segments_keep_their_stripes_on_distinct_bots_under_load(standin, tmp_path):
    # Many 3 MiB segments at once through one transfer slot per bot: every bot is busy,
    # which makes ordinary parts move to less busy bots; stripes must not share a bot,
    # or a seek would read two of them from one link.
    standin.config.update(bandwidth=16_000_000)
    standin.write()
    uploads = []
    for i in range(24):
        path = tmp_path / f"seg{i}.m4s"
        path.write_bytes(os.urandom(3 * 2**20))
        uploads.append(Upload(path, 3 * 2**20, f"job1-720p-seg{i}", stripe=True))
    async with running_store(
        standin, tmp_path, TGFS_BOT_TRANSFERS="1", TGFS_STRIPE_WIDTH="3"
    ) as store:
        stored = await put_files(store, uploads, 64 * 2**20, lambda part: None)
        for upload in uploads:
            parts = stored[upload.path]
            assert len(parts) == 3
            assert len({bot_of(p.location) for p in parts}) == 3, upload.key
            got = b"".join([await store.get(p.location, 0, p.size) for p in parts])
            assert got == upload.path.read_bytes()


async def test_the_backup_manifest_is_pinned_by_every_bot(standin, tmp_path, blob):
    """Each bot pins the newest manifest in its channel and deletes the one before; any
    one bot is enough to read it; a bot that missed a save is outvoted by the others."""
    async with running_store(standin, tmp_path) as store:
        assert await store.load_manifest() is None
        await store.save_manifest(b'{"generation": 1}')
        pinned_first = {
            b: (standin.root / "channels" / str(standin.channel(b)) / "pinned").read_text()
            for b in standin.bot_ids
        }
        standin.bot(3)["dead"] = True  # misses the next save
        standin.write()
        await store.save_manifest(b'{"generation": 2}')
        assert await store.load_manifest() == b'{"generation": 2}'
        for b in standin.bot_ids[:3]:  # the old manifest message is gone where replaced
            channel = standin.channel(b)
            assert not standin.message_path(channel, int(pinned_first[b])).exists()
        # The backup's own parts go to every bot that is up, not TGFS_REPLICAS.
        location = await store.put(blob[0], 0, 1000, "backup-1.part0", everywhere=True)
        assert len(parse_location(location)) == 3
    standin.bot(3)["dead"] = False
    for dead in (0, 1, 2):  # any one bot that saw the newest save is enough
        standin.bot(dead)["dead"] = True
    standin.write()
    async with running_store(standin, tmp_path / "again") as store:
        assert await store.load_manifest() == b'{"generation": 1}'  # only bot 4 is up
    standin.bot(0)["dead"] = False
    standin.write()
    async with running_store(standin, tmp_path / "third") as store:
        assert await store.load_manifest() == b'{"generation": 2}'  # newest wins
