"""Which host this daemon is, in a library several hosts share (a PostgreSQL catalog).

A host is a data directory: its spool, cache, lock and bot sessions are its own, and so is
the work that needs them: ingest jobs (their spool files are here), writes never closed,
parts stored for jobs that did not finish. Its id is made once, at the first start, and
kept in the data directory (`host`), so it survives restarts and renames of the machine;
two daemons on one machine with two data directories are two hosts.

Copying a data directory to another machine copies its id: the catalog then refuses the
second daemon with that id (tgfs.catalog.schema takes a lock per host), since the two
would take each other's jobs for a crash's leftovers.

With the SQLite catalog there is one host by construction, and nothing is scoped by it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from pathlib import Path

HOST_FILE = "host"

# A host id is shown in status and logs, and is a lock's name: keep it to these.
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

_me = ""


def identify(data_dir: Path) -> str:
    """This data directory's host id (made and kept on first use), which `me` returns
    from now on."""
    global _me
    path = data_dir / HOST_FILE
    with contextlib.suppress(FileNotFoundError):
        if found := path.read_text().strip():
            _me = found
            return _me
    made = f"{_SAFE.sub('-', socket.gethostname())[:40] or 'host'}-{secrets.token_hex(4)}"
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{HOST_FILE}.{os.getpid()}")
    with open(tmp, "w") as f:  # durable before it is used: jobs are recorded under it
        f.write(made + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:  # a link fails if another process made it first: its id wins, both use it
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _me = path.read_text().strip()
    return _me


def me() -> str:
    """This daemon's host id ("" before `identify`: tools and tests on a SQLite catalog)."""
    return _me
