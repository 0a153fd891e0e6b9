"""The library's web page: static files shown read-only in the mount as `.tgfs/web/`, so
nginx serves the page and the library from one root (examples/nginx.conf).

`static/` holds the page (HTML, CSS, JavaScript modules; no build step) and, once
`python -m tgfs.web.vendor` has run (`make setup` runs it), hls.js fetched from the npm
registry, pinned by version and integrity hash (not committed).
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"


def files() -> dict[str, Path]:
    """The page's files by name (flat: `.tgfs/web/<name>`), dotfiles left out."""
    if not STATIC.is_dir():
        return {}
    return {
        p.name: p for p in sorted(STATIC.iterdir()) if p.is_file() and not p.name.startswith(".")
    }
