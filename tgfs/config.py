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
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

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

# Telegram documents: 2000 MiB is the MTProto per-file limit for bots. The default part
# size is much smaller because a part is also the unit the read cache fetches: a player
# seeking into a large ordinary file should not wait for gigabytes. 64 MiB still keeps the
# message count (and so flood-control pressure) low.
DEFAULT_PART_SIZE = 64 * 2**20
MTPROTO_FILE_LIMIT = 2000 * 2**20

# Media child limits. A 4K transcode with libx264 peaks near 1 GiB resident and 1.4 GiB of
# address space (measured with a 10 s 3840x2160 clip); 3 GiB leaves room for a ladder of
# smaller renditions next to it. DCI 4K is the largest frame made by default: 8K sources
# are rare and need several GiB. A day of media is longer than any film or recording.
DEFAULT_MEDIA_MEMORY = 3 * 2**30
DEFAULT_MAX_PIXELS = "4096x2160"
DEFAULT_MAX_DURATION = 24 * 3600.0

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_PLACEHOLDER_TOKENS = {"", "your_bot_token", "changeme", "xxx", "token"}


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is one line meant for the user."""


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


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    cache_dir: Path
    spool_dir: Path
    cache_size: int
    cache_min_free: int  # bytes the cache leaves free on its disk
    prefetch_segments: int  # most segments fetched ahead of a player; 0 = no prefetch
    max_upload_size: int  # 0 = no limit
    part_size: int
    enable_copy_mode: bool
    copy_mode_min_size: int
    segment_seconds: float
    enable_hardware_acceleration: bool
    preferred_encoder: str
    x264_preset: str
    x264_crf: int
    ingest_jobs: int
    allow_other: bool
    log_level: str
    bots: tuple[Bot, ...] = ()
    api_id: int | None = None
    api_hash: Secret | None = None
    skipped_bots: tuple[str, ...] = ()  # why a configured bot was ignored, for start-up logs
    replicas: int = 1
    bot_messages_per_minute: int = 20  # 0 = no pacing (rely on FloodWait alone)
    bot_transfers: int = 4  # per bot and direction: kurigram's max_concurrent_transmissions
    stripe_width: int = 4  # bots an HLS segment is spread over (parts of ≥ 1 MiB)
    transfers: int = 32  # all bots together, per direction
    telegram_client: str = "pyrogram:Client"  # module:callable that makes a client object
    ladder: tuple[int, ...] = ()  # extra rendition heights below the source's (TGFS_LADDER)
    audio_hls: bool = False  # audio-only files become HLS too (TGFS_AUDIO_HLS)
    media_memory: int = 0  # address-space cap of the media child, bytes; 0 = none
    media_max_pixels: int = 0  # pixels per frame above which a video is kept as a file
    media_max_duration: float = 0.0  # seconds above which a video is kept as a file
    retry_delay: float = 30.0  # first retry of a job stopped by the store or a full disk, s

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.db"

    @property
    def local_store_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def session_dir(self) -> Path:
        return self.data_dir / "sessions"

    @property
    def store_kind(self) -> str:
        return "telegram" if self.bots else "local"

    def secrets(self) -> list[str]:
        """Every secret value, so the log filter can scrub them wherever they appear."""
        found = [b.token.reveal() for b in self.bots]
        if self.api_hash:
            found.append(self.api_hash.reveal())
        return [s for s in found if s]

    def describe(self) -> list[tuple[str, str]]:
        """(name, value) rows for `tgfs config`, secrets masked."""
        rows = [
            ("store", self.store_kind),
            ("TGFS_DATA_DIR", str(self.data_dir)),
            ("TGFS_CACHE_DIR", str(self.cache_dir)),
            ("TGFS_SPOOL_DIR", str(self.spool_dir)),
            ("TGFS_CACHE_SIZE", format_size(self.cache_size)),
            ("TGFS_CACHE_MIN_FREE", format_size(self.cache_min_free)),
            ("TGFS_PREFETCH_SEGMENTS", str(self.prefetch_segments)),
            (
                "MAX_UPLOAD_SIZE",
                format_size(self.max_upload_size) if self.max_upload_size else "no limit",
            ),
            ("TELEGRAM_MAX_FILE_SIZE", format_size(self.part_size)),
            ("ENABLE_COPY_MODE", str(self.enable_copy_mode).lower()),
            ("COPY_MODE_MIN_SIZE", format_size(self.copy_mode_min_size)),
            ("TGFS_SEGMENT_SECONDS", f"{self.segment_seconds:g}"),
            ("ENABLE_HARDWARE_ACCELERATION", str(self.enable_hardware_acceleration).lower()),
            ("PREFERRED_ENCODER", self.preferred_encoder),
            ("TGFS_X264_PRESET", self.x264_preset),
            ("TGFS_X264_CRF", str(self.x264_crf)),
            ("TGFS_LADDER", ",".join(map(str, self.ladder)) or "(source only)"),
            ("TGFS_AUDIO_HLS", str(self.audio_hls).lower()),
            (
                "TGFS_MEDIA_MEMORY",
                format_size(self.media_memory) if self.media_memory else "no limit",
            ),
            (
                "TGFS_MEDIA_MAX_PIXELS",
                str(self.media_max_pixels) if self.media_max_pixels else "no limit",
            ),
            (
                "TGFS_MEDIA_MAX_DURATION",
                f"{self.media_max_duration:g} s" if self.media_max_duration else "no limit",
            ),
            ("TGFS_INGEST_JOBS", str(self.ingest_jobs)),
            ("TGFS_RETRY_DELAY", f"{self.retry_delay:g} s"),
            ("TGFS_ALLOW_OTHER", str(self.allow_other).lower()),
            ("TGFS_LOG_LEVEL", self.log_level),
            ("TGFS_REPLICAS", str(self.replicas)),
            ("TGFS_BOT_MESSAGES_PER_MINUTE", str(self.bot_messages_per_minute)),
            ("TGFS_BOT_TRANSFERS", str(self.bot_transfers)),
            ("TGFS_STRIPE_WIDTH", str(self.stripe_width)),
            ("TGFS_TRANSFERS", str(self.transfers)),
            ("TELEGRAM_API_ID", str(self.api_id) if self.api_id else "(unset)"),
            ("TELEGRAM_API_HASH", str(self.api_hash) if self.api_hash else "(unset)"),
        ]
        for bot in self.bots:
            rows.append((f"TELEGRAM_BOT_TOKEN_{bot.number}", str(bot.token)))
            rows.append((f"TELEGRAM_CHANNEL_ID_{bot.number}", str(bot.channel_id)))
        rows.extend(("skipped", why) for why in self.skipped_bots)
        return rows


def parse_size(name: str, raw: str) -> int:
    """`20M`, `2GiB`, `1.5g`, `1048576` → bytes (binary units: M means MiB)."""
    match = _SIZE_RE.match(raw)
    if not match:
        raise ConfigError(f"{name}={raw!r} is not a size (examples: 500M, 2G, 1048576)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


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
    return _build(_Reader(values))


class _Reader:
    """Typed access to the raw strings, each error naming its setting."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def text(self, name: str, default: str) -> str:
        value = self.values.get(name, "").strip()
        return value or default

    def path(self, name: str, default: Path) -> Path:
        return Path(self.text(name, str(default))).expanduser().absolute()

    def size(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self.values.get(name, "").strip()
        if not raw:
            return default
        if raw.startswith("-"):
            raise ConfigError(f"{name}={raw!r} must not be negative")
        value = parse_size(name, raw)
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} is too small (minimum {format_size(minimum)})")
        return value

    def size_or_share(self, name: str, default: int, of: Path, minimum: int = 0) -> int:
        """A size ("2G"), or a percentage ("10%") of the filesystem that holds `of` (or
        its nearest existing parent), resolved now."""
        raw = self.values.get(name, "").strip()
        if not raw.endswith("%"):
            return self.size(name, default, minimum)
        try:
            share = float(raw[:-1])
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a size or a percentage") from None
        if not 0 < share <= 100:
            raise ConfigError(f"{name}={raw!r} must be a percentage between 0 and 100")
        where = of
        while not where.exists() and where != where.parent:
            where = where.parent
        st = os.statvfs(where)
        return max(minimum, int(st.f_blocks * st.f_frsize * share / 100))

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self.values.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={raw!r} must be between {low:g} and {high:g}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.values.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} must be true or false")

    def choice(self, name: str, default: str, allowed: tuple[str, ...], upper: bool = False) -> str:
        value = self.text(name, default)
        value = value.upper() if upper else value.lower()
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of: {', '.join(allowed)}")
        return value


def _build(r: _Reader) -> Settings:
    home = Path(r.text("HOME", str(Path.home())))
    xdg_data = Path(r.text("XDG_DATA_HOME", str(home / ".local" / "share")))
    xdg_cache = Path(r.text("XDG_CACHE_HOME", str(home / ".cache")))
    data_dir = r.path("TGFS_DATA_DIR", xdg_data / "tgfs")
    bots, skipped = _bots(r)
    api_id_raw = r.text("TELEGRAM_API_ID", "")
    if api_id_raw and not api_id_raw.isdigit():
        raise ConfigError(f"TELEGRAM_API_ID={api_id_raw!r} must be a number (from my.telegram.org)")
    api_hash = r.text("TELEGRAM_API_HASH", "")
    if bots and not (api_id_raw and api_hash):
        raise ConfigError(
            "TELEGRAM_API_ID and TELEGRAM_API_HASH are required with bots "
            "(create an application at https://my.telegram.org)"
        )
    replicas = int(r.number("TGFS_REPLICAS", 1, 1, 10))
    if bots and replicas > len(bots):
        raise ConfigError(
            f"TGFS_REPLICAS={replicas} needs at least {replicas} bots ({len(bots)} configured)"
        )
    client = r.text("TGFS_TELEGRAM_CLIENT", "pyrogram:Client")
    if not re.fullmatch(r"[\w.]+:[\w.]+", client):
        raise ConfigError(f"TGFS_TELEGRAM_CLIENT={client!r} must look like module:callable")
    part_size = r.size("TELEGRAM_MAX_FILE_SIZE", DEFAULT_PART_SIZE, minimum=2**20)
    if part_size > MTPROTO_FILE_LIMIT:
        raise ConfigError(
            f"TELEGRAM_MAX_FILE_SIZE={format_size(part_size)} is over Telegram's 2000 MiB limit"
        )
    cache_dir = r.path("TGFS_CACHE_DIR", xdg_cache / "tgfs")
    return Settings(
        data_dir=data_dir,
        cache_dir=cache_dir,
        spool_dir=r.path("TGFS_SPOOL_DIR", data_dir / "spool"),
        cache_size=r.size_or_share("TGFS_CACHE_SIZE", 2 * 2**30, cache_dir, minimum=16 * 2**20),
        cache_min_free=r.size("TGFS_CACHE_MIN_FREE", 2**30),
        prefetch_segments=int(r.number("TGFS_PREFETCH_SEGMENTS", 4, 0, 64)),
        max_upload_size=r.size("MAX_UPLOAD_SIZE", 0),
        part_size=part_size,
        enable_copy_mode=r.flag("ENABLE_COPY_MODE", True),
        copy_mode_min_size=r.size("COPY_MODE_MIN_SIZE", 20 * 2**20),
        segment_seconds=r.number("TGFS_SEGMENT_SECONDS", 6.0, 1.0, 30.0),
        enable_hardware_acceleration=r.flag("ENABLE_HARDWARE_ACCELERATION", False),
        preferred_encoder=r.choice("PREFERRED_ENCODER", "software", ENCODERS),
        x264_preset=r.choice("TGFS_X264_PRESET", "veryfast", X264_PRESETS),
        x264_crf=int(r.number("TGFS_X264_CRF", 21, 0, 51)),
        ingest_jobs=int(r.number("TGFS_INGEST_JOBS", 1, 1, 16)),
        allow_other=r.flag("TGFS_ALLOW_OTHER", False),
        log_level=r.choice("TGFS_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
        bots=bots,
        api_id=int(api_id_raw) if api_id_raw else None,
        api_hash=Secret(api_hash) if api_hash else None,
        skipped_bots=skipped,
        replicas=replicas,
        bot_messages_per_minute=int(r.number("TGFS_BOT_MESSAGES_PER_MINUTE", 20, 0, 6000)),
        bot_transfers=int(r.number("TGFS_BOT_TRANSFERS", 4, 1, 32)),
        stripe_width=int(r.number("TGFS_STRIPE_WIDTH", 4, 1, 16)),
        transfers=int(r.number("TGFS_TRANSFERS", 32, 1, 256)),
        telegram_client=client,
        ladder=_ladder(r.text("TGFS_LADDER", "")),
        audio_hls=r.flag("TGFS_AUDIO_HLS", False),
        media_memory=r.size("TGFS_MEDIA_MEMORY", DEFAULT_MEDIA_MEMORY, minimum=64 * 2**20)
        if r.text("TGFS_MEDIA_MEMORY", "") != "0"
        else 0,
        media_max_pixels=_pixels(r.text("TGFS_MEDIA_MAX_PIXELS", DEFAULT_MAX_PIXELS)),
        retry_delay=r.number("TGFS_RETRY_DELAY", 30.0, 0.1, 3600.0),
        media_max_duration=r.number(
            "TGFS_MEDIA_MAX_DURATION", DEFAULT_MAX_DURATION, 0, 10 * 365 * 86400
        ),
    )


def _pixels(raw: str) -> int:
    """`4096x2160` or a number of pixels → pixels per frame; 0 = no limit."""
    text = raw.lower().replace(" ", "")
    if re.fullmatch(r"\d+x\d+", text):
        width, height = text.split("x")
        return int(width) * int(height)
    if text.isdigit():
        return int(text)
    raise ConfigError(
        f"TGFS_MEDIA_MAX_PIXELS={raw!r} must be WIDTHxHEIGHT (e.g. 4096x2160) "
        "or a number of pixels; 0 = no limit"
    )


def _ladder(raw: str) -> tuple[int, ...]:
    """`1080,720,480` → (1080, 720, 480): rendition heights, largest first."""
    if not raw:
        return ()
    heights = set()
    for item in raw.replace(" ", "").split(","):
        if not item.removesuffix("p").isdigit() or not 144 <= int(item.removesuffix("p")) <= 4320:
            raise ConfigError(
                f"TGFS_LADDER={raw!r}: each entry must be a height from 144 to "
                "4320 (example: 1080,720,480)"
            )
        heights.add(int(item.removesuffix("p")))
    return tuple(sorted(heights, reverse=True))


def _bots(r: _Reader) -> tuple[tuple[Bot, ...], tuple[str, ...]]:
    """TELEGRAM_BOT_TOKEN_N / TELEGRAM_CHANNEL_ID_N pairs, any N, sorted by N.

    Placeholder and duplicate tokens are skipped (and reported by number, never by value);
    a channel id that cannot be a channel is an error, because storing into the wrong chat
    is worse than not starting.
    """
    bots: list[Bot] = []
    skipped: list[str] = []
    seen: set[str] = set()
    numbers = sorted(
        int(m.group(1)) for key in r.values if (m := re.fullmatch(r"TELEGRAM_BOT_TOKEN_(\d+)", key))
    )
    for n in numbers:
        token = r.values[f"TELEGRAM_BOT_TOKEN_{n}"].strip()
        if token.lower() in _PLACEHOLDER_TOKENS or ":" not in token:
            skipped.append(f"bot {n}: TELEGRAM_BOT_TOKEN_{n} is empty or a placeholder")
            continue
        if token in seen:
            skipped.append(f"bot {n}: same token as an earlier bot")
            continue
        raw_channel = r.values.get(f"TELEGRAM_CHANNEL_ID_{n}", "").strip()
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
