# tgfs — set-up, run, test. Every target installs what it needs first (Debian, as root or
# with sudo), so `make run` and `make test` work on a fresh machine.

VENV      ?= .venv
MNT       ?= mnt
PYTHON    ?= python3
APT_DEPS  := fuse3 libfuse3-dev pkg-config ffmpeg gcc python3 python3-venv python3-dev rsync
# Only the tests need these: a real nginx serving the mount and a real browser on the
# library page (tests/test_web.py, tests/test_browser.py), a media server scanning the MP4
# view (tests/test_mp4_view.py), and PostgreSQL for the catalog (tests/postgres.py).
TEST_APT_DEPS := nginx libnginx-mod-http-dav-ext chromium chromium-driver minidlna postgresql
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run test lint bench-telegram bench-media bench-stream bench-library bench-catalog clean

# hls.js for the library page, from the npm registry, checked against the pinned hash.
HLSJS := tgfs/web/static/hls.min.js

setup: $(VENV)/.installed $(HLSJS)

$(HLSJS): tgfs/web/vendor.py | $(VENV)/.installed
	$(VENV)/bin/python -m tgfs.web.vendor

# System packages: only the missing ones are installed (apt-get is slow even when idle).
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

.apt-deps:
	$(call apt_install,$(APT_DEPS))
	@touch $@

.test-apt-deps: Makefile
	$(call apt_install,$(TEST_APT_DEPS))
	@# The tests run MiniDLNA's scanner themselves: no media server announcing itself on
	@# the network from the service Debian's package enables. (PostgreSQL's own service,
	@# on localhost, is left as it is: the tests start a private server.)
	@if [ -d /run/systemd/system ] && systemctl is-enabled minidlna >/dev/null 2>&1; then \
	    $(SUDO) systemctl disable --now minidlna; fi
	@touch $@

$(VENV)/.installed: .apt-deps pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

# Mount ./mnt (or MNT=path) on the embedded local store, in the foreground: Ctrl-C unmounts.
run: setup
	mkdir -p $(MNT)
	$(VENV)/bin/tgfs mount $(MNT)

test: lint .test-apt-deps
	$(VENV)/bin/pytest -q

# Telegram store benchmarks against the client stand-in (a few minutes; prints figures).
bench-telegram: setup
	$(VENV)/bin/python -m tests.bench_telegram

# Media benchmarks: tgfs's HLS vs the ffmpeg CLI on a generated 1080p film (a few minutes).
bench-media: setup
	$(VENV)/bin/python -m tests.bench_media

# Streaming through the mount: cold playback (8 bots, 1 bot, 4 viewers, a seek), warm reads,
# stat/readdir latency; each beside rclone's VFS cache over the same slowed files; the MP4
# view against the HLS folder. Needs rclone (installed here if missing) and about 8 GB in
# /var/tmp; ~20 minutes. BENCH_ARGS="--only view" runs the MP4 view's section alone.
bench-stream: setup
	@command -v rclone >/dev/null || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone
	$(VENV)/bin/python -m tests.bench_stream $(BENCH_ARGS)

# .tgfs/library.json on a synthetic 5,000-video catalog, beside walking the same tree through
# the mount and on local disk (a couple of minutes; BENCH_ARGS="--videos 20000" for more).
bench-library: setup
	$(VENV)/bin/python -m tests.bench_library $(BENCH_ARGS)

# Catalog latency through the mount (create, stat, readdir of 1,000 entries: p50/p99), the
# catalog in SQLite beside PostgreSQL over TCP on 127.0.0.1 (a private server it starts; it
# installs Debian's postgresql if missing). A minute or two.
bench-catalog: setup
	$(call apt_install,postgresql)
	$(VENV)/bin/python -m tests.bench_catalog $(BENCH_ARGS)

# Lint, formatting and types: all three must be clean (CI runs them through `make test`).
lint: setup
	$(VENV)/bin/ruff check tgfs tests
	$(VENV)/bin/ruff format --check tgfs tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .apt-deps .test-apt-deps .pytest_cache
