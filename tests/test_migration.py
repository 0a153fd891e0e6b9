"""A catalog written by an earlier schema (version 2: names as text; version 3: names in
the node rows) is upgraded in place at the first mount of this version, and everything in
it still works."""
# ruff: noqa: E501 - the version 2 tables, verbatim

from __future__ import annotations

import os
import sqlite3
import uuid

# The tables as schema version 2 made them (sqlite_master of a fresh version 2 catalog).
SCHEMA_2 = """
CREATE TABLE "blob" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "size" INTEGER NOT NULL);
CREATE TABLE "garbage" ("id" INTEGER NOT NULL PRIMARY KEY, "location" TEXT NOT NULL, "attempts" INTEGER NOT NULL, "last_error" TEXT);
CREATE TABLE "video" ("id" INTEGER NOT NULL PRIMARY KEY, "source_name" TEXT NOT NULL, "duration" REAL NOT NULL, "mode" TEXT NOT NULL, "target_duration" INTEGER NOT NULL, "created_ns" INTEGER NOT NULL, "complete" INTEGER NOT NULL, "start_time" REAL NOT NULL, "job_id" INTEGER);
CREATE TABLE "rendition" ("id" INTEGER NOT NULL PRIMARY KEY, "video_id" INTEGER NOT NULL, "name" TEXT NOT NULL, "kind" TEXT NOT NULL, "language" TEXT, "title" TEXT, "is_default" INTEGER NOT NULL, "width" INTEGER NOT NULL, "height" INTEGER NOT NULL, "frame_rate" REAL, "codecs" TEXT NOT NULL, "bandwidth" INTEGER NOT NULL, "average_bandwidth" INTEGER NOT NULL, "init_name" TEXT NOT NULL, "init_blob_id" INTEGER, FOREIGN KEY ("video_id") REFERENCES "video" ("id") ON DELETE CASCADE, FOREIGN KEY ("init_blob_id") REFERENCES "blob" ("id"));
CREATE INDEX "rendition_video_id" ON "rendition" ("video_id");
CREATE INDEX "rendition_init_blob_id" ON "rendition" ("init_blob_id");
CREATE TABLE "node" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "parent_id" INTEGER, "name" TEXT NOT NULL, "kind" TEXT NOT NULL, "mode" INTEGER NOT NULL, "uid" INTEGER NOT NULL, "gid" INTEGER NOT NULL, "size" INTEGER NOT NULL, "mtime_ns" INTEGER NOT NULL, "ctime_ns" INTEGER NOT NULL, "blob_id" INTEGER, "spool" TEXT, "video_id" INTEGER, "rendition_id" INTEGER, FOREIGN KEY ("parent_id") REFERENCES "node" ("id"), FOREIGN KEY ("blob_id") REFERENCES "blob" ("id"), FOREIGN KEY ("video_id") REFERENCES "video" ("id") ON DELETE CASCADE, FOREIGN KEY ("rendition_id") REFERENCES "rendition" ("id") ON DELETE CASCADE);
CREATE INDEX "node_parent_id" ON "node" ("parent_id");
CREATE INDEX "node_blob_id" ON "node" ("blob_id");
CREATE INDEX "node_video_id" ON "node" ("video_id");
CREATE INDEX "node_rendition_id" ON "node" ("rendition_id");
CREATE UNIQUE INDEX "node_parent_id_name" ON "node" ("parent_id", "name");
CREATE TABLE "job" ("id" INTEGER NOT NULL PRIMARY KEY, "node_id" INTEGER, "path" TEXT NOT NULL, "spool" TEXT NOT NULL, "size" INTEGER NOT NULL, "state" TEXT NOT NULL, "outcome" TEXT, "error" TEXT, "attempts" INTEGER NOT NULL, "not_before" REAL NOT NULL, "created_ns" INTEGER NOT NULL, "finished_ns" INTEGER, FOREIGN KEY ("node_id") REFERENCES "node" ("id") ON DELETE SET NULL);
CREATE INDEX "job_node_id" ON "job" ("node_id");
CREATE TABLE "meta" ("key" TEXT NOT NULL PRIMARY KEY, "value" TEXT NOT NULL);
CREATE TABLE "part" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "blob_id" INTEGER NOT NULL, "index" INTEGER NOT NULL, "offset" INTEGER NOT NULL, "size" INTEGER NOT NULL, "location" TEXT NOT NULL, FOREIGN KEY ("blob_id") REFERENCES "blob" ("id") ON DELETE CASCADE);
CREATE INDEX "part_blob_id" ON "part" ("blob_id");
CREATE UNIQUE INDEX "part_blob_id_index" ON "part" ("blob_id", "index");
CREATE TABLE "segment" ("id" INTEGER NOT NULL PRIMARY KEY, "rendition_id" INTEGER NOT NULL, "seq" INTEGER NOT NULL, "duration" REAL NOT NULL, "name" TEXT NOT NULL, "blob_id" INTEGER NOT NULL, FOREIGN KEY ("rendition_id") REFERENCES "rendition" ("id") ON DELETE CASCADE, FOREIGN KEY ("blob_id") REFERENCES "blob" ("id"));
CREATE INDEX "segment_rendition_id" ON "segment" ("rendition_id");
CREATE INDEX "segment_blob_id" ON "segment" ("blob_id");
CREATE UNIQUE INDEX "segment_rendition_id_seq" ON "segment" ("rendition_id", "seq");
"""


def test_a_version_2_catalog_is_upgraded_in_place(mount_factory, tmp_path):
    data = tmp_path / "data"
    (data / "blobs").mkdir(parents=True)
    content = os.urandom(5000)
    name = uuid.uuid4().hex
    (data / "blobs" / name[:2]).mkdir()
    (data / "blobs" / name[:2] / name).write_bytes(content)
    db = sqlite3.connect(data / "catalog.db")
    db.executescript(SCHEMA_2)
    now = 1_700_000_000_000_000_000
    node = (
        "INSERT INTO node (id, parent_id, name, kind, mode, uid, gid, size, mtime_ns, "
        "ctime_ns, blob_id) VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?)"
    )
    with db:
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        db.execute(node, (1, None, "", "dir", 0o755, 0, now, now, None))
        db.execute(node, (2, 1, ".tgfs", "control_dir", 0o555, 0, now, now, None))
        db.execute(node, (3, 2, "status.json", "status", 0o444, 0, now, now, None))
        db.execute(node, (4, 2, "bots.json", "bots", 0o444, 0, now, now, None))
        db.execute(node, (5, 1, "Fïlms", "dir", 0o755, 0, now, now, None))
        db.execute("INSERT INTO blob (id, size) VALUES (1, ?)", (len(content),))
        db.execute(
            'INSERT INTO part (blob_id, "index", "offset", size, location) VALUES (1, 0, 0, ?, ?)',
            (len(content), f"{name[:2]}/{name}"),
        )
        db.execute(node, (6, 5, "notes ü.txt", "file", 0o644, len(content), now, now, 1))
        db.execute(  # a job from before hosts: it is the migrating host's (schema 10)
            "INSERT INTO job (node_id, path, spool, size, state, attempts, not_before, "
            "created_ns) VALUES (6, 'Fïlms/notes ü.txt', '/gone', ?, 'done', 0, 0, ?)",
            (len(content), now),
        )
        # Inodes up to 50 were handed out once (and deleted): never again.
        db.execute("UPDATE sqlite_sequence SET seq = 50 WHERE name = 'node'")
    db.close()

    m = mount_factory()
    assert sorted(os.listdir(m.path)) == [".tgfs", "Fïlms"]
    assert (m.path / "Fïlms" / "notes ü.txt").read_bytes() == content
    assert (m.path / "Fïlms" / "notes ü.txt").stat().st_mtime_ns == now
    (m.path / "Fïlms" / "new.txt").write_text("after the upgrade")
    m.wait_idle()
    assert sorted(os.listdir(m.path / "Fïlms")) == ["new.txt", "notes ü.txt"]
    assert m.catalog("SELECT value FROM meta WHERE key = 'schema_version'") == [("11",)]
    me = (data / "host").read_text().strip()
    assert me and m.catalog("SELECT DISTINCT host FROM job") == [(me,)]
    columns = {row[1] for row in m.catalog("PRAGMA table_info(rendition)")}
    assert {"init_data", "sidecar_size"} <= columns
    assert {t for (t,) in m.catalog("SELECT DISTINCT typeof(name) FROM entry")} == {"blob"}
    old = m.path / "Fïlms" / "notes ü.txt"
    assert old.stat().st_ino == 6 and old.stat().st_nlink == 1
    assert (m.path / "Fïlms" / "new.txt").stat().st_ino > 50
    os.link(old, m.path / "second name")  # names apart from inodes: hard links work
    assert old.stat().st_nlink == 2
    assert (m.path / "second name").read_bytes() == content
    m.store_matches_catalog()
