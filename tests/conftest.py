"""Fixtures: generated media, and a real tgfs mount run as a separate daemon process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.media import Spec, make
from tests.standin import StandIn
from tgfs.catalog import close_catalog, open_catalog
from tgfs.catalog.check import check

REPO = Path(__file__).resolve().parent.parent

# Small parts (1 MiB) so that segments and ordinary files in the tests span several store
# parts and the split/join path is always exercised. Copy mode from 256 KiB so the
# generated H.264 files qualify while tiny ones transcode.
TEST_ENV = {
    "TELEGRAM_MAX_FILE_SIZE": "1M",
    "COPY_MODE_MIN_SIZE": "256K",
    "TGFS_SEGMENT_SECONDS": "2",
    "TGFS_X264_PRESET": "ultrafast",
    "TGFS_CACHE_SIZE": "64M",
    "TGFS_LOG_LEVEL": "DEBUG",
}


def wait_for(check: Callable[[], object], timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


class Mount:
    """A running `tgfs mount` daemon on a temporary directory."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.path = root / "mnt"
        self.data = root / "data"
        self.log_path = root / "daemon.log"
        self.env = {
            **os.environ,
            "TGFS_DATA_DIR": str(self.data),
            "TGFS_CACHE_DIR": str(root / "cache"),
            "TGFS_ENV_FILE": "/dev/null",
            **TEST_ENV,
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mount:
        self.path.mkdir(exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tgfs", "mount", str(self.path)],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(
            lambda: os.path.ismount(self.path) or self.proc.poll() is not None, 20, "the mount"
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"tgfs mount exited early:\n{self.log()}")
        return self

    def stop(self) -> int:
        """Unmount from outside (like a user would) and wait for a clean exit."""
        assert self.proc is not None
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=True)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            raise
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the daemon (a crash), then detach its dead mount like an admin would.

        A daemon killed while one of its threads is in the kernel telling it to forget a
        name (pyfuse3.invalidate_entry_async), and that directory is locked by a request
        waiting for the daemon, cannot finish dying: the thread waits for the lock, the
        request for the dead daemon. Aborting the FUSE connection (what README, Limits,
        tells an admin to do) ends both."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            abort_fuse_connection(self.path)
            self.proc.wait(20)
        self.proc = None
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def catalog_place(self) -> Path | str:
        """The daemon's catalog: its PostgreSQL URL, or the SQLite file."""
        return self.env.get("TGFS_CATALOG_URL") or self.data / "catalog.db"

    def change_catalog(self, statement: str) -> None:
        """Change the catalog behind tgfs's back (the daemon stopped): what an older tgfs
        left, or damage."""
        where = self.catalog_place
        if isinstance(where, str):
            with psycopg.connect(where) as pg:
                pg.execute(statement)
            return
        db = sqlite3.connect(where)
        try:
            with db:
                db.execute(statement)
        finally:
            db.close()

    def catalog(self, query: str, *args) -> list[tuple]:
        """Rows from the daemon's catalog, read with the sqlite3 module or psycopg (not
        tgfs); `?` marks an argument in either."""
        where = self.catalog_place
        if isinstance(where, str):
            with psycopg.connect(where) as pg:
                return [tuple(r) for r in pg.execute(query.replace("?", "%s"), args).fetchall()]
        db = sqlite3.connect(f"file:{where}?mode=ro", uri=True)
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()

    def store_matches_catalog(self) -> None:
        """Once jobs and the collector are done, the local store holds exactly the parts
        the catalog references: nothing lost, nothing orphaned."""
        wait_for(lambda: self.status()["garbage_pending"] == 0, 60, "garbage collection")
        stored = {f"{p.parent.name}/{p.name}" for p in self.blob_files()}
        referenced = {loc for (loc,) in self.catalog("SELECT location FROM part")}
        for (parts,) in self.catalog("SELECT parts FROM backup"):  # the catalog's backups
            referenced |= {location for location, _ in json.loads(parts)}
        assert stored == referenced, (
            f"orphans: {sorted(stored - referenced)[:5]}, "
            f"missing: {sorted(referenced - stored)[:5]}"
        )

    def status(self) -> dict:
        return json.loads((self.path / ".tgfs" / "status.json").read_text())

    def job(self, path: str) -> dict | None:
        return next((j for j in self.status()["jobs"] if j["path"] == path), None)

    def wait_idle(self, timeout: float = 120.0) -> dict:
        """Wait until every job has finished; returns the final status."""

        def idle():
            status = self.status()
            busy = [j for j in status["jobs"] if j["state"] in ("queued", "running")]
            return status if not busy else None

        # No pause needed: close() returns only once the file's job is queued.
        return wait_for(idle, timeout, "ingest jobs to finish")

    def telegram_messages(self) -> set[tuple[int, int]]:
        """(channel, message id) of every copy the catalog's parts name in Telegram: what
        the stand-in should hold (its part_messages) once jobs and the collector are done."""
        found = set()
        for (location,) in self.catalog("SELECT location FROM part"):
            for replica in location.split(","):
                _, _bot, channel, message = replica.split(":")
                found.add((int(channel), int(message)))
        return found

    def blob_files(self) -> list[Path]:
        # parts are in its subfolders; the manifest is not one
        root = Path(self.env.get("TGFS_LOCAL_STORE_DIR") or self.data / "blobs")
        return [p for p in root.rglob("*") if p.is_file() and p.parent != root]


def abort_fuse_connection(mountpoint: Path) -> None:
    """Abort the FUSE connection of a mount (its id is the mount's device minor number),
    through fusectl, mounted if it is not; no syscall on the hung mount itself."""
    minor = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mountpoint):
            minor = fields[2].split(":")[1]
    assert minor is not None, f"{mountpoint} is not mounted"
    control = Path("/sys/fs/fuse/connections")
    if not (control / minor).exists():
        subprocess.run(["mount", "-t", "fusectl", "none", str(control)], capture_output=True)
    (control / minor / "abort").write_text("1")


# TGFS_TEST_CATALOG=postgresql runs every mounted test with its catalog in the tests' own
# PostgreSQL (tests/postgres.py) instead of SQLite: a whole pass of the suite on the other
# engine, by hand (CI runs the catalog tests on both, and the rest on SQLite: twice the
# suite would not fit its time).
ON_POSTGRESQL = os.environ.get("TGFS_TEST_CATALOG") == "postgresql"


@pytest.fixture
def mount_factory(request, tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    mounts: list[Mount] = []
    url = request.getfixturevalue("postgres").database() if ON_POSTGRESQL else None

    def start(root: Path | None = None, **env: str) -> Mount:
        """A daemon on `root` (default: the test's own directory; give others for several
        daemons at once)."""
        if url is not None:
            env = {"TGFS_CATALOG_URL": url, **env}
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        m = Mount(root or tmp_path, env).start()
        mounts.append(m)
        return m

    yield start
    for m in mounts:
        if m.proc is not None:
            code = m.stop()
            assert code == 0, f"daemon exited with {code}:\n{m.log()[-3000:]}"
        log = m.log()
        assert "Traceback" not in log, log[-5000:]
    for where in {m.catalog_place for m in mounts}:
        assert_catalog_sound(where)


def assert_catalog_sound(where: Path | str) -> None:
    """The catalog consistency check (tgfs.catalog.check), after every test that mounted:
    `where` is the SQLite file, or a PostgreSQL catalog's URL."""
    if isinstance(where, Path) and not where.exists():
        return  # the daemon was refused before it made one
    open_catalog(where)
    try:
        problems = check()
    finally:
        close_catalog()
    assert not problems, "catalog check:\n" + "\n".join(map(str, problems))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """small_disk("spool", "20m") → a tmpfs of that size at tmp_path/spool, to fill up.

    Needs root (tests using it are skipped otherwise). Request it before `mount_factory`,
    so that the mounts using it stop before it is unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    made: list[Path] = []

    def make(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True
        )
        made.append(path)
        return path

    yield make
    for path in made:
        subprocess.run(["umount", "-l", str(path)], check=False)


_SLOW_WRITER = """
import os, sys, time
src, dest, chunk, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(src, "rb").read()
flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "append" else os.O_TRUNC)
fd = os.open(dest, flags, 0o644)
for start in range(0, len(data), chunk):
    os.write(fd, data[start:start + chunk])
    print(min(start + chunk, len(data)), flush=True)
    time.sleep(0.01)
os.close(fd)
print("closed", flush=True)
"""


def write_until_killed(m: Mount, src: Path, dest: Path, mode: str, kill_after: int) -> int:
    """Write (mode "truncate") or append `src` to `dest` in 32 KiB write() calls from
    another process; SIGKILL the daemon once `kill_after` bytes went in. Returns the bytes
    whose write() had returned."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(src), str(dest), str(32 * 1024), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    written = 0
    assert writer.stdout is not None
    for line in writer.stdout:
        if line.strip() == "closed":
            break
        written = int(line)
        if written >= kill_after:
            break
    m.kill()
    writer.kill()
    writer.wait()
    return written


@pytest.fixture
def mount(mount_factory) -> Mount:
    return mount_factory()


@pytest.fixture
def telegram(tmp_path: Path, monkeypatch) -> StandIn:
    """A stand-in Telegram with four bots; `telegram.env()` points a mount at it."""
    monkeypatch.setenv("STANDIN_DIR", str(tmp_path / "telegram"))
    return StandIn(tmp_path / "telegram", bots=4, latency=0.005)


def telegram_env(standin: StandIn, **extra: str) -> dict[str, str]:
    """Settings for a mount on the stand-in: the daemon imports tests.standin, and paces
    at 600 messages/minute (the pacing code runs; the tests do not wait minutes)."""
    return standin.env(PYTHONPATH=str(REPO), TGFS_BOT_MESSAGES_PER_MINUTE="600", **extra)


# ---- generated media, made once per test session ----------------------------------------

MEDIA_SPECS = {
    "h264_aac.mp4": Spec(seconds=9),  # copy mode with audio
    "h264_only.mp4": Spec(seconds=7, audio_codec=None),  # copy mode, no audio
    "tiny_h264.mp4": Spec(seconds=3, width=160, height=120, bitrate=50_000),  # < copy size
    "mpeg4_mp3.avi": Spec(seconds=7, video_codec="mpeg4", audio_codec="libmp3lame"),
    "mpeg4_only.mkv": Spec(seconds=5, video_codec="mpeg4", audio_codec=None),
    # A "film" whose 2 s segments would be ~2 MB: over the test's 1 MiB
    # TELEGRAM_MAX_FILE_SIZE, so copy mode must cut them shorter (keyframes every 0.24 s).
    "film.mp4": Spec(
        seconds=24,
        width=1280,
        height=720,
        bitrate=8_000_000,
        gop=6,
        video_options=(("preset", "veryfast"),),
    ),
    "hevc.mp4": Spec(
        seconds=6,
        video_codec="libx265",
        audio_codec="aac",
        bitrate=800_000,
        video_options=(("x265-params", "log-level=error"),),
    ),
}


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def media(media_dir: Path) -> Callable[[str], Path]:
    """media("h264_aac.mp4") → path of that generated file (made on first use)."""

    def get(name: str) -> Path:
        path = media_dir / name
        if not path.exists():
            make(path, MEDIA_SPECS[name])
        return path

    return get


def traversable(path: Path) -> None:
    """Let other users (www-data) reach `path` through pytest's private temporary folders:
    search permission for others on it and every folder above (not read: they still
    cannot list them)."""
    for folder in [path, *path.parents]:
        if folder == Path("/"):
            break
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod((mode & 0o7777) | 0o001)


def copy_in(src: Path, dest: Path) -> None:
    """Copy like `cp` does: open, write in chunks, close (Mount.wait_idle waits for release)."""
    shutil.copyfile(src, dest)


# nginx serving a mount (tests/nginx_site.py), for the web and browser tests. Imported last:
# that module uses the helpers above.
from tests.nginx_site import site  # noqa: E402, F401
from tests.postgres import postgres  # noqa: E402, F401
