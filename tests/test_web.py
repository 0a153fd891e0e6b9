"""The nginx example (examples/nginx.conf) over a real mount, with Debian's nginx and its
dav-ext module, its workers running as www-data like Debian's: content types and caching
of playlists and segments, gzip, a range request, a CORS preflight, WebDAV (a refused
unauthenticated PUT; PUT, MKCOL, MOVE, PROPFIND and DELETE with the password), the control
folder's listings as www-data may see them, and `ffmpeg` playing the video over HTTP."""

from __future__ import annotations

import grp
import gzip
import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO, copy_in
from tests.nginx_site import AUTH, DAV_MODULE, PASSWORD, nginx_dir, nginx_enable
from tgfs.web import vendor


def test_the_nginx_example_serves_the_library(site, media):
    web, m = site
    copy_in(media("h264_aac.mp4"), m.path / "clip.mp4")
    m.wait_idle()
    rendition = sorted(p.name for p in (m.path / "clip").iterdir() if p.is_dir())[0]
    segment = f"/clip/{rendition}/seg_00001.m4s"

    playlist = f"/clip/{rendition}/playlist.m3u8"
    response, body = web.request("GET", playlist, headers={"Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("application/vnd.apple.mpegurl")
    assert response.getheader("Cache-Control") == "no-cache"
    assert response.getheader("Access-Control-Allow-Origin") == "*"
    assert response.getheader("Content-Encoding") == "gzip", len(body)
    assert gzip.decompress(body) == (m.path / playlist.lstrip("/")).read_bytes()

    response, body = web.request("GET", segment)
    assert response.status == 200 and response.getheader("Content-Type") == "video/iso.segment"
    assert "immutable" in response.getheader("Cache-Control")
    assert body == (m.path / segment.lstrip("/")).read_bytes()
    response, _ = web.request("HEAD", f"/clip/{rendition}/init.mp4")
    assert response.getheader("Content-Type") == "video/mp4"

    response, part = web.request("GET", segment, headers={"Range": "bytes=1000-1999"})
    assert response.status == 206 and part == body[1000:2000]
    assert response.getheader("Content-Range") == f"bytes 1000-1999/{len(body)}"

    response, _ = web.request(
        "OPTIONS",
        segment,
        headers={
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert response.status == 204
    assert response.getheader("Access-Control-Allow-Origin") == "*"
    assert "Range" in response.getheader("Access-Control-Allow-Headers")

    # The control folder's listings, as www-data may see them (tgfs.catalog.access), never
    # cached; the trash is its owner's alone.
    response, body = web.request("GET", "/.tgfs/library.json")
    assert response.status == 200 and response.getheader("Cache-Control") == "no-cache"
    assert [v["path"] for v in json.loads(body)["videos"]] == ["clip"]
    assert json.loads(body)["videos"][0]["poster"] == "clip/poster.jpg"
    response, body = web.request("GET", "/.tgfs/status.json")
    assert response.status == 200 and "clip.mp4" in {j["path"] for j in json.loads(body)["jobs"]}
    response, _ = web.request("GET", "/.tgfs/trash.json")
    assert response.status == 403
    # The page's files, shipped with tgfs, in the mount: hls.js as pinned (tgfs.web.vendor).
    response, body = web.request("GET", "/.tgfs/web/hls.min.js")
    assert response.status == 200 and response.getheader("Content-Type") == "text/javascript"
    assert body == (REPO / "tgfs" / "web" / "static" / "hls.min.js").read_bytes()
    assert f'"{vendor.VERSION}"' in body.decode()
    with pytest.raises(PermissionError):
        (m.path / ".tgfs" / "web" / "page.html").write_text("not here")
    response, body = web.request("GET", "/clip/poster.jpg")
    assert response.getheader("Content-Type") == "image/jpeg" and body[:2] == b"\xff\xd8"

    played = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            f"http://127.0.0.1:{web.port}/clip/master.m3u8",
            "-map",
            "0",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert played.returncode == 0 and played.stderr == "", played.stderr


def test_webdav_writes_need_the_password(site):
    web, m = site
    uploads = m.path / "Uploads"
    uploads.mkdir()
    shutil.chown(uploads, "www-data")  # uploads need write permission, like any user's
    data = os.urandom(300_000)

    response, _ = web.request("PUT", "/Uploads/notes.bin", body=data)
    assert response.status == 401 and not (uploads / "notes.bin").exists()
    response, _ = web.request("PUT", "/Uploads/notes.bin", body=data, headers=AUTH)
    assert response.status == 201
    assert (uploads / "notes.bin").read_bytes() == data
    assert (uploads / "notes.bin").stat().st_uid == 33  # www-data's file

    response, _ = web.request("MKCOL", "/Uploads/Kept/", headers=AUTH)
    assert response.status == 201 and (uploads / "Kept").is_dir()
    response, _ = web.request(
        "MOVE",
        "/Uploads/notes.bin",
        headers={**AUTH, "Destination": f"http://127.0.0.1:{web.port}/Uploads/Kept/renamed.bin"},
    )
    assert response.status in (201, 204)
    assert (uploads / "Kept" / "renamed.bin").read_bytes() == data
    assert not (uploads / "notes.bin").exists()

    response, body = web.request("PROPFIND", "/Uploads/Kept/", headers={"Depth": "1"})
    assert response.status == 207 and b"renamed.bin" in body  # what WebDAV clients list

    response, _ = web.request("DELETE", "/Uploads/Kept/renamed.bin")
    assert response.status == 401 and (uploads / "Kept" / "renamed.bin").exists()
    response, _ = web.request("DELETE", "/Uploads/Kept/renamed.bin", headers=AUTH)
    assert response.status == 204 and not (uploads / "Kept" / "renamed.bin").exists()
    m.wait_idle()


def test_nginx_enable_refuses_what_would_not_work_and_warns_of_a_private_mount(mount, tmp_path):
    """examples/nginx-enable (the README's one command; the `site` fixture shows it working)
    says what is wrong before it writes anything, and warns when nginx could not read the
    mount (mounted without TGFS_ALLOW_OTHER)."""
    if shutil.which("nginx") is None or not DAV_MODULE.exists() or os.geteuid() != 0:
        pytest.skip("needs root, Debian's nginx and its dav-ext module (make test installs them)")
    work = nginx_dir(tmp_path / "nginx")
    for args, message in [
        ((tmp_path / "nowhere",), "is not a folder"),
        ((mount.path, "80a"), "is not a port"),
        ((mount.path, "8080", "me:you"), "a user name has no ':'"),
        ((), "usage:"),
    ]:
        refused = nginx_enable(work, *args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
        assert list((work / "sites-enabled").iterdir()) == []
        assert not (work / "tgfs.htpasswd").exists()

    enabled = nginx_enable(work, mount.path, "127.0.0.1:8080")
    assert enabled.returncode == 0, enabled.stderr
    assert "not mounted with TGFS_ALLOW_OTHER=true" in enabled.stderr
    # The password file: an apr1 hash (not the password), readable by nginx's workers only.
    line = (work / "tgfs.htpasswd").read_text()
    assert line.startswith("me:$apr1$") and PASSWORD not in line
    info = (work / "tgfs.htpasswd").stat()
    assert info.st_mode & 0o777 == 0o640 and info.st_gid == grp.getgrnam("www-data").gr_gid
    assert (work / "sites-enabled" / "tgfs").resolve() == work / "sites-available" / "tgfs"
