"""Settings: clear one-line errors, masked secrets, and no secret in any log line."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tgfs import config
from tgfs.logs import SecretFilter

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
API_HASH = "0123456789abcdef0123456789abcdef"


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tgfs", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TGFS_ENV_FILE": "/dev/null", **env},
    )


def test_defaults_use_local_store(tmp_path):
    settings = config.load({"HOME": str(tmp_path)}, env_file=tmp_path / "none")
    assert settings.store_kind == "local"
    assert settings.data_dir == tmp_path / ".local" / "share" / "tgfs"
    assert settings.copy_mode_min_size == 20 * 2**20
    assert settings.segment_seconds == 6.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TGFS_CACHE_SIZE", "-5G", "must not be negative"),
        ("PREFERRED_ENCODER", "quantum", "is not one of"),
        ("TGFS_SEGMENT_SECONDS", "0", "must be between"),
        ("ENABLE_COPY_MODE", "perhaps", "must be true or false"),
        ("TELEGRAM_MAX_FILE_SIZE", "3G", "2000 MiB"),
        ("COPY_MODE_MIN_SIZE", "lots", "is not a size"),
        ("TGFS_INGEST_JOBS", "0", "needs TGFS_INGEST=store-first and a catalog"),
        ("TGFS_INGEST", "later", "is not one of"),
    ],
)
def test_invalid_value_stops_with_one_line(name, value, message):
    result = run_cli("config", **{name: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and message in lines[0], result.stderr


def test_config_masks_secrets_and_reports_bad_bots():
    env = {
        "TELEGRAM_BOT_TOKEN_1": TOKEN,
        "TELEGRAM_CHANNEL_ID_1": "-1001234567890",
        "TELEGRAM_BOT_TOKEN_2": "your_bot_token",
        "TELEGRAM_CHANNEL_ID_2": "-1001234567891",
        "TELEGRAM_BOT_TOKEN_3": TOKEN,
        "TELEGRAM_CHANNEL_ID_3": "-1001234567892",
        "TELEGRAM_API_ID": "12345",
        "TELEGRAM_API_HASH": API_HASH,
    }
    result = run_cli("config", **env)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout and API_HASH not in result.stdout
    assert "bot 2: TELEGRAM_BOT_TOKEN_2 is empty or a placeholder" in result.stdout
    assert "bot 3: same token as an earlier bot" in result.stdout
    assert "***saw" in result.stdout  # enough to tell tokens apart


def test_bad_channel_id_is_a_clear_error():
    result = run_cli("config", TELEGRAM_BOT_TOKEN_1=TOKEN, TELEGRAM_CHANNEL_ID_1="@mychannel")
    assert result.returncode != 0
    assert "TELEGRAM_CHANNEL_ID_1" in result.stderr and TOKEN not in result.stderr


def test_bots_need_an_api_id_and_enough_bots_for_the_replicas():
    bot = {"TELEGRAM_BOT_TOKEN_1": TOKEN, "TELEGRAM_CHANNEL_ID_1": "-1001234567890"}
    result = run_cli("config", **bot)
    assert result.returncode != 0
    assert "TELEGRAM_API_ID and TELEGRAM_API_HASH are required" in result.stderr
    assert TOKEN not in result.stderr + result.stdout
    result = run_cli(
        "config", **bot, TELEGRAM_API_ID="12345", TELEGRAM_API_HASH=API_HASH, TGFS_REPLICAS="2"
    )
    assert result.returncode != 0 and "TGFS_REPLICAS=2 needs at least 2 bots" in result.stderr


def test_secret_objects_never_show_themselves():
    secret = config.Secret(TOKEN)
    assert TOKEN not in f"{secret} {secret!r} {[secret]}"
    assert secret.reveal() == TOKEN


def test_log_filter_scrubs_messages_args_and_tracebacks(caplog):
    logger = logging.getLogger("tgfs.test.secrets")
    scrubber = SecretFilter([API_HASH])
    logger.addFilter(scrubber)
    try:
        logger.warning("hash %s and token %s", API_HASH, TOKEN)
        try:
            raise RuntimeError(f"https://api.telegram.org/bot{TOKEN}/getMe failed")
        except RuntimeError:
            logger.exception("request failed")
    finally:
        logger.removeFilter(scrubber)
    text = caplog.text
    assert API_HASH not in text and TOKEN not in text
    assert text.count("***") >= 3


def test_sizes():
    assert config.parse_size("X", "20M") == 20 * 2**20
    assert config.parse_size("X", "1.5GiB") == int(1.5 * 2**30)
    assert config.parse_size("X", "4096") == 4096


def test_every_setting_is_in_env_example_and_readme():
    """Settings are declared once (tgfs.config.Settings); their documentation must follow."""
    repo = Path(__file__).resolve().parent.parent
    example = (repo / ".env.example").read_text()
    readme = (repo / "README.md").read_text()
    names = [spec.env for spec in config.specs().values()] + list(config.OTHER_SETTINGS)
    assert len(names) > 30
    for name in names:
        key = name.removesuffix("_N")  # numbered settings: TELEGRAM_BOT_TOKEN_1 …
        assert key in example, f"{name} is not in .env.example"
        assert key in readme, f"{name} is not in the README"


def test_defaults_are_parsed_like_user_input(tmp_path):
    """A default is written once, as the text a user would write: it passes its own parser
    and `tgfs config` shows it."""
    settings = config.load({"HOME": str(tmp_path)}, env_file=tmp_path / "none")
    shown = dict(settings.describe())
    for name, spec in config.specs().items():
        assert spec.env in shown
        if isinstance(spec.default, str):
            explicit = config.load(
                {"HOME": str(tmp_path), spec.env: spec.default}, env_file=tmp_path / "none"
            )
            assert getattr(explicit, name) == getattr(settings, name), spec.env


def test_the_encryption_key_is_checked_and_never_shown(tmp_path):
    from tgfs.keys import generate_key_file, key_id, parse_key

    key_file = tmp_path / "library.key"
    made = generate_key_file(key_file)
    text = key_file.read_text().strip()
    assert made == key_id(parse_key(text))
    base = {"HOME": str(tmp_path)}

    def load(**env: str) -> config.Settings:
        return config.load({**base, **env}, env_file=tmp_path / "none")

    for settings in (load(TGFS_ENCRYPTION_KEY_FILE=str(key_file)), load(TGFS_ENCRYPTION_KEY=text)):
        assert settings.key == parse_key(text) and text in settings.secrets()
        shown = dict(settings.describe())
        assert shown["encryption"] == f"on (key id {made})"
        assert text not in repr(settings) and text not in str(settings.describe())
    assert load().key is None and dict(load().describe())["encryption"] == "off"

    refusals = {
        "not both": dict(TGFS_ENCRYPTION_KEY=text, TGFS_ENCRYPTION_KEY_FILE=str(key_file)),
        "not a key": dict(TGFS_ENCRYPTION_KEY="c2hvcnQ="),  # base64 of 5 bytes
        "No such file": dict(TGFS_ENCRYPTION_KEY_FILE=str(tmp_path / "missing.key")),
    }
    for why, env in refusals.items():
        with pytest.raises(config.ConfigError, match=why) as refused:
            load(**env)
        assert text not in str(refused.value)
    key_file.chmod(0o640)  # readable by its group: refused, like an ssh key
    with pytest.raises(config.ConfigError, match="can be read by others"):
        load(TGFS_ENCRYPTION_KEY_FILE=str(key_file))
