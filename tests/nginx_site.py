"""Debian's nginx serving a real mount with the example site (examples/nginx.conf): the
fixture `site` for the tests that talk HTTP to it (test_web.py) and drive a browser through
it (test_browser.py)."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, telegram_env, traversable, wait_for
from tests.standin import StandIn

DAV_MODULE = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")
USER, PASSWORD = "me", "web test password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


class Site:
    """nginx serving a mount with the example's server block."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_dir(work: Path) -> Path:
    """An nginx configuration directory like Debian's /etc/nginx, for a private nginx:
    nginx.conf (its pid, logs and temporary files in `work`) including sites-enabled/*."""
    for sub in ("sites-available", "sites-enabled"):
        (work / sub).mkdir(parents=True)
    traversable(work)
    (work / "nginx.conf").write_text(
        f"""
user www-data;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
load_module {DAV_MODULE};
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    access_log {work}/access.log;
    proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    sendfile on;
    include {work}/sites-enabled/*;
}}
"""
    )
    return work


def nginx_enable(work: Path, *args: object) -> subprocess.CompletedProcess:
    """examples/nginx-enable ARGS into the configuration directory `work` (checked against
    its nginx.conf; nothing reloaded), with the test's password."""
    return subprocess.run(
        [REPO / "examples" / "nginx-enable", *map(str, args)],
        env={
            **os.environ,
            "NGINX_DIR": str(work),
            "UPLOAD_TEMP": str(work / "upload"),
            "TGFS_WEB_PASSWORD": PASSWORD,
        },
        capture_output=True,
        text=True,
    )


@pytest.fixture
def site(request, mount_factory, tmp_path, monkeypatch) -> Iterator[tuple[Site, object]]:
    """nginx and the mount it serves. Parametrised indirectly with a latency in seconds
    (`@pytest.mark.parametrize("site", [0.8], indirect=True)`), the mount stores on the
    Telegram stand-in with one bot doing one request at a time that slow: a video then takes
    long enough to store that a page can be seen showing it as processing."""
    if shutil.which("nginx") is None or not DAV_MODULE.exists():
        pytest.skip("needs Debian's nginx and libnginx-mod-http-dav-ext (make test installs them)")
    if os.geteuid() != 0:
        pytest.skip("nginx's workers run as www-data: needs root")
    env = {"TGFS_ALLOW_OTHER": "true"}
    latency = getattr(request, "param", None)
    if latency is not None:
        monkeypatch.setenv("STANDIN_DIR", str(tmp_path / "telegram"))
        standin = StandIn(tmp_path / "telegram", bots=1, latency=latency)
        env |= telegram_env(standin, TGFS_BOT_TRANSFERS="1", TGFS_TRANSFERS="1")
    m = mount_factory(**env)
    traversable(m.path)
    work = nginx_dir(tmp_path / "nginx")
    port = _free_port()
    # The site as the README sets it up: examples/nginx-enable, here into this nginx's
    # configuration directory (checked against it, nothing reloaded).
    enabled = nginx_enable(work, m.path, f"127.0.0.1:{port}", USER)
    assert enabled.returncode == 0, enabled.stderr
    assert f"http://127.0.0.1:{port}/.tgfs/web/" in enabled.stdout
    assert "warning" not in enabled.stderr, enabled.stderr  # the mount allows others
    nginx = subprocess.Popen(
        ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _answers(port) or nginx.poll() is not None, 20, "nginx to listen")
        assert nginx.poll() is None, nginx.stderr.read().decode() if nginx.stderr else ""
        yield Site(port), m
    finally:
        nginx.terminate()
        nginx.wait(20)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
