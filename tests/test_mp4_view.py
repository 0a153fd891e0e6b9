"""The MP4 view (tgfs.fs.view): every complete video as one ordinary MP4 file in a mirror
of the library's folders, built from the stored segments. Judged by ffprobe (called as
Jellyfin calls it), ffmpeg, cmp and the m3u8 parser, through a real mount."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_in, wait_for
from tests.media import Spec, make
from tests.test_tracks import GERMAN, _film, _tone
from tgfs.keys import generate_key_file

VIEW = "MP4"  # TGFS_MP4_VIEW, as the README suggests


def _jellyfin_probe(path: Path) -> dict:
    """ffprobe as Jellyfin runs it on a file it scans."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_chapters",
         "-show_format", str(path)],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out)


def _decode_errors(path: Path, *args: str) -> str:
    done = subprocess.run(
        ["ffmpeg", "-v", "error", *args, "-i", str(path), "-map", "0", "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    return done.stderr if done.returncode == 0 else f"exit {done.returncode}: {done.stderr}"


def _frames(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
         "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(out.split()[0])  # (an HLS master lists its program's stream too)


def _duration(path: Path) -> float:
    return float(_jellyfin_probe(path)["format"]["duration"])


def _listing(root: Path) -> list[str]:
    """Every path under `root`, folders with a trailing slash."""
    found = []
    for path in sorted(root.rglob("*")):
        found.append(str(path.relative_to(root)) + ("/" if path.is_dir() else ""))
    return found


def test_a_copy_mode_video_is_one_mp4_file(mount_factory, media, tmp_path):
    mount = mount_factory(TGFS_MP4_VIEW=VIEW)
    src = media("h264_aac.mp4")
    (mount.path / "Movies").mkdir()
    copy_in(src, mount.path / "Movies" / "Clip.mp4")
    (mount.path / "Movies" / "notes.txt").write_text("not a film")
    mount.wait_idle()
    assert mount.job("Movies/Clip.mp4")["outcome"] == "video (copy)"
    view = mount.path / VIEW
    assert VIEW in os.listdir(mount.path)
    # Only folders and films: no playlists, segments, init.mp4, poster or ordinary files.
    assert _listing(view) == ["Movies/", "Movies/Clip.mp4"]
    film = view / "Movies" / "Clip.mp4"
    size = film.stat().st_size  # known before any byte is read
    data = film.read_bytes()
    assert len(data) == size

    probed = _jellyfin_probe(film)
    hls = mount.path / "Movies" / "Clip"
    # As long as the source, give or take where its streams start: the HLS's first picture
    # is at 0.08 s (two frames of B-frame delay), and so is the file's.
    assert abs(float(probed["format"]["duration"]) - _duration(src)) < 0.15, probed["format"]
    assert [(s["codec_type"], s["codec_name"]) for s in probed["streams"]] == [
        ("video", "h264"),
        ("audio", "aac"),
    ]
    assert probed["chapters"] == []
    assert _decode_errors(film) == ""
    assert _frames(film) == _frames(hls / "master.m3u8")  # every picture the HLS has

    # `cp` gives an ordinary file that plays anywhere, the same bytes as a read.
    copy = tmp_path / "Clip.mp4"
    shutil.copyfile(film, copy)
    subprocess.run(["cmp", str(copy), str(film)], check=True)
    assert _decode_errors(copy) == "" and _frames(copy) == _frames(film)


def test_the_view_is_read_only(mount_factory, media):
    mount = mount_factory(TGFS_MP4_VIEW=VIEW)
    copy_in(media("tiny_h264.mp4"), mount.path / "tiny.mp4")
    mount.wait_idle()
    view = mount.path / VIEW
    film = view / "tiny.mp4"
    assert film.is_file()
    refused = [
        lambda: (view / "new").mkdir(),
        lambda: (view / "new.txt").write_text("x"),
        lambda: film.open("r+b"),
        lambda: film.unlink(),
        lambda: os.truncate(film, 0),
        lambda: film.chmod(0o600),
        lambda: film.rename(view / "other.mp4"),
        lambda: (mount.path / "tiny").rename(view / "tiny"),
        lambda: os.link(film, mount.path / "link.mp4"),
    ]
    for attempt in refused:
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno in (errno.EROFS, errno.EPERM, errno.EXDEV), caught.value
    with pytest.raises(OSError) as caught:
        view.rmdir()
    assert caught.value.errno == errno.EPERM
    with pytest.raises(FileExistsError):
        (mount.path / VIEW).mkdir()
    assert film.is_file() and (mount.path / "tiny" / "master.m3u8").is_file()


@pytest.mark.parametrize("codec,mode", [("libx264", "copy"), ("mpeg4", "transcode")])
def test_the_best_rendition_and_every_language(mount_factory, tmp_path, codec, mode):
    """A ladder (the source's size and 180p): the file has the biggest picture; two audio
    languages: both tracks, with their languages, each with its own tone."""
    src = _film(tmp_path, codec)  # 320x240, English 440 Hz, French 660 Hz, subtitles
    mount = mount_factory(COPY_MODE_MIN_SIZE="1K", TGFS_LADDER="180", TGFS_MP4_VIEW=VIEW)
    copy_in(src, mount.path / "film.mkv")
    mount.wait_idle()
    assert mount.job("film.mkv")["outcome"] == f"video ({mode})"
    assert sorted(p.name for p in (mount.path / "film").iterdir() if p.is_dir()) == [
        "180p", "240p", "audio-eng", "audio-fra", "subtitles-eng",
    ]  # fmt: skip
    film = mount.path / VIEW / "film.mp4"
    probed = _jellyfin_probe(film)
    streams = [
        (s["codec_type"], s.get("width"), s.get("tags", {}).get("language"))
        for s in probed["streams"]
    ]
    assert streams == [("video", 320, "und"), ("audio", None, "eng"), ("audio", None, "fra")]
    assert abs(float(probed["format"]["duration"]) - _duration(src)) < 0.15, probed["format"]
    assert _decode_errors(film) == ""
    assert abs(_tone(film, "0:a:0") - 440) < 20
    assert abs(_tone(film, "0:a:1") - 660) < 20

    # Subtitles beside it, as media servers look for them: each cue once, at its time.
    view = mount.path / VIEW
    assert sorted(os.listdir(view)) == ["film.eng.vtt", "film.mp4"]
    english = _cues(view / "film.eng.vtt")
    assert english.count("Hello <i>there</i>") == 1 and english.count("Second line") == 1
    assert "00:00:00,500 --> 00:00:02,500" in english
    # A sidecar dropped after the video joins it, in the HLS folder and in the view.
    (mount.path / "film.de.srt").write_text(GERMAN)
    mount.wait_idle()
    assert sorted(os.listdir(view)) == ["film.de.vtt", "film.eng.vtt", "film.mp4"]
    assert "Guten Tag" in _cues(view / "film.de.vtt")
    assert all(size is not None for (size,) in mount.catalog(
        "SELECT sidecar_size FROM rendition WHERE kind = 'subtitles'"
    ))  # fmt: skip
    files = {name: (view / name).read_bytes() for name in os.listdir(view)}
    assert all((view / name).stat().st_size == len(data) for name, data in files.items())

    # A library made before the catalog kept init segments and subtitle sizes: the view
    # reads them from the store once, and the files are byte for byte the same.
    mount.stop()
    mount.change_catalog("UPDATE rendition SET init_data = NULL, sidecar_size = NULL")
    mount.start()
    assert {name: (view / name).read_bytes() for name in os.listdir(view)} == files
    mount.kill()  # right after those reads recorded what they worked out: nothing half-done
    mount.start()
    assert {name: (view / name).read_bytes() for name in os.listdir(view)} == files
    assert mount.catalog("SELECT count(*) FROM rendition WHERE kind != 'subtitles' "
                         "AND init_data IS NULL AND name IN ('240p', 'audio-eng', 'audio-fra')"
                         ) == [(0,)]  # fmt: skip
    assert mount.catalog(
        "SELECT count(*) FROM rendition WHERE kind = 'subtitles' AND sidecar_size IS NULL"
    ) == [(0,)]


def _cues(path: Path) -> str:
    """A WebVTT file's cues as SRT, through ffmpeg's WebVTT reader."""
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "srt", "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_renames_moves_and_deletes_show_at_once_and_the_file_never_changes(mount_factory, media):
    mount = mount_factory(TGFS_MP4_VIEW=VIEW)
    (mount.path / "Movies").mkdir()
    copy_in(media("h264_only.mp4"), mount.path / "Movies" / "A.mp4")
    mount.wait_idle()
    view = mount.path / VIEW
    first = view / "Movies" / "A.mp4"
    size, digest, inode = first.stat().st_size, _sha(first), first.stat().st_ino

    (mount.path / "Movies" / "A").rename(mount.path / "Movies" / "B")
    assert os.listdir(view / "Movies") == ["B.mp4"] and not first.exists()
    (mount.path / "Archive").mkdir()
    (mount.path / "Movies" / "B").rename(mount.path / "Archive" / "B")
    moved = view / "Archive" / "B.mp4"
    assert os.listdir(view / "Movies") == [] and moved.stat().st_size == size
    assert _sha(moved) == digest and moved.stat().st_ino == inode

    mount.stop()  # byte-exact across a remount, with the same inode
    mount.start()
    assert moved.stat().st_size == size and moved.stat().st_ino == inode
    assert _sha(moved) == digest

    subprocess.run(["rm", "-r", str(mount.path / "Archive" / "B")], check=True)
    assert os.listdir(view / "Archive") == [] and not moved.exists()
    undone = subprocess.run(
        [sys.executable, "-m", "tgfs", "undelete", str(mount.path / "Archive" / "B")],
        env=mount.env, capture_output=True, text=True,
    )  # fmt: skip
    assert undone.returncode == 0, undone.stderr
    assert moved.stat().st_ino == inode and _sha(moved) == digest  # back as it was
    assert _sha(moved) == digest


def test_a_seek_reads_a_small_part_of_the_file(mount_factory, tmp_path):
    """ffmpeg seeking to the middle of a 2-minute film reads the header, the front indexes
    and the fragments it decodes (and what is fetched ahead of them), not the film."""
    spec = Spec(seconds=120, bitrate=2_000_000, video_options=(("preset", "ultrafast"),))
    src = make(tmp_path / "long.mp4", spec)
    mount = mount_factory(TGFS_MP4_VIEW=VIEW)
    copy_in(src, mount.path / "long.mp4")
    mount.wait_idle()
    assert mount.job("long.mp4")["outcome"] == "video (copy)"
    film = mount.path / VIEW / "long.mp4"
    size = film.stat().st_size
    os.truncate(mount.path / ".tgfs" / "cache.json", 0)  # `tgfs cache clear`
    before = json.loads((mount.path / ".tgfs" / "cache.json").read_text())["fetched_bytes"]
    assert _decode_errors(film, "-ss", "60", "-t", "2") == ""

    def settled() -> int | None:  # prefetch started by the reads may still be running
        stats = json.loads((mount.path / ".tgfs" / "cache.json").read_text())
        return stats["fetched_bytes"] if stats["fetches_in_flight"] == 0 else None

    fetched = wait_for(settled, 30, "fetches ahead to end") - before
    # Reading up to the middle would fetch half of it (FFmpeg walks the fragments one by
    # one without the front indexes). A seek fetches a fixed amount: the first segments
    # (warmed at open and read by FFmpeg's probe, with the window fetched ahead of them),
    # the segments around 60-62 s and the window ahead of those (4 segments of 2 s):
    # about 14 of this film's 60 segments (7.3 of 31.4 MB here), whatever its length.
    assert 0 < fetched < size / 3, f"{fetched} of {size} bytes fetched for a seek"


def test_the_view_gives_way_to_a_folder_of_its_name(mount_factory):
    """TGFS_MP4_VIEW names a folder at the root: a user's entry of that name wins (a
    warning says so), another name moves the view, and an empty one removes it."""
    mount = mount_factory()
    assert os.listdir(mount.path) == [".tgfs"]  # no view unless asked for
    (mount.path / VIEW).mkdir()
    (mount.path / VIEW / "mine.txt").write_text("mine")
    mount.wait_idle()
    mount.stop()
    mount.env["TGFS_MP4_VIEW"] = VIEW
    mount.start()
    assert os.listdir(mount.path / VIEW) == ["mine.txt"]
    assert (mount.path / VIEW / "mine.txt").read_text() == "mine"
    assert "MP4 view: not shown, since 'MP4' at the mount's root is yours" in mount.log()
    mount.stop()
    mount.env["TGFS_MP4_VIEW"] = "Films as MP4"
    mount.start()
    assert sorted(os.listdir(mount.path)) == [".tgfs", "Films as MP4", VIEW]
    assert os.listdir(mount.path / "Films as MP4") == [VIEW]  # a mirror of the user's folder
    mount.stop()
    mount.env["TGFS_MP4_VIEW"] = ""
    mount.start()
    assert sorted(os.listdir(mount.path)) == [".tgfs", VIEW]


def test_a_media_server_indexes_the_view(mount_factory, media, tmp_path):
    """MiniDLNA (Debian's `minidlna`), a media server, scans the view as a video library:
    every film with its type, picture size and duration, read with its scanner's own
    libavformat; and nothing that is not a film. It runs in a network namespace of its own
    (`unshare -n`) so that its announcements reach nobody."""
    if shutil.which("minidlnad") is None:
        pytest.skip("minidlna is not installed (make test installs it)")
    if os.geteuid() != 0:
        pytest.skip("unshare -n needs root")
    mount = mount_factory(TGFS_MP4_VIEW=VIEW)
    (mount.path / "Movies").mkdir()
    copy_in(media("h264_aac.mp4"), mount.path / "Movies" / "Clip.mp4")
    copy_in(media("tiny_h264.mp4"), mount.path / "tiny.mp4")
    mount.wait_idle()
    view = mount.path / VIEW
    conf = tmp_path / "minidlna.conf"
    (tmp_path / "db").mkdir()
    conf.write_text(
        f"media_dir=V,{view}\ndb_dir={tmp_path / 'db'}\nlog_dir={tmp_path}\n"
        "port=18200\nnetwork_interface=lo\ninotify=no\n"
    )
    log = tmp_path / "minidlna.out"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["unshare", "-n", "minidlnad", "-f", str(conf), "-d", "-R",
             "-P", str(tmp_path / "pid")],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: "Initial file scan completed" in log.read_text(errors="replace"), 60,
                 "MiniDLNA's scan")  # fmt: skip
    finally:
        server.kill()
        server.wait()
    db = sqlite3.connect(tmp_path / "db" / "files.db")
    rows = db.execute(
        "SELECT PATH, MIME, RESOLUTION, DURATION, SIZE FROM DETAILS WHERE MIME IS NOT NULL "
        "ORDER BY PATH"
    ).fetchall()
    db.close()
    indexed = {Path(path).relative_to(view).as_posix(): rest for path, *rest in rows}
    assert set(indexed) == {"Movies/Clip.mp4", "tiny.mp4"}, indexed
    for name, (mime, resolution, duration, size) in indexed.items():
        film = view / name
        assert mime == "video/mp4" and size == film.stat().st_size
        probed = _jellyfin_probe(film)
        width, height = probed["streams"][0]["width"], probed["streams"][0]["height"]
        assert resolution == f"{width}x{height}"
        h, m, s = duration.split(":")
        assert (
            abs(int(h) * 3600 + int(m) * 60 + float(s) - float(probed["format"]["duration"])) < 0.01
        )


def test_a_film_deleted_while_open_reads_to_its_end(mount_factory, media):
    """With no trash, deleting a video frees its stored parts, but not while a reader has
    its MP4 file open (the collector spares open parts): the reader gets every byte."""
    mount = mount_factory(TGFS_MP4_VIEW=VIEW, TGFS_TRASH_DAYS="0")
    copy_in(media("h264_aac.mp4"), mount.path / "Clip.mp4")
    (mount.path / "other.bin").write_bytes(os.urandom(100_000))
    mount.wait_idle()
    film = mount.path / VIEW / "Clip.mp4"
    whole = film.read_bytes()
    os.truncate(mount.path / ".tgfs" / "cache.json", 0)  # the reads below go to the store
    segments = {loc for (loc,) in mount.catalog(
        "SELECT location FROM part JOIN segment ON segment.blob_id = part.blob_id"
    )}  # fmt: skip
    other = {loc for (loc,) in mount.catalog(  # (the one stored file: Clip is a video)
        "SELECT location FROM part JOIN node ON node.blob_id = part.blob_id "
        "WHERE node.kind = 'file'"
    )}  # fmt: skip
    with film.open("rb") as reader:
        first = reader.read(1000)
        subprocess.run(["rm", "-r", str(mount.path / "Clip")], check=True)
        assert not film.exists()
        (mount.path / "other.bin").unlink()  # a pass of the collector deletes these …

        def collected() -> bool:
            left = {f"{p.parent.name}/{p.name}" for p in mount.blob_files()}
            return not other & left

        wait_for(collected, 30, "the collector")
        left = {f"{p.parent.name}/{p.name}" for p in mount.blob_files()}
        assert segments <= left  # … and spares the open film's segments
        assert first + reader.read() == whole
    mount.store_matches_catalog()  # once it is closed, its parts go


def test_an_encrypted_library_s_view_reads_through_sealed_parts(mount_factory, media, tmp_path):
    """With a key, the segments' parts are sealed in the store and in the cache; the view's
    reads open them, then patch the plaintext: the same file, decoding cleanly."""
    key = tmp_path / "key"
    generate_key_file(key)
    mount = mount_factory(TGFS_MP4_VIEW=VIEW, TGFS_ENCRYPTION_KEY_FILE=str(key))
    copy_in(media("h264_aac.mp4"), mount.path / "Clip.mp4")
    mount.wait_idle()
    assert mount.catalog("SELECT count(*) FROM part WHERE seal IS NULL") == [(0,)]
    film = mount.path / VIEW / "Clip.mp4"
    first = film.read_bytes()
    mount.stop()  # the kernel's page cache goes with the mount; tgfs's cache is emptied
    mount.start()
    os.truncate(mount.path / ".tgfs" / "cache.json", 0)
    assert film.read_bytes() == first
    assert _decode_errors(film) == "" and _frames(film) > 0
