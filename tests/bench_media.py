"""Media benchmarks: tgfs's HLS segmenting against the ffmpeg CLI, in the same run.
Run: `make bench-media`.

On one generated 1080p H.264 + AAC file (default 60 s):
1. copy mode: tgfs (`make_hls`, PyAV) vs `ffmpeg -c copy -f hls` (target ≤ 1.1×);
2. one libx264 rendition: tgfs vs the ffmpeg CLI with the same preset, CRF, GOP and
   forced keyframes (target ≤ 1.1×);
3. a 3-rendition ladder (1080p, 720p, 480p) from one decode vs three separate ffmpeg runs
   (target ≤ 0.7×);
4. peak RSS of the media child for the file and for one twice as long (flat = streaming).

The ffmpeg CLI on this machine is Debian's (5.1), PyAV bundles FFmpeg 8: the codecs are the
same libraries, but not the same builds, so small differences are not all tgfs's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tgfs.media.hls import EncodeOptions
from tgfs.media.worker import WorkerOptions

SEGMENT = 6.0
PRESET = "veryfast"
CRF = 21


def make_source(path: Path, seconds: int) -> None:
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=1920x1080:rate=25:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "8M",
            "-g",
            "50",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            str(path),
        ],
        check=True,
    )


def timed(command: list[str]) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MiB) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{command[0]} failed: {child.stderr.read().decode()[-500:]}")
    return elapsed, usage.ru_maxrss / 1024


def tgfs_worker(src: Path, work: Path, copy: bool, ladder: tuple[int, ...] = ()) -> list[str]:
    options = WorkerOptions(
        name=src.name,
        size=src.stat().st_size,
        enable_copy_mode=copy,
        copy_mode_min_size=0,
        encode=EncodeOptions(segment_seconds=SEGMENT, x264_preset=PRESET, x264_crf=CRF),
        ladder=list(ladder),
    )
    return [sys.executable, "-m", "tgfs.media.worker", str(src), str(work), options.to_json()]


def ffmpeg_copy(src: Path, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-i",
        str(src),
        "-c",
        "copy",
        "-f",
        "hls",
        "-hls_time",
        str(SEGMENT),
        "-hls_segment_type",
        "fmp4",
        "-hls_playlist_type",
        "vod",
        "-hls_segment_filename",
        str(out / "seg_%05d.m4s"),
        str(out / "a.m3u8"),
    ]


def ffmpeg_transcode(src: Path, out: Path, height: int | None = None) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    gop = int(SEGMENT * 25)
    scale = ["-vf", f"scale=-2:{height}"] if height else []
    return [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-i",
        str(src),
        *scale,
        "-c:v",
        "libx264",
        "-preset",
        PRESET,
        "-crf",
        str(CRF),
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-force_key_frames",
        f"expr:gte(t,n_forced*{SEGMENT})",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-f",
        "hls",
        "-hls_time",
        str(SEGMENT),
        "-hls_segment_type",
        "fmp4",
        "-hls_playlist_type",
        "vod",
        "-hls_segment_filename",
        str(out / "seg_%05d.m4s"),
        str(out / "a.m3u8"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tgfs-bench-media-") as tmp:
        root = Path(tmp)
        src, long_src = root / "film.mp4", root / "film2x.mp4"
        make_source(src, args.seconds)
        make_source(long_src, 2 * args.seconds)
        print(
            f"source: 1920x1080 H.264 8 Mbit/s + AAC, {args.seconds} s "
            f"({src.stat().st_size / 2**20:.0f} MiB)"
        )
        print(f"{'task':<34} {'tgfs':>8} {'ffmpeg CLI':>11} {'ratio':>7}")
        for label, copy, peer in (
            ("copy mode (remux to HLS)", True, ffmpeg_copy),
            (f"libx264 {PRESET} CRF {CRF}, one rendition", False, ffmpeg_transcode),
        ):
            ours, _ = timed(tgfs_worker(src, root / f"ours-{copy}", copy))
            theirs, _ = timed(peer(src, root / f"theirs-{copy}"))
            print(f"{label:<34} {ours:>7.2f}s {theirs:>10.2f}s {ours / theirs:>6.2f}x", flush=True)
        ours, _ = timed(tgfs_worker(src, root / "ours-ladder", False, (720, 480)))
        theirs = sum(
            timed(ffmpeg_transcode(src, root / f"theirs-{h}", h))[0] for h in (None, 720, 480)
        )
        print(
            f"{'ladder 1080p+720p+480p':<34} {ours:>7.2f}s {theirs:>10.2f}s "
            f"{ours / theirs:>6.2f}x  (peer: three separate runs)",
            flush=True,
        )
        for copy in (True, False):
            peaks = [
                timed(tgfs_worker(path, root / f"rss-{path.stem}-{copy}", copy))[1]
                for path in (src, long_src)
            ]
            print(
                f"peak RSS of the media child, {'copy' if copy else 'transcode'}: "
                f"{peaks[0]:.0f} MiB for {args.seconds} s, {peaks[1]:.0f} MiB for "
                f"{2 * args.seconds} s ({peaks[1] / peaks[0]:.2f}x for twice the input)",
                flush=True,
            )


if __name__ == "__main__":
    main()
