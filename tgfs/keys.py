"""The encryption key: its written form, making one, and naming one without revealing it.

A key is 32 random bytes (AES-256), written as URL-safe base64 on one line: the form of
`TGFS_ENCRYPTION_KEY`, of the file `TGFS_ENCRYPTION_KEY_FILE` names, and of what
`tgfs key generate` writes. Only tgfs.store.sealing uses the bytes; this module knows
nothing of what they seal, so the settings can check a key without the store's code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

KEY_BYTES = 32  # AES-256


class BadKey(ValueError):
    """The text is not a key (the message never quotes it)."""


def parse_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        raise BadKey("not base64") from None
    if len(key) != KEY_BYTES:
        raise BadKey(f"{len(key)} bytes, not {KEY_BYTES}")
    return key


def key_id(key: bytes) -> str:
    """Names a key without revealing it (`tgfs config`, and the catalog's record of which
    key its parts are sealed with): 8 bytes of HMAC-SHA256(key, "tgfs key id")."""
    return hmac.new(key, b"tgfs key id", hashlib.sha256).hexdigest()[:16]


def generate_key_file(path: Path) -> str:
    """A new random key in a new file, 0600; returns its id. Refuses to overwrite a file:
    losing a key loses everything sealed under it."""
    key = os.urandom(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.urlsafe_b64encode(key).decode() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key_id(key)
