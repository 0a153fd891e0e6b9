"""A catalog as one file of rows, the same for both engines: the backups of a PostgreSQL
catalog, restores into either engine, and `tgfs catalog copy` between them.

Format: JSON lines (the backup gzips them).

    {"format": 1, "schema_version": 10, "engine": "postgresql", "made_ns": …}
    {"table": "node", "columns": ["id", "kind", …], "next_id": 5021}
    [1, "dir", …]                one line per row; bytes as {"b": "<base64>"}
    …
    {"end": true, "rows": 48213}

`next_id` is the lowest id the table never handed out (its sequence, not its largest row):
ids are never reused (schema.NeverReused), and a copy must not start reusing them.

`write` reads its source on a connection of its own, in one read-only transaction
(REPEATABLE READ on PostgreSQL, one read transaction on SQLite's WAL), so a dump is a
consistent snapshot even while the daemon writes, and it never touches the models' own
connection: it runs in a thread beside the mount. `load` writes into the catalog open_catalog
opened, which must be new (its fixed rows only): everything goes in one transaction, the
fixed rows replaced by the dump's, then each sequence is moved to `next_id`. A source of
another schema version is refused (mount it once with this tgfs: that upgrades it).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import peewee as pw
import psycopg

from tgfs.catalog.schema import (
    LIBRARY_CLASS,
    MOUNTED,
    ROOT_ID,
    SCHEMA_VERSION,
    TABLES,
    NeverReused,
    NodeKind,
    db,
    is_sqlite,
    is_url,
)

FORMAT = 1
_BATCH = 1000  # rows per INSERT … VALUES batch when loading


class DumpError(RuntimeError):
    """A source or dump that cannot be used (another schema version, not a dump, …)."""


def _columns(model: type[pw.Model]) -> list[str]:
    return [f.column_name for f in model._meta.sorted_fields]


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _has_serial_id(model: type[pw.Model]) -> bool:
    return isinstance(model._meta.primary_key, pw.AutoField)


def write(source: Path | str, dest: Path) -> int:
    """Dump the catalog at `source` (a SQLite file or a postgresql:// URL) into `dest`;
    returns the number of rows."""
    if is_url(source):
        return _write_postgres(str(source), dest)
    return _write_sqlite(Path(source), dest)


def _write_postgres(url: str, dest: Path) -> int:
    with psycopg.connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True

        def rows(sql: str) -> Iterator[tuple]:
            with conn.cursor(name="tgfs_dump") as cursor:  # server side: not all in memory
                cursor.itersize = 2000
                cursor.execute(sql)
                yield from cursor

        def one(sql: str, *args: object) -> tuple:
            row = conn.execute(sql, args or None).fetchone()
            assert row is not None  # (these queries always return a row)
            return tuple(row)

        def next_id(table: str) -> int:
            (seq,) = one("SELECT pg_get_serial_sequence(%s, 'id')", table)
            last, called = one(f"SELECT last_value, is_called FROM {seq}")
            (top,) = one(f'SELECT coalesce(max(id), 0) FROM "{table}"')
            return max(last + 1 if called else last, top + 1)

        with conn.transaction():
            return _write(dest, "postgresql", rows, next_id)


def _write_sqlite(path: Path, dest: Path) -> int:
    if not path.exists():
        raise DumpError(f"no catalog at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("BEGIN")  # one read transaction: a snapshot of the WAL

        def rows(sql: str) -> Iterator[tuple]:
            yield from conn.execute(sql)

        def next_id(table: str) -> int:
            found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
            seq = (found.fetchone() or (0,))[0]
            (top,) = conn.execute(f'SELECT coalesce(max(id), 0) FROM "{table}"').fetchone()
            return max(seq, top) + 1

        return _write(dest, "sqlite", rows, next_id)
    finally:
        conn.close()


def _write(dest: Path, engine: str, rows, next_id) -> int:
    found = list(rows("SELECT value FROM meta WHERE key = 'schema_version'"))
    version = int(found[0][0]) if found else None
    if version != SCHEMA_VERSION:
        raise DumpError(
            f"the catalog has schema version {version}, this tgfs writes {SCHEMA_VERSION}: "
            "mount it once with this tgfs (that upgrades it), then try again"
        )
    total = 0
    with open(dest, "w", encoding="utf-8") as out:
        _line(out, {"format": FORMAT, "schema_version": version, "engine": engine,
                    "made_ns": time.time_ns()})  # fmt: skip
        for model in TABLES:
            table, columns = model._meta.table_name, _columns(model)
            head: dict[str, Any] = {"table": table, "columns": columns}
            if _has_serial_id(model):
                head["next_id"] = next_id(table)
            _line(out, head)
            order = _quoted([model._meta.primary_key.column_name])
            for row in rows(f'SELECT {_quoted(columns)} FROM "{table}" ORDER BY {order}'):
                out.write(json.dumps([_plain(v) for v in row], ensure_ascii=False))
                out.write("\n")
                total += 1
        _line(out, {"end": True, "rows": total})
    return total


def _line(out: TextIO, obj: dict) -> None:
    out.write(json.dumps(obj, ensure_ascii=False))
    out.write("\n")


def _plain(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"b": base64.b64encode(bytes(value)).decode()}
    return value


def _value(value: object, field: pw.Field) -> object:
    if isinstance(value, dict):
        return base64.b64decode(value["b"])
    if isinstance(field, pw.BooleanField) and value is not None:
        return bool(value)  # (SQLite's 0/1 into PostgreSQL's boolean)
    return value


def is_dump(path: Path) -> bool:
    """Whether the file is a dump (else, for a backup, a SQLite snapshot)."""
    with open(path, "rb") as f:
        return f.read(9) == b'{"format"'


def load(path: Path) -> int:
    """Load the dump at `path` into the open catalog, which must be new (see the module
    docstring); returns the number of rows."""
    models = {m._meta.table_name: m for m in TABLES}
    with open(path, encoding="utf-8") as f:
        header = json.loads(f.readline() or "{}")
        if header.get("format") != FORMAT:
            raise DumpError(f"{path} is not a tgfs catalog dump")
        if header.get("schema_version") != SCHEMA_VERSION:
            raise DumpError(
                f"the dump has schema version {header.get('schema_version')}, this tgfs "
                f"needs {SCHEMA_VERSION}"
            )
        total, ended = 0, False
        next_ids: dict[type[pw.Model], int] = {}
        with db.atomic():
            for table in reversed(TABLES):  # the fixed rows open_catalog made
                table.delete().execute()
            model: type[pw.Model] | None = None
            fields: list[pw.Field] = []
            columns: list[str] = []
            batch: list[list] = []
            for line in f:
                item = json.loads(line)
                if isinstance(item, list):
                    if model is None:
                        raise DumpError(f"{path}: a row before its table")
                    batch.append([_value(v, fld) for v, fld in zip(item, fields, strict=True)])
                    if len(batch) >= _BATCH:
                        total += _insert(model, columns, batch)
                    continue
                if model is not None and batch:
                    total += _insert(model, columns, batch)
                if item.get("end"):
                    ended = item.get("rows") == total
                    break
                model = models.get(item.get("table"))
                if model is None:
                    raise DumpError(f"{path}: unknown table {item.get('table')!r}")
                columns = item["columns"]
                by_column = {fld.column_name: fld for fld in model._meta.sorted_fields}
                fields = [by_column[c] for c in columns]
                if "next_id" in item:
                    next_ids[model] = int(item["next_id"])
            if not ended:
                raise DumpError(f"{path} is cut short: it was not loaded")
            for serial, next_id in next_ids.items():
                _move_sequence(serial, next_id)
    return total


def _insert(model: type[pw.Model], columns: list[str], batch: list[list]) -> int:
    marks = ", ".join([db.param] * len(columns))
    sql = f'INSERT INTO "{model._meta.table_name}" ({_quoted(columns)}) VALUES ({marks})'
    cursor = db.cursor()
    cursor.executemany(sql, batch)
    count = len(batch)
    batch.clear()
    return count


def _move_sequence(model: type[pw.Model], next_id: int) -> None:
    table = model._meta.table_name
    if is_sqlite():
        if isinstance(model._meta.primary_key, NeverReused):  # (AUTOINCREMENT's record)
            db.execute_sql("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
            db.execute_sql(
                "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, next_id - 1)
            )
        return
    if next_id > 1:
        db.execute_sql("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, next_id - 1))


def holds_catalog(where: Path | str) -> str | None:
    """Why a SQLite file or a PostgreSQL database may not be filled from a dump (None if
    it may). A SQLite file is made whole beside its place and renamed in (`copy`, and
    restore), so any file there is someone's. A PostgreSQL database is filled in place: one
    with a library in it is refused, and so is one a daemon is mounted on; a catalog with
    nothing a user made (what open_catalog creates, and all that a copy or restore killed
    before its one transaction committed leaves) is new, and filled."""
    if not is_url(where):
        return f"{where} exists" if Path(where).exists() else None
    with psycopg.connect(str(where), autocommit=True) as conn:
        (made,) = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone() or (False,)
        if not made:
            return None
        (used,) = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM node WHERE id <> %s AND kind = ANY(%s))"
            " OR EXISTS (SELECT 1 FROM blob)",
            (ROOT_ID, [str(k) for k in _USER_KINDS]),
        ).fetchone() or (True,)
        if used:
            return "it holds a library"
        # (Taken exclusively for a moment: refused while any daemon holds it shared.)
        (free,) = conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (LIBRARY_CLASS, MOUNTED)
        ).fetchone() or (False,)
        return None if free else "a tgfs daemon is mounted on it"


# What only a user makes: a catalog with none of these (nor a blob) is new.
_USER_KINDS = (NodeKind.DIR, NodeKind.FILE, NodeKind.VIDEO, NodeKind.SYMLINK)


def copy(source: Path | str, target: Path | str, work: Path) -> int:
    """`tgfs catalog copy`: the catalog at `source` into `target`, which must hold none
    (either may be a SQLite file or a postgresql:// URL); the store is not touched.
    `work`: a folder for the dump on its way. Returns the number of rows.

    Killed at any point, it leaves no catalog at `target` and may be run again: a SQLite
    target is filled under another name and renamed in once whole; a PostgreSQL target is
    filled in one transaction (see holds_catalog)."""
    from tgfs.catalog.schema import close_catalog, open_catalog

    if (why := holds_catalog(target)) is not None:
        raise DumpError(f"the target cannot be filled ({why}): copy into a new one only")
    rows = work / "catalog-copy.rows"
    filling = target if is_url(target) else Path(f"{target}.copying")
    leftovers = [] if is_url(target) else [Path(f"{filling}{x}") for x in ("", "-wal", "-shm")]
    try:
        for path in leftovers:  # an earlier copy's, killed
            path.unlink(missing_ok=True)
        total = write(source, rows)
        open_catalog(filling)
        try:
            load(rows)
        finally:
            close_catalog()  # (SQLite: the last connection's close folds the WAL in)
        if not is_url(target):
            os.replace(filling, target)
    finally:
        rows.unlink(missing_ok=True)
        for path in leftovers:
            path.unlink(missing_ok=True)
    return total
