"""Nothing the mount accepted is ever lost: crashes around close(), failed writes and
appends, a second daemon, names tgfs derives or cannot decode, times set by tools."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for, write_until_killed
from tests.hls_checks import check_video_folder


def cmp(a: Path, b: Path) -> None:
    subprocess.run(["cmp", str(a), str(b)], check=True)


def spool_files(m) -> set[str]:
    return {str(p) for p in (m.data / "spool").iterdir()}


def test_close_or_fsync_then_kill_keeps_the_bytes(mount_factory, tmp_path):
    """Once close() or fsync() returned, a kill -9 of the daemon loses nothing: after the
    restart each file is there byte for byte, and gets stored."""
    m = mount_factory()
    kept: dict[str, Path] = {}
    for n in range(8):
        src = tmp_path / f"src{n}.bin"
        src.write_bytes(os.urandom(300_000 + n * 250_000))
        name = f"f{n}.bin"
        if n % 4 == 3:  # dd with fsync before close
            subprocess.run(
                ["dd", f"if={src}", f"of={m.path / name}", "bs=64k", "conv=fsync", "status=none"],
                check=True,
            )
        elif n % 4 == 2:  # fsync while still open: the daemon dies before close()
            fd = os.open(m.path / name, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, src.read_bytes())
            os.fsync(fd)
            m.kill()
            with contextlib.suppress(OSError):  # the mount is gone: ENOTCONN
                os.close(fd)
            kept[name] = src
            m.start()
            continue
        else:
            subprocess.run(["cp", str(src), str(m.path / name)], check=True)
        m.kill()
        kept[name] = src
        m.start()
        for done, source in kept.items():
            assert (m.path / done).stat().st_size == source.stat().st_size, done
    m.wait_idle()
    for name, src in kept.items():
        cmp(src, m.path / name)
    assert all(j["state"] == "done" for j in m.status()["jobs"])
    m.store_matches_catalog()
    assert spool_files(m) == set()


def test_kill_during_a_copy_keeps_what_arrived(mount_factory, tmp_path):
    m = mount_factory()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 * 2**20))
    written = write_until_killed(m, src, m.path / "big.bin", "truncate", 2**20)
    m.start()
    size = (m.path / "big.bin").stat().st_size
    assert size >= written  # every write() that returned reached the spool file
    assert (m.path / "big.bin").read_bytes() == src.read_bytes()[:size]
    m.wait_idle()
    (job,) = [j for j in m.status()["jobs"] if j["path"] == "big.bin"]
    assert job["state"] == "done" and "being written" in job["note"], job
    assert (m.path / "big.bin").read_bytes() == src.read_bytes()[:size]  # stored now
    m.store_matches_catalog()
    assert spool_files(m) == set()  # nothing left behind


def test_kill_during_an_append_keeps_both_parts(mount_factory, tmp_path):
    m = mount_factory()
    first = os.urandom(1_500_000)
    (m.path / "log.bin").write_bytes(first)
    m.wait_idle()
    more = tmp_path / "more.bin"
    more.write_bytes(os.urandom(3 * 2**20))
    written = write_until_killed(m, more, m.path / "log.bin", "append", 2**20)
    m.start()
    data = (m.path / "log.bin").read_bytes()
    assert data[: len(first)] == first
    assert len(data) >= len(first) + written
    assert data[len(first) :] == more.read_bytes()[: len(data) - len(first)]
    m.wait_idle()
    assert (m.path / "log.bin").read_bytes() == data  # stored again, as it was
    m.store_matches_catalog()


def test_failed_append_keeps_the_stored_file(mount_factory, tmp_path):
    m = mount_factory(MAX_UPLOAD_SIZE="1M")
    stored = os.urandom(900_000)
    (m.path / "f.bin").write_bytes(stored)
    m.wait_idle()
    with pytest.raises(OSError) as err, open(m.path / "f.bin", "ab") as f:
        f.write(os.urandom(200_000))
    assert err.value.errno == errno.EFBIG
    assert (m.path / "f.bin").read_bytes() == stored
    m.wait_idle()
    m.stop()
    m.start()
    assert (m.path / "f.bin").read_bytes() == stored
    m.store_matches_catalog()


def test_full_spool_during_an_append_keeps_the_stored_file(small_disk, mount_factory):
    spool = small_disk("spool", "20m")
    m = mount_factory(TGFS_SPOOL_DIR=str(spool))
    stored = os.urandom(15 * 2**20)
    (m.path / "film.bin").write_bytes(stored)
    m.wait_idle()
    # Another file being written holds some of the spool: there is room to copy the
    # stored file back for the append, not for the appended bytes.
    with open(m.path / "filler.bin", "wb") as filler:
        filler.write(os.urandom(4 * 2**20))
        filler.flush()
        with pytest.raises(OSError) as err, open(m.path / "film.bin", "ab") as f:
            for _ in range(8):
                f.write(os.urandom(2**20))
                f.flush()
        assert err.value.errno == errno.ENOSPC
    assert (m.path / "film.bin").read_bytes() == stored
    m.wait_idle()


def test_a_second_daemon_on_the_same_data_is_refused(mount_factory, tmp_path):
    m = mount_factory()
    (m.path / "a.txt").write_text("a")
    other = tmp_path / "mnt2"
    other.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "tgfs", "mount", str(other)],
        env=m.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert f"pid {m.proc.pid}" in result.stderr and str(m.path) in result.stderr
    assert not os.path.ismount(other)
    assert (m.path / "a.txt").read_text() == "a"  # the first one is untouched
    m.wait_idle()


def test_derived_names_are_never_dot_or_dotdot(mount_factory, media):
    mount = mount_factory(TGFS_TRASH_DAYS="0")  # deletes reach the store at once
    # Two different videos: the same bytes twice in one folder would be one video.
    for name, src in (("..mp4", "tiny_h264.mp4"), ("...mp4", "mpeg4_only.mkv")):
        subprocess.run(["cp", str(media(src)), str(mount.path / name)], check=True)
    mount.wait_idle()
    assert sorted(os.listdir(mount.path)) == [".tgfs", "_", "__"]
    for folder in ("_", "__"):
        assert (mount.path / folder / "master.m3u8").is_file()
        subprocess.run(["rm", "-r", str(mount.path / folder)], check=True)
    assert sorted(os.listdir(mount.path)) == [".tgfs"]
    mount.store_matches_catalog()
    assert mount.blob_files() == []


def test_names_that_are_not_utf8_come_back_byte_exact(mount_factory, media):
    m = mount_factory()
    root = os.fsencode(m.path)
    bad = b"bad\xff\xfe.txt"
    with open(root + b"/" + bad, "wb") as f:
        f.write(b"latin-1 era")
    os.mkdir(root + b"/caf\xe9")
    subprocess.run(
        [b"cp", os.fsencode(media("tiny_h264.mp4")), root + b"/caf\xe9/v\xff.mp4"], check=True
    )
    m.wait_idle()
    assert sorted(os.listdir(root)) == [b".tgfs", bad, b"caf\xe9"]
    assert os.listdir(root + b"/caf\xe9") == [b"v\xff"]
    assert (
        "\\xff"
        in subprocess.run(
            [sys.executable, "-m", "tgfs", "status", str(m.path)],
            env=m.env,
            capture_output=True,
            text=True,
        ).stdout
    )
    m.stop()
    m.start()
    assert Path(os.fsdecode(root + b"/" + bad)).read_bytes() == b"latin-1 era"
    assert os.path.isfile(root + b"/caf\xe9/v\xff/master.m3u8")
    with pytest.raises(OSError) as err:
        os.open(root + b"/" + b"x" * 256, os.O_WRONLY | os.O_CREAT)
    assert err.value.errno == errno.ENAMETOOLONG


def test_times_set_by_tools_are_kept_and_touch_stores_nothing(mount, tmp_path):
    src = tmp_path / "old.bin"
    src.write_bytes(os.urandom(200_000))
    old = time.time() - 10 * 86400
    os.utime(src, (old, old))
    subprocess.run(["cp", "-p", str(src), str(mount.path / "old.bin")], check=True)
    assert int((mount.path / "old.bin").stat().st_mtime) == int(old)
    mount.wait_idle()
    assert int((mount.path / "old.bin").stat().st_mtime) == int(old)
    subprocess.run(["touch", "-d", "2001-02-03 04:05:06", str(mount.path / "old.bin")], check=True)
    jobs_before = len(mount.status()["jobs"])
    stored_before = sorted(mount.blob_files())
    assert (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((mount.path / "old.bin").stat().st_mtime))
        == "2001-02-03 04:05:06"
    )
    subprocess.run(["touch", str(mount.path / "old.bin")], check=True)
    mount.wait_idle()
    assert len(mount.status()["jobs"]) == jobs_before  # no new job: nothing re-stored
    assert sorted(mount.blob_files()) == stored_before
    assert (mount.path / "old.bin").stat().st_mtime > old
    # rsync -t on a second run skips what it copied (same size and time).
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.txt").write_text("a")
    for _ in range(2):
        out = subprocess.run(
            ["rsync", "-rt", "--itemize-changes", f"{tmp_path}/tree/", str(mount.path / "tree")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    assert out == ""


def test_full_catalog_disk_gives_enospc_and_rm_still_works(small_disk, mount_factory, tmp_path):
    data = small_disk("data", "24m")
    m = mount_factory(TGFS_SPOOL_DIR=str(tmp_path / "spool"))
    for n in range(3):
        (m.path / f"keep{n}.bin").write_bytes(os.urandom(500_000))
    m.wait_idle()
    wait_for(lambda: (data / "catalog.reserve").exists(), 10, "the catalog's reserve")
    subprocess.run(["dd", "if=/dev/zero", f"of={data / 'filler'}", "bs=1M"], capture_output=True)
    fds = len(os.listdir(f"/proc/{m.proc.pid}/fd"))
    failed = None
    for n in range(3000):  # until SQLite needs a page it cannot have
        try:
            os.mkdir(m.path / f"d{n}")
            (m.path / f"d{n}" / "f").write_text("x")
        except OSError as exc:
            failed = exc
            break
    assert failed is not None and failed.errno == errno.ENOSPC, failed
    with pytest.raises(OSError) as err:
        (m.path / "new.txt").write_text("x")
    assert err.value.errno == errno.ENOSPC
    assert len(os.listdir(f"/proc/{m.proc.pid}/fd")) <= fds  # no descriptor leaked
    assert [p.name for p in (tmp_path / "spool").iterdir()] == ["tgfs.lock"]  # no spool file
    os.unlink(m.path / "keep0.bin")  # deleting works on a full disk
    assert sorted(p.name for p in m.path.glob("keep*")) == ["keep1.bin", "keep2.bin"]
    (data / "filler").unlink()
    (m.path / "after.txt").write_text("room again")
    m.wait_idle()
    assert (m.path / "after.txt").read_text() == "room again"


def test_syncing_a_library_twice_publishes_each_video_once(mount, media, tmp_path):
    library = tmp_path / "Movies"
    library.mkdir()
    subprocess.run(["cp", str(media("tiny_h264.mp4")), str(library / "vid.mp4")], check=True)
    (library / "notes.txt").write_text("notes")
    (library / "latest.mp4").symlink_to("vid.mp4")  # rsync -a copies links as links
    for _ in range(2):
        subprocess.run(["rsync", "-a", f"{library}/", str(mount.path / "Movies")], check=True)
        mount.wait_idle()
    assert sorted(os.listdir(mount.path / "Movies")) == ["latest.mp4", "notes.txt", "vid"]
    assert os.readlink(mount.path / "Movies" / "latest.mp4") == "vid.mp4"
    (duplicate,) = [j for j in mount.status()["jobs"] if j["outcome"] == "duplicate"]
    assert "same content as the video 'vid'" in duplicate["note"]
    assert (mount.path / "Movies" / "vid" / "master.m3u8").is_file()
    mount.store_matches_catalog()


def test_rewriting_a_file_while_its_video_is_made(mount_factory, media):
    """No EBUSY: the new content wins, the running job is dropped, nothing is left over."""
    m = mount_factory(COPY_MODE_MIN_SIZE="1G")  # a transcode: seconds to write into
    subprocess.run(["cp", str(media("film.mp4")), str(m.path / "film.mp4")], check=True)
    wait_for(lambda: m.job("film.mp4")["state"] == "running", 30, "the transcode")
    with open(m.path / "film.mp4", "ab") as f:  # while the job runs
        f.write(b"appended")
    m.wait_idle()
    outcomes = [j["outcome"] for j in sorted(m.status()["jobs"], key=lambda j: j["id"])]
    assert outcomes == ["discarded", "video (transcode)"], outcomes  # overtaken, then made
    assert sorted(os.listdir(m.path)) == [".tgfs", "film"]  # from the new content, once
    check_video_folder(m.path / "film", media("film.mp4"), 2)
    m.store_matches_catalog()
    assert list((m.data / "spool").iterdir()) == []


def test_a_spool_shared_by_two_data_directories_is_refused(mount_factory, tmp_path):
    """The spool is swept at start: a second library pointed at the same spool would
    delete the first one's files."""
    spool = tmp_path / "shared-spool"
    m = mount_factory(TGFS_SPOOL_DIR=str(spool))
    with open(m.path / "open.bin", "wb") as f:  # being written: its bytes are in the spool
        f.write(b"x" * 1000)
        f.flush()
        other = tmp_path / "mnt2"
        other.mkdir()
        env = {**m.env, "TGFS_DATA_DIR": str(tmp_path / "data2")}
        result = subprocess.run(
            [sys.executable, "-m", "tgfs", "mount", str(other)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0 and f"pid {m.proc.pid}" in result.stderr
        assert len(list(spool.iterdir())) == 2  # the lock and the open file's spool file
    m.wait_idle()
    assert (m.path / "open.bin").read_bytes() == b"x" * 1000


def test_a_kill_while_parts_are_half_cached_serves_the_right_bytes(mount_factory, tmp_path):
    """The read cache writes chunk maps beside partly fetched parts: after a SIGKILL in the
    middle of filling them in, a restart serves every byte right."""
    m = mount_factory(TELEGRAM_MAX_FILE_SIZE="8M")  # parts of 8 chunks: room to be partial
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(24 * 2**20 + 5))
    subprocess.run(["cp", str(src), str(m.path / "big.bin")], check=True)
    m.wait_idle()
    m.stop()
    m.start()  # nothing cached in memory, and the spool copy is gone: reads go to the store
    fd = os.open(m.path / "big.bin", os.O_RDONLY)
    for offset in (3 * 2**20, 9 * 2**20 + 77, 20 * 2**20):  # one chunk in each part
        assert os.pread(fd, 100, offset) == src.read_bytes()[offset : offset + 100]
    m.kill()  # the rest of each part is still arriving in the background
    with contextlib.suppress(OSError):  # the mount is gone: ENOTCONN
        os.close(fd)
    m.start()
    cmp(src, m.path / "big.bin")
    cache = next((tmp_path / "cache").iterdir())
    maps = {p.stem for p in cache.glob("*.map")}
    assert maps <= {p.name for p in cache.iterdir() if p.name.isdigit()}
