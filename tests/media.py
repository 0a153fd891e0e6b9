"""Test media, generated with PyAV from FFmpeg's lavfi sources at test time (none committed)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType


@dataclasses.dataclass(frozen=True)
class Spec:
    seconds: float = 8.0
    width: int = 320
    height: int = 240
    fps: int = 25
    video_codec: str = "libx264"
    audio_codec: str | None = "aac"
    gop: int = 50  # frames between keyframes in the source
    pix_fmt: str = "yuv420p"
    bitrate: int | None = None  # bits/s; None = codec default
    video_options: tuple[tuple[str, str], ...] = ()
    # lavfi filters after the test pattern, e.g. "noise=alls=80:allf=t" for detail that
    # encoders must spend bits on
    filters: str = ""


def make(path: Path, spec: Spec) -> Path:
    """Write a test file: a moving test pattern (+ a sine tone) in the given codecs."""
    frames = int(spec.seconds * spec.fps)
    with av.open(str(path), "w") as out:
        video = out.add_stream(
            spec.video_codec,
            rate=spec.fps,
            options={"g": str(spec.gop), **dict(spec.video_options)},
        )
        video.width, video.height, video.pix_fmt = spec.width, spec.height, spec.pix_fmt
        if spec.bitrate:
            video.bit_rate = spec.bitrate
        audio = None
        if spec.audio_codec:
            audio = out.add_stream(spec.audio_codec, rate=44100)
            audio.layout = "stereo"
        source = f"testsrc2=size={spec.width}x{spec.height}:rate={spec.fps}"
        pattern = av.open(f"{source},{spec.filters}" if spec.filters else source, format="lavfi")
        for i, frame in enumerate(pattern.decode(video=0)):
            if i >= frames:
                break
            frame = frame.reformat(format=spec.pix_fmt)
            frame.pts, frame.time_base = i, Fraction(1, spec.fps)
            frame.pict_type = PictureType.NONE  # let the encoder place keyframes (gop)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        pattern.close()
        if audio is not None:
            tone = av.open(
                f"sine=frequency=440:sample_rate=44100:duration={spec.seconds}", format="lavfi"
            )
            resampler = av.AudioResampler(
                format=audio.format.name,
                layout="stereo",
                rate=44100,
                frame_size=audio.frame_size or 1024,
            )
            for frame in tone.decode(audio=0):
                for chunk in resampler.resample(frame):
                    out.mux(audio.encode(chunk))
            for chunk in resampler.resample(None):
                out.mux(audio.encode(chunk))
            out.mux(audio.encode(None))
            tone.close()
    return path
