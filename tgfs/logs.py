"""Logging set-up: one format, and a filter that scrubs secrets from every record.

Secrets should never be formatted into a message in the first place (`Secret` masks itself),
but a library may echo a token in an exception (an HTTP URL with the bot token in it): the
filter is the second line of defence and replaces any configured secret with `***`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Telegram bot tokens have a fixed shape; scrub those even if they are not configured ones.
# No \b at the start: in Bot API URLs the token follows "bot" directly (".../bot123:AA…").
_TOKEN_SHAPE = re.compile(r"(?<!\d)\d{6,12}:[A-Za-z0-9_-]{30,}")


class SecretFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _TOKEN_SHAPE.sub("***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = self.scrub(message), None
        return True


def setup(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pyfuse3 logs every request at DEBUG; keep it quieter unless asked for.
    logging.getLogger("pyfuse3").setLevel(max(logging.INFO, root.level))
