"""The library page (tgfs/web) in a real browser: Debian's headless Chromium driven through
chromedriver by selenium, served by Debian's nginx with the example site over a real mount
(the `site` fixture, tests/nginx_site.py)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_in
from tests.nginx_site import AUTH, PASSWORD, USER
from tests.test_tracks import _film

selenium = pytest.importorskip("selenium", reason="selenium is a test dependency (make setup)")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The README's screenshots come from this test: run it with TGFS_SCREENSHOTS=docs/screenshots
# to refresh them (otherwise they go to the test's temporary folder).
SCREENSHOTS = os.environ.get("TGFS_SCREENSHOTS")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for _until's report
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _ready(driver: webdriver.Chrome, timeout: float = 60) -> None:
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return window.tgfs.ready"))


def _tile(driver: webdriver.Chrome, path: str):
    """The video's tile, once the page lists it (it lists again after a change of its own:
    waiting for the tile, not for a flag that the previous listing had already set)."""
    css = f'.tile.video[data-path="{path}"]'
    return WebDriverWait(driver, 30).until(
        lambda d: (d.find_elements(By.CSS_SELECTOR, css) or [None])[0]
    )


def _until(driver: webdriver.Chrome, timeout: float, condition, what: str):
    """WebDriverWait's until, with what the page said when it does not happen."""
    try:
        return WebDriverWait(
            driver, timeout, ignored_exceptions=[StaleElementReferenceException]
        ).until(condition)
    except TimeoutException:
        errors = driver.execute_script("return window.tgfs && window.tgfs.errors")
        console = [entry["message"] for entry in driver.get_log("browser")]
        video = driver.execute_script(
            "const v = document.getElementById('video'); return v && {time: v.currentTime,"
            " paused: v.paused, ready: v.readyState, network: v.networkState,"
            " error: v.error && v.error.message, buffered: Array.from("
            " {length: v.buffered.length}, (_, i) => [v.buffered.start(i), v.buffered.end(i)])}"
        )
        raise AssertionError(
            f"no {what} in {timeout} s; page errors {errors}; video {video}; console {console}"
        ) from None


def _shot(driver: webdriver.Chrome, folder: Path, name: str) -> None:
    folder = REPO / SCREENSHOTS if SCREENSHOTS else folder
    folder.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(folder / name))


def test_the_library_lists_a_video_with_its_poster_and_plays_it(site, browser, media, tmp_path):
    web, m = site
    (m.path / "Films").mkdir()
    copy_in(media("h264_aac.mp4"), m.path / "Films" / "Holiday.mp4")
    m.wait_idle()
    page = f"http://127.0.0.1:{web.port}/.tgfs/web/index.html"

    browser.get(page + "#/folder/Films")
    _ready(browser)
    tile = browser.find_element(By.CSS_SELECTOR, '.tile.video[data-path="Films/Holiday"]')
    assert "Holiday" in tile.text and "0:09" in tile.text  # title and duration
    poster = tile.find_element(By.TAG_NAME, "img")
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", poster
        )
    )
    _shot(browser, tmp_path, "library.png")

    tile.find_element(By.CSS_SELECTOR, "a.cover").click()
    _ready(browser)
    browser.execute_script("const v = document.getElementById('video'); v.muted = true; v.play()")
    _until(
        browser,
        60,
        lambda d: d.execute_script("return document.getElementById('video').currentTime") >= 4,
        "4 s played",
    )
    assert browser.execute_script("return window.tgfs.errors") == []
    _shot(browser, tmp_path, "player.png")


@pytest.mark.parametrize("site", [0.8], indirect=True)  # a store slow enough to watch
def test_upload_rename_delete_and_status_through_the_page(site, browser, media, tmp_path):
    """The page's own controls: an upload by the file picker (the password asked for on
    the server's 401) shows its progress, then the processing, both in its row and as a
    tile in the grid, then plays; the status view shows its job; rename and delete go
    through WebDAV."""
    web, m = site
    uploads = m.path / "Uploads"
    uploads.mkdir()
    shutil.chown(uploads, "www-data")  # nginx writes as www-data
    source = tmp_path / "Trip.mp4"
    shutil.copyfile(media("h264_aac.mp4"), source)
    browser.get(f"http://127.0.0.1:{web.port}/.tgfs/web/index.html#/folder/Uploads")
    _ready(browser)

    browser.find_element(By.ID, "pick").send_keys(str(source))
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.getElementById('login').open")
    )
    browser.find_element(By.ID, "user").send_keys(USER)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, '#login button[value="ok"]').click()
    row = browser.find_element(By.CSS_SELECTOR, '.upload[data-path="Uploads/Trip.mp4"]')
    # While the store takes its time: the row shows the job's stage and percent, and the
    # grid the video's tile as processing (with its percent too).
    _until(
        browser,
        60,
        lambda d: (
            re.search(r"processing: \w+ \d+ %", row.text) or "done" in row.get_attribute("class")
        ),
        "processing percent in the upload's row",
    )
    assert "done" not in row.get_attribute("class"), "the store was not slow enough to watch"
    busy = _until(
        browser,
        60,
        lambda d: d.find_elements(
            By.CSS_SELECTOR, '.tile.video[data-path="Uploads/Trip"] .badge.busy'
        ),
        "processing tile",
    )
    assert re.fullmatch(r"processing( \d+ %)?", busy[0].text), busy[0].text
    _until(browser, 120, lambda d: "done" in row.get_attribute("class"), "upload done")
    assert "ready" in row.text
    assert (uploads / "Trip" / "master.m3u8").exists()
    # (the page lists the folder again once it is ready: a tile may go stale under us)
    _until(browser, 30, lambda d: "0:09" in _tile(d, "Uploads/Trip").text, "ready tile")

    # It plays from the row's link.
    row.find_element(By.LINK_TEXT, "play").click()
    _ready(browser)
    browser.execute_script("const v = document.getElementById('video'); v.muted = true; v.play()")
    _until(
        browser,
        60,
        lambda d: d.execute_script("return document.getElementById('video').currentTime") >= 2,
        "2 s played",
    )
    assert browser.execute_script("return window.tgfs.errors") == []

    browser.get(f"http://127.0.0.1:{web.port}/.tgfs/web/index.html#/status")
    _ready(browser)
    jobs = browser.find_element(By.ID, "status").text
    assert "Uploads/Trip.mp4" in jobs and "done" in jobs

    browser.get(f"http://127.0.0.1:{web.port}/.tgfs/web/index.html#/folder/Uploads")
    _ready(browser)
    tile = browser.find_element(By.CSS_SELECTOR, '.tile.video[data-path="Uploads/Trip"]')
    tile.find_element(By.CSS_SELECTOR, "button.rename").click()
    prompt = WebDriverWait(browser, 10).until(lambda d: d.switch_to.alert)
    prompt.send_keys("Trip 2025")
    prompt.accept()
    WebDriverWait(browser, 30).until(lambda d: (uploads / "Trip 2025" / "master.m3u8").exists())
    tile = _tile(browser, "Uploads/Trip 2025")
    tile.find_element(By.CSS_SELECTOR, "button.delete").click()
    WebDriverWait(browser, 10).until(lambda d: d.switch_to.alert).accept()
    WebDriverWait(browser, 30).until(lambda d: not (uploads / "Trip 2025").exists())
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".tile.video") == []
    )
    m.wait_idle()


def test_audio_menu_resume_and_a_phone_screen(site, browser, tmp_path):
    """Two audio languages: the menu lists both and switches to French while playing; a
    video left at 5 s starts there again; on a phone-sized screen the grid has two
    columns."""
    web, m = site
    copy_in(_film(tmp_path, "libx264"), m.path / "Film.mkv")
    m.wait_idle()
    page = f"http://127.0.0.1:{web.port}/.tgfs/web/index.html"
    browser.get(page + "#/play/Film")
    _ready(browser)
    audio = "return Array.from(document.getElementById('audio').options).map(o => o.text)"
    WebDriverWait(browser, 30).until(lambda d: len(d.execute_script(audio)) == 2)
    assert len(set(browser.execute_script(audio))) == 2  # two tracks, told apart
    browser.execute_script("const v = document.getElementById('video'); v.muted = true; v.play()")
    at = "return document.getElementById('video').currentTime"
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(at) >= 1)
    french = browser.execute_script(
        "return window.tgfs.hls.audioTracks.findIndex(t => t.lang === 'fra')"
    )
    browser.execute_script(
        "const s = document.getElementById('audio'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('change'))",
        str(french),
    )
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return window.tgfs.hls.audioTrack") == french
    )
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(at) >= 5.2)
    # It played on in French. (hls.js may step over a gap of a few milliseconds where the
    # new track's buffer begins: a non-fatal "bufferSeekOverHole"; nothing fatal.)
    errors = browser.execute_script("return window.tgfs.errors")
    assert not [e for e in errors if "fatal" in e or "SeekOverHole" not in e], errors

    browser.get(page + "#/")  # away, then back: it starts where it was left
    _ready(browser)
    browser.get(page + "#/play/Film")
    _ready(browser)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(at) >= 4.9)

    browser.set_window_size(390, 844)
    browser.get(page + "#/")
    _ready(browser)
    columns = browser.execute_script(
        "return getComputedStyle(document.getElementById('grid')).gridTemplateColumns"
    )
    assert len(columns.split()) == 2, columns


def test_subtitles_menu_and_drag_and_drop(site, browser, tmp_path):
    """A file dropped on the page (a real drop event carrying a File) is uploaded and
    becomes a video; its English subtitles are in the subtitle menu, and choosing them
    makes the browser's text track show cues."""
    web, m = site
    shutil.chown(m.path, "www-data")  # uploads land in the library's top folder
    film = _film(tmp_path, "libx264")
    page = f"http://127.0.0.1:{web.port}/.tgfs/web/index.html"
    browser.get(page + "#/")
    _ready(browser)
    browser.execute_script(
        "sessionStorage.setItem('tgfs-auth', arguments[0])", AUTH["Authorization"]
    )
    # A file input of the test's own gives the browser the File; the page sees only a drop.
    picker = browser.execute_script(
        "const i = document.createElement('input'); i.type = 'file'; i.id = 'test-file';"
        "document.body.append(i); return i"
    )
    picker.send_keys(str(film))
    browser.execute_script(
        "const data = new DataTransfer(); data.items.add(arguments[0].files[0]);"
        "const drop = document.getElementById('drop');"
        "for (const type of ['dragover', 'drop'])"
        "  drop.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true}));",
        picker,
    )
    name = film.name
    row = browser.find_element(By.CSS_SELECTOR, f'.upload[data-path="{name}"]')
    WebDriverWait(browser, 120).until(lambda d: "done" in row.get_attribute("class"))
    stem = name.rsplit(".", 1)[0]
    assert (m.path / stem / "master.m3u8").exists()

    browser.get(page + f"#/play/{stem}")
    _ready(browser)
    menu = "return Array.from(document.getElementById('subtitles').options).map(o => o.value)"
    WebDriverWait(browser, 30).until(lambda d: len(d.execute_script(menu)) == 2)  # Off, eng
    browser.execute_script(
        "const s = document.getElementById('subtitles'); s.value = '0';"
        "s.dispatchEvent(new Event('change'));"
        "const v = document.getElementById('video'); v.muted = true; v.play()"
    )
    cues = (
        "return Array.from(document.getElementById('video').textTracks)"
        ".filter(t => t.mode === 'showing').reduce((n, t) => n + (t.cues ? t.cues.length : 0), 0)"
    )
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(cues) > 0)
    errors = browser.execute_script("return window.tgfs.errors")
    assert not [e for e in errors if "fatal" in e], errors
