"""Ordinary files and directories behave like on a local disk, and survive a restart."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from tests.conftest import wait_for


def cmp(a, b) -> None:
    """Compare with an independent tool."""
    subprocess.run(["cmp", str(a), str(b)], check=True)


def test_files_round_trip_byte_identical(mount_factory, tmp_path):
    m = mount_factory()
    assert "store: local directory" in m.log() and "no Telegram bots configured" in m.log()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 2**20 + 12345))  # spans four 1 MiB store parts
    small = tmp_path / "notes.pdf"
    small.write_bytes(b"%PDF-1.4 not really\n" * 100)
    names = {big: "big.bin", small: "notes with spaces, 'quotes' & ünïcødé.pdf"}
    (m.path / "docs").mkdir()
    for src, name in names.items():
        subprocess.run(["cp", str(src), str(m.path / "docs" / name)], check=True)
    (m.path / "empty").touch()
    # Readable (from the spool) before ingest finishes, and after.
    cmp(big, m.path / "docs" / "big.bin")
    status = m.wait_idle()
    assert {j["outcome"] for j in status["jobs"]} == {"file"}
    assert all(j["state"] == "done" for j in status["jobs"]), status["jobs"]
    for src, name in names.items():
        cmp(src, m.path / "docs" / name)
    assert (m.path / "empty").stat().st_size == 0
    assert m.stop() == 0

    m2 = mount_factory()
    for src, name in names.items():
        cmp(src, m2.path / "docs" / name)
        assert (m2.path / "docs" / name).stat().st_size == src.stat().st_size


def test_rewrite_append_truncate(mount, tmp_path):
    path = mount.path / "f.txt"
    path.write_text("one\n")
    mount.wait_idle()
    with open(path, "a") as f:  # appending to a stored file copies it back to the spool
        f.write("two\n")
    assert path.read_text() == "one\ntwo\n"
    mount.wait_idle()
    assert path.read_text() == "one\ntwo\n"
    path.write_text("replaced\n")
    mount.wait_idle()
    assert path.read_text() == "replaced\n"
    os.truncate(path, 3)
    mount.wait_idle()
    assert path.read_text() == "rep"
    wait_for(lambda: mount.status()["garbage_pending"] == 0, 10, "garbage collection")
    assert len(mount.blob_files()) == 1  # old versions were deleted from the store


def test_directories_and_renames(mount):
    (mount.path / "a" / "b").mkdir(parents=True)
    (mount.path / "a" / "b" / "x.txt").write_text("x")
    os.rename(mount.path / "a" / "b", mount.path / "c")
    assert (mount.path / "c" / "x.txt").read_text() == "x"
    with pytest.raises(OSError) as err:
        os.rename(mount.path / "a", mount.path / "a" / "inside")
    assert err.value.errno == errno.EINVAL
    with pytest.raises(OSError) as err:
        os.rmdir(mount.path / "c")
    assert err.value.errno == errno.ENOTEMPTY
    (mount.path / "y.txt").write_text("y")
    os.rename(mount.path / "y.txt", mount.path / "c" / "x.txt")  # replaces
    assert (mount.path / "c" / "x.txt").read_text() == "y"
    mount.wait_idle()
    os.unlink(mount.path / "c" / "x.txt")
    os.rmdir(mount.path / "c")
    assert sorted(os.listdir(mount.path)) == [".tgfs", "a"]
    # The stored x.txt went to the trash (replaced by a rename, then removed); emptying the
    # trash deletes its parts from the store.
    tgfs = [sys.executable, "-m", "tgfs", "trash"]
    listed = subprocess.run([*tgfs, str(mount.path)], env=mount.env, capture_output=True)
    assert b"  c/x.txt\n" in listed.stdout, listed
    subprocess.run([*tgfs, "--empty", str(mount.path)], env=mount.env, check=True)
    wait_for(lambda: not mount.blob_files(), 10, "blobs to be deleted")
    with pytest.raises(OSError) as err:
        (mount.path / ".tgfs" / "mine").write_text("no")
    assert err.value.errno == errno.EPERM
    st = os.statvfs(mount.path)
    assert st.f_bavail > 0 and st.f_namemax == 255


def test_still_images_and_audio_stay_files(mount, media_dir):
    import av

    jpeg = media_dir / "still.jpg"
    with av.open("testsrc2=size=64x48:rate=1:duration=1", format="lavfi") as src:
        frame = next(src.decode(video=0)).reformat(format="yuvj420p")
        with av.open(str(jpeg), "w", format="image2") as out:
            stream = out.add_stream("mjpeg", rate=1)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    subprocess.run(["cp", str(jpeg), str(mount.path / "photo.jpg")], check=True)
    status = mount.wait_idle()
    (job,) = status["jobs"]
    assert job["outcome"] == "file" and job["state"] == "done"
    cmp(jpeg, mount.path / "photo.jpg")
