"""Live state for `.tgfs/status.json` (built in the daemon) and `tgfs status` (rendered)."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any

from tgfs.catalog import JobState, blobs, jobs
from tgfs.catalog.listing import VideoEntry
from tgfs.config import format_size
from tgfs.ingest.progress import Progress

STATUS_VERSION = 1
LIBRARY_VERSION = 1  # library.json's shape; raised when a field changes meaning or goes


def snapshot(
    progress: dict[int, Progress],
    cache: dict[str, Any],
    store: dict[str, Any],
    garbage_pending: int,
    encoder: dict[str, Any] | None = None,
    trash: dict[str, Any] | None = None,
    sees: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Everything `tgfs status` shows. Contains no secrets by construction: only counters,
    paths, and job rows. `sees`: which job paths the reader may be told of (all if None)."""
    rows = []
    for job in jobs.recent():
        if sees is not None and not sees(job.path):
            continue
        live = progress.get(job.id)
        row: dict[str, Any] = {
            "id": job.id,
            "path": job.path,
            # Whose spool holds it: the host that runs it ("*": a store-first job stored
            # and waiting for a host that makes videos to claim it).
            "host": job.host,
            "size": job.size,
            "state": job.state,
            "outcome": job.outcome,
            "error": job.error,
            "note": job.note,
            "attempts": job.attempts,
        }
        if live is not None:
            row.update(live.snapshot())
        else:
            row.update(
                {
                    "stage": job.state,
                    "percent": 100.0 if job.state == JobState.DONE else None,
                    "bytes_per_s": None,
                    "speed": None,
                    "eta_s": None,
                }
            )
        rows.append(row)
    if "bots" in store:
        store = {**store, "bots": bots_snapshot(store)}
    return {
        "version": STATUS_VERSION,
        "jobs": rows,
        "store": store,
        "cache": cache,
        "garbage_pending": garbage_pending,
        "encoder": encoder or {},
        "trash": trash or {},
    }


# What each bot holds is a scan of the part table; status.json is rendered on every stat
# and read, and `tgfs status --watch` reads it every second. Counting once per this many
# seconds keeps that scan off the FUSE thread's back.
HELD_TTL = 10.0
_held: dict[int, tuple[float, tuple[int, int]]] = {}  # bot id → (when counted, counts)


def bots_snapshot(store: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-bot state from the store's health, plus what each bot holds per the catalog."""
    bots = []
    now = time.monotonic()
    for bot in store.get("bots", []):
        counted, (parts, size) = _held.get(bot["bot_id"], (-HELD_TTL, (0, 0)))
        if now - counted >= HELD_TTL:
            parts, size = blobs.held_by(bot["location_prefix"])
            _held[bot["bot_id"]] = (now, (parts, size))
        bots.append({**bot, "parts_held": parts, "bytes_held": size})
    return bots


def render_cache(cache: dict[str, Any]) -> str:
    """The cache lines of `tgfs status`, and all of `tgfs cache stats`."""
    ratio = cache.get("hit_ratio")
    prefetch = cache.get("prefetch", {})
    return "\n".join(
        [
            f"cache: {format_size(cache['used_bytes'])} of {format_size(cache['capacity_bytes'])}"
            f" in {cache['parts']} part(s) ({cache['partial_parts']} partial)"
            f"  hit ratio {'-' if ratio is None else f'{ratio:.1%}'}"
            f" ({cache['hits']} hits, {cache['misses']} misses)",
            f"  served {format_size(cache.get('served_bytes', 0))}"
            f"  fetched {format_size(cache['fetched_bytes'])}"
            f"  in flight {cache['fetches_in_flight']} chunk(s)",
            f"  prefetched {format_size(cache.get('prefetched_bytes', 0))}:"
            f" {format_size(cache.get('prefetch_hit_bytes', 0))} read,"
            f" {format_size(cache.get('prefetch_wasted_bytes', 0))} wasted"
            f"  viewers {prefetch.get('viewers', 0)}",
        ]
    )


def render(status: dict[str, Any]) -> str:
    """The text `tgfs status MOUNTPOINT` prints."""
    store, cache = status["store"], status["cache"]
    lines = [
        f"store: {store.get('kind')}  "
        + ("up" if store.get("up") else f"DOWN ({store.get('error', 'unknown')})")
        + (f"  free {format_size(store['free_bytes'])}" if "free_bytes" in store else ""),
        render_cache(cache),
    ]
    if store.get("bots"):
        lines.append(
            f"{'BOT':>4}  {'STATE':<5} {'PARTS':>6} {'HELD':>10} {'SENT':>6} {'FLOOD':>6}  ACCOUNT"
        )
        for bot in store["bots"]:
            flood = f"{bot['flood_wait_s']:.0f}s" if bot.get("flood_wait_s") else "-"
            account = f"@{bot['username']}" if bot.get("username") else f"id {bot['bot_id']}"
            lines.append(
                f"{bot['number']:>4}  {'up' if bot['up'] else 'DOWN':<5} "
                f"{bot.get('parts_held', 0):>6} "
                f"{format_size(bot.get('bytes_held', 0)):>10} "
                f"{bot['messages_sent']:>6} {flood:>6}  {account}"
            )
            if bot.get("reason"):
                lines.append(f"{'':>6}{bot['reason']}")
    encoder = status.get("encoder") or {}
    if encoder.get("name"):
        lines.append(
            f"encoder: {encoder['name']}" + (f" ({encoder['note']})" if encoder.get("note") else "")
        )
    trash = status.get("trash") or {}
    if trash.get("items"):
        lines.append(
            f"trash: {trash['items']} item(s), {format_size(trash['bytes'])} in the store"
            f" (kept {trash['days']:g} days; `tgfs trash` lists them)"
        )
    if status.get("garbage_pending"):
        lines.append(f"store parts waiting to be deleted: {status['garbage_pending']}")
    if not status["jobs"]:
        lines.append("no jobs")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append(
        f"{'JOB':>4}  {'STATE':<8} {'STAGE':<9} {'DONE':>6} {'SPEED':>7} "
        f"{'RATE':>10} {'ETA':>6}  FILE"
    )
    for job in status["jobs"]:
        percent = f"{job['percent']:.0f}%" if job.get("percent") is not None else "-"
        speed = f"{job['speed']:.1f}x" if job.get("speed") else "-"
        rate = f"{format_size(job['bytes_per_s'])}/s" if job.get("bytes_per_s") else "-"
        eta = _clock(job["eta_s"]) if job.get("eta_s") is not None else "-"
        lines.append(
            f"{job['id']:>4}  {job['state']:<8} {job['stage']:<9} {percent:>6} "
            f"{speed:>7} {rate:>10} {eta:>6}  {job['path']}"
        )
        if job["state"] == JobState.RUNNING and job.get("percent") is not None:
            lines.append(f"{'':>6}{_bar(job['percent'])}")
        for said in (job.get("error"), job.get("note")):
            if said:
                lines.append(f"{'':>6}{said}")
    return "\n".join(lines) + "\n"


def one_line(status: dict[str, Any]) -> str:
    """The daemon's state in one line (systemd's STATUS=, `systemctl status`)."""
    jobs = status["jobs"]
    running = sum(j["state"] == JobState.RUNNING for j in jobs)
    queued = sum(j["state"] == JobState.QUEUED for j in jobs)
    store = status["store"]
    state = "up" if store.get("up") else "DOWN"
    bots = store.get("bots") or []
    if bots:
        state += f" ({sum(b['up'] for b in bots)}/{len(bots)} bots up)"
    return f"jobs: {running} running, {queued} queued; store: {store.get('kind')} {state}"


def _bar(percent: float, width: int = 40) -> str:
    done = round(width * min(max(percent, 0.0), 100.0) / 100)
    return "[" + "#" * done + "." * (width - done) + "]"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def library_snapshot(videos: list[VideoEntry], progress: dict[int, Progress]) -> dict[str, Any]:
    """`.tgfs/library.json`: every video, with its state (ready, or processing with the
    percent its job has done). Built field by field: dataclasses.asdict, which copies
    deeply, took longer than the catalog's queries for a large library."""
    rows = []
    for video in videos:
        live = progress.get(video.job_id) if video.job_id is not None else None
        rows.append(
            {
                "path": video.path,
                "title": video.title,
                "duration": video.duration,
                "width": video.width,
                "height": video.height,
                "renditions": [dict(vars(track)) for track in video.renditions],
                "audio": video.audio,
                "subtitles": video.subtitles,
                "poster": video.poster,
                "added": datetime.datetime.fromtimestamp(
                    video.added_ns / 1e9, datetime.UTC
                ).isoformat(timespec="seconds"),
                "state": "ready" if video.complete else "processing",
                "percent": 100.0
                if video.complete
                else (live.snapshot()["percent"] if live else None),
            }
        )
    return {"version": LIBRARY_VERSION, "videos": rows}


def to_compact_bytes(listing: dict[str, Any]) -> bytes:
    """JSON for programs (library.json, which a page reads and may be megabytes): no
    indentation, UTF-8 as it is."""
    return json.dumps(listing, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def to_bytes(status: dict[str, Any]) -> bytes:
    return (json.dumps(status, indent=2) + "\n").encode()
