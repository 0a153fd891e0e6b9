"""A video's poster: one representative frame as a JPEG (`poster.jpg` in its folder).

Which frame: the first one at or after 10 % of the duration that is not black or flat
(mean luma above `_DARK`, and some contrast); if none is found within a few seconds there,
25 %, 50 % and the start are tried, and the last frame looked at is taken if all are dark
(a dark film still gets a poster). Upright (the source's rotation applied), at most
`WIDTH` pixels wide, JPEG quality 3 on FFmpeg's 2–31 scale.

Best effort: a poster that cannot be made is no reason to fail a video, so every error is
returned as None (the video is published without one).
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)

NAME = "poster.jpg"
WIDTH = 640  # a library grid's tile at 2x; small enough to load a page of them quickly
_DARK = 40  # mean luma (0–255) at or below which a frame counts as black
_FLAT = 12  # luma spread below which a frame is one colour (a title card fade, a test bar)
_LOOK = 5.0  # seconds of frames looked at from each starting point
_STARTS = (0.10, 0.25, 0.50, 0.0)  # shares of the duration tried in turn


def make_poster(src: Path, duration: float, rotation: int, dest: Path) -> bool:
    """Write the poster of `src` to `dest`; False (and nothing written) if it cannot."""
    try:
        frame = _choose(src, duration)
        if frame is None:
            return False
        dest.write_bytes(_jpeg(frame, rotation))
        return True
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.info("no poster for %s: %s", src.name, exc)
        dest.unlink(missing_ok=True)
        return False


def _choose(src: Path, duration: float) -> av.VideoFrame | None:
    last = None
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for share in _STARTS:
            at = duration * share
            if at > 0 and stream.time_base:
                container.seek(int(at / stream.time_base), stream=stream)
            else:
                container.seek(0)
            for frame in container.decode(stream):
                when = frame.time if frame.time is not None else at
                if when < at:
                    continue  # decoding from the keyframe before the point asked for
                last = frame
                if _lively(frame):
                    return frame
                if when > at + _LOOK:
                    break
    return last


def _lively(frame: av.VideoFrame) -> bool:
    """Not black and not one flat colour, judged on a 64×36 grey thumbnail."""
    small = frame.reformat(width=64, height=36, format="gray")
    plane = small.planes[0]
    data = bytes(plane)
    values = [
        b for row in range(36) for b in data[row * plane.line_size : row * plane.line_size + 64]
    ]
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return mean > _DARK and spread > _FLAT


def _jpeg(frame: av.VideoFrame, rotation: int) -> bytes:
    graph = av.filter.Graph()
    source = graph.add_buffer(
        width=frame.width,
        height=frame.height,
        format=frame.format,
        time_base=Fraction(1, 25),
    )
    chain = [source]
    upright = {90: ["transpose=clock"], 180: ["hflip", "vflip"], 270: ["transpose=cclock"]}
    for step in upright.get(rotation % 360, []):
        name, _, args = step.partition("=")
        chain.append(graph.add(name, args or None))
    chain.append(graph.add("scale", f"'min({WIDTH},iw)':-2"))
    chain.append(graph.add("format", "yuvj420p"))
    chain.append(graph.add("buffersink"))
    graph.link_nodes(*chain).configure()
    frame.pts = None
    graph.push(frame)
    scaled = graph.pull()
    assert isinstance(scaled, av.VideoFrame)
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = scaled.width, scaled.height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"qmin": "3", "qmax": "3"}
    packets = [*encoder.encode(scaled), *encoder.encode(None)]
    return b"".join(bytes(p) for p in packets)
