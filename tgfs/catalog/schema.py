"""The catalog: everything tgfs knows, in one SQLite file (peewee, WAL).

The store holds bytes and nothing else; bots cannot even list a channel's history. So this
file is the only index of the library: lose it and the blobs are anonymous. Keep it on
local disk and back it up.

Shape:

    Node ── the tree the mount shows; Node.id is the inode number.
      │     ordinary dirs and files, video folders, and the derived entries inside them
      ├── blob ──► Blob ──► Part (where each piece lives in the store)
      └── video ─► Video ──► Rendition ──► Segment ──► Blob
    Job ── one version of a file on its way from the spool to the store (crash-safe
           queue): being written, accepted and queued, running, done or failed
    Landed ── store locations an unfinished job has stored but no blob refers to yet
    Garbage ── store locations still to delete (kept until the store confirms)

Names are kept as the bytes the kernel gave (`NameField`, BLOB): a name that is not UTF-8
comes back byte-exact. Python sees them as `os.fsdecode` strings (surrogateescape).

All access happens on the trio thread (pyfuse3 handlers and the ingest runner); queries are
short and indexed, so they do not stall the filesystem.
"""

from __future__ import annotations

import contextlib
import enum
import os
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
from playhouse.migrate import SchemaMigrator, SqliteMigrator, migrate
from playhouse.shortcuts import ReconnectMixin

from tgfs import web
from tgfs.catalog import host

# 2: audio/subtitle renditions, videos published while processing
# 3: names as bytes, symlinks, jobs for files being written, landed parts, source hashes
# 4: names apart from inodes (Entry: hard links), atime, links, device numbers
# 5: the trash (deleted files and videos kept for TGFS_TRASH_DAYS)
# 6: parts and backups sealed with the encryption key (Part.seal, Backup.seal)
# 7: video posters (Video.poster_blob); video folders 0755
# 8: init segments kept in the catalog (Rendition.init_data)
# 9: the size of a subtitle rendition as one WebVTT file (Rendition.sidecar_size)
# 10: the host each job and landed part belongs to (Job.host, Landed.host)
# 11: store-first ingest: a job's input stored as it is (Job.source_blob)
SCHEMA_VERSION = 11

# The catalog's database: SQLite in the data directory, or PostgreSQL when TGFS_CATALOG_URL
# names one (open_catalog). The models are bound to this proxy.
db = pw.DatabaseProxy()

ROOT_ID = 1  # pyfuse3.ROOT_INODE
CONTROL_DIR_ID = 2  # /.tgfs
STATUS_FILE_ID = 3  # /.tgfs/status.json
CONTROL_DIR_NAME = ".tgfs"
STATUS_FILE_NAME = "status.json"
BOTS_FILE_NAME = "bots.json"  # /.tgfs/bots.json (added after the first release: no fixed id)
CACHE_FILE_NAME = "cache.json"  # /.tgfs/cache.json (likewise)
BACKUPS_FILE_NAME = "backups.json"  # /.tgfs/backups.json (likewise)
TRASH_FILE_NAME = "trash.json"  # /.tgfs/trash.json (likewise)
LIBRARY_FILE_NAME = "library.json"  # /.tgfs/library.json (likewise)
WEB_DIR_NAME = "web"  # /.tgfs/web/: the library page (a CONTROL_DIR node; likewise)


class SchemaMismatch(RuntimeError):
    """The catalog was written by another version of tgfs, or another daemon has it."""


# Advisory locks on a PostgreSQL catalog, in PostgreSQL's two-key form (class, object):
# - every connection of a daemon holds its host's lock (HOSTS_CLASS, crc of the host id):
#   a second daemon with the same id (a copied data directory) is refused;
# - and MOUNTED, shared: a daemon that wants it exclusively for a moment learns whether it
#   is the only one connected (tgfs.catalog.duties.alone);
# - once-per-library work takes a lock of LIBRARY_CLASS while it runs (duties.duty).
# Session locks go with their connection, so a host that dies lets go of all of them.
LIBRARY_CLASS = 0x7467_6673  # "tgfs"
HOSTS_CLASS = 0x7467_6668  # "tgfh"
MOUNTED = 0
SETUP = 3  # (LIBRARY_CLASS) creating, migrating and checking the catalog at open

# The threads that read the catalog off the FUSE thread (tgfs.catalog.readers) are named so.
READER_THREAD = "tgfs-catalog-reader"


def host_key(host_id: str) -> int:
    """A host id as a lock's object key (a signed 32-bit number)."""
    return zlib.crc32(host_id.encode()) - 2**31


class _Postgres(ReconnectMixin, pw.PostgresqlDatabase):
    """PostgreSQL for the catalog. A connection lost (the server restarted, the network
    dropped) is made again at the next statement outside a transaction (the one that found
    it lost fails: its request gets EIO); a statement inside a transaction is never
    retried, since what the transaction did before is gone. Every connection takes this
    host's locks first: if another daemon with this host's id took them meanwhile, this one
    writes nothing."""

    reconnect_errors = (  # (error class, words of psycopg 3's message)
        (pw.OperationalError, "terminating connection"),
        (pw.OperationalError, "the connection is closed"),
        (pw.OperationalError, "the connection is lost"),
        (pw.OperationalError, "server closed the connection"),
        (pw.OperationalError, "consuming input failed"),
        (pw.InterfaceError, "the connection is closed"),
    )

    # The server process of the current connection: notifications it sent are this
    # daemon's own changes (tgfs.fs.shared skips them).
    backend_pid = 0

    def _initialize_connection(self, conn) -> None:
        super()._initialize_connection(conn)
        if threading.current_thread().name.startswith(READER_THREAD):
            return  # (reads only: the daemon's locks are its writing connection's)
        me = host.me()
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_lock(%s, %s), pg_try_advisory_lock_shared(%s, %s)",
                (HOSTS_CLASS, host_key(me), LIBRARY_CLASS, MOUNTED),
            )
            held, mounted = cursor.fetchone()
        if not (held and mounted):
            conn.close()
            raise SchemaMismatch(
                f"the PostgreSQL catalog is in use by another tgfs daemon with this host's id "
                f"({me or 'none'}): each host needs its own data directory (a copied one "
                f"carries the id: delete its `{host.HOST_FILE}` file to make a new one)"
            )
        self.backend_pid = conn.info.backend_pid


def now_ns() -> int:
    return time.time_ns()


def is_sqlite() -> bool:
    """Whether the catalog is the SQLite file (else PostgreSQL)."""
    return isinstance(db.obj, pw.SqliteDatabase)


def changes_seen() -> object:
    """Something that differs once the catalog has changed, for what is made from it and
    kept until then (library.json, other readers' views, the backup's first look): on
    SQLite the rows this connection changed (the daemon is the catalog's only writer), on
    PostgreSQL where the write-ahead log is being inserted into (moved by any writer, at
    once: the position written to, pg_current_wal_lsn, lags behind commits when
    synchronous_commit is off). Compare with ==."""
    if is_sqlite():
        return db.connection().total_changes
    return db.execute_sql("SELECT pg_current_wal_insert_lsn()").fetchone()[0]


@contextlib.contextmanager
def durable() -> Iterator[None]:
    """A transaction that is on disk when it returns, power loss included.

    SQLite runs with synchronous=NORMAL (see open_catalog): a commit survives a crash of
    the daemon but may be lost with the machine's power. What close() and fsync() accept
    must survive both, so those commits ask for FULL, one transaction at a time.
    PostgreSQL's commits are durable as they are (synchronous_commit, its default).
    """
    if not is_sqlite():
        with db.atomic():
            yield
        return
    db.execute_sql("PRAGMA synchronous=FULL")
    try:
        with db.atomic():
            yield
    finally:
        db.execute_sql("PRAGMA synchronous=NORMAL")


def display(name: str) -> str:
    """A name or path as text for status output and logs: bytes that are not UTF-8 shown as
    \\xNN escapes (the catalog's text columns cannot hold them; Node names can)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class NameField(pw.BlobField):
    """A file name as raw bytes (BLOB), seen from Python as an `os.fsdecode` string.

    Rows written by schema 2 hold TEXT; the migration casts them, and python_value still
    accepts text so a half-read row never breaks a lookup."""

    field_type = "BLOB"

    def db_value(self, value):
        if value is None or isinstance(value, bytes):
            return value
        return os.fsencode(value)

    def python_value(self, value):
        return NameField.decode(value)

    @staticmethod
    def decode(value):
        """A name as stored (bytes; text in rows from schema 2) as tgfs sees it."""
        if isinstance(value, (bytes, memoryview)):
            return os.fsdecode(bytes(value))
        return value


def raw_rows(query: pw.Query) -> list[tuple]:
    """A query's rows as SQLite gives them: for the few queries that read the whole library
    (tgfs.catalog.listing, tgfs.catalog.access), where peewee's conversion of every value
    took most of the time. Values are SQLite's: names are bytes (`NameField.decode`),
    booleans 0 or 1."""
    return db.execute(query).fetchall()


def name_upper_bound(prefix: str) -> bytes | None:
    """The smallest byte string above every name starting with `prefix`; None if there is
    none (the prefix is all 0xFF bytes). For range scans on the (parent, name) index."""
    raw = bytearray(os.fsencode(prefix)).rstrip(b"\xff")
    if not raw:
        return None
    raw[-1] += 1
    return bytes(raw)


class NodeKind(enum.StrEnum):
    DIR = "dir"  # an ordinary directory the user made
    FILE = "file"  # an ordinary file: content in the store (blob) or still in the spool
    VIDEO = "video"  # a video folder (read-only)
    RENDITION = "rendition"  # one rendition's folder inside a video folder
    MASTER = "master"  # master.m3u8, rendered from the catalog
    PLAYLIST = "playlist"  # a rendition's playlist.m3u8, rendered from the catalog
    MEDIA = "media"  # an init segment or a media segment: immutable blob content
    CONTROL_DIR = "control_dir"  # /.tgfs
    SYMLINK = "symlink"  # a symbolic link the user made; its target is Node.target
    STATUS = "status"  # /.tgfs/status.json, rendered live
    BOTS = "bots"  # /.tgfs/bots.json: per-bot state of the Telegram store, rendered live
    # /.tgfs/cache.json: read cache and prefetch figures, rendered live; truncating it to
    # 0 bytes clears the cache (`tgfs cache clear`)
    CACHE = "cache"
    # /.tgfs/backups.json: the catalog's backup generations, rendered live; truncating it
    # to 0 bytes makes one now (`tgfs backup`)
    BACKUPS = "backups"
    # /.tgfs/trash.json: what the trash holds, rendered live; a line written to it is a
    # request (`undelete <id>`, `empty`), carried out when the file is closed
    TRASH = "trash"
    # /.tgfs/library.json: every video with its path, tracks, poster and state, rendered
    # from the catalog (tgfs.catalog.listing)
    LIBRARY = "library"
    # /.tgfs/web/<name>: a file of the library page, shipped with tgfs (tgfs.web); its
    # name in the package is Node.target, its size Node.size (both set at every start)
    WEB = "web"
    # /<TGFS_MP4_VIEW>/: the MP4 view's folder at the root (tgfs.catalog.view): every video
    # as one MP4 file, in a mirror of the library's folders whose entries are not rows
    VIEW = "view"
    # Special files a user made (mkfifo, mknod): entries with attributes and nothing else.
    # Opening one is the kernel's business (a fifo's pipe, a device's driver), never ours.
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR_DEVICE = "char_device"
    BLOCK_DEVICE = "block_device"

    @property
    def is_dir(self) -> bool:
        return self in (
            NodeKind.DIR,
            NodeKind.VIDEO,
            NodeKind.RENDITION,
            NodeKind.CONTROL_DIR,
            NodeKind.VIEW,
        )

    @property
    def is_live(self) -> bool:
        """Control files: rendered from the daemon's state on every open, read-only."""
        return self in (
            NodeKind.STATUS,
            NodeKind.BOTS,
            NodeKind.CACHE,
            NodeKind.BACKUPS,
            NodeKind.TRASH,
            NodeKind.LIBRARY,
        )

    @property
    def is_user_entry(self) -> bool:
        """What a user makes and changes as on any disk (everything else is tgfs's)."""
        return self in _USER_KINDS

    @property
    def in_video(self) -> bool:
        """Entries that make up a video folder: read-only, removed only with the folder."""
        return self in (NodeKind.RENDITION, NodeKind.MASTER, NodeKind.PLAYLIST, NodeKind.MEDIA)


_USER_KINDS = frozenset(
    {
        NodeKind.DIR,
        NodeKind.FILE,
        NodeKind.SYMLINK,
        NodeKind.FIFO,
        NodeKind.SOCKET,
        NodeKind.CHAR_DEVICE,
        NodeKind.BLOCK_DEVICE,
    }
)


# Column types that both engines read alike: integers are BigIntegerField and ids BIGSERIAL,
# since SQLite's INTEGER is 64 bits whatever it is called (so its schema is the same either
# way) and PostgreSQL's is 32 (sizes, nanosecond times and uids need more); floats are
# DoubleField (PostgreSQL's REAL has 24 bits of mantissa: a 2-hour film's duration to the
# millisecond does not fit).


class NeverReused(pw.BigAutoField):
    """An id never handed out twice, even once the newest row is deleted: AUTOINCREMENT on
    SQLite (a plain INTEGER PRIMARY KEY hands the highest free id out again), a sequence
    on PostgreSQL (BIGSERIAL, which never goes back)."""

    def ddl(self, ctx):
        node = super().ddl(ctx)
        return pw.NodeList((node, pw.SQL("AUTOINCREMENT"))) if is_sqlite() else node


class _Model(pw.Model):
    class Meta:
        database = db
        legacy_table_names = False


class Meta(_Model):
    """Key/value facts about the catalog itself; `schema_version` is checked at start."""

    key = pw.TextField(primary_key=True)
    value = pw.TextField()


class Blob(_Model):
    """Immutable content kept in the store: an ordinary file's bytes, or one HLS file."""

    id = NeverReused()
    size = pw.BigIntegerField()  # bytes; the sum of its parts' sizes


class Part(_Model):
    """A piece of a blob as the store holds it.

    Blobs larger than TELEGRAM_MAX_FILE_SIZE are cut into several parts (a Telegram document
    has a size limit); a part is also the unit the read cache fetches and keeps.
    """

    id = NeverReused()  # also the part's name in the read cache; never reused
    blob = pw.ForeignKeyField(Blob, backref="parts", on_delete="CASCADE")
    index = pw.BigIntegerField()  # 0-based position within the blob
    offset = pw.BigIntegerField()  # the part's first byte, counted from the blob's start
    size = pw.BigIntegerField()  # bytes in this part
    location = pw.TextField()  # where the store put it; only that store interprets it
    # The part's salt if it was sealed (encrypted) before it left (tgfs.store.sealing): its
    # key is derived from the master key and this. NULL: stored as it is (a part stored
    # before the library had a key). Only here, never in the store, so the store's bytes
    # name nothing.
    seal = pw.BlobField(null=True)

    class Meta:
        indexes = ((("blob", "index"), True),)


class Landed(_Model):
    """A part the store accepted for a job that has not finished.

    Written the moment the store confirms a part, removed in the transaction that makes a
    blob of it (or queues it for deletion). A crash leaves rows here, and the job starts
    over: start-up moves them to the garbage list, so no stored part is forgotten.
    """

    id = pw.BigAutoField()  # (BIGSERIAL on PostgreSQL: see the column types above)
    location = pw.TextField(index=True)
    job_id = pw.BigIntegerField(null=True)  # the job that stored it, for logs
    # The host whose job stored it (tgfs.catalog.host): only that host's start-up knows
    # whether the job is still running.
    host = pw.TextField(default=host.me)


class Garbage(_Model):
    """A store location whose blob is gone from the catalog but not yet from the store.

    Deleting from a remote store can fail (a bot is down, a flood wait); the row stays until
    a delete succeeds, so nothing is forgotten across failures and restarts.
    """

    id = pw.BigAutoField()  # (BIGSERIAL on PostgreSQL: see the column types above)
    location = pw.TextField()
    attempts = pw.BigIntegerField(default=0)  # failed delete attempts so far
    last_error = pw.TextField(null=True)  # why the last attempt failed, for status


class Video(_Model):
    """A dropped video after ingest: what its folder shows."""

    id = pw.BigAutoField()  # (BIGSERIAL on PostgreSQL: see the column types above)
    source_name = pw.TextField()  # the file name the user dropped, e.g. "Big Buck Bunny.mp4"
    duration = pw.DoubleField()  # seconds of media, from the segments
    mode = pw.TextField()  # "copy" (remuxed, no re-encode) or "transcode"
    target_duration = pw.BigIntegerField()  # EXT-X-TARGETDURATION, one for every rendition
    created_ns = pw.BigIntegerField(default=now_ns)
    # False while the ingest job is still adding segments: playlists are then EVENT
    # playlists without ENDLIST, which players reload until the video is complete.
    complete = pw.BooleanField(default=True)
    # Where the segments' timestamps begin, s. WebVTT subtitles added later (a sidecar file
    # dropped after the video) map their cue times onto the video's clock with it.
    start_time = pw.DoubleField(default=0.0)
    # The ingest job still adding to it (None once complete). A daemon stopped mid-way
    # restarts the job from scratch, so its half-published video is removed first.
    job_id = pw.BigIntegerField(null=True)
    # SHA-256 of the dropped file (hex). A later drop of the same bytes into the same
    # folder (`rsync` run twice) is recognised and not published a second time.
    source_hash = pw.TextField(null=True, index=True)
    # Its poster (a representative frame as a JPEG, tgfs.media.poster), shown as poster.jpg
    # in its folder; None if none could be made (or the video predates posters).
    poster_blob = pw.ForeignKeyField(Blob, null=True)


class RenditionKind(enum.StrEnum):
    # A variant stream (EXT-X-STREAM-INF): video, with its audio muxed in when there is one
    # track; or the audio of an audio-only file (TGFS_AUDIO_HLS, width 0).
    VIDEO = "video"
    AUDIO = "audio"  # one of several audio tracks: EXT-X-MEDIA TYPE=AUDIO, fMP4 AAC
    SUBTITLES = "subtitles"  # EXT-X-MEDIA TYPE=SUBTITLES: WebVTT segments, no init segment


class Rendition(_Model):
    """One rendition of a video: a folder with playlist.m3u8, init segment, segments."""

    id = pw.BigAutoField()  # (BIGSERIAL on PostgreSQL: see the column types above)
    video = pw.ForeignKeyField(Video, backref="renditions", on_delete="CASCADE")
    name = pw.TextField()  # its folder name, e.g. "720p", "audio-fra", "subtitles-eng"
    kind = pw.TextField(default=RenditionKind.VIDEO)  # a RenditionKind value
    language = pw.TextField(null=True)  # LANGUAGE of an audio/subtitle rendition (as tagged)
    title = pw.TextField(null=True)  # NAME of an audio/subtitle rendition, shown by players
    is_default = pw.BooleanField(default=False)  # DEFAULT=YES in its group
    width = pw.BigIntegerField()  # 0 for audio and subtitles
    height = pw.BigIntegerField()
    frame_rate = pw.DoubleField(null=True)  # FRAME-RATE in the master playlist; None if unknown
    codecs = pw.TextField()  # RFC 6381 CODECS value, computed from the init segment
    bandwidth = pw.BigIntegerField()  # BANDWIDTH: peak segment bit rate, bits/s
    average_bandwidth = pw.BigIntegerField()  # AVERAGE-BANDWIDTH: whole-stream bit rate, bits/s
    init_name = pw.TextField()  # file name of the init segment (EXT-X-MAP), e.g. "init.mp4"
    init_blob = pw.ForeignKeyField(Blob, null=True)  # None for subtitles (WebVTT has none)
    # The init segment's bytes (about a kilobyte; also in the store, as init_blob): kept
    # here so that a video's MP4 view (tgfs.media.fmp4) gets its header, and so its size,
    # without a store read. None for subtitles, and for renditions made before schema 8.
    init_data = pw.BlobField(null=True)
    # Subtitles: the bytes of the one WebVTT file the MP4 view shows beside the video
    # (`Film.eng.vtt`, tgfs.media.subtitles.whole of its segments), worked out from the
    # segments when they are published, so that a `stat` of it reads nothing. None for
    # other kinds, and for subtitles made before schema 9 (worked out from the stored
    # segments when the view first needs it).
    sidecar_size = pw.BigIntegerField(null=True)


class Segment(_Model):
    """One media segment of a rendition, in playback order."""

    id = pw.BigAutoField()  # (BIGSERIAL on PostgreSQL: see the column types above)
    rendition = pw.ForeignKeyField(Rendition, backref="segments", on_delete="CASCADE")
    seq = pw.BigIntegerField()  # 0-based position; EXT-X-MEDIA-SEQUENCE starts at 0
    duration = pw.DoubleField()  # seconds, the EXTINF value
    name = pw.TextField()  # file name in the rendition folder, e.g. "seg_00003.m4s"
    blob = pw.ForeignKeyField(Blob)

    class Meta:
        indexes = ((("rendition", "seq"), True),)


class Node(_Model):
    """One inode of the mounted tree: `id` is its inode number. Its names are Entry rows.

    A directory has exactly one name, a file, symlink or special file one per hard link,
    the root none. A node whose last name went (`links` 0) lives on while the kernel still
    knows its inode (a file unlinked while open stays readable) and is purged at `forget`,
    or at the next start (see tgfs.fs.operations and tree.orphans).
    """

    # AUTOINCREMENT: a deleted entry's inode number is never handed out again, so the
    # kernel can never confuse a new file with one it still remembers.
    id = NeverReused()
    # A NodeKind value. Indexed for the queries over every folder or video of the library
    # (library.json, other readers' views), which would otherwise scan every node: most
    # nodes are segments. (An index is not the catalog's shape: open_catalog's
    # create_tables adds it to an older catalog, no schema version needed.)
    kind = pw.TextField(index=True)
    mode = pw.BigIntegerField()  # permission bits; the file-type bits follow from kind
    uid = pw.BigIntegerField(default=0)
    gid = pw.BigIntegerField(default=0)
    size = pw.BigIntegerField(default=0)  # ordinary files: content length; others derive it
    atime_ns = pw.BigIntegerField(default=now_ns)  # set by utimensat only (no atime updates)
    mtime_ns = pw.BigIntegerField(default=now_ns)
    ctime_ns = pw.BigIntegerField(default=now_ns)
    # Entry rows naming it. Kept here (not counted) because every stat reports it.
    links = pw.BigIntegerField(default=1)
    blob = pw.ForeignKeyField(Blob, null=True)  # stored content (ordinary file, HLS file)
    # A local file with the content while it is not (only) in the store: being written, or
    # waiting for ingest. Reads use it in preference to the blob.
    spool = pw.TextField(null=True)
    video = pw.ForeignKeyField(Video, null=True, on_delete="CASCADE")  # folder + its insides
    rendition = pw.ForeignKeyField(Rendition, null=True, on_delete="CASCADE")
    # symlinks: the target path, bytes as given; WEB files: the name of the shipped file
    target = NameField(null=True)
    rdev = pw.BigIntegerField(default=0)  # device nodes: the device number (metadata only)

    # The name this node was reached through, when a tree query found it by name; else
    # looked up on first use (its oldest name). Not a column.
    _entry: Entry | None = None
    _entry_loaded = False

    @property
    def node_kind(self) -> NodeKind:
        return NodeKind(self.kind)

    @property
    def entry(self) -> Entry | None:
        """The name it was found through, or its oldest; None for the root and orphans."""
        if not self._entry_loaded:
            self._entry = Entry.select().where(Entry.node == self.id).order_by(Entry.id).first()
            self._entry_loaded = True
        return self._entry

    def found_as(self, entry: Entry | None) -> Node:
        self._entry, self._entry_loaded = entry, True
        return self

    @property
    def name(self) -> str:
        """Its name in `parent_id` (see `entry`); "" for the root and orphans."""
        entry = self.entry
        return entry.name if entry is not None else ""

    @property
    def parent_id(self) -> int:
        """The directory it was found in (see `entry`); the root's is the root. Asking an
        unlinked node is a bug (LookupError): check `links` first."""
        if self.id == ROOT_ID:
            return ROOT_ID
        entry = self.entry
        if entry is None:
            raise LookupError(f"inode {self.id} has no name (unlinked)")
        return entry.parent_id


class Entry(_Model):
    """A name in a directory: (parent, name) → node. What readdir lists and lookup finds."""

    # AUTOINCREMENT: readdir resumes after an entry id, which must never move backwards.
    id = NeverReused()
    parent = pw.ForeignKeyField(Node, backref="entries")  # the directory
    name = NameField()  # raw bytes; never ".", ".." or ""
    # The inode; its row goes with it (a video's insides are deleted by video).
    node = pw.ForeignKeyField(Node, backref="names", on_delete="CASCADE")

    class Meta:
        indexes = ((("parent", "name"), True),)


# Job.host of a store-first job no host has claimed yet (host ids never start with "*").
ANY_HOST = "*"


class JobState(enum.StrEnum):
    """Where a version of a file is on its way to the store (see Job)."""

    WRITING = "writing"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Job(_Model):
    """One version of a file between the spool and the store. The queue survives restarts.

    A job is born `writing` when a file's new content starts in a spool file (see
    tgfs.fs.writes); close() or fsync() accepts the content (`queued`, with its size) in
    one durable transaction. A `writing` job found at start-up is a write the daemon never
    finished: what reached the spool file is kept and queued, and the job says so.
    """

    id = pw.BigAutoField()  # (BIGSERIAL on PostgreSQL: see the column types above)
    node = pw.ForeignKeyField(Node, null=True, on_delete="SET NULL")  # None once deleted
    path = pw.TextField()  # mount-relative path when dropped (`display`ed), for status
    spool = pw.TextField()  # the spooled copy the job works from
    # The host whose spool holds that copy (tgfs.catalog.host): the only one that can run
    # the job, and the one whose start-up recovers it.
    host = pw.TextField(default=host.me)
    # With TGFS_INGEST=store-first: the dropped file, stored as it is (the node's blob),
    # once its job has stored it. The job is then any host's to claim (`host` is ANY_HOST
    # until one does), which downloads it into its own spool (`spool`) to make the video.
    source_blob = pw.BigIntegerField(null=True)
    size = pw.BigIntegerField()  # bytes of the dropped file
    state = pw.TextField(default=JobState.QUEUED)  # a JobState value
    outcome = pw.TextField(null=True)  # "video" or "file" once known
    error = pw.TextField(null=True)  # why the media step failed (the file is kept as-is)
    # Said about the file whatever the outcome: a write the daemon never finished, a copy
    # of a video already there. Shown in status beside the error.
    note = pw.TextField(null=True)
    attempts = pw.BigIntegerField(default=0)  # store failures so far (retried with backoff)
    not_before = pw.DoubleField(default=0.0)  # epoch seconds; retry no earlier than this
    created_ns = pw.BigIntegerField(default=now_ns)
    finished_ns = pw.BigIntegerField(null=True)


class Backup(_Model):
    """One generation of the catalog's backup in the store (see tgfs.backups).

    The store's manifest lists the same generations, so a machine with nothing but the
    settings finds them; these rows make the running daemon know their parts (the crash
    scan must not take them for orphans) and delete old generations.
    """

    generation = pw.BigIntegerField(primary_key=True)  # 1, 2, …: never reused
    created_ns = pw.BigIntegerField()  # when its snapshot was taken
    size = pw.BigIntegerField()  # bytes of the catalog snapshot
    stored_size = pw.BigIntegerField()  # bytes in the store (compressed)
    # Its parts in order, as JSON: [[location, size], …].
    parts = pw.TextField()
    # The salt (hex) its snapshot was sealed with before it was cut into parts; NULL:
    # stored as it is (made without an encryption key).
    seal = pw.TextField(null=True)


class Trash(_Model):
    """A deleted file or video folder that can still be brought back (tgfs.catalog.trash).

    Its node is kept without a name (`links` 0) and with its content, so nothing it holds
    goes to the garbage list until the trash lets it go: TGFS_TRASH_DAYS after the delete,
    or when the trash is emptied. A video folder keeps everything inside it.
    """

    id = NeverReused()  # what `undelete` names; never reused
    node = pw.ForeignKeyField(Node, unique=True, on_delete="CASCADE")
    parent_id = pw.BigIntegerField()  # the directory it was in (it may be gone since)
    name = NameField()  # its name there
    path = NameField()  # its mount-relative path then: where `undelete` puts it back
    deleted_ns = pw.BigIntegerField(default=now_ns, index=True)  # expiry scans by age
    size = pw.BigIntegerField()  # bytes it keeps in the store (a video: all its files)


TABLES = [
    Meta,
    Blob,
    Part,
    Landed,
    Garbage,
    Video,
    Rendition,
    Segment,
    Node,
    Entry,
    Job,
    Backup,
    Trash,
]


def is_url(where: Path | str) -> bool:
    """Whether a catalog's place is a PostgreSQL URL (else a SQLite file's path)."""
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


def open_catalog(where: Path | str) -> None:
    """Open (creating if new) the catalog and check its schema version: the SQLite file at
    `where`, or the PostgreSQL database a `postgresql://` URL names (TGFS_CATALOG_URL)."""
    if is_url(where):
        assert isinstance(where, str)
        # psycopg 3; the URL goes to libpq as it is (host=/socket/dir, sslmode, …).
        db.initialize(_Postgres(where, prefer_psycopg3=True))
        try:
            db.connect(reuse_if_open=True)
        except SchemaMismatch:  # held by another daemon
            db.close()
            raise
        except pw.OperationalError as exc:  # (libpq's words name no password)
            reason = " ".join(line.strip() for line in str(exc).splitlines()) or "no answer"
            raise SchemaMismatch(f"cannot open the PostgreSQL catalog: {reason}") from None
    else:
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        db.initialize(
            pw.SqliteDatabase(
                str(path),
                pragmas={
                    "journal_mode": "wal",
                    # NORMAL in WAL mode loses at most the last transactions on power loss,
                    # never consistency; FULL would fsync on every create/release on the
                    # FUSE thread.
                    "synchronous": "normal",
                    "foreign_keys": 1,
                    "busy_timeout": 5000,
                },
            )
        )
    db.connect(reuse_if_open=True)
    if is_sqlite():
        _set_up(where)
        return
    # Two hosts' daemons starting at once would both create, migrate or redefine: one at
    # a time (a session lock, let go at once after).
    db.execute_sql("SELECT pg_advisory_lock(%s, %s)", (LIBRARY_CLASS, SETUP))
    try:
        _set_up(where)
    finally:
        db.execute_sql("SELECT pg_advisory_unlock(%s, %s)", (LIBRARY_CLASS, SETUP))


def _set_up(where: Path | str) -> None:
    """Create, migrate and check the opened catalog."""
    with db.atomic():
        if not Meta.table_exists():
            db.create_tables(TABLES)
            Meta.create(key="schema_version", value=str(SCHEMA_VERSION))
            _create_fixed_nodes()
    row = Meta.get_or_none(Meta.key == "schema_version")
    found = int(row.value) if row else None
    if found == 1:
        _migrate_from_1()
        found = 2
    if found == 2:
        _migrate_from_2()
        found = 3
    if found == 3:
        _migrate_from_3()
        found = 4
    if found == 4:  # the Trash table is new: create_tables below makes it
        Meta.update(value="5").where(Meta.key == "schema_version").execute()
        found = 5
    if found == 5:  # what was stored so far was stored as it is: seal NULL says so
        with db.atomic():
            m = SqliteMigrator(db)
            migrate(m.add_column("part", "seal", Part.seal))
            if Backup.table_exists():  # else create_tables below makes it, with the column
                migrate(m.add_column("backup", "seal", Backup.seal))
            Meta.update(value="6").where(Meta.key == "schema_version").execute()
        found = 6
    if found == 6:  # videos made so far have no poster: NULL says so
        with db.atomic():
            migrate(SqliteMigrator(db).add_column("video", "poster_blob_id", Video.poster_blob))
            # and their folders were 0555, which kept their owners' `rm -r` from reaching
            # tgfs (tgfs.catalog.library.READ_ONLY_DIR)
            Node.update(mode=0o755).where(
                Node.kind.in_([NodeKind.VIDEO, NodeKind.RENDITION]) & (Node.mode == 0o555)
            ).execute()
            Meta.update(value="7").where(Meta.key == "schema_version").execute()
        found = 7
    if found == 7:  # init segments were only in the store: NULL says so
        with db.atomic():
            migrate(SqliteMigrator(db).add_column("rendition", "init_data", Rendition.init_data))
            Meta.update(value="8").where(Meta.key == "schema_version").execute()
        found = 8
    if found == 8:  # subtitles' sizes as one file are not known yet: NULL says so
        with db.atomic():
            migrate(
                SqliteMigrator(db).add_column("rendition", "sidecar_size", Rendition.sidecar_size)
            )
            Meta.update(value="9").where(Meta.key == "schema_version").execute()
        found = 9
    if found == 9:  # one host so far: the one migrating has every job and landed part
        with db.atomic():  # (add_column fills the rows with the default: host.me())
            m = SchemaMigrator.from_database(db)
            migrate(m.add_column("job", "host", Job.host))
            if Landed.table_exists():  # else create_tables below makes it, with the column
                migrate(m.add_column("landed", "host", Landed.host))
            Meta.update(value="10").where(Meta.key == "schema_version").execute()
        found = 10
    if found == 10:  # every job so far worked from its spool: NULL says so
        with db.atomic():
            migrate(
                SchemaMigrator.from_database(db).add_column("job", "source_blob", Job.source_blob)
            )
            Meta.update(value="11").where(Meta.key == "schema_version").execute()
        found = SCHEMA_VERSION
    if found != SCHEMA_VERSION:
        db.close()
        raise SchemaMismatch(
            f"catalog {'in PostgreSQL' if is_url(where) else where} has schema version "
            f"{found}, this tgfs needs {SCHEMA_VERSION}"
        )
    with db.atomic():
        # Tables added by a migration, after it: before it, SQLite would accept an index on
        # a column not added yet (a double-quoted unknown name is taken as a string).
        db.create_tables(TABLES)
        _fixed_file(BOTS_FILE_NAME, kind=NodeKind.BOTS, mode=0o444)
        _fixed_file(LIBRARY_FILE_NAME, kind=NodeKind.LIBRARY, mode=0o400)
        # Writable by the daemon's user (the only write it takes is a truncation).
        _fixed_file(
            CACHE_FILE_NAME, kind=NodeKind.CACHE, mode=0o644, uid=os.getuid(), gid=os.getgid()
        )
        _fixed_file(  # likewise: a truncation makes a backup now
            BACKUPS_FILE_NAME,
            kind=NodeKind.BACKUPS,
            mode=0o644,
            uid=os.getuid(),
            gid=os.getgid(),
        )
        _fixed_file(  # likewise: requests are written to it
            TRASH_FILE_NAME, kind=NodeKind.TRASH, mode=0o644, uid=os.getuid(), gid=os.getgid()
        )
        _control_modes()
        _web_files()
        if not is_sqlite():
            _change_notices()


def _migrate_from_1() -> None:
    """Version 1 knew only video renditions of finished videos: add the columns that
    describe audio/subtitle renditions and videos still processing, with defaults that
    describe the old rows as they are."""
    m = SqliteMigrator(db)
    with db.atomic():
        migrate(
            m.add_column("video", "complete", Video.complete),
            m.add_column("video", "job_id", Video.job_id),
            m.add_column("video", "start_time", Video.start_time),
            m.add_column("rendition", "kind", Rendition.kind),
            m.add_column("rendition", "language", Rendition.language),
            m.add_column("rendition", "title", Rendition.title),
            m.add_column("rendition", "is_default", Rendition.is_default),
            m.drop_not_null("rendition", "init_blob_id"),
        )
        Meta.update(value="2").where(Meta.key == "schema_version").execute()


def _migrate_from_2() -> None:
    """Version 2 kept names as text (so names that are not UTF-8 could not be stored) and
    had no symlinks, source hashes or landed parts. Landed is a new table (create_tables
    made it); the names become the bytes they encode."""
    m = SqliteMigrator(db)
    with db.atomic():
        migrate(
            m.add_column("node", "target", Node.target),
            m.add_column("video", "source_hash", Video.source_hash),  # and its index
            m.add_column("job", "note", Job.note),
        )
        db.execute_sql("UPDATE node SET name = CAST(name AS BLOB)")
        Meta.update(value="3").where(Meta.key == "schema_version").execute()


def _migrate_from_3() -> None:
    """Version 3 kept each node's one name in the node row. Names move to Entry (so a file
    can have several), the node table is rebuilt without them, with atime (= mtime), links
    (1) and rdev (0).

    The rebuild follows SQLite's recipe for schema changes ALTER TABLE cannot make: with
    foreign keys off (dropping the old table must not cascade to videos' rows or jobs, and
    the other tables' references must keep naming "node"), in one transaction, checked with
    foreign_key_check before commit. The AUTOINCREMENT counter is carried over, so no inode
    number is ever handed out twice.
    """
    db.execute_sql("PRAGMA foreign_keys=OFF")  # not inside a transaction: no effect there
    db.execute_sql("PRAGMA legacy_alter_table=ON")  # RENAME leaves other tables' references
    try:
        with db.atomic():
            for (index,) in db.execute_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'node' AND sql IS NOT NULL"
            ).fetchall():
                db.execute_sql(f'DROP INDEX "{index}"')
            db.execute_sql("ALTER TABLE node RENAME TO node_v3")
            db.create_tables([Node, Entry])
            db.execute_sql(
                "INSERT INTO node (id, kind, mode, uid, gid, size, atime_ns, mtime_ns, "
                "ctime_ns, links, blob_id, spool, video_id, rendition_id, target, rdev) "
                "SELECT id, kind, mode, uid, gid, size, mtime_ns, mtime_ns, ctime_ns, 1, "
                "blob_id, spool, video_id, rendition_id, target, 0 FROM node_v3"
            )
            db.execute_sql(
                "INSERT INTO entry (parent_id, name, node_id) SELECT parent_id, name, id "
                "FROM node_v3 WHERE parent_id IS NOT NULL ORDER BY id"
            )
            db.execute_sql(
                "UPDATE sqlite_sequence SET seq = max(seq, (SELECT seq FROM sqlite_sequence "
                "WHERE name = 'node_v3')) WHERE name = 'node'"
            )
            db.execute_sql("DROP TABLE node_v3")
            db.execute_sql("DELETE FROM sqlite_sequence WHERE name = 'node_v3'")
            broken = db.execute_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise SchemaMismatch(
                    f"catalog upgrade to version 4 left broken references "
                    f"{broken[:5]}; the catalog was not changed"
                )
            Meta.update(value="4").where(Meta.key == "schema_version").execute()
    finally:
        db.execute_sql("PRAGMA legacy_alter_table=OFF")
        db.execute_sql("PRAGMA foreign_keys=ON")


# Every change to the tree, told to the daemons of the other hosts (tgfs.fs.notices), so
# their kernels forget what they cached of it: a name gone or renamed ("e PARENT HEXNAME"),
# a node's attributes or a folder's listing changed ("n NODE"). A new name needs nothing
# more than its folder's: the kernel caches no name that did not exist. Sent at commit,
# to daemons listening then; one that was not (restarting, reconnecting) has only its
# kernel's caches to go by, which trust a changeable name for a second (tgfs.fs.attrs).
# The same channel carries "j": a store-first job became any host's to claim
# (tgfs.catalog.jobs.release), so hosts that make videos look at once, not at their next
# poll.
NOTICES_CHANNEL = "tgfs_changes"
JOBS_NOTICE = "j"
_NOTICES_SQL = f"""
CREATE OR REPLACE FUNCTION tgfs_notice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'entry' THEN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            PERFORM pg_notify('{NOTICES_CHANNEL}',
                              'e ' || OLD.parent_id || ' ' || encode(OLD.name, 'hex'));
            PERFORM pg_notify('{NOTICES_CHANNEL}', 'n ' || OLD.parent_id);
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            PERFORM pg_notify('{NOTICES_CHANNEL}', 'n ' || NEW.parent_id);
        END IF;
    ELSE
        PERFORM pg_notify('{NOTICES_CHANNEL}', 'n ' || NEW.id);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER tgfs_entry_notice AFTER INSERT OR UPDATE OR DELETE ON entry
    FOR EACH ROW EXECUTE FUNCTION tgfs_notice();
CREATE OR REPLACE TRIGGER tgfs_node_notice AFTER UPDATE ON node
    FOR EACH ROW EXECUTE FUNCTION tgfs_notice();
"""


def _change_notices() -> None:
    """The triggers that tell other hosts of changes (made again at each start: the text
    above is their one definition)."""
    db.execute_sql(_NOTICES_SQL)


def own_backend_pid() -> int:
    """The PostgreSQL server process of this daemon's connection (0 if none): the changes
    it notifies are this daemon's own."""
    return db.obj.backend_pid if isinstance(db.obj, _Postgres) else 0


def close_catalog() -> None:
    if db.obj is not None and not db.is_closed():
        db.close()


def _create_fixed_nodes() -> None:
    Node.create(id=ROOT_ID, kind=NodeKind.DIR, mode=0o755)  # no Entry: the mount names it
    Node.create(id=CONTROL_DIR_ID, kind=NodeKind.CONTROL_DIR, mode=0o555)
    Entry.create(parent=ROOT_ID, name=CONTROL_DIR_NAME, node=CONTROL_DIR_ID)
    Node.create(id=STATUS_FILE_ID, kind=NodeKind.STATUS, mode=0o444)
    Entry.create(parent=CONTROL_DIR_ID, name=STATUS_FILE_NAME, node=STATUS_FILE_ID)
    if not is_sqlite():  # ids given by hand do not move a PostgreSQL sequence on
        db.execute_sql("SELECT setval(pg_get_serial_sequence('node', 'id'), %s)", (STATUS_FILE_ID,))


def _control_modes() -> None:
    """The control folder and its files belong to the daemon's user. With allow_other,
    others (nginx serving a library page) may read the files that list paths, status.json
    and library.json, but each reader gets only the entries in folders they could list
    (tgfs.catalog.access); bots.json, cache.json and backups.json hold no paths. The trash
    lists deleted paths, which no folder's mode guards any more: its owner's alone. Only
    the owner makes requests (truncating cache.json or backups.json, writing trash.json).
    (Set at every open: catalogs made before are brought in line.)"""
    owner = {"uid": os.getuid(), "gid": os.getgid()}
    Node.update(mode=0o555, **owner).where(Node.id == CONTROL_DIR_ID).execute()
    read_only = (NodeKind.STATUS, NodeKind.BOTS, NodeKind.LIBRARY)
    Node.update(mode=0o444, **owner).where(Node.kind.in_(read_only)).execute()
    requests = (NodeKind.CACHE, NodeKind.BACKUPS)  # truncated: a request
    Node.update(mode=0o644, **owner).where(Node.kind.in_(requests)).execute()
    Node.update(mode=0o600, **owner).where(Node.kind == NodeKind.TRASH).execute()


def _web_files() -> None:
    """`.tgfs/web/` holds the page's files as this tgfs ships them: added, resized or
    removed at every open, so an upgrade brings its page with it."""
    found = (
        Node.select()
        .join(Entry, on=(Entry.node == Node.id))
        .where((Entry.parent == CONTROL_DIR_ID) & (Entry.name == WEB_DIR_NAME))
        .first()
    )
    owner = {"uid": os.getuid(), "gid": os.getgid()}
    if found is None:
        found = Node.create(kind=NodeKind.CONTROL_DIR, mode=0o555, **owner)
        Entry.create(parent=CONTROL_DIR_ID, name=WEB_DIR_NAME, node=found)
    shipped = {name: path.stat().st_size for name, path in web.files().items()}
    present = {
        e.name: e.node for e in Entry.select(Entry, Node).join(Node).where(Entry.parent == found.id)
    }
    for name, node in present.items():
        if name not in shipped:
            Entry.delete().where((Entry.parent == found.id) & (Entry.name == name)).execute()
            node.delete_instance()
        elif node.size != shipped[name]:
            Node.update(size=shipped[name]).where(Node.id == node.id).execute()
    for name, size in shipped.items():
        if name not in present:
            node = Node.create(kind=NodeKind.WEB, mode=0o444, size=size, target=name, **owner)
            Entry.create(parent=found.id, name=name, node=node)


def _fixed_file(name: str, **fields) -> None:
    """A control file added after the first release (no fixed id), once."""
    if not Entry.select().where((Entry.parent == CONTROL_DIR_ID) & (Entry.name == name)).exists():
        Entry.create(parent=CONTROL_DIR_ID, name=name, node=Node.create(**fields))
