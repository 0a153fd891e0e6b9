"""The MP4 view's names, listings and refusals, driven in-process (tests/fsapi.py): the
files each video folder shows, listed two at a time (offsets across a video's files),
looked up by name, and every change refused. Videos are catalog rows made here, with a
real init segment from FFmpeg and made-up parts (nothing is read from the store)."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import subprocess

import pyfuse3
import pytest

from tests.fsapi import ROOT, FsApi
from tgfs.catalog import Job, RenditionKind, library, tree, view
from tgfs.fs.view import VIEW_INODES
from tgfs.store.base import PartRef

VIEW = "MP4"


@pytest.fixture(scope="module")
def init_segment(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("init")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:d=1",
         "-c:v", "libx264", "-f", "hls", "-hls_segment_type", "fmp4",
         "-hls_fmp4_init_filename", "init.mp4", str(out / "index.m3u8")],
        check=True,
    )  # fmt: skip
    return (out / "init.mp4").read_bytes()


@pytest.fixture
async def api(tmp_path):
    api = FsApi(tmp_path, TGFS_MP4_VIEW=VIEW)
    yield api
    api.close()


_LOCATIONS = itertools.count()


def _stored(name: str, size: int, duration: float = 0.0) -> library.StoredFile:
    location = f"x/{next(_LOCATIONS)}"  # made up: nothing is read
    return library.StoredFile(name, size, [PartRef(None, 0, 0, size, location)], duration)


async def _video(
    api: FsApi, parent: int, name: str, init: bytes, languages: list[str | None], done=True
):
    """A video folder `name` in `parent` with one picture rendition and a subtitle
    rendition in each of `languages`."""
    source = tree.get(await api.write_file(parent, f"{name}.mkv", b"x"))
    job = Job.get(Job.node == source.id)  # a video being made has its job
    folder = library.create_video(source, "copy", 6, job_id=None if done else job.id)
    picture = library.add_rendition(
        folder,
        library.RenditionInfo(name="240p", width=320, height=240),
        _stored("init.mp4", len(init)),
        init,
    )
    library.add_segments(
        picture, [_stored(f"seg_{n}.m4s", 1000 + n, 2.0) for n in range(3)], (1, 1)
    )
    for n, language in enumerate(languages):
        info = library.RenditionInfo(
            name=f"subtitles-{n}", kind=RenditionKind.SUBTITLES, language=language
        )
        subs = library.add_rendition(folder, info, None)
        library.add_segments(subs, [_stored("seg_0.vtt", 50, 6.0)], (0, 0))
        view.record_sidecar_size(subs.id, 100 + n)
    if done:
        library.complete_video(folder, None, 0.0, 6)  # (the dropped file stays)
    return folder


async def test_the_view_lists_and_finds_each_video_s_files(api, init_segment):
    root = (await api.lookup(ROOT, VIEW)).st_ino
    movies = await api.mkdir(ROOT, "Movies")
    await _video(api, movies, "Film", init_segment, ["eng", "fra", "eng", None])
    await _video(api, movies, "A.b", init_segment, ["eng"])
    await _video(api, movies, "Plain", init_segment, [])
    await _video(api, movies, "Busy", init_segment, ["eng"], done=False)  # being made
    await api.write_file(movies, "notes.txt", b"not a film")
    await api.mkdir(movies, "Plain.mp4")  # a folder beside the video of that name wins
    assert await api.listdir(root) == ["Movies"]
    mirror = (await api.lookup(root, "Movies")).st_ino
    assert mirror == VIEW_INODES + movies
    listed = await api.listdir(mirror)  # two at a time: offsets inside a video's files
    assert listed == [
        "Film.mp4", "Film.eng.vtt", "Film.fra.vtt", "Film.eng.2.vtt", "Film.vtt",
        "A.b.mp4", "A.b.eng.vtt", "Plain.mp4",
    ]  # fmt: skip
    inodes = set()
    for name in listed:
        found = await api.lookup(mirror, name)
        assert (await api.fs.getattr(found.st_ino, api.ctx)).st_size == found.st_size
        inodes.add(found.st_ino)
        if name.endswith(".vtt"):
            assert found.st_size in (100, 101, 102, 103)
    assert len(inodes) == len(listed)
    assert stat.S_ISDIR((await api.lookup(mirror, "Plain.mp4")).st_mode)
    for missing in ("Busy.mp4", "Busy.eng.vtt", "notes.txt", "Film", "Film.m4a", "Film.deu.vtt"):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await api.lookup(mirror, missing)
        assert e.value.errno == errno.ENOENT, missing


async def test_nothing_in_the_view_can_be_changed(api, init_segment):
    root = (await api.lookup(ROOT, VIEW)).st_ino
    await _video(api, ROOT, "Film", init_segment, ["eng"])
    film = (await api.lookup(root, "Film.mp4")).st_ino
    subs = (await api.lookup(root, "Film.eng.vtt")).st_ino
    ctx, attrs = api.ctx, pyfuse3.EntryAttributes()
    fields = pyfuse3.SetattrFields()
    for where in (root, VIEW_INODES + ROOT + 10**6):
        for call in (
            api.fs.mkdir(where, b"d", 0o755, ctx),
            api.fs.create(where, b"f", 0o644, os.O_WRONLY, ctx),
            api.fs.mknod(where, b"p", stat.S_IFIFO | 0o644, 0, ctx),
            api.fs.symlink(where, b"l", b"x", ctx),
            api.fs.link((await api.lookup(ROOT, ".tgfs")).st_ino, where, b"h", ctx),
        ):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await call
            assert e.value.errno in (errno.EROFS, errno.EPERM), e.value.errno
    for call in (
        api.fs.unlink(root, b"Film.mp4", ctx),
        api.fs.rmdir(root, b"Film.mp4", ctx),
        api.fs.rename(root, b"Film.mp4", ROOT, b"x", 0, ctx),
        api.fs.rename(ROOT, b"Film", root, b"Film", 0, ctx),
        api.fs.link(film, ROOT, b"x", ctx),
        api.fs.setattr(film, attrs, fields, None, ctx),
        api.fs.open(film, os.O_RDWR, ctx),
        api.fs.open(subs, os.O_WRONLY, ctx),
    ):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == errno.EROFS, e.value.errno
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.fs.rmdir(ROOT, VIEW.encode(), ctx)
    assert e.value.errno == errno.EPERM
    with pytest.raises(pyfuse3.FUSEError) as e:
        await api.fs.rename(ROOT, VIEW.encode(), ROOT, b"Other", 0, ctx)
    assert e.value.errno == errno.EPERM
