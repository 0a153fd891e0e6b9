"""One ordinary MP4 file from a video's HLS renditions (the issue "every video also as one
ordinary MP4 file"): the init segments merged into one `moov` with a track per rendition,
and the renditions' segments after it, whole, with a few words rewritten.

A rendition is fragmented MP4 already: an init segment (`ftyp`, `moov` with empty sample
tables and `mvex`) and segments (`styp`, `sidx` per track, then `moof` + `mdat` pairs).
So a file is: `ftyp`, a merged `moov`, a `sidx` for the video track, then every segment in
decode-time order across tracks. Nothing is re-encoded or re-stored, and every segment
keeps its size, so the file's size and where each segment sits in it follow from the
catalog's sizes alone (no segment is read to answer `stat`), and a file offset maps to a
stored segment's offset with a handful of patched bytes:

- in the `moov`: each `tkhd`'s and `trex`'s track id becomes the track's new id, the
  durations (`mvhd`, `tkhd`, `mdhd`, and `mehd`, added) become the video's, and `mvhd`'s
  next track id follows the last track;
- in each segment: its `styp` and `sidx` boxes (which describe the segment as a file of
  its own) become one `free` box of the same size (its first 8 bytes rewritten); each
  `moof`'s `mfhd` sequence number counts the file's fragments in order, and each `tfhd`'s
  track id becomes the new one.

Data offsets stay right: FFmpeg's fragments address their samples from their own `moof`
(`default-base-is-moof`); a fragment that gives an absolute base data offset is refused
(FormatError), since moving it would break it.

Boxes are read and patched here by hand rather than with a box library: only a dozen
fixed-position fields are touched, and every other byte must stay exactly as stored.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

_CONTAINERS = {b"moov", b"trak", b"mdia", b"mvex", b"moof", b"traf"}
_BASE_DATA_OFFSET_PRESENT = 0x000001  # tfhd flag: an absolute base offset (refused)

Buffer = bytes | bytearray
P = ParamSpec("P")
R = TypeVar("R")


class FormatError(ValueError):
    """The bytes are not fragmented MP4 this module can merge."""


def _checked(function: Callable[P, R]) -> Callable[P, R]:
    """A box shorter than the fields read from it is a FormatError, not a struct.error."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except (struct.error, IndexError) as error:
            raise FormatError(f"a box too short for its fields: {error}") from None

    return wrapper


@dataclasses.dataclass(frozen=True)
class Box:
    type: bytes
    start: int  # offset of its header in the buffer
    header: int  # header length (8, or 16 with a 64-bit size)
    size: int  # whole box, header included

    @property
    def body(self) -> int:
        return self.start + self.header

    @property
    def end(self) -> int:
        return self.start + self.size


def boxes(data: Buffer, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The boxes at one level of `data[start:end]`."""
    end = len(data) if end is None else end
    at = start
    while at < end:
        if end - at < 8:
            raise FormatError(f"a box header cut short at {at}")
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            if end - at < 16:
                raise FormatError(f"a 64-bit box header cut short at {at}")
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:  # to the end
            size = end - at
        if size < header or at + size > end:
            raise FormatError(f"box {kind!r} at {at} claims {size} bytes, {end - at} are left")
        yield Box(kind, at, header, size)
        at += size


def child(data: Buffer, parent: Box, kind: bytes) -> Box:
    for box in boxes(data, parent.body, parent.end):
        if box.type == kind:
            return box
    raise FormatError(f"no {kind.decode()} in {parent.type.decode()}")


def children(data: Buffer, parent: Box, kind: bytes) -> list[Box]:
    return [b for b in boxes(data, parent.body, parent.end) if b.type == kind]


def top(data: Buffer, kind: bytes) -> Box:
    for box in boxes(data):
        if box.type == kind:
            return box
    raise FormatError(f"no top-level {kind.decode()}")


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _version(data: Buffer, box: Box) -> int:
    return data[box.body]


@dataclasses.dataclass(frozen=True)
class Rendition:
    """One rendition as the merge sees it: its init segment, and the new track id of each
    of its tracks (in the order of its `trak` boxes)."""

    init: bytes
    track_ids: tuple[int, ...]


@_checked
def timescale(init: bytes) -> int:
    """The movie timescale of an init segment (mvhd)."""
    mvhd = child(init, top(init, b"moov"), b"mvhd")
    offset = mvhd.body + 4 + (16 if _version(init, mvhd) == 1 else 8)
    return struct.unpack_from(">I", init, offset)[0]


@_checked
def media_timescale(init: bytes) -> int:
    """The timescale of an init segment's first track (its mdhd): tfdt times and sidx
    durations of that track count in it."""
    trak = child(init, top(init, b"moov"), b"trak")
    mdhd = child(init, child(init, trak, b"mdia"), b"mdhd")
    at = mdhd.body + 4 + (16 if _version(init, mdhd) == 1 else 8)
    return struct.unpack_from(">I", init, at)[0]


def _set_mvhd(buf: bytearray, box: Box, duration: int, next_track: int) -> None:
    v1 = _version(buf, box) == 1
    at = box.body + 4 + (16 if v1 else 8) + 4  # version/flags, times, timescale
    struct.pack_into(">Q" if v1 else ">I", buf, at, duration)
    struct.pack_into(">I", buf, box.end - 4, next_track)  # next_track_ID ends the box


def _set_tkhd(buf: bytearray, box: Box, track_id: int, duration: int) -> None:
    v1 = _version(buf, box) == 1
    at = box.body + 4 + (16 if v1 else 8)  # version/flags, creation and modification
    struct.pack_into(">I", buf, at, track_id)
    struct.pack_into(">Q" if v1 else ">I", buf, at + 8, duration)  # after a reserved word


def _set_mdhd(buf: bytearray, box: Box, seconds: float) -> None:
    v1 = _version(buf, box) == 1
    at = box.body + 4 + (16 if v1 else 8)
    (scale,) = struct.unpack_from(">I", buf, at)
    struct.pack_into(">Q" if v1 else ">I", buf, at + 4, round(seconds * scale))


@_checked
def merged_header(renditions: list[Rendition], seconds: float) -> bytes:
    """`ftyp` and one `moov` for the whole file: the first rendition's `ftyp`, `mvhd` and
    movie timescale, every rendition's tracks with their new ids, durations of `seconds`,
    and an `mvex` with an `mehd` (the whole duration) and every track's `trex`."""
    first = renditions[0].init
    ftyp = top(first, b"ftyp")
    moov = top(first, b"moov")
    movie_scale = timescale(first)
    movie_duration = round(seconds * movie_scale)
    last_id = max(i for r in renditions for i in r.track_ids)
    found_mvhd = child(first, moov, b"mvhd")
    mvhd = bytearray(first[found_mvhd.start : found_mvhd.end])
    _set_mvhd(mvhd, Box(b"mvhd", 0, found_mvhd.header, len(mvhd)), movie_duration, last_id + 1)
    traks, trexes = [], []
    for rendition in renditions:
        init = rendition.init
        own = top(init, b"moov")
        found = children(init, own, b"trak")
        if len(found) != len(rendition.track_ids):
            raise FormatError(f"{len(found)} tracks in an init segment, expected a new id each")
        old_ids = {}
        for trak, new_id in zip(found, rendition.track_ids, strict=True):
            buf = bytearray(init[trak.start : trak.end])
            local = Box(b"trak", 0, trak.header, trak.size)
            tkhd = child(buf, local, b"tkhd")
            v1 = _version(buf, tkhd) == 1
            (old_id,) = struct.unpack_from(">I", buf, tkhd.body + 4 + (16 if v1 else 8))
            old_ids[old_id] = new_id
            _set_tkhd(buf, tkhd, new_id, movie_duration)
            _set_mdhd(buf, child(buf, child(buf, local, b"mdia"), b"mdhd"), seconds)
            traks.append(bytes(buf))
        for trex in children(init, child(init, own, b"mvex"), b"trex"):
            buf = bytearray(init[trex.start : trex.end])
            (old_id,) = struct.unpack_from(">I", buf, trex.header + 4)
            if old_id not in old_ids:
                raise FormatError(f"a trex for track {old_id}, which has no trak")
            struct.pack_into(">I", buf, trex.header + 4, old_ids[old_id])
            trexes.append(bytes(buf))
    # mehd version 1: a 64-bit fragment duration, in the movie timescale.
    mehd = _box(b"mehd", struct.pack(">IQ", 1 << 24, movie_duration))
    mvex = _box(b"mvex", mehd, *trexes)
    return first[ftyp.start : ftyp.end] + _box(b"moov", bytes(mvhd), *traks, mvex)


@dataclasses.dataclass(frozen=True)
class Patch:
    """Bytes to write at `offset` (within the segment) when serving it."""

    offset: int
    value: bytes


@dataclasses.dataclass(frozen=True)
class Fragments:
    """Where a segment's fragments begin, and the positions of the words a file rewrites:
    each `moof`'s sequence number, each `tfhd`'s track id (with the id found there)."""

    skip: int  # bytes before the first moof (its styp and sidx: a free box in a file)
    sequences: tuple[int, ...]  # offsets of mfhd sequence numbers, one per moof
    track_ids: tuple[tuple[int, int], ...]  # (offset, old track id) of each tfhd's id

    def patches(self, first_sequence: int, new_ids: dict[int, int]) -> list[Patch]:
        """The patches for this segment placed in a file: its fragments numbered from
        `first_sequence`, its tracks renumbered by `new_ids` (old id → new id)."""
        out = [Patch(0, struct.pack(">I4s", self.skip, b"free"))] if self.skip else []
        out += [
            Patch(at, struct.pack(">I", first_sequence + n)) for n, at in enumerate(self.sequences)
        ]
        out += [Patch(at, struct.pack(">I", new_ids[old])) for at, old in self.track_ids]
        return out


@_checked
def fragments(segment: bytes) -> Fragments:
    """A segment's layout, from its bytes."""
    skip = None
    sequences, track_ids = [], []
    for box in boxes(segment):
        if box.type == b"moof":
            skip = box.start if skip is None else skip
            sequences.append(child(segment, box, b"mfhd").body + 4)
            for traf in children(segment, box, b"traf"):
                tfhd = child(segment, traf, b"tfhd")
                flags = int.from_bytes(segment[tfhd.body + 1 : tfhd.body + 4], "big")
                if flags & _BASE_DATA_OFFSET_PRESENT:
                    raise FormatError("a fragment with an absolute base data offset")
                (old,) = struct.unpack_from(">I", segment, tfhd.body + 4)
                track_ids.append((tfhd.body + 4, old))
        elif box.type not in (b"styp", b"sidx", b"mdat", b"free", b"prft", b"emsg"):
            raise FormatError(f"unexpected {box.type!r} in a segment")
        elif skip is not None and box.type not in (b"mdat", b"free"):
            raise FormatError(f"{box.type.decode()} between fragments")
    if skip is None:
        raise FormatError("a segment without a moof")
    return Fragments(skip, tuple(sequences), tuple(track_ids))


def apply(segment: bytes, patches: list[Patch]) -> bytes:
    """The segment as the file holds it: patched, the same size."""
    buf = bytearray(segment)
    for patch in patches:
        buf[patch.offset : patch.offset + len(patch.value)] = patch.value
    return bytes(buf)


def sidx_size(count: int) -> int:
    """The bytes of a segment_index() of `count` subsegments (known before the offsets it
    holds are, since it comes before them)."""
    return 8 + 4 + 4 + 4 + 8 + 8 + 4 + 12 * count


def segment_index(
    track_id: int, scale: int, first_time: int, subsegments: list[tuple[int, int]]
) -> bytes:
    """A `sidx` for the front of the file: the video track's segments as subsegments,
    each (bytes, duration in `scale` ticks), the first starting right after the box. A
    subsegment runs from one of the track's segments to its next, so it holds the other
    tracks' segments between them too (allowed: it is the track's time span), and begins
    with the segment's `free` box, then its `moof`. FFmpeg, which Jellyfin, Plex and Kodi
    play files with, seeks by it in one step; without it, FFmpeg walks the fragments one
    by one (an `mfra` at the end would not help: FFmpeg reads one only when told)."""
    body = struct.pack(">IIIQQHH", 1 << 24, track_id, scale, first_time, 0, 0, len(subsegments))
    for size, duration in subsegments:
        if size >= 1 << 31:
            raise FormatError(f"a subsegment of {size} bytes: sidx holds 31 bits")
        body += struct.pack(">III", size, duration, 0x90000000)  # starts with a SAP of type 1
    return _box(b"sidx", body)
