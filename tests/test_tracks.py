"""Several audio tracks become an audio group; text subtitles (inside the file, or dropped
beside it before or after the video) become WebVTT renditions. Judged by the m3u8 parser
and ffmpeg, including which tone plays in which language."""

from __future__ import annotations

import array
import datetime
import itertools
import json
import subprocess
from pathlib import Path

import m3u8
import pytest

from tests.conftest import copy_in
from tests.hls_checks import (
    check_codecs_string,
    check_media_playlist,
    check_video_folder,
    decode_errors,
    source_duration,
)

SEGMENT = 2.0
SRT = """1
00:00:00,500 --> 00:00:02,500
Hello <i>there</i>

2
00:00:03,000 --> 00:00:05,000
Second line
on two rows
"""
GERMAN = """1
00:00:01,000 --> 00:00:04,000
Guten Tag
"""


def _film(folder: Path, video_codec: str) -> Path:
    """6 s: video, English at 440 Hz, French at 660 Hz, English subtitles."""
    (folder / "eng.srt").write_text(SRT)
    out = folder / f"film-{video_codec}.mkv"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=6",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=6",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=660:duration=6",
            "-i",
            str(folder / "eng.srt"),
            "-map",
            "0",
            "-map",
            "1",
            "-map",
            "2",
            "-map",
            "3",
            "-c:v",
            video_codec,
            "-b:v",
            "1M",
            "-c:a",
            "aac",
            "-c:s",
            "srt",
            "-metadata:s:a:0",
            "language=eng",
            "-metadata:s:a:1",
            "language=fra",
            "-metadata:s:s:0",
            "language=eng",
            str(out),
        ],
        check=True,
    )
    return out


def _tone(playlist: Path, stream: str = "0:a:0") -> float:
    """The dominant frequency of an audio playlist or file (its `stream`), from zero
    crossings (Hz)."""
    pcm = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(playlist),
            "-map",
            stream,
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            "48000",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    samples = array.array("h", pcm)
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / 48000)


def _cues(playlist: Path) -> str:
    """All cue text of a subtitle playlist, through ffmpeg's WebVTT reader."""
    media = m3u8.load(str(playlist))
    text = []
    for seg in media.segments:
        out = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(playlist.parent / seg.uri), "-f", "srt", "-"],
            capture_output=True,
            text=True,
            check=True,
        )
        text.append(out.stdout)
    return "\n".join(text)


@pytest.mark.parametrize("codec,mode", [("libx264", "copy"), ("mpeg4", "transcode")])
def test_audio_group_and_subtitles(mount_factory, tmp_path, codec, mode):
    src = _film(tmp_path, codec)
    mount = mount_factory(COPY_MODE_MIN_SIZE="1K", TGFS_LADDER="180")
    (mount.path / "Film").mkdir()
    # A German sidecar dropped before the video: it goes into the video's first publication.
    (mount.path / "Film" / "film.de.srt").write_text(GERMAN)
    mount.wait_idle()
    copy_in(src, mount.path / "Film" / "film.mkv")
    mount.wait_idle()
    job = mount.job("Film/film.mkv")
    assert job["outcome"] == f"video ({mode})", job
    folder = mount.path / "Film" / "film"
    facts = check_video_folder(folder, src, SEGMENT)
    master = m3u8.load(str(folder / "master.m3u8"))

    audio = {m.language: m for m in master.media if m.type == "AUDIO"}
    assert set(audio) == {"eng", "fra"}
    assert audio["eng"].default == "YES" and audio["fra"].default == "NO"
    assert abs(_tone(folder / audio["eng"].uri) - 440) < 20
    assert abs(_tone(folder / audio["fra"].uri) - 660) < 20
    assert len(master.playlists) == 2  # source + 180p, both without muxed audio
    # The catalog keeps each init segment's bytes (for the MP4 view's header), exactly
    # what the mount serves as the rendition's init.mp4; subtitles have none.
    kept = dict(mount.catalog("SELECT name, init_data FROM rendition"))
    for name, data in kept.items():
        init = folder / name / "init.mp4"
        assert data == (init.read_bytes() if init.exists() else None), name
    assert sum(data is not None for data in kept.values()) == 4  # 2 pictures, 2 languages
    first_audio = next(a for a in facts["alternatives"] if a["media_tag"].language == "eng")
    for rendition in facts["renditions"]:
        info = rendition["variant"].stream_info
        assert info.audio == "audio" and info.subtitles == "subs"
        first = rendition["dir"] / rendition["media"].segments[0].uri
        check_codecs_string(
            rendition["init"], first, info.codecs, (first_audio["init"], first_audio["first"])
        )

    subs = {m.language: m for m in master.media if m.type == "SUBTITLES"}
    assert set(subs) == {"eng", "de"}
    english = _cues(folder / subs["eng"].uri)
    assert "Hello <i>there</i>" in english and "Second line\non two rows" in english
    assert "00:00:00,500 --> 00:00:02,500" in english  # cue times kept
    assert "Guten Tag" in _cues(folder / subs["de"].uri)
    # Each subtitle segment follows the video's cuts: the same count and durations.
    video_media = facts["renditions"][0]["media"]
    sub_media = m3u8.load(str(folder / subs["eng"].uri))
    assert [round(s.duration, 3) for s in sub_media.segments] == [
        round(s.duration, 3) for s in video_media.segments
    ]

    # What a library page is told of it (.tgfs/library.json), against the master playlist.
    library = json.loads((mount.path / ".tgfs" / "library.json").read_text())
    (entry,) = [v for v in library["videos"] if v["path"] == "Film/film"]
    assert library["version"] == 1 and set(entry) == {
        "path", "title", "duration", "width", "height", "renditions", "audio", "subtitles",
        "poster", "added", "state", "percent",
    }  # fmt: skip
    assert entry["title"] == "film" and entry["percent"] == 100.0
    added = datetime.datetime.fromisoformat(entry["added"])
    assert abs(added - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=10)
    fields = {"name", "kind", "width", "height", "bandwidth", "language", "title"}
    assert all(set(r) == fields for r in entry["renditions"]), entry["renditions"]
    assert sorted(entry["audio"]) == ["eng", "fra"] and sorted(entry["subtitles"]) == ["de", "eng"]
    assert (entry["width"], entry["height"]) == max(
        p.stream_info.resolution for p in master.playlists
    )
    assert sorted(r["name"] for r in entry["renditions"]) == sorted(
        p.name for p in folder.iterdir() if p.is_dir()
    )
    assert entry["poster"] == "Film/film/poster.jpg" and (mount.path / entry["poster"]).is_file()
    total = sum(s.duration for s in video_media.segments)
    assert entry["state"] == "ready" and abs(entry["duration"] - total) < 0.01


def test_sidecar_after_the_video_and_a_broken_one(mount, media, tmp_path):
    src = media("h264_aac.mp4")
    copy_in(src, mount.path / "clip.mp4")
    mount.wait_idle()
    folder = mount.path / "clip"
    assert not [m for m in m3u8.load(str(folder / "master.m3u8")).media]
    (mount.path / "clip.fr.srt").write_text(SRT.replace("Hello", "Bonjour"))
    (mount.path / "clip.en.srt").write_bytes(b"\x00\x01 not subtitles \xff" * 100)
    mount.wait_idle()
    master = m3u8.load(str(folder / "master.m3u8"))
    subs = [m for m in master.media if m.type == "SUBTITLES"]
    assert [s.language for s in subs] == ["fr"], master.dumps()
    assert "Bonjour" in _cues(folder / subs[0].uri)
    assert master.playlists[0].stream_info.subtitles == "subs"
    check_video_folder(folder, src, SEGMENT)
    broken = mount.job("clip.en.srt")
    assert broken["state"] == "failed" and "subtitles not added" in broken["error"], broken
    # Both subtitle files are still there as the user dropped them.
    assert (mount.path / "clip.fr.srt").read_text().startswith("1\n")
    assert (mount.path / "clip.en.srt").read_bytes().startswith(b"\x00\x01")


def test_audio_only_files_become_hls_when_asked(mount_factory, tmp_path):
    song = tmp_path / "song.mp3"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=10",
            "-c:a",
            "libmp3lame",
            str(song),
        ],
        check=True,
    )
    mount = mount_factory(TGFS_AUDIO_HLS="true")
    copy_in(song, mount.path / "song.mp3")
    mount.wait_idle()
    assert mount.job("song.mp3")["outcome"] == "audio (HLS)"
    assert not (mount.path / "song.mp3").exists()
    folder = mount.path / "song"
    master = m3u8.load(str(folder / "master.m3u8"))
    (variant,) = master.playlists
    assert variant.stream_info.codecs == "mp4a.40.2"  # MP3 re-encoded: hls.js plays AAC
    assert variant.stream_info.resolution is None and variant.stream_info.bandwidth
    media = check_media_playlist(folder / variant.uri)
    assert media.segment_map
    assert decode_errors(folder / "master.m3u8") == ""
    assert abs(source_duration(folder / "master.m3u8") - 10) <= SEGMENT / 2
    assert abs(_tone(folder / "master.m3u8") - 440) < 20


def test_audio_only_files_stay_files_by_default(mount, tmp_path):
    song = tmp_path / "song.flac"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=3",
            str(song),
        ],
        check=True,
    )
    copy_in(song, mount.path / "song.flac")
    mount.wait_idle()
    assert mount.job("song.flac")["outcome"] == "file"
    assert (mount.path / "song.flac").read_bytes() == song.read_bytes()


def test_subtitle_file_copied_right_after_its_video(mount_factory, media):
    """`cp Film.mp4 Film.en.srt mnt/`: the subtitle job runs while the video is being made
    (two jobs at a time), waits for it, and is added to it."""
    mount = mount_factory(TGFS_INGEST_JOBS="2", TGFS_LADDER="180")
    copy_in(media("h264_aac.mp4"), mount.path / "film.mp4")
    (mount.path / "film.en.srt").write_text(SRT)
    mount.wait_idle()
    master = m3u8.load(str(mount.path / "film" / "master.m3u8"))
    assert [m.language for m in master.media if m.type == "SUBTITLES"] == ["en"]
    job = mount.job("film.en.srt")
    assert job["state"] == "done" and job["outcome"] == "file", job
