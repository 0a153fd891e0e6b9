"""Several hosts, one library: two daemons on this machine, each with a data directory of
its own (so a host id, spool, cache and lock of its own), sharing the tests' PostgreSQL
catalog (tests/postgres.py) and one local store directory, as two machines would share a
database server and Telegram."""

from __future__ import annotations

import contextlib
import filecmp
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Mount, copy_in, telegram_env, wait_for
from tests.hls_checks import decode_errors
from tgfs.catalog.duties import Duty
from tgfs.catalog.schema import LIBRARY_CLASS


@pytest.fixture
def hosts(mount_factory, postgres, tmp_path) -> Callable[..., Mount]:
    """hosts("a") → a daemon as host "a" of the shared library."""
    url = postgres.database()
    store = tmp_path / "store"

    def start(name: str, **env: str) -> Mount:
        return mount_factory(
            tmp_path / name, TGFS_CATALOG_URL=url, TGFS_LOCAL_STORE_DIR=str(store), **env
        )

    return start


def seen_within(check: Callable[[], object], seconds: float, what: str) -> float:
    """How long `check` took to come true (fails past `seconds`)."""
    began = time.monotonic()
    wait_for(check, seconds, what)
    return time.monotonic() - began


def test_a_video_dropped_on_one_host_plays_on_the_other(hosts, media):
    a, b = hosts("a"), hosts("b")
    assert (a.data / "host").read_text() != (b.data / "host").read_text()
    (a.path / "Movies").mkdir()
    copy_in(media("h264_aac.mp4"), a.path / "Movies" / "Clip.mp4")
    a.wait_idle()
    (job,) = a.status()["jobs"]
    assert job["host"] == (a.data / "host").read_text().strip()
    assert job["outcome"] == "video (copy)"
    # B reads it from the shared store through its own cache.
    assert decode_errors(b.path / "Movies" / "Clip" / "master.m3u8") == ""
    assert sorted(os.listdir(b.path / "Movies")) == ["Clip"]

    # A rename on B shows on A, and the other way round, within 2 s. A's kernel has just
    # looked the name up, and trusts it for a second (tgfs.fs.attrs): unless B's change is
    # notified (tgfs.fs.notices), A still finds the old name for most of that second.
    assert (a.path / "Movies" / "Clip").is_dir()
    (b.path / "Movies" / "Clip").rename(b.path / "Movies" / "Film")
    took = seen_within(lambda: not (a.path / "Movies" / "Clip").exists(), 2, "the rename on A")
    assert took < 0.5, f"the old name stayed {took:.2f} s on A"
    assert os.listdir(a.path / "Movies") == ["Film"]
    assert (a.path / "Movies" / "Film" / "master.m3u8").is_file()
    (a.path / "notes.txt").write_text("written on A")
    took = max(took, seen_within(lambda: (b.path / "notes.txt").exists(), 2, "the file on B"))
    assert (b.path / "notes.txt").read_text() == "written on A"
    print(f"changes seen on the other host after {took:.2f} s at most")
    a.store_matches_catalog()


def _race(a: Mount, b: Mount, name: str, act: Callable[[Mount], None]) -> list[OSError]:
    """`act` on both hosts at once, with `name` found free by both: the test holds the
    names' table while both daemons look it up, then lets them go. Returns the errors."""
    blocker = psycopg.connect(a.catalog_place)
    blocker.execute("LOCK TABLE entry IN ACCESS EXCLUSIVE MODE")
    failed: list[OSError] = []

    def run(m: Mount) -> None:
        try:
            act(m)
        except OSError as exc:
            failed.append(exc)

    both = [threading.Thread(target=run, args=(m,)) for m in (a, b)]
    for t in both:
        t.start()
    wait_for(lambda: all(f"lookup(1, {name!r})" in m.log() for m in (a, b)), 10, "lookups")
    blocker.commit()  # both create it now: the unique index orders them
    blocker.close()
    for t in both:
        t.join(30)
    return failed


def test_simultaneous_creates_of_one_name_give_two_files(hosts):
    a, b = hosts("a"), hosts("b")
    written = {a: b"written on A", b: b"written on B"}
    assert _race(a, b, "same.bin", lambda m: (m.path / "same.bin").write_bytes(written[m])) == []
    names = sorted(os.listdir(a.path))
    assert names == [".tgfs", "same (2).bin", "same.bin"]
    assert sorted((a.path / n).read_bytes() for n in names[1:]) == sorted(written.values())
    assert sum("was taken meanwhile" in m.log() for m in (a, b)) == 1

    # O_EXCL asks for that very name (a lock file): one host gets it, the other EEXIST.
    def lock(m: Mount) -> None:
        os.close(os.open(m.path / "job.lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL))

    (failed,) = _race(a, b, "job.lock", lock)
    assert isinstance(failed, FileExistsError)
    assert sorted(os.listdir(b.path)) == [".tgfs", "job.lock", "same (2).bin", "same.bin"]
    a.wait_idle()
    b.wait_idle()


def test_a_file_being_written_on_one_host_is_empty_on_the_other_until_closed(hosts):
    # (Once accepted and until stored, its bytes are in A's spool: B gets EAGAIN, which
    # test_fs_api checks; two hosts on one machine would see each other's spool files.)
    a, b = hosts("a"), hosts("b")
    with open(a.path / "open.bin", "wb") as f:
        f.write(b"x" * 1000)
        f.flush()
        # Not accepted yet (close() does that): as everywhere, the file is still empty.
        wait_for(lambda: (b.path / "open.bin").exists(), 2, "the name on B")
        assert (b.path / "open.bin").read_bytes() == b""
    a.wait_idle()
    assert (b.path / "open.bin").read_bytes() == b"x" * 1000  # stored: from the store


def test_a_host_killed_mid_ingest_leaves_the_other_serving_and_resumes(hosts, media):
    a = hosts("a", COPY_MODE_MIN_SIZE="1G")  # a transcode: seconds to kill it in
    b = hosts("b")
    copy_in(media("tiny_h264.mp4"), b.path / "first.mp4")
    b.wait_idle()
    copy_in(media("film.mp4"), a.path / "film.mp4")
    partial = open(a.path / "partial.bin", "wb")  # noqa: SIM115 - A dies while it is open
    partial.write(b"p" * 5000)
    partial.flush()  # (written, not accepted: no close() or fsync())
    wait_for(lambda: (b.job("film.mp4") or {}).get("state") == "running", 30, "A's transcode")
    a.kill()
    with contextlib.suppress(OSError):
        partial.close()

    def a_jobs() -> list[tuple]:
        return sorted(b.catalog("SELECT path, state FROM job WHERE host = ?", a_host))

    a_host = (a.data / "host").read_text().strip()
    assert a_jobs() == [("film.mp4", "running"), ("partial.bin", "writing")]
    # B serves on, and restarts, and leaves A's jobs alone: they are A's (its spool holds
    # their files), not a crash's leftovers for B to recover.
    assert decode_errors(b.path / "first" / "master.m3u8") == ""
    (b.path / "during.txt").write_text("while A is down")
    wait_for(lambda: b.job("during.txt")["state"] == "done", 30, "B's own job")
    b.stop()
    b.start()
    assert a_jobs() == [("film.mp4", "running"), ("partial.bin", "writing")]
    assert (b.path / "during.txt").read_text() == "while A is down"

    a.start()  # A starts its interrupted job over, and keeps what its write had sent
    a.wait_idle(timeout=180)
    assert b.job("film.mp4")["outcome"] == "video (transcode)"
    assert decode_errors(b.path / "film" / "master.m3u8") == ""
    assert (b.path / "partial.bin").read_bytes() == b"p" * 5000
    assert "stopped while this file was being written" in b.job("partial.bin")["note"]
    names = sorted(os.listdir(b.path))
    assert names == [".tgfs", "during.txt", "film", "first", "partial.bin"]
    assert list((a.data / "spool").iterdir()) == []
    a.store_matches_catalog()


def test_the_collector_runs_on_one_host_at_a_time(hosts, postgres):
    a = hosts("a", TGFS_TRASH_DAYS="0")
    (a.path / "one.bin").write_bytes(os.urandom(3000))
    (a.path / "two.bin").write_bytes(os.urandom(3000))
    a.wait_idle()
    stored = set(a.blob_files())
    assert len(stored) == 2
    # Another host making a pass holds the collector's lock: A leaves the list alone.
    other = psycopg.connect(a.catalog_place, autocommit=True)
    other.execute("SELECT pg_advisory_lock(%s, %s)", (LIBRARY_CLASS, int(Duty.COLLECT)))
    (a.path / "one.bin").unlink()
    wait_for(lambda: "another host is deleting" in a.log(), 30, "A's turn refused")
    assert set(a.blob_files()) == stored and a.status()["garbage_pending"] == 1
    # That host dies (its connection with it): the work goes on here.
    other.close()
    (a.path / "two.bin").unlink()  # (wakes A's collector)
    wait_for(lambda: a.blob_files() == [], 30, "A's pass")
    assert a.status()["garbage_pending"] == 0


def test_fsck_leaves_orphans_alone_while_another_host_is_connected(hosts):
    a, b = hosts("a"), hosts("b")
    (a.path / "kept.bin").write_bytes(os.urandom(2000))
    a.wait_idle()
    assert a.stop() == 0
    # A part in the store the catalog does not name: a crash's leftover, or the part
    # another host is storing right now. Only with no other host connected can fsck tell.
    store = Path(a.env["TGFS_LOCAL_STORE_DIR"])
    (store / "ab").mkdir(exist_ok=True)
    orphan = store / "ab" / ("ab" + "0" * 30)
    orphan.write_bytes(b"not named by the catalog")

    def fsck() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tgfs", "fsck", "--repair"],
            env=a.env,
            capture_output=True,
            text=True,
        )

    early = fsck()
    assert early.returncode == 0, early.stdout + early.stderr
    assert "orphans: not looked for, since another host is connected" in early.stdout
    assert orphan.exists()
    assert b.stop() == 0
    late = fsck()
    assert "1 orphan(s) queued for deletion" in late.stdout, late.stdout + late.stderr
    assert not orphan.exists()
    a.start()
    b.start()
    assert (b.path / "kept.bin").stat().st_size == 2000
    a.store_matches_catalog()


def _host_id(m: Mount) -> str:
    return (m.data / "host").read_text().strip()


def test_store_first_a_serving_host_stores_and_another_makes_the_video(hosts, media):
    a = hosts("a", TGFS_INGEST="store-first", TGFS_INGEST_JOBS="0")  # serves only
    b = hosts("b", TGFS_INGEST="store-first", COPY_MODE_MIN_SIZE="1G")  # a transcode
    src = media("film.mp4")
    copy_in(src, a.path / "film.mp4")
    (a.path / "notes.txt").write_text("not a video")
    # A stores it as it is; B, told at once (NOTIFY: B's own check for work comes every
    # ABANDONED_CHECK = 30 s), claims the job and makes the video.
    wait_for(
        lambda: (a.job("film.mp4") or {}).get("host") == _host_id(b), 15, "B's claim of A's job"
    )
    # Meanwhile the original is whole in the store: it reads on both hosts.
    assert filecmp.cmp(a.path / "film.mp4", src, shallow=False)
    assert filecmp.cmp(b.path / "film.mp4", src, shallow=False)
    a.wait_idle(timeout=180)
    film, notes = a.job("film.mp4"), a.job("notes.txt")
    assert film["outcome"] == "video (transcode)" and film["host"] == _host_id(b)
    assert notes["outcome"] == "file" and notes["host"] == _host_id(a)
    assert decode_errors(a.path / "film" / "master.m3u8") == ""
    assert sorted(os.listdir(a.path)) == [".tgfs", "film", "notes.txt"]  # the original went
    assert list((a.data / "spool").iterdir()) == list((b.data / "spool").iterdir()) == []
    a.store_matches_catalog()


def test_store_first_work_moves_on_when_its_host_dies(hosts, media):
    a = hosts("a", TGFS_INGEST="store-first", TGFS_INGEST_JOBS="0")
    b = hosts("b", TGFS_INGEST="store-first", COPY_MODE_MIN_SIZE="1G")
    src = media("film.mp4")
    copy_in(src, a.path / "film.mp4")

    def making() -> bool:
        job = a.job("film.mp4") or {}
        return job.get("host") == _host_id(b) and job.get("state") == "running"

    wait_for(making, 60, "B's transcode")
    b.kill()  # and it never comes back
    # C, a new host, finds the job of a host that is gone, takes it and makes the video;
    # it keeps originals beside their videos.
    c = hosts("c", TGFS_INGEST="store-first", TGFS_KEEP_ORIGINALS="true")
    c.wait_idle(timeout=180)
    film = c.job("film.mp4")
    assert film["outcome"] == "video (copy)" and film["host"] == _host_id(c)
    assert decode_errors(a.path / "film" / "master.m3u8") == ""
    assert sorted(os.listdir(a.path)) == [".tgfs", "film", "film.mp4"]
    assert filecmp.cmp(a.path / "film.mp4", src, shallow=False)
    assert "job(s) of hosts gone are anyone's again" in c.log()
    # B comes back: the job is not its own any more, and its fetched copy is litter.
    b.start()
    assert list((b.data / "spool").iterdir()) == []
    assert b.job("film.mp4")["host"] == _host_id(c)
    assert "restarting" not in b.log().split("mounted")[-1]
    a.store_matches_catalog()


def test_store_first_on_one_host(mount_factory, media):
    m = mount_factory(TGFS_INGEST="store-first")
    src = media("h264_aac.mp4")
    copy_in(src, m.path / "clip.mp4")
    m.wait_idle()
    assert m.job("clip.mp4")["outcome"] == "video (copy)"
    assert decode_errors(m.path / "clip" / "master.m3u8") == ""
    assert sorted(os.listdir(m.path)) == [".tgfs", "clip"]
    assert list((m.data / "spool").iterdir()) == []
    m.store_matches_catalog()


def test_store_first_survives_a_kill_at_each_step(
    mount_factory, postgres, telegram, media, tmp_path
):
    """On the Telegram stand-in (both hosts with the same bots, each with its own
    sessions), slow enough to kill A while it stores the file and B while it fetches it."""
    telegram.config["bandwidth"] = 2 * 2**20  # bytes/s per bot: the film takes seconds
    telegram.write()
    url = postgres.database()
    a = mount_factory(
        tmp_path / "a",
        **telegram_env(telegram, TGFS_CATALOG_URL=url, TGFS_INGEST="store-first"),
        TGFS_INGEST_JOBS="0",
    )
    b = mount_factory(
        tmp_path / "b", **telegram_env(telegram, TGFS_CATALOG_URL=url, TGFS_INGEST="store-first")
    )
    src = media("film.mp4")
    copy_in(src, a.path / "film.mp4")

    def stage(m: Mount) -> tuple[str | None, float | None]:
        job = m.job("film.mp4") or {}
        return job.get("stage"), job.get("percent")

    wait_for(lambda: stage(a)[0] == "store" and (stage(a)[1] or 0) > 0, 30, "A storing")
    a.kill()
    # Killed mid-store: the job is A's still, and its file is in A's spool only.
    assert b.catalog("SELECT host, source_blob FROM job") == [(_host_id(a), None)]
    a.start()
    wait_for(lambda: stage(b)[0] == "fetch" and (stage(b)[1] or 0) > 0, 60, "B fetching")
    b.kill()
    b.start()  # B's claimed job is its own: it fetches the file again, whole
    telegram.config["bandwidth"] = 0
    telegram.write()
    b.wait_idle(timeout=180)
    film = b.job("film.mp4")
    assert film["outcome"] == "video (copy)" and film["host"] == _host_id(b)
    assert decode_errors(a.path / "film" / "master.m3u8") == ""
    assert sorted(os.listdir(a.path)) == [".tgfs", "film"]
    assert list((a.data / "spool").iterdir()) == list((b.data / "spool").iterdir()) == []
    wait_for(
        lambda: a.status()["garbage_pending"] == b.status()["garbage_pending"] == 0,
        60,
        "collection",
    )
    assert set(telegram.part_messages()) == a.telegram_messages()  # nothing left by the kills
