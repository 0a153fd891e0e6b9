"""SIGKILL the daemon at random points, again and again, and check that nothing the mount
accepted is lost and nothing is left behind.

Five places to kill, ten kills each: during a `cp`, right after a `cp` returned, during an
append, while a copy-mode video is being stored, while a video is being transcoded. After
every restart each accepted file is whole (byte-identical under its name, or a complete
video folder), a killed write kept a prefix of what was written, and nothing shows 0 bytes
that was not empty. At the end every job finishes and the store holds exactly the parts
the catalog references. The seed is printed: a failure can be replayed with TGFS_CRASH_SEED.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import m3u8

from tests.conftest import Mount, copy_in, wait_for, write_until_killed
from tests.hls_checks import check_video_folder

KILLS_PER_PLACE = 10


class Library:
    """What the test has given the mount, and what each file may look like now."""

    def __init__(self, m: Mount) -> None:
        self.m = m
        self.whole: dict[str, bytes] = {}  # accepted by close(): must be exactly this
        self.videos: dict[str, Path] = {}  # accepted videos: the file, or its folder
        self.prefix: dict[str, tuple[bytes, bytes, int]] = {}  # killed writes: (kept,
        # what was being written, bytes whose write() returned)

    def check(self) -> None:
        root = self.m.path
        for name, data in self.whole.items():
            assert (root / name).read_bytes() == data, name
        for name, (kept, writing, written) in self.prefix.items():
            got = (root / name).read_bytes()
            assert got[: len(kept)] == kept, name
            assert len(got) >= len(kept) + written, (name, len(got), len(kept), written)
            assert got[len(kept) :] == writing[: len(got) - len(kept)], name
        for name, src in self.videos.items():
            folder = (root / name).parent / Path(name).stem
            if (root / name).exists():  # not published yet (or being published)
                assert (root / name).read_bytes() == src.read_bytes(), name
            else:  # the dropped file goes only when its video is complete
                for variant in m3u8.load(str(folder / "master.m3u8")).playlists:
                    assert m3u8.load(str(folder / variant.uri)).is_endlist, name
        for path in root.rglob("*"):
            if path.is_file() and ".tgfs" not in path.parts:
                assert path.stat().st_size > 0, f"{path} shows 0 bytes"


def _kill_during_job(m: Mount, name: str, rng: random.Random) -> None:
    """Kill while the file's job runs (the media step or the upload), at a random time."""
    wait_for(
        lambda: (j := m.job(name)) and j["state"] in ("running", "done"),
        60,
        f"{name}'s job to start",
    )
    time.sleep(rng.uniform(0.0, 2.5))  # a random point of the job: that is the test
    m.kill()


def test_random_kills_lose_nothing_and_leave_nothing(mount_factory, media, tmp_path):
    seed = int(os.environ.get("TGFS_CRASH_SEED", time.time_ns() % 100_000))
    print(f"TGFS_CRASH_SEED={seed}")
    rng = random.Random(seed)
    m = mount_factory(TGFS_RETRY_DELAY="0.5")
    lib = Library(m)
    film, clip = media("film.mp4"), media("mpeg4_mp3.avi")
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * 2**20))
    data = source.read_bytes()
    kills = 0

    def restart() -> None:
        nonlocal kills
        kills += 1
        m.start()
        lib.check()

    # 1. During a cp: a prefix of what was written is kept.
    for n in range(KILLS_PER_PLACE):
        name = f"copying{n}.bin"
        written = write_until_killed(
            m, source, m.path / name, "truncate", rng.randrange(32 * 1024, len(data))
        )
        lib.prefix[name] = (b"", data, written)
        restart()
    # 2. Right after cp returned: everything.
    for n in range(KILLS_PER_PLACE):
        if n % 3 == 0:  # a folder each: the same bytes twice in one folder are one video
            name = f"dir{n}/tiny.mp4"
            (m.path / f"dir{n}").mkdir()
            copy_in(media("tiny_h264.mp4"), m.path / name)
            lib.videos[name] = media("tiny_h264.mp4")
        else:
            name = f"copied{n}.bin"
            size = rng.randrange(1, len(data))
            subprocess.run(["cp", "/dev/stdin", str(m.path / name)], input=data[:size], check=True)
            lib.whole[name] = data[:size]
        m.kill()
        restart()
    # 3. During an append to a stored (or still spooled) file.
    for n in range(KILLS_PER_PLACE):
        name = f"appended{n % 3}.bin"
        if name not in lib.whole and name not in lib.prefix:
            (m.path / name).write_bytes(data[:100_000])
            lib.whole[name] = data[:100_000]
        kept = (m.path / name).read_bytes()
        lib.whole.pop(name, None)
        more = os.urandom(rng.randrange(64 * 1024, 2**20))
        (tmp_path / "more.bin").write_bytes(more)
        written = write_until_killed(
            m, tmp_path / "more.bin", m.path / name, "append", rng.randrange(1, len(more))
        )
        lib.prefix[name] = (kept, more, written)
        restart()
        lib.prefix.pop(name)
        lib.whole[name] = (m.path / name).read_bytes()
    # 4. While a copy-mode film is being stored, and 5. while a clip is transcoded: the
    # job starts over after each restart, and is killed again at another point.
    for name, src in (("film.mp4", film), ("clip.avi", clip)):
        copy_in(src, m.path / name)
        lib.videos[name] = src
        for _ in range(KILLS_PER_PLACE):
            _kill_during_job(m, name, rng)
            restart()

    assert kills >= 50
    m.wait_idle(300)
    lib.check()
    for name in ("film.mp4", "clip.avi"):
        assert not (m.path / name).exists()
    check_video_folder(m.path / "film", film, 2)
    check_video_folder(m.path / "clip", clip, 2)
    assert m.job("film.mp4")["outcome"] == "video (copy)"
    m.store_matches_catalog()
    assert list((m.data / "spool").iterdir()) == []
