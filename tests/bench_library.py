"""`.tgfs/library.json` on a large library. Run: `make bench-library`.

A catalog of `--videos` videos (5,000 by default) in 50 folders, each with three video
renditions, two audio renditions, a poster and `--segments` segments per video rendition,
is written straight into a data directory with tgfs's own catalog functions (the parts
are never read, so none is stored), then mounted on the local store. Timed through the
mount:

- library.json read right after a catalog change (it is rendered again: five queries and
  the JSON), and read again with nothing changed (served as rendered);
- the same read after a change by `cat` as root and by `cat` as another user (www-data,
  through `setpriv`; the mount allows others), whose listing is filtered by what they
  could list: one more query and a walk over the folders' modes (the time the same
  command takes to cat /dev/null is subtracted, to leave out starting a process);
- what a page would need without it: a walk of the mount's tree listing every folder and
  stat'ing every entry (what a PROPFIND of every folder through nginx makes the mount
  do), and the same walk on a copy of the tree as empty files on local disk (the peer:
  an ordinary filesystem).

Best of five for each read (the median of five after a change), of two for the walks.
Prints the figures, the JSON's size and the daemon's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import Mount, traversable
from tgfs.catalog import library, tree
from tgfs.catalog.schema import ROOT_ID, NodeKind, db, open_catalog
from tgfs.store.base import PartRef

FOLDERS = 50
LADDER = [(1920, 1080, "1080p"), (1280, 720, "720p"), (854, 480, "480p")]


def _stored(name: str, size: int, duration: float = 0.0) -> library.StoredFile:
    part = PartRef(id=None, index=0, offset=0, size=size, location=f"bench/{name}")
    return library.StoredFile(name=name, size=size, parts=[part], duration=duration)


def build(data: Path, videos: int, segments: int) -> None:
    """The catalog, as ingest would leave it once every video is complete."""
    open_catalog(data / "catalog.db")
    folders = [tree.create(ROOT_ID, f"Shelf {f:02}", NodeKind.DIR, 0o755) for f in range(FOLDERS)]
    for start in range(0, videos, 200):
        with db.atomic():
            for n in range(start, min(videos, start + 200)):
                parent = folders[n % FOLDERS]
                source = tree.create(parent.id, f"Film {n:05}.mkv", NodeKind.FILE, 0o644)
                folder = library.create_video(source, "copy", 2, None)
                for width, height, name in LADDER:
                    info = library.RenditionInfo(name, width=width, height=height)
                    rendition = library.add_rendition(
                        folder, info, _stored(f"{n}-{name}-init.mp4", 900)
                    )
                    library.add_segments(
                        rendition,
                        [_stored(f"seg{s:05}.m4s", 1_000_000, 2.0) for s in range(segments)],
                        (4_000_000, 3_000_000),
                    )
                for language in ("eng", "fra"):
                    info = library.RenditionInfo(
                        f"audio-{language}", kind="audio", language=language
                    )
                    library.add_rendition(folder, info, _stored(f"{n}-{language}-init.mp4", 700))
                library.add_poster(folder, _stored("poster.jpg", 40_000))
                library.complete_video(folder, source, 0.0, 2)
    db.close()


def mirror(mount: Path, copy: Path) -> None:
    """The mount's tree as empty files and folders on local disk (the peer's tree)."""
    for folder, dirs, files in os.walk(mount):
        if ".tgfs" in dirs:
            dirs.remove(".tgfs")
        here = copy / Path(folder).relative_to(mount)
        here.mkdir(exist_ok=True)
        for name in files:
            (here / name).touch()


def walk(root: Path) -> int:
    """Every folder listed, every entry stat'ed (what a PROPFIND of each folder does)."""
    count = 0
    for folder, dirs, files in os.walk(root):
        if ".tgfs" in dirs:
            dirs.remove(".tgfs")
        for name in dirs + files:
            os.lstat(os.path.join(folder, name))
            count += 1
    return count


def best(run, times: int = 5) -> float:
    taken = []
    for _ in range(times):
        began = time.perf_counter()
        run()
        taken.append(time.perf_counter() - began)
    return min(taken)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--segments", type=int, default=10, help="per video rendition")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tgfs-bench-library-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        build(root / "data", args.videos, args.segments)
        print(f"catalog of {args.videos} videos built in {time.perf_counter() - began:.0f} s")
        m = Mount(root, {"TGFS_ALLOW_OTHER": "true"}).start()
        traversable(m.path)
        try:
            listing = m.path / ".tgfs" / "library.json"
            changed = m.path / "changed"

            cold = []
            for _ in range(5):
                changed.mkdir()
                changed.rmdir()
                began = time.perf_counter()
                data = listing.read_bytes()
                cold.append(time.perf_counter() - began)
            videos = json.loads(data)["videos"]
            assert len(videos) == args.videos, len(videos)
            warm = best(listing.read_bytes)
            as_root = _cat_after_a_change(listing, changed, [])
            as_other = _cat_after_a_change(
                listing,
                changed,
                ["setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups"],
            )
            rss = _rss_kib(m.proc.pid)
            began = time.perf_counter()
            entries = walk(m.path)  # (the first of two passes: a walk here takes a while)
            mount_walk = min(time.perf_counter() - began, best(lambda: walk(m.path), 1))
            mirror(m.path, root / "copy")
            disk_walk = best(lambda: walk(root / "copy"), 3)
        finally:
            m.stop()
    print(f"library.json: {len(data) / 1e6:.1f} MB for {len(videos)} videos")
    print(f"  read after a change  {statistics.median(cold) * 1000:8.0f} ms (median of 5)")
    print(f"  read again           {warm * 1000:8.0f} ms")
    print(f"  by `cat` as root     {as_root * 1000:8.0f} ms (median of 5, after a change)")
    print(f"  by `cat` as www-data {as_other * 1000:8.0f} ms (filtered to what it can list)")
    print(f"  daemon RSS after     {rss / 1024:8.0f} MiB")
    print(f"without it: a walk of {entries} entries (every folder listed, every entry stat'ed)")
    print(f"  through the mount    {mount_walk * 1000:8.0f} ms")
    print(f"  peer: on local disk  {disk_walk * 1000:8.0f} ms")


def _cat_after_a_change(listing: Path, changed: Path, prefix: list[str]) -> float:
    """Seconds `cat` takes to read the listing after a catalog change, as `prefix` runs it,
    less the time the same command takes to cat /dev/null (starting the process)."""
    taken = []
    for _ in range(5):
        changed.mkdir()
        changed.rmdir()
        began = time.perf_counter()
        subprocess.run([*prefix, "cat", str(listing)], check=True, stdout=subprocess.DEVNULL)
        middle = time.perf_counter()
        subprocess.run([*prefix, "cat", "/dev/null"], check=True)
        taken.append((middle - began) - (time.perf_counter() - middle))
    return statistics.median(taken)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
