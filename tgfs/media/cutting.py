"""How a rendition is encoded and where its segments are cut: the options a job gives the
media step, and the plan of segment boundaries both ways (copy, transcode) follow."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from fractions import Fraction

# AAC-LC at 128 kbit/s stereo is transparent enough for film sound and what Apple's HLS
# authoring spec suggests for stereo.
AUDIO_BITRATE = 128_000
AUDIO_RATES = (44100, 48000)  # keep these source rates; resample anything else to 48 kHz

ProgressFn = Callable[[float], None]  # media seconds done so far

# A player starts only once it holds the whole first segment, and the store delivers a few
# MB/s per bot after a few hundred ms: 2 s at 8 Mbit/s is 2 MB, 0.5 s of transfer striped
# over two bots where a 6 s segment takes 1.5 s over three. The next segments must then
# arrive while the ones before play, also from one bot at 2 MB/s for 1 MB/s of video (a
# segment is fetched once the one before is in): a second 2 s segment (1.3 s to fetch, 2 s
# to play), then each twice as long up to TGFS_SEGMENT_SECONDS (4 s: 2.3 s for 2 s + the
# time saved so far; 6 s: 3.3 s for 4 s + …). Going 2, 4 at once stalled that player in
# the benchmark. The cost is two more segments (messages) per rendition: 2, 2, 4, 6 s.
FIRST_SEGMENT = Fraction(2)
# The muxer's hls_time when we decide the cuts: it cuts at the first keyframe whose time is
# at least hls_time × (segments so far), which is every keyframe we let through.
CUT_AT_EVERY_KEYFRAME = "0.001"


@dataclasses.dataclass
class EncodeOptions:
    segment_seconds: float = 6.0
    x264_preset: str = "veryfast"
    x264_crf: int = 21
    encoder: str = "libx264"  # or h264_nvenc / h264_qsv once detected working
    max_segment_bytes: int = 0  # no segment file above this (TELEGRAM_MAX_FILE_SIZE); 0 = any
    # Facts about the source (from the probe) that a transcode must correct:
    rotation: int = 0  # degrees counter-clockwise: turn the picture upright
    deinterlace: bool = False
    # The source repeats its last picture up to the container's end (AVI "repeat" entries:
    # index entries without data, which the demuxer skips): hold it that long.
    hold_to_end: bool = False


def peak_video_rate(opts: EncodeOptions) -> int | None:
    """The VBV max rate (bits/s) that keeps every segment under `max_segment_bytes`.

    With a VBV buffer of one segment's worth at `maxrate`, the bits in any span of S
    seconds are at most maxrate·S + bufsize = 2·maxrate·S. Leave 10 % for the container
    and room for the audio, and solve for maxrate.
    """
    if not opts.max_segment_bytes:
        return None
    seconds = opts.segment_seconds
    budget = 0.9 * opts.max_segment_bytes * 8 - 1.1 * AUDIO_BITRATE * seconds
    return max(100_000, int(budget / (2 * seconds)))


def cut_plan(segment: float, after: list[float] | None = None) -> Iterator[Fraction]:
    """Planned segment boundaries (seconds from the start, the start included): two of
    `FIRST_SEGMENT`, then doubling up to `segment` (2, 2, 4, 6, 6 … for 6), or the given
    cut times (those of a rendition made before, so that this one lines up with it)."""
    yield Fraction(0)
    if after is not None:
        yield from (Fraction(t).limit_denominator(100000) for t in after)
        return
    length = Fraction(segment).limit_denominator(1000)
    step, at = min(FIRST_SEGMENT, length), Fraction(0)
    for n in itertools.count():
        at += step
        yield at
        if n >= 1:  # two short ones, then doubling
            step = min(step * 2, length)


class Cuts:
    """Decides, frame by frame in time order, which frames start a segment: the first at
    or after each planned boundary. Boundaries passed while waiting for a keyframe are
    skipped, so a late cut (copy mode, long GOPs) is not followed by a short segment."""

    def __init__(self, plan: Iterator[Fraction], slack: Fraction = Fraction(0)) -> None:
        self.plan = plan
        self.slack = slack  # a frame this close before a boundary is on it
        self.next: Fraction | None = next(plan)

    def due(self, elapsed: Fraction) -> bool:
        if self.next is None or elapsed < self.next - self.slack:
            return False
        while self.next is not None and self.next - self.slack <= elapsed:
            self.next = next(self.plan, None)
        return True
