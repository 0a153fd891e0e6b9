"""The trash (issue "Never lose a library"): `rm -r` of a video or of a folder of files keeps
their parts in the store; `tgfs undelete` brings them back where they were (making removed
folders again, or beside a new file of the same name), through a mount or with no daemon;
`tgfs trash --empty` and TGFS_TRASH_DAYS delete them for good; a kill among deletes and
undeletes loses nothing."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading

from tests.conftest import TEST_ENV, copy_in, wait_for
from tests.hls_checks import check_video_folder

SEGMENT = float(TEST_ENV["TGFS_SEGMENT_SECONDS"])


def _tgfs(m, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tgfs", *args], env=m.env, capture_output=True, text=True
    )


def _parts(m) -> set[str]:
    return {location for (location,) in m.catalog("SELECT location FROM part")}


def test_undelete_a_video_after_rm_r(mount_factory, media):
    m = mount_factory()
    src = media("h264_aac.mp4")
    (m.path / "Movies").mkdir()
    copy_in(src, m.path / "Movies" / "film.mp4")
    m.wait_idle()
    folder = m.path / "Movies" / "film"
    check_video_folder(folder, src, SEGMENT)
    stored = _parts(m)

    subprocess.run(["rm", "-r", str(m.path / "Movies")], check=True)
    assert not (m.path / "Movies").exists()
    listed = _tgfs(m, "trash", str(m.path))
    assert listed.returncode == 0 and "Movies/film/" in listed.stdout, listed.stdout
    assert "trash: 1 item(s)" in _tgfs(m, "status", str(m.path)).stdout
    m.store_matches_catalog()  # the collector ran: every part of the video is still stored
    assert _parts(m) == stored

    done = _tgfs(m, "undelete", str(folder))
    assert done.returncode == 0 and f"brought back: {folder}" in done.stdout, done.stderr
    check_video_folder(folder, src, SEGMENT)  # it plays again, segment by segment
    assert _tgfs(m, "trash", str(m.path)).stdout == "the trash is empty\n"
    m.store_matches_catalog()


def test_undelete_beside_a_new_file_and_with_no_daemon(mount_factory):
    m = mount_factory()
    old, new = os.urandom(1_500_000), os.urandom(1000)  # old: two store parts
    docs = m.path / "Docs"
    docs.mkdir()
    (docs / "notes.txt").write_bytes(old)
    m.wait_idle()
    (docs / "notes.txt").unlink()
    (docs / "notes.txt").write_bytes(new)  # a new file takes the name
    m.wait_idle()
    done = _tgfs(m, "undelete", str(docs / "notes.txt"))
    assert done.returncode == 0, done.stderr
    assert (docs / "notes (2).txt").read_bytes() == old  # beside it, extension kept
    assert (docs / "notes.txt").read_bytes() == new

    # The folder removed, one file brought back with no daemon: the folder is made again.
    shutil.rmtree(docs)
    assert m.stop() == 0
    listed = _tgfs(m, "trash").stdout
    assert "Docs/notes.txt" in listed and "Docs/notes (2).txt" in listed, listed
    done = _tgfs(m, "undelete", "Docs/notes (2).txt")
    assert done.returncode == 0 and "brought back: Docs/notes (2).txt" in done.stdout
    m.start()
    assert os.listdir(docs) == ["notes (2).txt"]
    assert (docs / "notes (2).txt").read_bytes() == old
    missing = _tgfs(m, "undelete", str(docs / "nothing.txt"))
    assert missing.returncode != 0
    assert "nothing in the trash was at Docs/nothing.txt" in missing.stderr


def test_the_trash_empties_when_asked_and_by_age(mount_factory):
    m = mount_factory(TGFS_TRASH_DAYS=str(20 / 86400))  # 20 seconds
    (m.path / "a.bin").write_bytes(os.urandom(300_000))
    (m.path / "b.bin").write_bytes(os.urandom(300_000))
    m.wait_idle()
    (m.path / "a.bin").unlink()
    emptied = _tgfs(m, "trash", "--empty", str(m.path))
    assert emptied.returncode == 0 and "1 item(s)" in emptied.stdout, emptied.stderr
    m.store_matches_catalog()  # a.bin's part is gone from the store
    assert len(_parts(m)) == 1

    (m.path / "b.bin").unlink()
    assert "b.bin" in _tgfs(m, "trash", str(m.path)).stdout
    wait_for(lambda: not m.catalog("SELECT 1 FROM trash"), 60, "b.bin to leave the trash")
    m.store_matches_catalog()
    assert _parts(m) == set()


def test_a_kill_among_deletes_and_undeletes_loses_nothing(mount_factory):
    """Files deleted and brought back (trash.json requests, what `tgfs undelete` writes) in
    a loop while the daemon is killed: after a restart each file is in the tree or in the
    trash, never neither, and comes back byte for byte."""
    m = mount_factory()
    files = {f"f{i:02}.bin": os.urandom(60_000 + i) for i in range(16)}
    for name, data in files.items():
        (m.path / name).write_bytes(data)
    m.wait_idle()
    trash_file = m.path / ".tgfs" / "trash.json"
    done = threading.Event()
    operations = 0

    def churn() -> None:
        nonlocal operations
        try:
            while True:
                for name in files:
                    (m.path / name).unlink()
                    items = json.loads(trash_file.read_text())["items"]
                    item = next(i["id"] for i in items if i["path"] == name)
                    trash_file.write_text(f"undelete {item}\n")
                    operations += 1
        except OSError:
            done.set()  # the mount died under it

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    wait_for(lambda: operations >= 20 + random.randrange(20), 60, "deletes and undeletes")
    m.kill()
    assert done.wait(30)
    m.start()
    in_tree = set(os.listdir(m.path)) - {".tgfs"}
    in_trash = {i["path"] for i in json.loads(trash_file.read_text())["items"]}
    assert in_tree | in_trash == set(files) and not in_tree & in_trash
    for name in sorted(in_trash):
        assert _tgfs(m, "undelete", str(m.path / name)).returncode == 0
    for name, data in files.items():
        assert (m.path / name).read_bytes() == data, name
    m.store_matches_catalog()
