"""The `tgfs` command: mount, umount, status, cache, backups, restore, trash, undelete,
fsck, check, test-bots, key, config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from tgfs import config as config_module
from tgfs import fstab, logs
from tgfs.catalog import SchemaMismatch
from tgfs.config import ConfigError, Settings, format_size, format_time
from tgfs.status import render, render_cache
from tgfs.store.base import StoreError
from tgfs.trash import Action, Request

STATUS_PATH = Path(".tgfs") / "status.json"
CACHE_PATH = Path(".tgfs") / "cache.json"


def _settings() -> Settings:
    try:
        return config_module.load()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


class _Commands(click.Group):
    """The commands, and mount.fuse3's `tgfs SOURCE MOUNTPOINT -o OPTIONS` (tgfs.fstab)."""

    def main(self, args=None, *more, **options):
        # Everything tgfs writes (catalog, blobs, cache, spool, sessions, logs) is the
        # user's private media and keys: files 0600, directories 0700.
        os.umask(0o077)
        argv = list(sys.argv[1:] if args is None else args)
        if fstab.invoked_by_mount(argv, self.commands):
            sys.exit(fstab.mount(argv))
        return super().main(args, *more, **options)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """tgfs: a video library in Telegram (or a local store), mounted with FUSE."""


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--debug", is_flag=True, help="Log every request (TGFS_LOG_LEVEL=DEBUG).")
@click.option("--debug-fuse", is_flag=True, help="Also turn on libfuse's own debug output.")
def mount(mountpoint: Path, debug: bool, debug_fuse: bool) -> None:
    """Mount tgfs on MOUNTPOINT and serve in the foreground until unmounted (Ctrl-C)."""
    from tgfs import daemon  # pyfuse3 is only needed here

    settings = _settings()
    logs.setup("DEBUG" if debug else settings.log_level, settings.secrets())
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        daemon.run(settings, mountpoint.absolute(), debug_fuse)
    except (ConfigError, SchemaMismatch) as exc:
        raise click.ClickException(str(exc)) from None
    except RuntimeError as exc:
        if "fuse" in str(exc).lower() or "mount" in str(exc).lower():
            raise click.ClickException(f"cannot mount {mountpoint}: {exc}") from None
        raise


@main.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
def umount(mountpoint: Path) -> None:
    """Unmount a tgfs mount (the daemon then exits cleanly)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    command = [tool, "-u", str(mountpoint)] if tool else ["umount", str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(result.stderr.strip() or f"{command[0]} failed")


@main.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw status.json.")
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
def status(mountpoint: Path, as_json: bool, watch: bool) -> None:
    """Show jobs (stage, progress, speed, ETA, errors), store and cache of a mount."""
    path = mountpoint / STATUS_PATH
    while True:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise click.ClickException(f"{mountpoint} is not a tgfs mount") from None
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read {path}: {exc}") from None
        text = json.dumps(data, indent=2) + "\n" if as_json else render(data)
        if not watch:
            click.echo(text, nl=False)
            return
        click.clear()
        click.echo(text, nl=False)
        time.sleep(1)


@main.group()
def cache() -> None:
    """The read cache of a mount: figures, clearing."""


@cache.command("stats")
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw cache.json.")
def cache_stats(mountpoint: Path, as_json: bool) -> None:
    """Size, hit ratio, bytes served and fetched, prefetch hits and waste, fetches in flight."""
    data = _read_json(mountpoint, CACHE_PATH)
    click.echo(json.dumps(data, indent=2) if as_json else render_cache(data))


@cache.command("clear")
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
def cache_clear(mountpoint: Path) -> None:
    """Drop every cached part nobody is reading now. Safe while mounted and playing."""
    before = _read_json(mountpoint, CACHE_PATH)["used_bytes"]
    try:
        os.truncate(mountpoint / CACHE_PATH, 0)  # the daemon takes this as "clear"
    except OSError as exc:
        raise click.ClickException(f"cannot clear the cache: {exc}") from None
    after = _read_json(mountpoint, CACHE_PATH)["used_bytes"]
    click.echo(
        f"cache cleared: {format_size(before - after)} freed, {format_size(after)} still in use"
    )


def _read_json(mountpoint: Path, path: Path) -> dict:
    try:
        return json.loads((mountpoint / path).read_text())
    except FileNotFoundError:
        raise click.ClickException(f"{mountpoint} is not a tgfs mount") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read {mountpoint / path}: {exc}") from None


BACKUPS_PATH = Path(".tgfs") / "backups.json"


@main.command()
@click.argument(
    "mountpoint", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
def backup(mountpoint: Path | None) -> None:
    """Back the catalog up into the store now: through a running mount (MOUNTPOINT), or
    with no daemon running."""
    if mountpoint is not None:
        try:
            os.truncate(mountpoint / BACKUPS_PATH, 0)  # the daemon takes this as "back up now"
        except FileNotFoundError:
            raise click.ClickException(f"{mountpoint} is not a tgfs mount") from None
        except OSError as exc:
            why = _read_json(mountpoint, BACKUPS_PATH).get("last_error") or exc
            raise click.ClickException(f"backup failed: {why}") from None
        newest = _read_json(mountpoint, BACKUPS_PATH)["generations"][0]
        click.echo(
            f"backup {newest['generation']}: {format_size(newest['size'])} of catalog, "
            f"{format_size(newest['stored_size'])} stored"
        )
        return
    from tgfs import daemon

    settings = _settings()
    logs.setup("WARNING", settings.secrets())
    made = daemon.backup_offline(settings)
    if made is None:
        raise click.ClickException("backup failed (see the log above)")
    click.echo(
        f"backup {made.generation}: {format_size(made.size)} of catalog, "
        f"{format_size(made.stored_size)} stored"
    )


@main.command()
@click.argument(
    "mountpoint", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
def backups(mountpoint: Path | None) -> None:
    """List the catalog's backup generations (newest first): through a mount, or from the
    store alone (needs only the settings)."""
    if mountpoint is not None:
        rows = [
            (g["generation"], g["created"], g["size"], g["stored_size"])
            for g in _read_json(mountpoint, BACKUPS_PATH)["generations"]
        ]
    else:
        from tgfs import daemon

        settings = _settings()
        logs.setup("WARNING", settings.secrets())
        manifest = daemon.manifest_offline(settings)
        rows = [
            (
                g.generation,
                format_time(g.created_ns),
                g.size,
                g.stored_size,
            )
            for g in manifest.generations
        ]
    if not rows:
        click.echo("no backup yet")
    for generation, created, size, stored in rows:
        click.echo(
            f"{generation:>5}  {created}  {format_size(size):>10}  {format_size(stored):>10}"
        )


@main.command()
@click.option("--generation", type=int, help="Restore this generation (default: the newest).")
@click.option("--force", is_flag=True, help="Replace an existing catalog (it is moved aside).")
def restore(generation: int | None, force: bool) -> None:
    """Rebuild the catalog from its backup in the store, with nothing but the settings.

    No daemon may run on the data directory. An existing catalog is refused unless --force;
    it is then renamed, never deleted."""
    from tgfs import daemon

    settings = _settings()
    logs.setup("WARNING", settings.secrets())
    try:
        done = daemon.restore_offline(settings, generation, force)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except StoreError as exc:
        raise click.ClickException(f"restore failed: {exc}") from None
    except _catalog_errors() as exc:  # a dump or a database that cannot be used
        raise click.ClickException(f"restore failed: {exc}") from None
    g = done.generation
    created = format_time(g.created_ns)
    into = "the PostgreSQL catalog" if settings.catalog_url else settings.catalog_path
    click.echo(f"restored backup {g.generation} of {created} into {into}")
    if done.moved_aside:
        click.echo(f"the catalog that was there is now {done.moved_aside}")
    for line in done.lost:
        click.echo(f"lost: {line}")
    click.echo("changes made after that backup are not in it; `tgfs mount` to use the library")


TRASH_PATH = Path(".tgfs") / "trash.json"


def _mount_of(path: Path) -> tuple[Path, str] | None:
    """(mount point, library-relative path) if `path` is inside a running tgfs mount; it
    need not exist (it was deleted), so the nearest folder holding .tgfs/trash.json wins."""
    try:
        absolute = Path(os.path.abspath(path))
    except FileNotFoundError:  # the working directory is gone: PATH is library-relative
        return None
    for folder in absolute.parents:
        if (folder / TRASH_PATH).is_file():
            return folder, absolute.relative_to(folder).as_posix()
    return None


def _trash_request(mountpoint: Path, request: Request) -> None:
    try:
        with open(mountpoint / TRASH_PATH, "w") as f:  # carried out at close
            f.write(request.line())
    except FileNotFoundError:
        raise click.ClickException("that is no longer in the trash") from None
    except OSError as exc:
        raise click.ClickException(f"the mount refused the request: {exc}") from None


@main.command("trash")
@click.argument(
    "mountpoint", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--empty", is_flag=True, help="Delete everything in the trash for good, now.")
def trash_command(mountpoint: Path | None, empty: bool) -> None:
    """List what can be brought back (newest first), through a mount or with no daemon
    running; --empty deletes it all from the store now."""
    if empty:
        if mountpoint is not None:
            held = _read_json(mountpoint, TRASH_PATH)
            _trash_request(mountpoint, Request(Action.EMPTY))
            click.echo(f"emptied the trash: {len(held['items'])} item(s)")
            return
        from tgfs import daemon

        settings = _settings()
        logs.setup("WARNING", settings.secrets())
        click.echo(f"emptied the trash: {daemon.empty_trash_offline(settings)} item(s)")
        return
    if mountpoint is not None:
        rows = [
            (i["id"], i["deleted"], i["size"], i["path"] + ("/" if i["kind"] == "video" else ""))
            for i in _read_json(mountpoint, TRASH_PATH)["items"]
        ]
    else:
        from tgfs import daemon

        settings = _settings()
        logs.setup("WARNING", settings.secrets())
        rows = [
            (i.id, format_time(i.deleted_ns), i.size, i.path + ("/" if i.kind == "video" else ""))
            for i in daemon.trash_offline(settings)
        ]
    if not rows:
        click.echo("the trash is empty")
    for item_id, deleted, size, path in rows:
        click.echo(f"{item_id:>6}  {deleted}  {format_size(size):>10}  {path}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--id", "item_id", type=int, help="Which item (from `tgfs trash`), if several.")
def undelete(path: Path, item_id: int | None) -> None:
    """Bring back a deleted file or video folder from the trash, to where it was (or beside
    it, "Name (2)", if the name is taken). PATH is where it was in a running mount
    (/srv/tgfs/Movies/Film), or in the library (Movies/Film) with no daemon running."""
    mounted = _mount_of(path)
    if mounted is not None:
        mountpoint, where = mounted
        items = [i for i in _read_json(mountpoint, TRASH_PATH)["items"] if i["path"] == where]
        item = _choose_item([(i["id"], i["path"]) for i in items], where, item_id)
        _trash_request(mountpoint, Request(Action.UNDELETE, item))
        done = [r for r in _read_json(mountpoint, TRASH_PATH)["restored"] if r["id"] == item]
        click.echo(f"brought back: {mountpoint / done[-1]['path'] if done else where}")
        return
    from tgfs import daemon

    settings = _settings()
    logs.setup("WARNING", settings.secrets())
    where = path.as_posix().strip("/")
    found = [(i.id, i.path) for i in daemon.trash_offline(settings) if i.path == where]
    item = _choose_item(found, where, item_id)
    try:
        restored = daemon.undelete_offline(settings, item)
    except KeyError:
        raise click.ClickException("that is no longer in the trash") from None
    click.echo(f"brought back: {restored.path}")


def _choose_item(found: list[tuple[int, str]], where: str, item_id: int | None) -> int:
    """The newest item that was at `where`, or the one asked for by id."""
    if item_id is not None:
        if item_id not in [i for i, _ in found]:
            raise click.ClickException(f"no item {item_id} of {where} in the trash")
        return item_id
    if not found:
        raise click.ClickException(f"nothing in the trash was at {where} (see `tgfs trash`)")
    return found[0][0]


@main.command()
@click.option("--repair", is_flag=True, help="Add missing copies, drop lost ones, delete orphans.")
def fsck(repair: bool) -> None:
    """Check the library: the catalog's consistency, every part against the store, parts
    with fewer copies than TGFS_REPLICAS, and parts in the store nothing names (orphans).
    No daemon may run on the data directory. Exits non-zero when something is (still)
    wrong."""
    from tgfs import daemon

    settings = _settings()
    logs.setup("WARNING", settings.secrets())
    try:
        report = daemon.fsck_offline(settings, repair)
    except StoreError as exc:
        raise click.ClickException(f"fsck could not ask the store: {exc}") from None
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise click.ClickException("the library has problems (see above)")
    click.echo("the library is whole")


@main.command("test-bots")
def test_bots() -> None:
    """Check every configured bot: login, channel, upload, download, delete (one line each).

    Exits non-zero if any bot failed.
    """
    import trio

    from tgfs.store.telegram.check import check_bots

    settings = _settings()
    logs.setup("CRITICAL", settings.secrets())  # each bot's line says what went wrong
    if not settings.bots:
        raise click.ClickException(
            "no Telegram bots configured (set TELEGRAM_BOT_TOKEN_1 and TELEGRAM_CHANNEL_ID_1)"
        )
    for skipped in settings.skipped_bots:
        click.echo(f"skipped: {skipped}")
    results = trio.run(check_bots, settings)
    for result in results:
        click.echo(result.line())
    failed = [r for r in results if not r.ok]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(results)} bot(s) failed")


@main.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def check(files: tuple[Path, ...]) -> None:
    """Try FILES the way the mount would take them in, with no mount and no store.

    Each goes through the same probe and media process as a dropped file, into a temporary
    directory (in $TMPDIR) that is deleted afterwards. One line per file: published as a
    video (copy or transcode, and why), or kept as a file (and why); the published duration
    against the source's; notes. Exits non-zero if any video would not be published.
    """
    import tempfile

    import trio

    from tgfs.ingest.media_process import MediaFailed, run_worker, worker_options
    from tgfs.media import encoders, messages

    settings = _settings()
    logs.setup("WARNING", settings.secrets())
    encoder, _ = encoders.choose(
        settings.enable_hardware_acceleration, settings.preferred_encoder, settings.cache_dir
    )
    refused = 0
    for path in files:
        options = worker_options(settings, path.name, path.stat().st_size, encoder)
        with tempfile.TemporaryDirectory(prefix="tgfs-check-") as work:
            try:
                result = trio.run(
                    run_worker,
                    path,
                    Path(work) / "out",
                    options,
                    lambda _event: None,
                    settings.media_memory,
                )
            except MediaFailed as exc:
                result = messages.FileResult(reason=str(exc), failed=True)
        if not isinstance(result, messages.VideoResult):
            failed = not isinstance(result, messages.FileResult) or result.failed
            refused += failed
            verdict = "NOT PUBLISHED, kept as a file" if failed else "kept as a file"
            reason = result.reason if isinstance(result, messages.FileResult) else ""
            click.echo(f"{path}: {verdict}: {reason}")
            continue
        shown = [r for r in result.renditions if r.kind is messages.TrackKind.VIDEO]
        sizes = ", ".join(f"{r.width}x{r.height}" for r in shown)
        line = f"{path}: video ({result.mode}), {result.duration:.1f} s"
        # (the file is only ever opened by the media process, with its limits)
        source = result.source_duration
        line += f" of {source:.1f} s" if source else ""
        line += f"; {len(shown)} rendition(s): {sizes}" if shown else ""
        click.echo(line + (f"; {result.note}" if result.note else ""))
    if refused:
        raise click.ClickException(f"{refused} of {len(files)} video(s) would not be published")


@main.group()
def catalog() -> None:
    """The catalog as a whole."""


@catalog.command("copy")
@click.argument("source")
@click.argument("target")
def catalog_copy(source: str, target: str) -> None:
    """Copy the catalog SOURCE into TARGET, which must hold none: each a SQLite file
    (catalog.db) or a postgresql:// URL. The store is not touched; the library stays the
    same (ids, names, trash, backups' records). Stop the daemon first.

    Then point TGFS_CATALOG_URL at the target (or empty it, back to SQLite)."""
    from tgfs.catalog import dump, host
    from tgfs.config import masked_url, url_password
    from tgfs.lock import DirectoryLock

    settings = _settings()
    secrets = [p for u in (source, target) if (p := url_password(u))]
    logs.setup("WARNING", [*settings.secrets(), *secrets])

    places: list[Path | str] = [
        where if dump.is_url(where) else Path(where).expanduser() for where in (source, target)
    ]
    failures: tuple[type[Exception], ...] = (OSError, *_catalog_errors())
    try:
        with DirectoryLock(settings.data_dir, Path("(tgfs catalog copy)")):
            host.identify(settings.data_dir)
            rows = dump.copy(places[0], places[1], settings.data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except failures as exc:
        raise click.ClickException(f"copy failed: {_scrubbed(str(exc), secrets)}") from None
    click.echo(f"copied {rows} rows from {masked_url(source)} to {masked_url(target)}")


def _catalog_errors() -> tuple[type[Exception], ...]:
    """What a catalog that cannot be read or written raises (psycopg's and peewee's words
    name no password; a dump's say what is wrong with it)."""
    import peewee
    import psycopg

    from tgfs.catalog.dump import DumpError

    return (DumpError, SchemaMismatch, peewee.PeeweeException, psycopg.Error)


def _scrubbed(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


@main.group()
def key() -> None:
    """The encryption key (TGFS_ENCRYPTION_KEY_FILE)."""


@key.command("generate")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def key_generate(path: Path) -> None:
    """Write a new random key to PATH (a new file, 0600; never over an existing one)."""
    from tgfs.keys import generate_key_file

    try:
        made = generate_key_file(path)
    except FileExistsError:
        raise click.ClickException(f"{path} exists: a key is never overwritten") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    click.echo(f"wrote key {made} to {path}")
    click.echo(
        f"Set TGFS_ENCRYPTION_KEY_FILE={path.resolve()} and keep a copy of the file "
        "somewhere safe: without it, nothing encrypted with it can be read."
    )


@main.command("config")
def show_config() -> None:
    """Print the resolved settings (secrets masked) and exit non-zero if any is invalid."""
    from tgfs.media import encoders

    settings = _settings()
    rows = settings.describe()
    encoder, why = encoders.choose(
        settings.enable_hardware_acceleration, settings.preferred_encoder, settings.cache_dir
    )
    rows.append(("encoder", encoder + (f" ({why})" if why else "")))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
