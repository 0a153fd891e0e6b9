"""What happens to one input stream's packets on their way to the outputs: the path classes.

`hls._pump` demuxes a source once and hands each packet to its stream's `StreamPath`: copy
the video (cutting only at planned keyframes), decode once and fan out to one encoder per
rendition, copy or encode the audio (fanned out to every rendition too), or collect text
subtitle cues. Each path flushes its decoders and encoders into its outputs at the end.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Protocol, cast

import av
from av.video.frame import PictureType

from tgfs.media import encoders, subtitles
from tgfs.media.cutting import (
    AUDIO_BITRATE,
    AUDIO_RATES,
    Cuts,
    EncodeOptions,
    cut_plan,
    peak_video_rate,
)


class StreamPath(Protocol):
    """What `_pump` does with one input stream's packets: each path class (copy or encode,
    video or audio, one output or a fan-out to several, subtitle cues) is one of these."""

    def feed(self, packet: av.Packet) -> None:
        """One packet of the stream, in demux order."""

    def flush(self) -> None:
        """The stream ended: drain decoders and encoders into the outputs."""


Paths = dict[int, StreamPath]  # input stream index → what its packets go through


class Output:
    """One output stream and the muxer. Every packet goes through `mux`, which keeps DTS
    strictly increasing: muxers reject anything else, and damaged files (or encoders fed
    their damaged timestamps) produce it. Offending packets are bumped forward a tick."""

    def __init__(self, out, stream) -> None:
        self.out = out
        self.stream = stream
        self.last_dts: int | None = None

    def mux(self, packet: av.Packet) -> None:
        packet.stream = self.stream
        if packet.dts is not None:
            if self.last_dts is not None and packet.dts <= self.last_dts:
                packet.dts = self.last_dts + 1
                if packet.pts is not None and packet.pts < packet.dts:
                    packet.pts = packet.dts
            self.last_dts = packet.dts
        self.out.mux(packet)


class CopyVideo:
    def __init__(self, vin, out, cuts: Cuts) -> None:
        stream = out.add_stream_from_template(vin)
        if vin.codec_context.name == "hevc":
            # Apple players require hvc1 (parameter sets in the sample entry); the template
            # leaves the tag empty and the muxer would choose hev1.
            stream.codec_tag = "hvc1"
        self.output = Output(out, stream)
        self.size = (vin.codec_context.width, vin.codec_context.height)
        self.rate = vin.average_rate or vin.guessed_rate
        self.cuts = cuts
        self.start: int | None = None

    def feed(self, packet: av.Packet) -> None:
        # Mux every packet with data; do not drop packets whose DTS is unset (some MKV
        # keyframes have none) — the muxer derives it.
        if packet.size == 0:
            return
        # The muxer cuts at every keyframe with a PTS (see CUT_AT_EVERY_KEYFRAME): let
        # through only the flags of the keyframes that start a segment.
        if packet.is_keyframe and packet.pts is not None:
            if self.start is None:
                self.start = packet.pts
            if not self.cuts.due((packet.pts - self.start) * packet.time_base):
                packet.is_keyframe = False
        self.output.mux(packet)

    def flush(self) -> None:
        pass


def encoder_options(opts: EncodeOptions, gop: int) -> dict[str, str]:
    """Good HLS practice for each encoder: a GOP of exactly one segment, no scene-cut
    keyframes (keyframes fall only where we force them, on segment boundaries, as IDRs),
    and a VBV cap so that no segment can outgrow TELEGRAM_MAX_FILE_SIZE."""
    options = {"g": str(gop)}
    if opts.encoder == "h264_nvenc":
        options |= {
            "preset": "p4",
            "rc": "vbr",
            "cq": str(opts.x264_crf + 2),
            "no-scenecut": "1",
            "forced-idr": "1",
        }
    elif opts.encoder == "h264_qsv":
        options |= {
            "preset": "veryfast",
            "global_quality": str(opts.x264_crf + 2),
            "forced_idr": "1",
            "idr_interval": "0",
        }
    else:
        options |= {
            "preset": opts.x264_preset,
            "crf": str(opts.x264_crf),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "forced-idr": "1",
        }
    if (peak := peak_video_rate(opts)) is not None:
        options |= {"maxrate": str(peak), "bufsize": str(int(peak * opts.segment_seconds))}
    return options


class Decoder:
    """Decode (threaded) and, if needed, deinterlace and turn upright: once per video,
    however many renditions are made from it."""

    def __init__(self, vin, opts: EncodeOptions) -> None:
        vin.codec_context.thread_type = "AUTO"
        width, height = vin.codec_context.width, vin.codec_context.height
        if opts.rotation in (90, 270):
            width, height = height, width
        self.size = (width, height)
        self.filters = Filters(vin, opts) if opts.rotation or opts.deinterlace else None

    def frames(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        """Frames for a packet; None at the end flushes the filters."""
        if packet is None:
            return self.filters.run(None) if self.filters else []
        decoded = packet.decode()
        if self.filters is None:
            return decoded
        return [out for frame in decoded for out in self.filters.run(frame)]


class VideoFanout:
    """One decoder feeding one encoder per rendition.

    A source may hold its last picture for a while (a title card at the end, a capture
    that stopped changing): the last frame's duration says so, and players show it that
    long. Encoded as one frame at the output rate it would be gone after 1/25 s, and the
    video would end early (and look truncated), so it is repeated at the output rate up
    to where it ends — never past the container's own duration. With `hold_to_end` (see
    EncodeOptions) it ends there."""

    def __init__(
        self,
        decoder: Decoder,
        encoders_: list[EncodeVideo],
        container_end: Fraction | None,
        hold_to_end: bool = False,
    ) -> None:
        self.decoder = decoder
        self.encoders = encoders_
        self.container_end = container_end  # seconds, from the container; None: unknown
        self.last: tuple[av.VideoFrame, int, Fraction] | None = None  # frame, pts, tb
        # seconds: where the last picture stops showing
        self.end = container_end if hold_to_end and container_end else Fraction(0)

    def feed(self, packet: av.Packet) -> None:
        for frame in self.decoder.frames(packet):
            self._encode(frame)

    def flush(self) -> None:
        for frame in self.decoder.frames(None):
            self._encode(frame)
        self._hold_last()
        for encoder in self.encoders:
            encoder.flush()

    def _encode(self, frame: av.VideoFrame) -> None:
        # Encoding rescales a frame's timestamp into the encoder's time base in place, so
        # each encoder gets the decoder's timestamp back (the next one would read 1/25 s
        # ticks as 1/12800 s ones and force no keyframe where it should).
        pts, time_base = frame.pts, frame.time_base
        if pts is not None and time_base is not None:
            self.last = (frame, pts, time_base)
            self.end = max(self.end, (pts + (frame.duration or 0)) * time_base)
        for encoder in self.encoders:
            frame.pts, frame.time_base = pts, time_base
            encoder.encode(frame)

    def _hold_last(self) -> None:
        if self.last is None or not self.encoders or self.container_end is None:
            return
        frame, pts, time_base = self.last
        end = min(self.end, self.container_end)
        step = 1 / Fraction(self.encoders[0].rate)  # s per output frame
        at = pts * time_base + step
        while at + step / 2 <= end:
            frame.pts, frame.time_base = round(at / time_base), time_base
            self._encode(frame)
            at += step


class EncodeVideo:
    """Scale → H.264 with an IDR exactly on every segment boundary."""

    def __init__(
        self,
        vin,
        out,
        opts: EncodeOptions,
        size: tuple[int, int],
        cuts: list[float] | None,
        longest: float,
    ) -> None:
        self.time_base = vin.time_base
        self.rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        self.size = size
        self.pix_fmt = encoders.PIX_FMT.get(opts.encoder, "yuv420p")
        # Keyframes only where we force them: the GOP limit must not come first (cuts fall
        # on frames, so one frame later than the boundary at most).
        gop = max(1, round(longest * self.rate) + 1)
        self.stream = out.add_stream(
            opts.encoder, rate=self.rate, options=encoder_options(opts, gop)
        )
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = self.pix_fmt
        # PyAV opens encoders with slice threads; x264's frame threads are what the ffmpeg
        # CLI uses and ~15 % faster at 1080p on 2 cores.
        self.stream.codec_context.thread_type = "FRAME"
        self.stream.time_base = vin.time_base
        self.output = Output(out, self.stream)
        # Cut times from a playlist are rounded: match the frame within half a frame.
        self.cuts = Cuts(
            cut_plan(opts.segment_seconds, cuts),
            Fraction(1, 2) / Fraction(self.rate) if cuts else Fraction(0),
        )
        self.last_pts: int | None = None
        self.last_slot: int | None = None  # the frame slot (pts · rate) of the last frame
        self.first_source_pts: int | None = None  # slot 0

    def encode(self, frame: av.VideoFrame) -> None:
        # The encoder counts in frames (PyAV gives it a time base of 1/rate), and so does a
        # player reading the result. Frames of a variable-frame-rate source closer than one
        # frame would share a slot, and their DTS would stand still; so would frames without
        # a timestamp, or with one going back (broken files, MPEG program streams). Each
        # such frame takes the next free slot instead: no picture is lost, and the drift
        # (a frame at most, for phone jitter) closes up at the next gap. Dropping them, as
        # `ffmpeg -fps_mode vfr` does, lost a quarter of the frames of a jittery phone clip
        # whose average rate FFmpeg misjudged.
        # Slots count from the first frame (a grid offset by half a frame would put every
        # other frame of a constant-rate source on the same slot).
        source_pts = frame.pts
        if self.first_source_pts is None and source_pts is not None:
            self.first_source_pts = source_pts
        slot = (
            math.floor(
                (source_pts - self.first_source_pts) * self.time_base * self.rate + Fraction(1, 2)
            )
            if source_pts is not None and self.first_source_pts is not None
            else None
        )
        if slot is None:
            slot = 0 if self.last_slot is None else self.last_slot + 1
        elif self.last_slot is not None and slot <= self.last_slot:
            slot = self.last_slot + 1
        self.last_slot = slot
        pts = (self.first_source_pts or 0) + round(slot / (self.rate * self.time_base))
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        self.last_pts = pts
        out = frame
        if (frame.width, frame.height) != self.size or frame.format.name != self.pix_fmt:
            out = frame.reformat(self.size[0], self.size[1], self.pix_fmt)
        out.pts = pts
        out.time_base = self.time_base
        # The muxer cuts at every keyframe: force exactly the frames that start a segment
        # to be IDRs and clear the source's frame types everywhere else (x264 would turn
        # decoded I frames into extra keyframes).
        if self.cuts.due(slot / Fraction(self.rate)):  # seconds since the first frame
            out.pict_type = PictureType.I
        else:
            out.pict_type = PictureType.NONE
        for packet in self.stream.encode(out):
            self.output.mux(packet)

    def flush(self) -> None:
        for packet in self.stream.encode(None):
            self.output.mux(packet)


# Filters that turn a picture rotated by the display matrix (degrees counter-clockwise)
# upright: the ffmpeg CLI's autorotate choices.
_TURN = {90: ["transpose=cclock"], 180: ["hflip", "vflip"], 270: ["transpose=clock"]}


class Filters:
    """Deinterlace (bwdif, one frame per frame) and turn the picture upright, with the
    same filters and angles as the ffmpeg CLI's autorotate."""

    def __init__(self, vin, opts: EncodeOptions) -> None:
        self.time_base = vin.time_base
        self.graph = av.filter.Graph()
        chain = [self.graph.add_buffer(template=vin)]
        specs = ["bwdif=mode=send_frame"] if opts.deinterlace else []
        specs += _TURN.get(opts.rotation, [])
        for spec in specs:
            name, _, args = spec.partition("=")
            chain.append(self.graph.add(name, args or None))
        chain.append(self.graph.add("buffersink"))
        for a, b in itertools.pairwise(chain):
            a.link_to(b)
        self.graph.configure()

    def run(self, frame: av.VideoFrame | None) -> list[av.VideoFrame]:
        self.graph.push(frame)
        out: list[av.VideoFrame] = []
        while True:
            try:
                filtered = cast(av.VideoFrame, self.graph.pull())
            except (av.BlockingIOError, av.EOFError):
                return out
            # Deinterlacers halve the time base; the encoder works in the stream's.
            tb = filtered.time_base
            if tb and tb != self.time_base and filtered.pts is not None:
                filtered.pts = round(filtered.pts * tb / self.time_base)
                filtered.time_base = self.time_base
            out.append(filtered)


class CopyAudio:
    def __init__(self, ain, out) -> None:
        stream = out.add_stream_from_template(ain)
        self.output = Output(out, stream)
        # ADTS AAC (from MPEG-TS or raw .aac) carries its config in every frame header and
        # has no extradata; fMP4 needs an AudioSpecificConfig instead.
        self.bsf = None
        if not ain.codec_context.extradata:
            self.bsf = av.bitstream.BitStreamFilterContext("aac_adtstoasc", ain, stream)

    def feed(self, packet: av.Packet) -> None:
        if packet.size == 0:
            return
        for p in self.bsf.filter(packet) if self.bsf else [packet]:
            self.output.mux(p)

    def flush(self) -> None:
        if self.bsf:
            for p in self.bsf.filter(None):
                self.output.mux(p)


class EncodeAudio:
    """Decode → resample to stereo float planar → AAC-LC."""

    def __init__(self, ain, out) -> None:
        rate = ain.codec_context.sample_rate
        rate = rate if rate in AUDIO_RATES else 48000
        self.stream = out.add_stream("aac", rate=rate)
        self.stream.layout = "stereo"
        self.stream.bit_rate = AUDIO_BITRATE
        self.resampler = av.AudioResampler(
            format="fltp", layout="stereo", rate=rate, frame_size=1024
        )
        self.output = Output(out, self.stream)

    def feed(self, packet: av.Packet) -> None:
        for frame in packet.decode():
            self.encode_frame(cast(av.AudioFrame, frame))

    def encode_frame(self, frame: av.AudioFrame | None) -> None:
        for resampled in self.resampler.resample(frame):
            for packet in self.stream.encode(resampled):
                self.output.mux(packet)

    def flush(self) -> None:
        self.encode_frame(None)
        for packet in self.stream.encode(None):
            self.output.mux(packet)


class AudioFanout:
    """Decode the audio once, encode AAC into every rendition's output."""

    def __init__(self, ain, outs) -> None:
        self.ain = ain
        self.encoders = [EncodeAudio(ain, out) for out in outs]

    def feed(self, packet: av.Packet) -> None:
        for frame in packet.decode():
            for encoder in self.encoders:
                encoder.encode_frame(cast(av.AudioFrame, frame))

    def flush(self) -> None:
        for encoder in self.encoders:
            encoder.flush()


class CollectCues:
    """Decode a text subtitle track into cues, timed from the start of the video."""

    def __init__(self, sin, vin, language: str | None, title: str, default: bool) -> None:
        self.sin = sin
        self.origin = float((vin.start_time or 0) * vin.time_base)
        self.track = subtitles.Track(language=language, title=title, default=default, cues=[])

    def feed(self, packet: av.Packet) -> None:
        if packet.pts is None:
            return
        start = float(packet.pts * self.sin.time_base) - self.origin
        length = float((packet.duration or 0) * self.sin.time_base)
        for sub in packet.decode():
            if isinstance(sub, av.subtitles.subtitle.AssSubtitle):
                self.track.cues.append(subtitles.cue_from_ass(start, length, sub.ass))

    def flush(self) -> None:
        pass


def audio_path(ain, out, copy: bool):
    if copy and ain.codec_context.name == "aac":
        return CopyAudio(ain, out)
    return EncodeAudio(ain, out)
