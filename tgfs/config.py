"""One settings object, read from the environment and a `.env` file.

Names follow the seed project where one exists (`TELEGRAM_*`, `MAX_UPLOAD_SIZE`,
`ENABLE_COPY_MODE` …); options new to tgfs start with `TGFS_`. Every option is listed, with
a comment, in `.env.example`. Values in the process environment win over the `.env` file, so
a systemd unit or a test can override one setting without editing the file.

Invalid values raise `ConfigError` with one line that names the setting; the CLI prints it
and exits, so a typo never starts a half-configured mount. Secrets are wrapped in `Secret`,
whose `str`/`repr` is a mask: printing the settings, logging them or putting them in an
exception message cannot leak a token.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from tgfs.keys import BadKey, key_id, parse_key

ENCODERS = ("software", "nvenc", "qsv", "vaapi")
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MTPROTO_FILE_LIMIT = 2000 * 2**20  # bytes in one document, for bots


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_PLACEHOLDER_TOKENS = {"", "your_bot_token", "changeme", "xxx", "token"}


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is one line meant for the user."""


def parse_size(name: str, raw: str) -> int:
    """`20M`, `2GiB`, `1.5g`, `1048576` → bytes (binary units: M means MiB)."""
    match = _SIZE_RE.match(raw)
    if not match:
        raise ConfigError(f"{name}={raw!r} is not a size (examples: 500M, 2G, 1048576)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_time(ns: int) -> str:
    """A moment (epoch nanoseconds) as local time, the way status output shows them."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


class Secret:
    """A string that never shows itself by accident (str, repr, f-strings, logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return mask(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def mask(value: str) -> str:
    """What `tgfs config` shows for a secret: enough to tell two apart, not to use one."""
    if not value:
        return "(unset)"
    return f"***{value[-3:]}" if len(value) >= 16 else "***"


@dataclasses.dataclass(frozen=True)
class Bot:
    """One Telegram bot and the private channel it stores into."""

    number: int  # the N of TELEGRAM_BOT_TOKEN_N: how users and logs name the bot
    token: Secret
    channel_id: int

    @property
    def bot_id(self) -> int:
        """The bot's Telegram user id: the token's public half, stable across renumbering."""
        return int(self.token.reveal().split(":", 1)[0])


# ---- one declaration per setting ------------------------------------------------------------
#
# Each setting is one field of Settings below, declared with `_setting(ENV_NAME, default,
# parser, shown)`: that single line drives reading it (from the environment over `.env`),
# validating it (the parser raises ConfigError naming it), its default (raw text, parsed
# like user input, or made from settings declared above it) and how `tgfs config` shows it.
# tests/test_config.py checks that `.env.example` and the README list every one.

Earlier = dict[str, Any]  # settings parsed so far, by field name
Parser = Callable[[str, str, Earlier], Any]  # (env name, raw text, earlier) → value
Default = str | Callable[[Mapping[str, str], Earlier], str]  # raw text, or made from others


@dataclasses.dataclass(frozen=True)
class Spec:
    env: str
    default: Default
    parse: Parser
    show: Callable[[Any], str] = str


def _setting(env: str, default: Default, parse: Parser, show: Callable[[Any], str] = str) -> Any:
    return dataclasses.field(metadata={"spec": Spec(env, default, parse, show)})


def _path(name: str, raw: str, earlier: Earlier) -> Path:
    return Path(raw).expanduser().absolute()


def _size(
    minimum: int = 0, maximum: int = 0, over: str = "", zero_means_none: bool = False
) -> Parser:
    def parse(name: str, raw: str, earlier: Earlier) -> int:
        if raw.startswith("-"):
            raise ConfigError(f"{name}={raw!r} must not be negative")
        value = parse_size(name, raw)
        if zero_means_none and value == 0:
            return 0
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} is too small (minimum {format_size(minimum)})")
        if maximum and value > maximum:
            raise ConfigError(f"{name}={format_size(value)} is over {over or format_size(maximum)}")
        return value

    return parse


def _size_or_share(of: str, minimum: int = 0) -> Parser:
    """A size ("2G"), or a percentage ("10%") of the filesystem that holds the setting
    `of` (a path declared earlier; or its nearest existing parent), resolved now."""

    def parse(name: str, raw: str, earlier: Earlier) -> int:
        if not raw.endswith("%"):
            return _size(minimum)(name, raw, earlier)
        try:
            share = float(raw[:-1])
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a size or a percentage") from None
        if not 0 < share <= 100:
            raise ConfigError(f"{name}={raw!r} must be a percentage between 0 and 100")
        where: Path = earlier[of]
        while not where.exists() and where != where.parent:
            where = where.parent
        st = os.statvfs(where)
        return max(minimum, int(st.f_blocks * st.f_frsize * share / 100))

    return parse


def _number(low: float, high: float, whole: bool = False) -> Parser:
    def parse(name: str, raw: str, earlier: Earlier) -> float | int:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={raw!r} must be between {low:g} and {high:g}")
        return int(value) if whole else value

    return parse


def _flag(name: str, raw: str, earlier: Earlier) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def _choice(allowed: tuple[str, ...], upper: bool = False) -> Parser:
    def parse(name: str, raw: str, earlier: Earlier) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
        return value

    return parse


def _client(name: str, raw: str, earlier: Earlier) -> str:
    if not re.fullmatch(r"[\w.]+:[\w.]+", raw):
        raise ConfigError(f"{name}={raw!r} must look like module:callable")
    return raw


def _pixels(name: str, raw: str, earlier: Earlier) -> int:
    """`4096x2160` or a number of pixels → pixels per frame; 0 = no limit."""
    text = raw.lower().replace(" ", "")
    if re.fullmatch(r"\d+x\d+", text):
        width, height = text.split("x")
        return int(width) * int(height)
    if text.isdigit():
        return int(text)
    raise ConfigError(
        f"{name}={raw!r} must be WIDTHxHEIGHT (e.g. 4096x2160) or a number of pixels; 0 = no limit"
    )


def _ladder(name: str, raw: str, earlier: Earlier) -> tuple[int, ...]:
    """`1080,720,480` → (1080, 720, 480): rendition heights, largest first; "none": ()."""
    if raw.lower() == "none":
        return ()
    heights = set()
    for item in raw.replace(" ", "").split(","):
        if not item.removesuffix("p").isdigit() or not 144 <= int(item.removesuffix("p")) <= 4320:
            raise ConfigError(
                f"{name}={raw!r}: each entry must be a height from 144 to "
                "4320 (example: 1080,720,480)"
            )
        heights.add(int(item.removesuffix("p")))
    return tuple(sorted(heights, reverse=True))


def _folder_name(name: str, raw: str, earlier: Earlier) -> str:
    """One name for a folder (no "/", not "." or ".."), or empty."""
    value = raw.strip()
    if "/" in value or "\0" in value or value in (".", "..") or len(os.fsencode(value)) > 255:
        raise ConfigError(f"{name}={raw!r} must be one folder name (no '/'), or empty for none")
    if value == ".tgfs":
        raise ConfigError(f"{name}=.tgfs is the control folder's name")
    return value


def _catalog_url(name: str, raw: str, earlier: Earlier) -> str:
    """A PostgreSQL URL for the catalog, or empty (SQLite in the data directory)."""
    value = raw.strip()
    if value and not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{name} must be a postgresql://… URL, or empty for the SQLite catalog in TGFS_DATA_DIR"
        )
    return value


def _ingest(name: str, raw: str, earlier: Earlier) -> str:
    value = _choice(("local", "store-first"))(name, raw, earlier)
    if earlier.get("ingest_jobs") == 0 and not (
        value == "store-first" and earlier.get("catalog_url")
    ):
        raise ConfigError(
            "TGFS_INGEST_JOBS=0 (make no videos here) needs TGFS_INGEST=store-first and a "
            "catalog other hosts share (TGFS_CATALOG_URL), or nothing would make them"
        )
    return value


def url_password(url: str) -> str | None:
    """The password in a URL, if it has one (a secret: never shown, scrubbed from logs)."""
    password = urllib.parse.urlsplit(url).password
    if password is None:  # libpq also takes it as a parameter
        found = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("password")
        password = found[0] if found else None
    return password or None


def masked_url(url: str) -> str:
    """A catalog URL as shown: its password masked."""
    if not url:
        return "(SQLite in TGFS_DATA_DIR)"
    password = url_password(url)
    return url.replace(password, "***") if password else url


def _xdg(variable: str, fallback: str) -> Default:
    """A default under an XDG base directory ($XDG_DATA_HOME, …, else under $HOME)."""

    def default(values: Mapping[str, str], earlier: Earlier) -> str:
        home = values.get("HOME") or str(Path.home())
        return str(Path(values.get(variable) or Path(home) / fallback) / "tgfs")

    return default


def _under_data_dir(name: str) -> Default:
    return lambda values, earlier: str(earlier["data_dir"] / name)


def _limit(show: Callable[[Any], str]) -> Callable[[Any], str]:
    """0 shown as "no limit"."""
    return lambda value: show(value) if value else "no limit"


def _lower(value: object) -> str:
    return str(value).lower()


def _seconds(value: float) -> str:
    return f"{value:g} s"


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path = _setting("TGFS_DATA_DIR", _xdg("XDG_DATA_HOME", ".local/share"), _path)
    cache_dir: Path = _setting("TGFS_CACHE_DIR", _xdg("XDG_CACHE_HOME", ".cache"), _path)
    spool_dir: Path = _setting("TGFS_SPOOL_DIR", _under_data_dir("spool"), _path)
    # The embedded store's directory, when no bots are set (several hosts sharing one
    # library without Telegram point theirs at one shared directory).
    local_store_dir: Path = _setting("TGFS_LOCAL_STORE_DIR", _under_data_dir("blobs"), _path)
    cache_size: int = _setting(
        "TGFS_CACHE_SIZE", "2G", _size_or_share("cache_dir", minimum=16 * 2**20), format_size
    )
    # Bytes the cache leaves free on its disk.
    cache_min_free: int = _setting("TGFS_CACHE_MIN_FREE", "1G", _size(), format_size)
    # Most segments fetched ahead of a player; 0 = no prefetch.
    prefetch_segments: int = _setting("TGFS_PREFETCH_SEGMENTS", "4", _number(0, 64, whole=True))
    max_upload_size: int = _setting("MAX_UPLOAD_SIZE", "0", _size(), _limit(format_size))
    # Telegram documents: 2000 MiB is the MTProto per-file limit for bots. The default part
    # size is much smaller because a part is also the unit the read cache fetches: a player
    # seeking into a large ordinary file should not wait for gigabytes. 64 MiB still keeps
    # the message count (and so flood-control pressure) low.
    part_size: int = _setting(
        "TELEGRAM_MAX_FILE_SIZE",
        "64M",
        _size(minimum=2**20, maximum=MTPROTO_FILE_LIMIT, over="Telegram's 2000 MiB limit"),
        format_size,
    )
    enable_copy_mode: bool = _setting("ENABLE_COPY_MODE", "true", _flag, _lower)
    copy_mode_min_size: int = _setting("COPY_MODE_MIN_SIZE", "20M", _size(), format_size)
    segment_seconds: float = _setting(
        "TGFS_SEGMENT_SECONDS", "6", _number(1, 30), lambda v: f"{v:g}"
    )
    enable_hardware_acceleration: bool = _setting(
        "ENABLE_HARDWARE_ACCELERATION", "false", _flag, _lower
    )
    preferred_encoder: str = _setting("PREFERRED_ENCODER", "software", _choice(ENCODERS))
    x264_preset: str = _setting("TGFS_X264_PRESET", "veryfast", _choice(X264_PRESETS))
    x264_crf: int = _setting("TGFS_X264_CRF", "21", _number(0, 51, whole=True))
    # Extra rendition heights below the source's; "none": the source's only.
    ladder: tuple[int, ...] = _setting(
        "TGFS_LADDER", "none", _ladder, lambda v: ",".join(map(str, v)) or "(source only)"
    )
    audio_hls: bool = _setting("TGFS_AUDIO_HLS", "false", _flag, _lower)
    # Media child limits. A 4K transcode with libx264 peaks near 1 GiB resident and 1.4 GiB
    # of address space (measured with a 10 s 3840x2160 clip); 3 GiB leaves room for a
    # ladder of smaller renditions next to it. DCI 4K is the largest frame made by default:
    # 8K sources are rare and need several GiB. A day of media is longer than any film or
    # recording. 0 = no limit, for each.
    media_memory: int = _setting(
        "TGFS_MEDIA_MEMORY",
        "3G",
        _size(minimum=64 * 2**20, zero_means_none=True),
        _limit(format_size),
    )
    media_max_pixels: int = _setting("TGFS_MEDIA_MAX_PIXELS", "4096x2160", _pixels, _limit(str))
    media_max_duration: float = _setting(
        "TGFS_MEDIA_MAX_DURATION", "86400", _number(0, 10 * 365 * 86400), _limit(_seconds)
    )
    # Videos made at once on this host; 0 (with store-first ingest and a shared catalog):
    # none, this host only stores what is dropped on it and serves.
    ingest_jobs: int = _setting("TGFS_INGEST_JOBS", "1", _number(0, 16, whole=True))
    # The first retry of a job stopped by the store or a full disk, s (then doubling).
    retry_delay: float = _setting("TGFS_RETRY_DELAY", "30", _number(0.1, 3600), _seconds)
    allow_other: bool = _setting("TGFS_ALLOW_OTHER", "false", _flag, _lower)
    log_level: str = _setting("TGFS_LOG_LEVEL", "INFO", _choice(LOG_LEVELS, upper=True))
    replicas: int = _setting("TGFS_REPLICAS", "1", _number(1, 10, whole=True))
    # 0 = no pacing (rely on FloodWait alone).
    bot_messages_per_minute: int = _setting(
        "TGFS_BOT_MESSAGES_PER_MINUTE", "20", _number(0, 6000, whole=True)
    )
    # Per bot and direction: kurigram's max_concurrent_transmissions.
    bot_transfers: int = _setting("TGFS_BOT_TRANSFERS", "4", _number(1, 32, whole=True))
    # Bots an HLS segment is spread over (parts of ≥ 1 MiB).
    stripe_width: int = _setting("TGFS_STRIPE_WIDTH", "4", _number(1, 16, whole=True))
    # All bots together, per direction.
    transfers: int = _setting("TGFS_TRANSFERS", "32", _number(1, 256, whole=True))
    # Catalog backups in the store (tgfs.backups): after changes, at most this often, s
    # (0: only `tgfs backup` and at unmount); how many generations are kept.
    backup_interval: float = _setting(
        "TGFS_BACKUP_INTERVAL", "3600", _number(0, 7 * 86400), _limit(_seconds)
    )
    backup_keep: int = _setting("TGFS_BACKUP_KEEP", "7", _number(1, 1000, whole=True))
    # Days a deleted file or video stays in the trash (tgfs.catalog.trash); 0: deleted at
    # once. Fractions are allowed (tests use seconds' worth).
    trash_days: float = _setting("TGFS_TRASH_DAYS", "7", _number(0, 3650))
    # The catalog in PostgreSQL (postgresql://user:password@host/db): empty for the SQLite
    # file in the data directory.
    catalog_url: str = _setting("TGFS_CATALOG_URL", "", _catalog_url, masked_url)
    # Threads (each with a connection) that read a PostgreSQL catalog off the FUSE thread
    # (tgfs.catalog.readers); 0: on it. Unused with SQLite.
    catalog_readers: int = _setting("TGFS_CATALOG_READERS", "4", _number(0, 32, whole=True))
    # "local": a dropped file is made into a video by the host it was dropped on, from its
    # spool; "store-first": it is first stored as it is, then any host of a shared catalog
    # with TGFS_INGEST_JOBS > 0 may make the video (tgfs.ingest.runner).
    ingest: str = _setting("TGFS_INGEST", "local", _ingest)
    # Keep the original of a video made by store-first ingest, beside its folder.
    keep_originals: bool = _setting("TGFS_KEEP_ORIGINALS", "false", _flag, _lower)
    # The MP4 view's folder at the mount's root (tgfs.fs.view): every video as one MP4
    # file for media servers and downloads. Off unless named: a folder tgfs adds to the
    # root would surprise `du`, `rsync -a` and a user's own folder of that name.
    mp4_view: str = _setting("TGFS_MP4_VIEW", "", _folder_name, lambda v: v or "(off)")
    # module:callable that makes a client object (tests point it at the stand-in).
    telegram_client: str = _setting("TGFS_TELEGRAM_CLIENT", "pyrogram:Client", _client)
    # Not single settings: the numbered bot pairs and the API credentials (see _bots).
    bots: tuple[Bot, ...] = ()
    api_id: int | None = None
    api_hash: Secret | None = None
    # TGFS_ENCRYPTION_KEY, or read from TGFS_ENCRYPTION_KEY_FILE (see _encryption_key).
    encryption_key: Secret | None = None
    skipped_bots: tuple[str, ...] = ()  # why a configured bot was ignored, for start-up logs

    @property
    def catalog_path(self) -> Path:
        """The SQLite catalog's file (where the catalog is unless TGFS_CATALOG_URL says)."""
        return self.data_dir / "catalog.db"

    @property
    def catalog(self) -> Path | str:
        """Where the catalog is: its PostgreSQL URL, or the SQLite file."""
        return self.catalog_url or self.catalog_path

    @property
    def session_dir(self) -> Path:
        return self.data_dir / "sessions"

    @property
    def store_kind(self) -> str:
        return "telegram" if self.bots else "local"

    @property
    def key(self) -> bytes | None:
        """The encryption key's bytes (None: parts are stored as they are)."""
        return parse_key(self.encryption_key.reveal()) if self.encryption_key else None

    def secrets(self) -> list[str]:
        """Every secret value, so the log filter can scrub them wherever they appear."""
        found = [b.token.reveal() for b in self.bots]
        for secret in (self.api_hash, self.encryption_key):
            if secret:
                found.append(secret.reveal())
        if self.catalog_url and (password := url_password(self.catalog_url)):
            found.append(password)
        return [s for s in found if s]

    def describe(self) -> list[tuple[str, str]]:
        """(name, value) rows for `tgfs config`, secrets masked."""
        rows = [("store", self.store_kind)]
        rows += [(spec.env, spec.show(getattr(self, name))) for name, spec in specs().items()]
        rows.append(("TELEGRAM_API_ID", str(self.api_id) if self.api_id else "(unset)"))
        rows.append(("TELEGRAM_API_HASH", str(self.api_hash) if self.api_hash else "(unset)"))
        key = self.key
        rows.append(("encryption", f"on (key id {key_id(key)})" if key else "off"))
        for bot in self.bots:
            rows.append((f"TELEGRAM_BOT_TOKEN_{bot.number}", str(bot.token)))
            rows.append((f"TELEGRAM_CHANNEL_ID_{bot.number}", str(bot.channel_id)))
        rows.extend(("skipped", why) for why in self.skipped_bots)
        return rows


def specs() -> dict[str, Spec]:
    """Every single setting, by Settings field name, in declaration order."""
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(Settings) if f.metadata}


# Settings that are not one field: the API credentials, the numbered bot pairs, the file.
OTHER_SETTINGS = (
    "TELEGRAM_API_ID",
    "TELEGRAM_API_HASH",
    "TELEGRAM_BOT_TOKEN_N",
    "TELEGRAM_CHANNEL_ID_N",
    "TGFS_ENV_FILE",
    "TGFS_ENCRYPTION_KEY",
    "TGFS_ENCRYPTION_KEY_FILE",
)


def load(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Settings from `environ` (default: os.environ) over the `.env` file.

    The file is `TGFS_ENV_FILE` if set, else `./.env` when it exists.
    """
    environ = dict(os.environ if environ is None else environ)
    if env_file is None:
        env_file = Path(environ.get("TGFS_ENV_FILE", ".env"))
        if "TGFS_ENV_FILE" in environ and not env_file.exists():
            raise ConfigError(f"TGFS_ENV_FILE={env_file} does not exist")
    values: dict[str, str] = {}
    if env_file.exists() and not env_file.is_dir():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(environ)
    return _build(values)


def _build(values: Mapping[str, str]) -> Settings:
    earlier: Earlier = {}
    for name, spec in specs().items():
        raw = values.get(spec.env, "").strip()
        if not raw:
            raw = spec.default if isinstance(spec.default, str) else spec.default(values, earlier)
        earlier[name] = spec.parse(spec.env, raw, earlier)
    bots, skipped = _bots(values)
    api_id_raw = values.get("TELEGRAM_API_ID", "").strip()
    if api_id_raw and not api_id_raw.isdigit():
        raise ConfigError(f"TELEGRAM_API_ID={api_id_raw!r} must be a number (from my.telegram.org)")
    api_hash = values.get("TELEGRAM_API_HASH", "").strip()
    if bots and not (api_id_raw and api_hash):
        raise ConfigError(
            "TELEGRAM_API_ID and TELEGRAM_API_HASH are required with bots "
            "(create an application at https://my.telegram.org)"
        )
    replicas = earlier["replicas"]
    if bots and replicas > len(bots):
        raise ConfigError(
            f"TGFS_REPLICAS={replicas} needs at least {replicas} bots ({len(bots)} configured)"
        )
    return Settings(
        **earlier,
        bots=bots,
        api_id=int(api_id_raw) if api_id_raw else None,
        api_hash=Secret(api_hash) if api_hash else None,
        encryption_key=_encryption_key(values),
        skipped_bots=skipped,
    )


def _encryption_key(values: Mapping[str, str]) -> Secret | None:
    """The key itself, or the file holding it (which must be the owner's alone, like an
    ssh key: a key others can read protects nothing). Never both: which would win?"""
    text = values.get("TGFS_ENCRYPTION_KEY", "").strip()
    name = "TGFS_ENCRYPTION_KEY"
    file = values.get("TGFS_ENCRYPTION_KEY_FILE", "").strip()
    if text and file:
        raise ConfigError("set TGFS_ENCRYPTION_KEY or TGFS_ENCRYPTION_KEY_FILE, not both")
    if file:
        name = f"TGFS_ENCRYPTION_KEY_FILE={file}"
        path = Path(file).expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{name}: not a key (not text)") from None
        if mode & 0o077:
            raise ConfigError(f"{name} can be read by others (mode {mode & 0o777:o}): chmod 600 it")
    if not text:
        return None
    try:
        parse_key(text)
    except BadKey as exc:
        raise ConfigError(
            f"{name}: not a key ({exc}); make one with `tgfs key generate FILE`"
        ) from None
    return Secret(text)


def _bots(values: Mapping[str, str]) -> tuple[tuple[Bot, ...], tuple[str, ...]]:
    """TELEGRAM_BOT_TOKEN_N / TELEGRAM_CHANNEL_ID_N pairs, any N, sorted by N.

    Placeholder and duplicate tokens are skipped (and reported by number, never by value);
    a channel id that cannot be a channel is an error, because storing into the wrong chat
    is worse than not starting.
    """
    bots: list[Bot] = []
    skipped: list[str] = []
    seen: set[str] = set()
    numbers = sorted(
        int(m.group(1)) for key in values if (m := re.fullmatch(r"TELEGRAM_BOT_TOKEN_(\d+)", key))
    )
    for n in numbers:
        token = values[f"TELEGRAM_BOT_TOKEN_{n}"].strip()
        if token.lower() in _PLACEHOLDER_TOKENS or ":" not in token:
            skipped.append(f"bot {n}: TELEGRAM_BOT_TOKEN_{n} is empty or a placeholder")
            continue
        if token in seen:
            skipped.append(f"bot {n}: same token as an earlier bot")
            continue
        raw_channel = values.get(f"TELEGRAM_CHANNEL_ID_{n}", "").strip()
        if not raw_channel:
            raise ConfigError(f"TELEGRAM_CHANNEL_ID_{n} is missing for bot {n}")
        if not re.fullmatch(r"-100\d{5,}", raw_channel):
            raise ConfigError(
                f"TELEGRAM_CHANNEL_ID_{n}={raw_channel!r} is not a channel id "
                "(private channel ids look like -1001234567890)"
            )
        seen.add(token)
        bots.append(Bot(number=n, token=Secret(token), channel_id=int(raw_channel)))
    return tuple(bots), tuple(skipped)
