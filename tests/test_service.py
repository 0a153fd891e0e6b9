"""tgfs as a service (issue "Runs as a service"): the units pass systemd-analyze verify,
and a mount started as systemd would start it tells a socket the test owns READY=1 once
it answers, STATUS= lines, WATCHDOG=1 keep-alives, and STOPPING=1 when it unmounts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_ENV, assert_catalog_sound, wait_for
from tgfs.keys import generate_key_file

UNITS = REPO / "systemd"


def _verify(tmp_path: Path, unit: Path, name: str, user: bool) -> subprocess.CompletedProcess:
    """systemd-analyze verify on a copy of `unit` that runs this checkout's tgfs (the units
    name /opt/tgfs, where the README installs it; verify checks the program exists)."""
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/tgfs", str(REPO)))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    command = ["systemd-analyze", *(["--user"] if user else []), "verify", str(tmp_path / name)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd is not installed")
def test_the_units_pass_systemd_analyze_verify(tmp_path):
    system = _verify(tmp_path, UNITS / "tgfs@.service", "tgfs@srv-tgfs.service", user=False)
    assert system.returncode == 0 and not system.stdout + system.stderr, system
    user = _verify(tmp_path, UNITS / "user" / "tgfs.service", "tgfs.service", user=True)
    assert user.returncode == 0 and not user.stdout + user.stderr, user
    # verify warns (exit 0) on a setting it cannot parse: the checks above must see it
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tgfs@.service").write_text(
        (UNITS / "tgfs@.service").read_text().replace("Type=notify", "Type=notifyy")
    )
    bad = _verify(broken, broken / "tgfs@.service", "tgfs@srv-tgfs.service", user=False)
    assert "notifyy" in bad.stderr


def _messages(sock: socket.socket, until: str, timeout: float) -> list[dict[str, str]]:
    """Datagrams as {key: value}, up to and including the first carrying `until`."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not any(until in m for m in got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no {until} within {timeout:.0f} s; got {got}") from None
        got.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
    return got


def test_systemd_hears_ready_status_keepalives_and_stopping(mount_factory, tmp_path):
    address = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    try:
        m = mount_factory(NOTIFY_SOCKET=str(address), WATCHDOG_USEC="1000000")
        (ready,) = _messages(sock, "READY", 30)
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith(f"mounted {m.path}; jobs: 0 running, 0 queued")
        assert "store: local up" in ready["STATUS"]
        # WatchdogSec=1 s: a keep-alive at least every half second, from the daemon's loop
        started = time.monotonic()
        for _ in range(4):
            assert "WATCHDOG" in _messages(sock, "WATCHDOG", 2)[-1]
        assert time.monotonic() - started < 4
        assert m.stop() == 0
        stopping = _messages(sock, "STOPPING", 20)[-1]
        assert stopping["STOPPING"] == "1"
    finally:
        sock.close()


def test_keepalives_are_for_the_process_systemd_named():
    from tgfs.service import Notifier

    theirs = Notifier({"NOTIFY_SOCKET": "@tgfs", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert theirs.address == "\0tgfs" and theirs.keepalive_every is None
    mine = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000"})
    assert mine.keepalive_every == 1.0
    assert not Notifier({}).enabled
    Notifier({}).send("READY=1")  # not started by systemd: nothing happens


def _daemons(mountpoint: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"tgfs mount {mountpoint}"], capture_output=True)
    return found.stdout.decode().split()


def test_an_fstab_line_mounts_with_mount_and_unmounts_with_umount(tmp_path):
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    mnt.mkdir()
    settings = tmp_path / "tgfs.env"
    values = {**TEST_ENV, "TGFS_DATA_DIR": data, "TGFS_CACHE_DIR": tmp_path / "cache"}
    settings.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    key = tmp_path / "library.key"
    key_id = generate_key_file(key)
    fstab = tmp_path / "fstab"
    options = (
        f"allow_other,cache_size=32M,encryption_key_file={key},noatime,x-systemd.automount,_netdev"
    )
    fstab.write_text(f"{REPO}/.venv/bin/tgfs#{settings} {mnt} fuse {options} 0 0\n")

    done = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True)
    try:
        assert done.returncode == 0, done.stderr
        assert os.path.ismount(mnt)  # mounted and answering when mount(8) returned
        (line,) = [x for x in Path("/proc/self/mounts").read_text().splitlines() if f" {mnt} " in x]
        assert "allow_other" in line.split()[3]
        (mnt / "a.txt").write_text("hello")
        assert (mnt / "a.txt").read_text() == "hello"
        cache = json.loads((mnt / ".tgfs" / "cache.json").read_text())
        assert cache["capacity_bytes"] == 32 * 2**20  # the option reached the settings
    finally:
        gone = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    wait_for(lambda: not _daemons(mnt), 60, "the daemon to exit after umount")
    log = (data / "tgfs.log").read_text()
    assert "unmounted" in log and "Traceback" not in log
    assert f"encryption: on (key id {key_id})" in log
    assert_catalog_sound(data / "catalog.db")

    # A wrong option: mount fails and says why; nothing is mounted, no daemon is left.
    fstab.write_text(f"{REPO}/.venv/bin/tgfs#{settings} {mnt} fuse bogus=1 0 0\n")
    refused = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True)
    assert refused.returncode != 0 and "unknown mount option 'bogus'" in refused.stderr
    assert not os.path.ismount(mnt) and not _daemons(mnt)
    # A key written into fstab (readable by everyone) is refused, and not echoed.
    fstab.write_text(f"{REPO}/.venv/bin/tgfs#{settings} {mnt} fuse encryption_key=abc123 0 0\n")
    refused = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True)
    assert refused.returncode != 0 and "readable by everyone" in refused.stderr
    assert "abc123" not in refused.stderr and not os.path.ismount(mnt)
