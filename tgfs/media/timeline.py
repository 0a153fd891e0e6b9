"""Timestamp repair for formats whose clock may jump (MPEG-TS/PS)."""

from __future__ import annotations

from fractions import Fraction

import av


class Timeline:
    """Timestamp discontinuities in MPEG-TS/PS (recordings cut and joined with `cat`, a
    tuner that reset its clock): a jump back, or far ahead, is closed up by shifting every
    later packet of every stream by one offset, so the content keeps its real length. The
    ffmpeg CLI does the same for these formats; without it the muxer sees DTS going back.
    """

    BACK = Fraction(1, 10)  # s: a step back this large is a new clock, not jitter
    AHEAD = Fraction(10)  # s: a gap this large is a new clock, not missing data

    def __init__(self) -> None:
        self.offset = Fraction(0)  # s, added to every timestamp from here on
        self.last: dict[int, Fraction] = {}  # stream index → last end time (s, shifted)

    def fix(self, packet: av.Packet) -> None:
        stamp = packet.dts if packet.dts is not None else packet.pts
        if stamp is None or packet.time_base is None:
            return
        tb = packet.time_base
        at = stamp * tb + self.offset
        last = self.last.get(packet.stream.index)
        if last is not None and (at < last - self.BACK or at > last + self.AHEAD):
            self.offset += last - at
            at = last
        shift = round(self.offset / tb)
        if shift:
            if packet.dts is not None:
                packet.dts += shift
            if packet.pts is not None:
                packet.pts += shift
        self.last[packet.stream.index] = at + (packet.duration or 0) * tb
