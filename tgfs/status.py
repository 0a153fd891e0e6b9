"""Live state for `.tgfs/status.json` (built in the daemon) and `tgfs status` (rendered)."""

from __future__ import annotations

import json
from typing import Any

from tgfs.catalog import jobs
from tgfs.config import format_size
from tgfs.ingest.progress import Progress

STATUS_VERSION = 1


def snapshot(
    progress: dict[int, Progress],
    cache: dict[str, Any],
    store: dict[str, Any],
    garbage_pending: int,
) -> dict[str, Any]:
    """Everything `tgfs status` shows. Contains no secrets by construction: only counters,
    paths, and job rows."""
    rows = []
    for job in jobs.recent():
        live = progress.get(job.id)
        row: dict[str, Any] = {
            "id": job.id,
            "path": job.path,
            "size": job.size,
            "state": job.state,
            "outcome": job.outcome,
            "error": job.error,
            "attempts": job.attempts,
        }
        if live is not None:
            row.update(live.snapshot())
        else:
            row.update({"stage": job.state, "percent": 100.0 if job.state == "done" else None,
                        "bytes_per_s": None, "speed": None, "eta_s": None})
        rows.append(row)
    return {
        "version": STATUS_VERSION,
        "jobs": rows,
        "store": store,
        "cache": cache,
        "garbage_pending": garbage_pending,
    }


def render(status: dict[str, Any]) -> str:
    """The text `tgfs status MOUNTPOINT` prints."""
    store, cache = status["store"], status["cache"]
    lines = [
        f"store: {store.get('kind')}  "
        + ("up" if store.get("up") else f"DOWN ({store.get('error', 'unknown')})")
        + (f"  free {format_size(store['free_bytes'])}" if "free_bytes" in store else ""),
        f"cache: {format_size(cache['used_bytes'])} of {format_size(cache['capacity_bytes'])}"
        f"  hits {cache['hits']}  misses {cache['misses']}",
    ]
    if status.get("garbage_pending"):
        lines.append(f"store parts waiting to be deleted: {status['garbage_pending']}")
    if not status["jobs"]:
        lines.append("no jobs")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append(f"{'JOB':>4}  {'STATE':<8} {'STAGE':<9} {'DONE':>6} {'SPEED':>7} "
                 f"{'RATE':>10} {'ETA':>6}  FILE")
    for job in status["jobs"]:
        percent = f"{job['percent']:.0f}%" if job.get("percent") is not None else "-"
        speed = f"{job['speed']:.1f}x" if job.get("speed") else "-"
        rate = f"{format_size(job['bytes_per_s'])}/s" if job.get("bytes_per_s") else "-"
        eta = _clock(job["eta_s"]) if job.get("eta_s") is not None else "-"
        lines.append(f"{job['id']:>4}  {job['state']:<8} {job['stage']:<9} {percent:>6} "
                     f"{speed:>7} {rate:>10} {eta:>6}  {job['path']}")
        if job.get("error"):
            lines.append(f"{'':>6}{job['error']}")
    return "\n".join(lines) + "\n"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def to_bytes(status: dict[str, Any]) -> bytes:
    return (json.dumps(status, indent=2) + "\n").encode()
