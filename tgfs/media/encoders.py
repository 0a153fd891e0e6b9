"""Which H.264 encoder transcodes: a hardware one (NVENC, QSV) when it really works, else
libx264.

An encoder's name being in the build proves nothing: NVENC fails with "Cannot load
libcuda.so.1" on a box without the driver, QSV with an MFX session error, and a GPU can
have CUDA but no NVENC. So detection is a real tiny encode, in a child process (a driver
can crash or hang), with a timeout. The answer is cached per boot (drivers and devices do
not change without one) in the cache directory, so `tgfs config`, `tgfs status` and the
daemon agree without repeating the test.

VAAPI is not in PyAV's bundled FFmpeg, and tgfs does not drive a system FFmpeg, so it is
reported unavailable with that reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import cast

SOFTWARE = "libx264"
HARDWARE = {"nvenc": "h264_nvenc", "qsv": "h264_qsv", "vaapi": "h264_vaapi"}
# Pixel formats each encoder takes from system memory.
PIX_FMT = {"libx264": "yuv420p", "h264_nvenc": "yuv420p", "h264_qsv": "nv12"}
_PROBE_TIMEOUT = 30.0  # seconds: a first CUDA initialisation can take several
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def choose(enabled: bool, preferred: str, cache_dir: Path) -> tuple[str, str | None]:
    """(encoder to use, why the preferred one is not used — or None)."""
    if not enabled or preferred == "software":
        return SOFTWARE, None
    works, reason = detect(preferred, cache_dir)
    if works:
        return HARDWARE[preferred], None
    return SOFTWARE, f"{preferred} unavailable: {reason}"


def detect(kind: str, cache_dir: Path) -> tuple[bool, str]:
    """Does the `kind` ("nvenc", "qsv", "vaapi") encoder work here? (works, reason)."""
    if kind == "vaapi":
        return False, (
            "not in PyAV's bundled FFmpeg (tgfs does not use a system FFmpeg); "
            "use nvenc, qsv or software"
        )
    cache = _cache_file(cache_dir)
    known = _read_cache(cache)
    if kind in known:
        return known[kind]["works"], known[kind]["reason"]
    works, reason = _probe_in_child(HARDWARE[kind])
    known[kind] = {"works": works, "reason": reason}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    except OSError:
        pass  # no cache: probe again next time
    return works, reason


def _cache_file(cache_dir: Path) -> Path:
    try:
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        boot = "unknown"
    return cache_dir / f"encoders-{boot}.json"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _probe_in_child(codec: str) -> tuple[bool, str]:
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tgfs.media.encoders", codec],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False, f"a test encode did not finish in {_PROBE_TIMEOUT:.0f} s"
    if result.returncode == 0:
        return True, "a test encode worked"
    lines = (result.stdout.strip() or result.stderr.strip() or "crashed").splitlines()
    return False, lines[-1][:300]


def _test_encode(codec: str) -> str | None:
    """Encode a few frames of 256x144; None if it worked, else the reason."""
    import av
    import av.logging

    av.logging.set_level(av.logging.ERROR)  # PyAV keeps FFmpeg quiet unless asked
    with av.logging.Capture() as logged:
        try:
            context = cast(av.VideoCodecContext, av.CodecContext.create(codec, "w"))
            context.width, context.height = 256, 144
            context.pix_fmt = PIX_FMT.get(codec, "yuv420p")
            context.time_base = Fraction(1, 25)
            context.framerate = Fraction(25)
            context.open()
            packets = []
            for i in range(10):
                frame = av.VideoFrame(256, 144, context.pix_fmt)
                frame.pts = i
                packets += context.encode(frame)
            packets += context.encode(None)
            if not packets:
                return "the encoder produced no output"
            return None
        except Exception as exc:
            details = [
                message
                for level, _, message in logged
                if level <= av.logging.ERROR and message.strip()
            ]
            reason = details[-1].strip() if details else (str(exc) or type(exc).__name__)
            return reason


if __name__ == "__main__":
    problem = _test_encode(sys.argv[1])
    if problem:
        print(problem)
    sys.exit(1 if problem else 0)
