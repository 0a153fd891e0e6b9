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

import bisect
import dataclasses
import functools
import itertools
import re
import struct
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

_CONTAINERS = {b"moov", b"trak", b"mdia", b"mvex", b"moof", b"traf"}
_BASE_DATA_OFFSET_PRESENT = 0x000001  # tfhd flag: an absolute base offset (refused)

Buffer = bytes | bytearray | memoryview
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


def header(head: Buffer, at: int, left: int) -> Box:
    """The box whose header begins `head` (its first 8 or 16 bytes, or more), found at `at`
    with `left` bytes from there to the end of its parent."""
    if left < 8 or len(head) < 8:
        raise FormatError(f"a box header cut short at {at}")
    size, kind = struct.unpack_from(">I4s", head, 0)
    length = 8
    if size == 1:
        if left < 16 or len(head) < 16:
            raise FormatError(f"a 64-bit box header cut short at {at}")
        (size,) = struct.unpack_from(">Q", head, 8)
        length = 16
    elif size == 0:  # to the end
        size = left
    if size < length or size > left:
        raise FormatError(f"box {kind!r} at {at} claims {size} bytes, {left} are left")
    return Box(kind, at, length, size)


def boxes(data: Buffer, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The boxes at one level of `data[start:end]`."""
    end = len(data) if end is None else end
    view = memoryview(data)
    at = start
    while at < end:
        box = header(view[at : at + 16], at, end - at)
        yield box
        at = box.end


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
    language: str | None = None  # for its tracks' mdhd (the init segment may say "und")


@_checked
def timescale(init: bytes) -> int:
    """The movie timescale of an init segment (mvhd)."""
    mvhd = child(init, top(init, b"moov"), b"mvhd")
    offset = mvhd.body + 4 + (16 if _version(init, mvhd) == 1 else 8)
    return struct.unpack_from(">I", init, offset)[0]


@_checked
def media_timescales(init: Buffer) -> tuple[int, ...]:
    """The timescale of each of an init segment's tracks (their mdhd), in the order of its
    `trak` boxes: tfdt times and sidx durations of a track count in it."""
    found = []
    for trak in children(init, top(init, b"moov"), b"trak"):
        mdhd = child(init, child(init, trak, b"mdia"), b"mdhd")
        at = mdhd.body + 4 + (16 if _version(init, mdhd) == 1 else 8)
        found.append(struct.unpack_from(">I", init, at)[0])
    return tuple(found)


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


def _set_mdhd(buf: bytearray, box: Box, seconds: float, language: str | None) -> None:
    v1 = _version(buf, box) == 1
    at = box.body + 4 + (16 if v1 else 8)
    (scale,) = struct.unpack_from(">I", buf, at)
    struct.pack_into(">Q" if v1 else ">I", buf, at + 4, round(seconds * scale))
    if language is not None and re.fullmatch("[a-z]{3}", language):
        # ISO 639-2/T, three letters of five bits each (their code minus 0x60). Another
        # form of tag ("en", "en-US") stays as the init segment has it ("und", mostly).
        packed = 0
        for letter in language:
            packed = packed << 5 | (ord(letter) - 0x60)
        struct.pack_into(">H", buf, at + 4 + (8 if v1 else 4), packed)


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
            mdhd = child(buf, child(buf, local, b"mdia"), b"mdhd")
            _set_mdhd(buf, mdhd, seconds, rendition.language)
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


class NeedBytes(Exception):
    """`fragments_of` needs bytes of the segment that its reader does not hold: the caller
    fetches [offset, offset+length) and asks again (a reader without I/O of its own)."""

    def __init__(self, offset: int, length: int) -> None:
        super().__init__(offset, length)
        self.offset, self.length = offset, length


Reader = Callable[[int, int], Buffer]  # (offset, length) → those bytes, or NeedBytes


@_checked
def fragments_of(read: Reader, size: int) -> Fragments:
    """A segment's layout, from the headers of its top-level boxes and its `moof`s alone:
    a segment of megabytes is read for a few kilobytes (its media data is skipped)."""
    skip = None
    sequences, track_ids = [], []
    at = 0
    while at < size:
        box = header(read(at, min(16, size - at)), at, size - at)
        if box.type == b"moof":
            skip = box.start if skip is None else skip
            moof = read(at, box.size)
            local = Box(b"moof", 0, box.header, box.size)
            sequences.append(at + child(moof, local, b"mfhd").body + 4)
            for traf in children(moof, local, b"traf"):
                tfhd = child(moof, traf, b"tfhd")
                flags = int.from_bytes(moof[tfhd.body + 1 : tfhd.body + 4], "big")
                if flags & _BASE_DATA_OFFSET_PRESENT:
                    raise FormatError("a fragment with an absolute base data offset")
                (old,) = struct.unpack_from(">I", moof, tfhd.body + 4)
                track_ids.append((at + tfhd.body + 4, old))
        elif box.type not in (b"styp", b"sidx", b"mdat", b"free", b"prft", b"emsg"):
            raise FormatError(f"unexpected {box.type!r} in a segment")
        elif skip is not None and box.type not in (b"mdat", b"free"):
            raise FormatError(f"{box.type.decode()} between fragments")
        at = box.end
    if skip is None:
        raise FormatError("a segment without a moof")
    return Fragments(skip, tuple(sequences), tuple(track_ids))


def fragments(segment: Buffer) -> Fragments:
    """A segment's layout, from its bytes."""
    return fragments_of(lambda offset, length: segment[offset : offset + length], len(segment))


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
    track_id: int,
    scale: int,
    first_time: int,
    subsegments: list[tuple[int, int]],
    first_offset: int = 0,
) -> bytes:
    """A `sidx` for the front of the file: a track's segments as subsegments, each
    (bytes, duration in `scale` ticks), the first `first_offset` bytes after the box (the
    end of the last sidx). A subsegment runs from one of the track's segments to its
    next, so it holds the other tracks' segments between them too (allowed: it is the
    track's time span), and begins with the segment's `free` box, then its `moof`. FFmpeg,
    which Jellyfin, Plex and Kodi play files with, seeks by them in one step; without
    them, FFmpeg walks the fragments one by one (an `mfra` at the end would not help: FFmpeg
    reads one only when told), and a track without one of its own sends FFmpeg's seek to
    the wrong end of the file."""
    body = struct.pack(
        ">IIIQQHH", 1 << 24, track_id, scale, first_time, first_offset, 0, len(subsegments)
    )
    for size, duration in subsegments:
        if size >= 1 << 31:
            raise FormatError(f"a subsegment of {size} bytes: sidx holds 31 bits")
        body += struct.pack(">III", size, duration, 0x90000000)  # starts with a SAP of type 1
    return _box(b"sidx", body)


@_checked
def track_ids(init: Buffer) -> tuple[int, ...]:
    """The track ids of an init segment's tracks, in the order of its `trak` boxes."""
    found = []
    for trak in children(init, top(init, b"moov"), b"trak"):
        tkhd = child(init, trak, b"tkhd")
        at = tkhd.body + 4 + (16 if _version(init, tkhd) == 1 else 8)
        found.append(struct.unpack_from(">I", init, at)[0])
    return tuple(found)


# Sequence numbers a segment's fragments may take in a file: its first fragment's number is
# 1 + its place in the file times this. The numbers then rise through the file, as ISO BMFF
# asks, and follow from a segment's place alone (not from how many fragments every segment
# before it holds, which only their bytes tell). tgfs's segments hold one fragment each;
# a 10-hour film with 2 s segments and four audio tracks stays below 2**32.
FRAGMENTS_PER_SEGMENT = 1024


@dataclasses.dataclass(frozen=True)
class Track:
    """A rendition as the layout sees it: its init segment, and (bytes, seconds) of each of
    its segments in play order (the catalog's sizes and EXTINF durations)."""

    init: bytes
    segments: tuple[tuple[int, float], ...]
    language: str | None = None  # as the catalog has it (the master playlist's LANGUAGE)


@dataclasses.dataclass(frozen=True)
class Piece:
    """One segment placed in the file."""

    offset: int  # where it begins in the file
    track: int  # which of the tracks laid out
    seq: int  # which of that track's segments
    size: int
    first_sequence: int  # the sequence number of its first fragment


@dataclasses.dataclass(frozen=True)
class Layout:
    """A whole file: its header (`ftyp`, `moov`, `sidx`), then its pieces, back to back."""

    header: bytes
    pieces: tuple[Piece, ...]
    new_ids: tuple[dict[int, int], ...]  # per track: its own track ids → the file's
    size: int

    def patches(self, piece: Piece, found: Fragments) -> list[Patch]:
        """What to rewrite in `piece`'s bytes (`found`: its layout) as the file holds it."""
        return found.patches(piece.first_sequence, self.new_ids[piece.track])

    @functools.cached_property
    def _starts(self) -> list[int]:
        return [p.offset for p in self.pieces]

    def first_piece(self, offset: int) -> int:
        """The index of the piece that holds file offset `offset` (or the first piece, for
        an offset in the header)."""
        return max(0, bisect.bisect_right(self._starts, offset) - 1)


@_checked
def layout(tracks: list[Track], seconds: float, start: float) -> Layout:
    """The file made of `tracks` (the first one a video rendition), `seconds` long, its
    first picture at `start` s: segments in the order they play (by start time; at equal
    times in the order of `tracks`), so a player reading on finds each track's next
    fragment near the others'; a `sidx` for every track at the front, as FFmpeg's own
    `global_sidx` writes them. Everything here follows from the catalog; only the patches
    inside each segment need its bytes (`fragments_of`)."""
    renditions, new_ids, next_id = [], [], 1
    for track in tracks:
        olds = track_ids(track.init)
        ids = dict(zip(olds, range(next_id, next_id + len(olds)), strict=True))
        next_id += len(olds)
        renditions.append(Rendition(track.init, tuple(ids.values()), track.language))
        new_ids.append(ids)
    moov = merged_header(renditions, seconds)
    order = []
    for n, track in enumerate(tracks):
        begins = 0.0
        for seq, (_, duration) in enumerate(track.segments):
            order.append((begins, n, seq))
            begins += duration
    order.sort()
    counts = [len(t.segments) for t in tracks for _ in track_ids(t.init)]
    at = body = len(moov) + sum(sidx_size(count) for count in counts)
    pieces = []
    for place, (_, n, seq) in enumerate(order):
        size = tracks[n].segments[seq][0]
        pieces.append(Piece(at, n, seq, size, 1 + place * FRAGMENTS_PER_SEGMENT))
        at += size
    indexes, written = [], len(moov)
    for n, track in enumerate(tracks):
        # A track's subsegments: the first from the end of the sidx boxes, then one from
        # each of its segments on (each holds the other renditions' segments up to its next).
        starts = [p.offset for p in pieces if p.track == n]
        bounds = [body, *starts[1:], at]
        sizes = [b - a for a, b in itertools.pairwise(bounds)]
        for track_id, scale in zip(new_ids[n].values(), media_timescales(track.init), strict=True):
            ticks, elapsed = [], 0.0
            for _, duration in track.segments:  # rounded as a sum: never drifts
                ticks.append(round((elapsed + duration) * scale) - round(elapsed * scale))
                elapsed += duration
            written += sidx_size(len(sizes))
            index = segment_index(
                track_id,
                scale,
                max(0, round(start * scale)),
                list(zip(sizes, ticks, strict=True)),
                first_offset=body - written,
            )
            indexes.append(index)
    return Layout(moov + b"".join(indexes), tuple(pieces), tuple(new_ids), at)
