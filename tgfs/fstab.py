"""Mounting from /etc/fstab: how mount(8)'s FUSE helper, mount.fuse3, runs tgfs.

    /opt/tgfs/.venv/bin/tgfs#/etc/tgfs/srv.env  /srv/tgfs  fuse  allow_other,_netdev  0 0
    /etc/tgfs/srv.env  /srv/tgfs  fuse.tgfs  allow_other,_netdev  0 0   (tgfs in /usr/bin …)

mount.fuse3 runs `tgfs SOURCE MOUNTPOINT -o OPTIONS` and waits for it to exit, so this
starts the daemon (`tgfs mount`) in a session of its own, its output appended to
`$TGFS_DATA_DIR/tgfs.log`, and returns 0 once the mount answers: the daemon says READY=1 on
a socket made here, as it tells systemd (tgfs.service). If the daemon exits first, the
end of its log is printed and the exit status is non-zero, so `mount` fails with the reason.

SOURCE is the settings file (TGFS_ENV_FILE), or `none` for the environment alone. OPTIONS:
the generic mount options FUSE applies itself or tgfs has no use for (rw, nosuid, noatime …)
are ignored; `allow_other` is TGFS_ALLOW_OTHER=true; `name=value` sets TGFS_<NAME> (for
example `cache_size=20G`, `data_dir=/var/lib/tgfs`). Anything else is refused by name, and
nothing is mounted.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from tgfs import config

READY_TIMEOUT = 180.0  # seconds: the store's logins (20 s) and start-up recovery

# Generic mount(8) options: the kernel and FUSE apply them, or they mean nothing to tgfs.
_IGNORED = frozenset(
    {
        "rw",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "diratime",
        "nodiratime",
        "sync",
        "async",
        "dirsync",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "defaults",
        "default_permissions",
        "_netdev",
        "nofail",
    }
)


class MountOptionError(ValueError):
    pass


def invoked_by_mount(argv: list[str], commands: Iterable[str]) -> bool:
    """`tgfs SOURCE MOUNTPOINT -o OPTIONS`: a call from mount.fuse3 (which always passes
    options, at least `rw`), not a command (a mistyped one still gets click's error)."""
    return len(argv) >= 4 and argv[2] == "-o" and argv[0] not in set(commands)


def settings_env(source: str, options: str) -> dict[str, str]:
    """The environment a daemon for this fstab line runs with."""
    env = dict(os.environ)
    # The key's file, not the key: /etc/fstab is readable by every user (and the other
    # secrets, bot tokens and the API hash, belong in the settings file for that reason).
    names = {spec.env for spec in config.specs().values()} | {"TGFS_ENCRYPTION_KEY_FILE"}
    if source != "none":
        env["TGFS_ENV_FILE"] = source
    for option in filter(None, options.split(",")):
        name, has_value, value = option.partition("=")
        if option in _IGNORED or name.startswith(("x-", "comment")):
            continue
        if option == "allow_other":
            env["TGFS_ALLOW_OTHER"] = "true"
        elif option == "ro":
            raise MountOptionError("tgfs cannot be mounted read-only (ro)")
        elif name == "encryption_key":
            raise MountOptionError(
                "encryption_key: /etc/fstab is readable by everyone; give "
                "encryption_key_file=PATH or put the key in the settings file"
            )
        elif has_value and (found := _setting_named(name, names)):
            env[found] = value
        else:
            raise MountOptionError(f"unknown mount option {name!r} for tgfs")
    return env


def _setting_named(option: str, names: set[str]) -> str | None:
    """`cache_size` → TGFS_CACHE_SIZE; the few settings without the prefix by full name."""
    for candidate in (f"TGFS_{option.upper()}", option.upper()):
        if candidate in names:
            return candidate
    return None


def mount(argv: list[str]) -> int:
    """Run as mount.fuse3's helper; returns the exit status for mount(8)."""
    source, mountpoint = argv[0], Path(argv[1]).absolute()
    options = ""
    rest = argv[2:]
    while rest:
        if rest[0] == "-o" and len(rest) > 1:
            options = ",".join(filter(None, [options, rest[1]]))
            rest = rest[2:]
        else:
            print(f"tgfs: unexpected argument {rest[0]!r}", file=sys.stderr)
            return 2
    try:
        env = settings_env(source, options)
        settings = config.load(env)
    except (MountOptionError, config.ConfigError) as exc:
        print(f"tgfs: {exc}", file=sys.stderr)
        return 1
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = settings.data_dir / "tgfs.log"
    with tempfile.TemporaryDirectory(prefix="tgfs-mount-") as tmp:
        address = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ready:
            ready.bind(address)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "tgfs", "mount", str(mountpoint)],
                    env={**env, "NOTIFY_SOCKET": address},
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=fd,
                    start_new_session=True,  # not killed with mount(8)'s session
                )
            finally:
                os.close(fd)
            if _wait_ready(ready, daemon):
                return 0
    print(f"tgfs: the mount failed; the end of {log_path}:", file=sys.stderr)
    print(_tail(log_path), file=sys.stderr)
    return 1


def _wait_ready(ready: socket.socket, daemon: subprocess.Popen) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready.settimeout(0.2)
        try:
            if b"READY=1" in ready.recv(4096).split(b"\n"):
                return True
        except TimeoutError:
            pass
        if daemon.poll() is not None:
            return False
    daemon.terminate()  # too slow: not left running behind a failed mount
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read it: {exc})"
