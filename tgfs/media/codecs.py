"""RFC 6381 CODECS strings, computed from the bytes of the stream's own configuration.

Players use CODECS to decide whether they can play a variant before fetching it, so a wrong
value (a hard-coded "avc1.640028" on a High 4:4:4 stream) makes them pick streams they can't
decode. We read the decoder configuration record that the muxer wrote into the init segment
(avcC, hvcC, AudioSpecificConfig) and spell it out per the ISO/IEC 14496-15 rules.
"""

from __future__ import annotations


class CodecStringError(ValueError):
    """The configuration record is missing or malformed."""


def avc1(avcc: bytes) -> str:
    """`avc1.PPCCLL`: profile_idc, constraint flags, level_idc (avcC bytes 1–3)."""
    if len(avcc) < 4 or avcc[0] != 1:
        raise CodecStringError("avcC record missing or not version 1")
    return f"avc1.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"


def hvc1(hvcc: bytes, tag: str = "hvc1") -> str:
    """`hvc1.[A-C]?P.C.TL.B…` from an hvcC record (ISO/IEC 14496-15 annex E).

    profile space (as a letter), profile idc, the 32 compatibility flags bit-reversed in hex,
    tier (L/H) with level idc, then the six constraint bytes without trailing zero bytes.
    """
    if len(hvcc) < 13 or hvcc[0] != 1:
        raise CodecStringError("hvcC record missing or not version 1")
    space = hvcc[1] >> 6
    tier = (hvcc[1] >> 5) & 1
    profile = hvcc[1] & 0x1F
    compat = int.from_bytes(hvcc[2:6], "big")
    reversed_compat = int(f"{compat:032b}"[::-1], 2)
    constraints = bytearray(hvcc[6:12])
    while constraints and constraints[-1] == 0:
        constraints.pop()
    fields = [
        tag,
        ("", "A", "B", "C")[space] + str(profile),
        f"{reversed_compat:X}",
        ("H" if tier else "L") + str(hvcc[12]),
        *(f"{b:02X}" for b in constraints),
    ]
    return ".".join(fields)


def mp4a(audio_specific_config: bytes) -> str:
    """`mp4a.40.N`: N is the MPEG-4 audio object type (2 = AAC-LC, 5 = HE-AAC …)."""
    if not audio_specific_config:
        raise CodecStringError("AudioSpecificConfig missing")
    object_type = audio_specific_config[0] >> 3
    if object_type == 31:  # escape: 6 more bits follow
        if len(audio_specific_config) < 2:
            raise CodecStringError("AudioSpecificConfig truncated")
        bits = int.from_bytes(audio_specific_config[:2], "big")
        object_type = 32 + ((bits >> 5) & 0x3F)
    return f"mp4a.40.{object_type}"


def for_stream(codec_name: str, extradata: bytes | None, codec_tag: str = "") -> str:
    """The CODECS entry for one stream of an fMP4 init segment."""
    data = bytes(extradata or b"")
    if codec_name == "h264":
        return avc1(data)
    if codec_name == "hevc":
        return hvc1(data, "hev1" if codec_tag == "hev1" else "hvc1")
    if codec_name == "aac":
        return mp4a(data)
    if codec_name == "mp3":
        return "mp4a.40.34"
    raise CodecStringError(f"no CODECS rule for {codec_name}")
