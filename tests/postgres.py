"""A private PostgreSQL server for the tests (Debian's `postgresql` package, which `make
test` installs): `initdb` into a folder of its own, `pg_ctl` listening on a Unix socket in
it and on no TCP port, run as the `postgres` user (PostgreSQL refuses to run as root).
Durability is off (fsync, full_page_writes): the tests judge tgfs, not the disk.

A test asks for a database of its own with `Postgres.database()`, and gets its URL in the
form TGFS_CATALOG_URL takes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_COUNTER = itertools.count(1)


def _bin() -> Path | None:
    """The newest installed PostgreSQL's programs."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class Postgres:
    def __init__(self, root: Path, bin_dir: Path, port: int | None = None) -> None:
        """`port`: also listen on 127.0.0.1 at this TCP port (benchmarks: a database
        reached over the network stack, as from another host); else a socket only."""
        self.root = root
        self.bin = bin_dir
        self.data = root / "data"
        self.socket = root  # the Unix socket's folder (host= in a URL)
        self.port = port

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, check=True
        )

    def start(self) -> Postgres:
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        listen = f"127.0.0.1 -p {self.port}" if self.port else "''"
        options = (
            f"-k {self.socket} -c listen_addresses={listen} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=50"
        )
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "start",
        )  # fmt: skip
        return self

    def restart(self) -> None:
        """Stop (ending every connection) and start again, with the same options."""
        # (-l: the server's output to its log, not to our pipes, which would then never
        # close and keep this call waiting)
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
            "-l", str(self.root / "server.log"), "restart",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")

    def database(self, tcp: bool = False) -> str:
        """A new, empty database; its URL (over TCP to 127.0.0.1 if `tcp`, else the socket)."""
        name = f"tgfs{next(_COUNTER)}"
        port = ["-p", str(self.port)] if self.port else []  # (the socket's name has it too)
        self._as_postgres(str(self.bin / "createdb"), "-h", str(self.socket), *port, name)
        if tcp:
            return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
        return f"postgresql://postgres@/{name}?host={self.socket}"


def server(port: int | None = None) -> Postgres:
    """A started server in a new folder (the caller stops it, and removes `root`)."""
    bin_dir = _bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    owner = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="tgfs-pg-"))  # not under pytest's 0700 folders
    os.chown(root, owner.pw_uid, owner.pw_gid)
    return Postgres(root, bin_dir, port).start()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's PostgreSQL server; the test is skipped, saying why, where none can run."""
    if _bin() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    if os.geteuid() != 0:
        pytest.skip("the tests' PostgreSQL is started as the postgres user: that needs root")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (Debian's postgresql package makes it)")
    try:
        running = server()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"PostgreSQL did not start: {exc.stderr.strip()[-300:]}")
    yield running
    running.stop()
    shutil.rmtree(running.root, ignore_errors=True)
