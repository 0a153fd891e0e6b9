"""Streaming benchmarks through the real mount. Run: `make bench-stream`.

1. Cold playback. A film (10 minutes at 8 Mbps by default, `--seconds`) is published
   through a tgfs mount on the Telegram stand-in, then played with an empty cache by a
   player paced in real time, as hls.js plays: it reads master.m3u8, the first variant's
   playlist, the init segment and the first segment (start-up ends there), then keeps up
   to 30 s buffered, reading each segment file whole, for `--play` seconds; then it seeks
   to the middle (time until that segment is read). The stand-in then costs 300 ms per
   request and 2 MB/s per bot. Runs: 8 bots, 1 bot, and 4 viewers of 4 different films at
   once on 8 bots.
   Peer: `rclone mount --vfs-cache-mode full` over the same HLS files, on a directory
   slowed the same way (tests/slowfs.py: 300 ms per 1 MiB request, 2 MB/s per link, files
   spread over 8 links or 1, as parts over bots).
2. Warm reads: the first 40 files of the film (~240 MB) read in order through the mount,
   once the cache holds them, against the same files read from local disk and through
   rclone (warm; here rclone mounts the plain files directly: its cache path is measured,
   not the slowed store).
   Each is read once, then timed as the best of three more passes (the kernel's page cache
   included for all three: that is the target).
3. Responsiveness: p99 of stat() and readdir() on the mount while a transcode and a cold
   playback run.
4. The MP4 view (`--only view` runs just this): the film as one MP4 file against its HLS
   folder, on the same mount (8 bots, the slowed stand-in), each with an empty cache:
   cold start, the time to the first 10 MB (the file read from its start; the HLS read as
   a player does, playlists, init segment, then segments); a player's seek to 40 % (the
   segment file there read whole, against as many bytes read from the MP4 file where its
   front index puts that segment); and `ffmpeg -ss` to 70 % decoding 2 s (its wall time,
   and the bytes it made tgfs fetch), as FFmpeg-based players (Jellyfin, Plex, mpv) seek.
   The kernel's page cache is dropped before each (as root) with tgfs's cache.

Nothing here talks to Telegram; the stand-in's physics are a model (see tests/standin.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import m3u8

from tests.conftest import Mount, wait_for
from tests.standin import StandIn
from tgfs.media import fmp4

REPO = Path(__file__).resolve().parent.parent
BUFFER = 30.0  # seconds a player keeps buffered ahead (hls.js maxBufferLength)
LATENCY, BANDWIDTH = 0.3, 2_000_000
WARM_FILES = 40  # init + 39 segments (~240 MB): every pass is then the same files


# ---- the player -----------------------------------------------------------------------


@dataclasses.dataclass
class Playback:
    startup: float = 0.0
    stalls: int = 0
    stalled: float = 0.0
    seek: float | None = None


def _read(path: Path) -> int:
    with open(path, "rb") as f:
        return len(f.read())


def play(
    folder: Path, seconds: float, seek: bool = False, barrier: threading.Barrier | None = None
) -> Playback:
    """Play `folder`'s first variant like hls.js for `seconds` of wall time."""
    result = Playback()
    if barrier is not None:
        barrier.wait()
    started = time.monotonic()
    master = m3u8.loads((folder / "master.m3u8").read_text())
    media_path = folder / master.playlists[0].uri
    media = m3u8.loads(media_path.read_text())
    base = media_path.parent
    if media.segment_map:
        _read(base / media.segment_map[0].uri)
    segments = [(base / s.uri, s.duration) for s in media.segments]
    _read(segments[0][0])
    result.startup = time.monotonic() - started

    playhead, buffered, index = 0.0, segments[0][1], 1
    last = time.monotonic()
    play_start = last

    def advance() -> None:
        nonlocal playhead, last
        now = time.monotonic()
        room, moved = buffered - playhead, now - last
        last = now
        if moved <= room:
            playhead += moved
            return
        if index < len(segments):  # a stall: the player waits for data
            result.stalls += 1
            result.stalled += moved - room
        playhead = buffered

    while time.monotonic() - play_start < seconds and index < len(segments):
        if buffered - playhead >= BUFFER:
            time.sleep(
                min(
                    buffered - playhead - BUFFER + 0.05,
                    max(0.0, seconds - (time.monotonic() - play_start)),
                )
            )
            advance()
            continue
        _read(segments[index][0])
        advance()
        buffered += segments[index][1]
        index += 1
    if seek:
        t = time.monotonic()
        _read(segments[len(segments) // 2][0])
        result.seek = time.monotonic() - t
    return result


def play_many(folders: list[Path], seconds: float) -> list[Playback]:
    barrier = threading.Barrier(len(folders))
    results: list[Playback | None] = [None] * len(folders)

    def run(i: int) -> None:
        results[i] = play(folders[i], seconds, barrier=barrier)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(folders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def summary(results: list[Playback]) -> str:
    start = max(r.startup for r in results)
    text = (
        f"start-up {start:5.2f} s{' (slowest)' if len(results) > 1 else ''}"
        f"  stalls {sum(r.stalls for r in results):3d}"
        f"  stalled {sum(r.stalled for r in results):6.1f} s"
    )
    seeks = [r.seek for r in results if r.seek is not None]
    return text + (f"  seek {seeks[0]:5.2f} s" if seeks else "")


# ---- set-up -----------------------------------------------------------------------------


def make_film(path: Path, seconds: int, title: str | None = None) -> Path:
    """A 720p H.264 + AAC film at a constant 8 Mbps (x264 pads with filler data), with a
    keyframe every 2 s as streaming encodes have. Variants differ only in a title tag,
    which gives them different bytes (tgfs would deduplicate identical files)."""
    if path.exists():
        return path
    if title is not None:
        source = make_film(path.parent / "film0.mp4", seconds)
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-i",
                str(source),
                "-c",
                "copy",
                "-metadata",
                f"title={title}",
                str(path),
            ],
            check=True,
        )
        return path
    print(f"making a {seconds} s 8 Mbps film …", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=1280x720:rate=25:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
            "-b:v",
            "8M",
            "-minrate",
            "8M",
            "-maxrate",
            "8M",
            "-bufsize",
            "4M",
            "-x264-params",
            "nal-hrd=cbr:force-cfr=1",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-movflags",
            "+faststart",
            str(path),
        ],
        check=True,
    )
    return path


def tgfs_library(
    work: Path,
    name: str,
    bots: int,
    films: list[Path],
    extra: dict[str, str],
    plain: Path | None = None,
) -> tuple[Mount, StandIn]:
    """A mount on a fresh stand-in with `bots` bots, the films published (fast) and
    copied out to `plain`, the cache empty, then the stand-in slowed down."""
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    standin = StandIn(root / "telegram", bots=bots)
    os.environ["STANDIN_DIR"] = str(root / "telegram")
    env = standin.env(
        PYTHONPATH=str(REPO),
        TGFS_BOT_MESSAGES_PER_MINUTE="0",
        TGFS_LOG_LEVEL="INFO",
        TGFS_CACHE_SIZE="8G",
        TGFS_CACHE_MIN_FREE="1G",
        COPY_MODE_MIN_SIZE="1M",
        TELEGRAM_MAX_FILE_SIZE="64M",
        TGFS_SEGMENT_SECONDS="6",
        TGFS_X264_PRESET="ultrafast",
        **extra,
    )
    m = Mount(root, env).start()  # env wins over the test suite's defaults
    print(f"{name}: publishing {len(films)} film(s) on {bots} bot(s) …", flush=True)
    for film in films:
        shutil.copyfile(film, m.path / film.name)
    m.wait_idle(timeout=3600)
    if plain is not None:
        copy_out(m, [f.stem for f in films], plain)
    m.stop()
    shutil.rmtree(root / "cache", ignore_errors=True)
    m.start()
    standin.config.update(latency=LATENCY, bandwidth=BANDWIDTH)
    standin.write()
    return m, standin


class Peer:
    """rclone mount --vfs-cache-mode full over a slowed copy of the HLS folders."""

    def __init__(self, work: Path, source: Path, links: int, slow: bool = True) -> None:
        """`slow=False`: rclone straight over `source` (for warm reads: its cache path),
        and the mirror at full speed with the page cache kept: the floor of a Python FUSE
        filesystem, for the same warm reads."""
        self.work = work
        self.slow = work / "slow"
        self.mnt = work / "rclone"
        self.cache = work / "rclone-cache"
        for d in (self.slow, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.cache, ignore_errors=True)
        self.slowfs = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.slowfs",
                str(source),
                str(self.slow),
                "--links",
                str(links),
                *(
                    ["--latency", str(LATENCY), "--bandwidth", str(BANDWIDTH)]
                    if slow
                    else ["--latency", "0", "--bandwidth", "1e15", "--keep-cache"]
                ),
            ],
            cwd=REPO,
        )
        wait_for(lambda: os.path.ismount(self.slow), 20, "slowfs")
        self.rclone = subprocess.Popen(
            [
                "rclone",
                "mount",
                str(self.slow if slow else source),
                str(self.mnt),
                "--vfs-cache-mode",
                "full",
                "--cache-dir",
                str(self.cache),
                "--read-only",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: os.path.ismount(self.mnt), 20, "rclone mount")

    def close(self) -> None:
        for mnt, proc in ((self.mnt, self.rclone), (self.slow, self.slowfs)):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def copy_out(m: Mount, folders: list[str], dest: Path) -> None:
    """The HLS folders as plain files, for the peer and for local-disk reads."""
    for name in folders:
        if not (dest / name).exists():
            shutil.copytree(m.path / name, dest / name)


# ---- measurements ---------------------------------------------------------------------


def segment_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".m4s", ".mp4", ".ts"))


def read_rates(readers: dict[str, list[Path]], settle: Callable[[], object]) -> dict[str, float]:
    """GB/s of reading every file in order once everything is cached everywhere, for each
    set of files: a first pass over each, `settle` (waits until the first passes'
    background work is over), then the best of seven passes each, taken in turns so that
    the machine's drift (CPU clocks, other work) touches them all alike."""
    for files in readers.values():
        sum(_read(p) for p in files)
    settle()
    best = dict.fromkeys(readers, 0.0)
    for _ in range(7):
        for name, files in readers.items():
            started = time.monotonic()
            total = sum(_read(p) for p in files)
            best[name] = max(best[name], total / (time.monotonic() - started) / 1e9)
    return best


def settled(m: Mount) -> None:
    """Wait until no prefetch runs and no fetch is in flight (the first pass of a warm read
    fetched the segments the cold playback had not, and prefetched past them)."""

    def quiet() -> bool:
        cache = json.loads((m.path / ".tgfs" / "cache.json").read_text())
        return cache["fetches_in_flight"] == 0 and cache["prefetch"]["viewers_fetching"] == 0

    wait_for(quiet, 300, "the cache to settle")


def responsiveness(m: Mount, folder: str, seconds: float) -> tuple[float, float]:
    """p99 (ms) of stat and readdir on the mount while a transcode and a playback run."""
    busy = m.path / "busy.mkv"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=25:duration=60",
            "-c:v",
            "mpeg4",
            "-q:v",
            "3",
            str(m.root / "busy.mkv"),
        ],
        check=True,
    )
    shutil.copyfile(m.root / "busy.mkv", busy)  # MPEG-4 ASP: a transcode
    player = threading.Thread(target=play, args=(m.path / folder, seconds))
    player.start()
    names = [p for p in (m.path / folder).rglob("*")][:200]
    stats, lists = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = random.choice(names)
        t = time.monotonic()
        os.stat(path)
        stats.append(time.monotonic() - t)
        t = time.monotonic()
        os.listdir(path.parent)
        lists.append(time.monotonic() - t)
        time.sleep(0.01)
    player.join()
    state = (m.job("busy.mkv") or {}).get("state")
    print(f"  (transcode state at the end: {state}; {len(stats)} samples)")
    return (
        statistics.quantiles(stats, n=100)[98] * 1000,
        statistics.quantiles(lists, n=100)[98] * 1000,
    )


FIRST_BYTES = 10_000_000  # "cold start": until this much of the film is read


def clear_cache(m: Mount) -> int:
    """Empty the cache; returns the bytes fetched so far (cache.json), to count from."""
    subprocess.run(
        [sys.executable, "-m", "tgfs", "cache", "clear", str(m.path)],
        check=True,
        capture_output=True,
    )
    return json.loads((m.path / ".tgfs" / "cache.json").read_text())["fetched_bytes"]


def fetched_since(m: Mount, before: int) -> float:
    """MB fetched from the store since `before`, once fetches ahead have ended."""

    def quiet() -> int | None:
        cache = json.loads((m.path / ".tgfs" / "cache.json").read_text())
        return cache["fetched_bytes"] if cache["fetches_in_flight"] == 0 else None

    return (wait_for(quiet, 300, "fetches to end") - before) / 1e6


def first_bytes_of_file(path: Path) -> float:
    started = time.monotonic()
    with open(path, "rb") as f:
        got = 0
        while got < FIRST_BYTES and (chunk := f.read(2**20)):
            got += len(chunk)
    return time.monotonic() - started


def first_bytes_of_hls(folder: Path) -> float:
    started = time.monotonic()
    master = m3u8.loads((folder / "master.m3u8").read_text())
    media_path = folder / master.playlists[0].uri
    media = m3u8.loads(media_path.read_text())
    files = [media_path.parent / media.segment_map[0].uri] if media.segment_map else []
    files += [media_path.parent / s.uri for s in media.segments]
    got = 0
    for path in files:
        got += _read(path)
        if got >= FIRST_BYTES:
            break
    return time.monotonic() - started


SEEK_AT = 0.4  # the players' seek (a fraction of the film); ffmpeg's goes elsewhere (0.7)


def read_segment_at(folder: Path, fraction: float) -> tuple[float, int]:
    """Time to read the first variant's segment file at `fraction` of it whole; its size."""
    master = m3u8.loads((folder / "master.m3u8").read_text())
    media_path = folder / master.playlists[0].uri
    media = m3u8.loads(media_path.read_text())
    path = media_path.parent / media.segments[int(len(media.segments) * fraction)].uri
    started = time.monotonic()
    size = _read(path)
    return time.monotonic() - started, size


def subsegment_at(path: Path, fraction: float) -> int:
    """Where an MP4 view file's subsegment at `fraction` of its front index (the video
    track's `sidx`) begins: where a player seeking by it starts reading."""
    with open(path, "rb") as f:
        head = f.read(2**20)
    at = 0
    while (index := fmp4.header(head[at : at + 16], at, len(head) - at)).type != b"sidx":
        at = index.end  # ftyp, moov: the video track's sidx is the first
    # (version 1: a 64-bit earliest time and first offset)
    anchor = index.end + struct.unpack_from(">Q", head, index.body + 20)[0]
    (count,) = struct.unpack_from(">H", head, index.body + 30)
    sizes = [
        struct.unpack_from(">I", head, index.body + 32 + 12 * n)[0] & 0x7FFFFFFF
        for n in range(count)
    ]
    return anchor + sum(sizes[: int(count * fraction)])


def read_at(path: Path, at: int, length: int) -> float:
    """Time to read `length` bytes of a file from `at`."""
    started = time.monotonic()
    with open(path, "rb") as f:
        f.seek(at)
        got = 0
        while got < length and (chunk := f.read(2**20)):
            got += len(chunk)
    return time.monotonic() - started


def drop_page_cache() -> None:
    """What the kernel keeps of files read before (view files and segments are opened with
    keep_cache): dropped, where this may, so that each figure is a cold one."""
    with contextlib.suppress(OSError):  # not root: the figures read other parts of the film
        Path("/proc/sys/vm/drop_caches").write_text("1")


def seek(source: Path, at: float) -> float:
    """Wall time of `ffmpeg -ss at` decoding 2 s of `source` (probe and seek included)."""
    started = time.monotonic()
    subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", f"{at:g}", "-i", str(source), "-map", "0", "-t", "2",
         "-f", "null", "-"],
        check=True,
    )  # fmt: skip
    return time.monotonic() - started


def view_against_hls(m: Mount, name: str, seconds: float) -> list[tuple[str, str, str]]:
    """Section 4: (what, the MP4 view, the HLS folder) rows."""
    view, folder = m.path / "MP4" / f"{name}.mp4", m.path / name
    rows = []

    def cold() -> int:
        drop_page_cache()
        return clear_cache(m)

    cold()
    ours = first_bytes_of_file(view)
    cold()
    theirs = first_bytes_of_hls(folder)
    rows.append(("cold start (10 MB)", f"{ours:5.2f} s", f"{theirs:5.2f} s"))
    cold()
    theirs, length = read_segment_at(folder, SEEK_AT)
    cold()
    at = subsegment_at(view, SEEK_AT)  # a player has the header from its open: untimed
    fetched_since(m, 0)  # (and what that open fetched ahead is in)
    ours = read_at(view, at, length)
    mb = length / 1e6
    rows.append(
        ("player seek", f"{ours:5.2f} s ({mb:.1f} MB)", f"{theirs:5.2f} s (a {mb:.1f} MB segment)")
    )
    before = cold()
    ours = seek(view, seconds * 0.7)
    ours_mb = fetched_since(m, before)
    before = cold()
    theirs = seek(folder / "master.m3u8", seconds * 0.7)
    theirs_mb = fetched_since(m, before)
    size = view.stat().st_size / 1e6
    rows.append(
        (
            "ffmpeg -ss 70 %",
            f"{ours:5.2f} s, {ours_mb:5.1f} MB fetched of {size:.0f}",
            f"{theirs:5.2f} s, {theirs_mb:5.1f} MB fetched",
        )
    )
    return rows


def view_only(work: Path, seconds: int) -> None:
    film = make_film(work / "media" / "film0.mp4", seconds)
    m, _ = tgfs_library(work, "view", 8, [film], {"TGFS_MP4_VIEW": "MP4"})
    try:
        rows = view_against_hls(m, film.stem, seconds)
    finally:
        m.stop()
    print_view(rows, seconds)


def print_view(rows: list[tuple[str, str, str]], seconds: float) -> None:
    print(
        f"\nthe MP4 view against the HLS folder: film {seconds:g} s at 8 Mbps, 8 bots, "
        f"{LATENCY * 1000:.0f} ms per request, {BANDWIDTH / 1e6:g} MB/s per bot, cache empty"
    )
    print(f"{'':20}| {'MP4 view':42}| HLS folder (ffmpeg -i master.m3u8)")
    for what, ours, theirs in rows:
        print(f"{what:20}| {ours:42}| {theirs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="film length")
    parser.add_argument("--play", type=float, default=60.0, help="seconds of playback")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/tgfs-bench-stream"))
    parser.add_argument("--only", choices=["view"], help="run only this section")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.only == "view":
        view_only(work, args.seconds)
        return
    films = [
        make_film(work / "media" / f"film{k}.mp4", args.seconds, None if k == 0 else f"film {k}")
        for k in range(4)
    ]
    rows: list[tuple[str, str, str]] = []
    results: dict[str, object] = {}

    plain = work / "plain"
    m8, _ = tgfs_library(work, "lib8", 8, films, {"TGFS_MP4_VIEW": "MP4"}, plain)
    m1: Mount | None = None
    peer: Peer | None = None
    try:
        one = play(m8.path / "film0", args.play, seek=True)
        peer = Peer(work, plain, links=8)
        one_peer = play(peer.mnt / "film0", args.play, seek=True)
        rows.append(("cold, 8 bots", summary([one]), summary([one_peer])))

        subprocess.run(
            [sys.executable, "-m", "tgfs", "cache", "clear", str(m8.path)],
            check=True,
            capture_output=True,
        )
        four = play_many([m8.path / f.stem for f in films], args.play)
        peer.close()
        peer = Peer(work, plain, links=8)  # its cache starts empty again
        four_peer = play_many([peer.mnt / f.stem for f in films], args.play)
        rows.append(("cold, 4 viewers, 8 bots", summary(four), summary(four_peer)))

        peer.close()
        peer = Peer(work, plain, links=8, slow=False)
        rates = read_rates(
            {
                name: segment_files(root / "film0")[:WARM_FILES]
                for name, root in (
                    ("tgfs", m8.path),
                    ("local", plain),
                    ("rclone", peer.mnt),
                    ("floor", peer.slow),
                )
            },
            lambda: settled(m8),
        )
        warm, local, warm_peer, floor = (rates[k] for k in ("tgfs", "local", "rclone", "floor"))
        peer.close()
        peer = None

        subprocess.run(
            [sys.executable, "-m", "tgfs", "cache", "clear", str(m8.path)],
            check=True,
            capture_output=True,
        )
        stat_p99, readdir_p99 = responsiveness(m8, "film1", min(args.play, 30))
        cache = json.loads((m8.path / ".tgfs" / "cache.json").read_text())
        view_rows = view_against_hls(m8, "film2", args.seconds)
        m8.stop()

        m1, _ = tgfs_library(work, "lib1", 1, films[:1], {})
        single = play(m1.path / "film0", args.play, seek=True)
        m1.stop()
        m1 = None
        peer = Peer(work, plain, links=1)
        single_peer = play(peer.mnt / "film0", args.play, seek=True)
        rows.append(("cold, 1 bot", summary([single]), summary([single_peer])))
    finally:
        if peer is not None:
            peer.close()
        for m in (m8, m1):
            if m is not None and m.proc is not None:
                m.stop()

    print(
        f"\nfilm: {args.seconds} s at 8 Mbps, 6 s segments; played {args.play:g} s; "
        f"stand-in {LATENCY * 1000:.0f} ms per request, {BANDWIDTH / 1e6:g} MB/s per bot"
    )
    print(f"{'':25}| {'tgfs':70}| rclone --vfs-cache-mode full")
    for name, ours, theirs in rows:
        print(f"{name:25}| {ours:70}| {theirs}")
    print(
        f"\nwarm reads of all segments: tgfs {warm:.2f} GB/s, local disk {local:.2f} GB/s "
        f"({warm / local:.2f}x), rclone {warm_peer:.2f} GB/s (tgfs {warm / warm_peer:.1f}x), "
        f"a minimal Python FUSE mirror {floor:.2f} GB/s ({floor / local:.2f}x)"
    )
    print(
        f"during a transcode and a cold playback: stat p99 {stat_p99:.1f} ms, "
        f"readdir p99 {readdir_p99:.1f} ms"
    )
    print_view(view_rows, args.seconds)
    results.update(
        prefetch_hit_bytes=cache["prefetch_hit_bytes"],
        prefetch_wasted_bytes=cache["prefetch_wasted_bytes"],
    )
    print(f"cache after the runs: {json.dumps(results)}")


if __name__ == "__main__":
    main()
