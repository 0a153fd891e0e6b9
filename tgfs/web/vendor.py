"""Fetch hls.js from the npm registry into the page's files, checked against a pinned
integrity hash (npm's own `dist.integrity`: sha512 of the package tarball). Run by
`make setup`: `python -m tgfs.web.vendor`. Does nothing if the pinned version is there.

Pinned, not "latest": a player library that changes under a library page is a bug
report nobody can reproduce. To move to a newer hls.js, change both constants together
(`npm view hls.js@X.Y.Z dist.integrity` prints the hash) and run the browser tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request

from tgfs.web import STATIC

VERSION = "1.7.4"
INTEGRITY = (  # npm view hls.js@1.7.4 dist.integrity
    "sha512-3GlxGdPvT2YHvQYOt+yOzT/DEior/qJVNIylHA77kgeoBTdQQqi70GwefNEUm"
    "HQeNGyjC8U62+bruqW/Tpm+tg=="
)
TARBALL = f"https://registry.npmjs.org/hls.js/-/hls.js-{VERSION}.tgz"
MEMBER = "package/dist/hls.min.js"
NAME = "hls.min.js"
_STAMP = f".{NAME}.pin"  # which pin the file on disk came from


class IntegrityError(RuntimeError):
    """The registry's tarball is not the one pinned."""


def fetch() -> bool:
    """Make sure the pinned hls.js is in the page's files; True if it was fetched now."""
    STATIC.mkdir(parents=True, exist_ok=True)
    dest, stamp = STATIC / NAME, STATIC / _STAMP
    if dest.exists() and stamp.exists() and stamp.read_text() == INTEGRITY:
        return False
    with urllib.request.urlopen(TARBALL, timeout=120) as response:
        tarball = response.read()
    algorithm, _, expected = INTEGRITY.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
    if digest != expected:
        raise IntegrityError(f"{TARBALL}: {algorithm} is {digest}, pinned {expected}")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise IntegrityError(f"{TARBALL} has no {MEMBER}")
        script = member.read()
    tmp = dest.with_name(f".{NAME}.tmp")
    tmp.write_bytes(script)
    tmp.replace(dest)
    stamp.write_text(INTEGRITY)
    return True


if __name__ == "__main__":
    try:
        fetched = fetch()
    except (OSError, IntegrityError) as exc:
        sys.exit(f"hls.js {VERSION}: {exc}")
    print(f"hls.js {VERSION}: {'fetched and checked' if fetched else 'already there'}")
