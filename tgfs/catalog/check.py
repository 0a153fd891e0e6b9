"""The catalog's consistency check: tree, blobs, parts, videos and jobs agree.

Every rule below holds after every committed transaction, whatever the daemon was doing
when it stopped (kill -9 included): catalog changes are atomic, and what a crash leaves
half done (landed parts, writes never closed, unlinked inodes) is recorded as such and
finished at the next start. So any problem found here is a bug, or damage from outside.

Runs after every test (tests/conftest.py), and is the first pass of `tgfs fsck`. Each rule
is one query over a whole table, so a library of a million entries is checked in seconds.
"""

from __future__ import annotations

import dataclasses

from tgfs.catalog.schema import ROOT_ID, JobState, NodeKind, db, is_sqlite
from tgfs.catalog.tree import NAME_MAX

_DIR_KINDS = tuple(k.value for k in NodeKind if k.is_dir)
_VIDEO_KINDS = (
    NodeKind.VIDEO,
    NodeKind.RENDITION,
    NodeKind.MASTER,
    NodeKind.PLAYLIST,
    NodeKind.MEDIA,
)
_ACTIVE = (JobState.WRITING, JobState.QUEUED, JobState.RUNNING)


@dataclasses.dataclass(frozen=True)
class Problem:
    rule: str  # which rule failed, e.g. "entry parent is a directory"
    rows: list[tuple]  # the offending rows (the first few)

    def __str__(self) -> str:
        return f"{self.rule}: {self.rows}"


def _in(values: tuple) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _bytes(value: bytes) -> str:
    """A byte string literal (names are bytes), as each engine writes one."""
    return f"x'{value.hex()}'" if is_sqlite() else f"'\\x{value.hex()}'::bytea"


def _holds(haystack: str, needle: str) -> str:
    """SQL: `needle` occurs in `haystack` (byte strings)."""
    if is_sqlite():
        return f"instr({haystack}, {needle}) > 0"
    return f"position({needle} in {haystack}) > 0"


def _rules() -> list[tuple[str, str]]:
    """(rule, query returning the rows that break it). Queries, not Python loops, for
    speed; written in SQL that SQLite and PostgreSQL both take, but for byte strings."""
    return [
        # -- the tree
        (
            "the root is a directory without a name",
            f"SELECT id, kind FROM node WHERE id = {ROOT_ID} AND (kind != 'dir' OR EXISTS "
            f"(SELECT 1 FROM entry WHERE node_id = {ROOT_ID})) "
            f"UNION ALL SELECT {ROOT_ID}, 'missing' WHERE NOT EXISTS "
            f"(SELECT 1 FROM node WHERE id = {ROOT_ID})",
        ),
        (
            "every node kind is known",
            f"SELECT id, kind FROM node WHERE kind NOT IN {_in(tuple(k.value for k in NodeKind))}",
        ),
        (
            "an entry's parent is a directory",
            f"SELECT e.id, e.parent_id FROM entry e LEFT JOIN node p ON p.id = e.parent_id "
            f"WHERE p.id IS NULL OR p.kind NOT IN {_in(_DIR_KINDS)}",
        ),
        (
            "a name is not empty, '.', '..', and has no '/' or NUL",
            f"SELECT id, name FROM entry WHERE length(name) = 0 OR name IN ({_bytes(b'.')}, "
            f"{_bytes(b'..')}) OR {_holds('name', _bytes(b'/'))} "
            f"OR {_holds('name', _bytes(bytes(1)))} OR length(name) > {NAME_MAX}",
        ),
        (
            "links counts a node's entries (the root: 1)",
            f"SELECT n.id, n.links, count(e.id) FROM node n LEFT JOIN entry e ON e.node_id = n.id "
            f"GROUP BY n.id HAVING n.links != count(e.id) + CASE WHEN n.id = {ROOT_ID} THEN 1 "
            f"ELSE 0 END",
        ),
        (
            "a directory has one name (the root none)",
            f"SELECT n.id, count(e.id) FROM node n JOIN entry e ON e.node_id = n.id "
            f"WHERE n.kind IN {_in(_DIR_KINDS)} GROUP BY n.id HAVING count(e.id) > 1",
        ),
        (
            "an unlinked directory is empty",
            f"SELECT n.id FROM node n WHERE n.links = 0 AND n.id != {ROOT_ID} "
            f"AND EXISTS (SELECT 1 FROM entry e WHERE e.parent_id = n.id) "
            f"AND NOT EXISTS (SELECT 1 FROM trash t WHERE t.node_id = n.id)",
        ),
        (
            "a trashed node has no name, and is a stored file or a complete video folder",
            "SELECT t.id, n.kind, n.links FROM trash t JOIN node n ON n.id = t.node_id "
            "LEFT JOIN video v ON v.id = n.video_id WHERE n.links != 0 OR NOT "
            "((n.kind = 'file' AND n.blob_id IS NOT NULL) OR (n.kind = 'video' AND v.complete))",
        ),
        (
            "every directory with a name is reached from the root (or from the trash)",
            # Walks up from every named directory; one that never meets the root is in a loop
            # (a video folder in the trash keeps its insides: their walk ends at the folder).
            f"WITH RECURSIVE up(start, at, depth) AS ("
            f"  SELECT e.node_id, e.parent_id, 1 FROM entry e JOIN node n ON n.id = e.node_id "
            f"  WHERE n.kind IN {_in(_DIR_KINDS)} "
            f"  UNION ALL SELECT up.start, e.parent_id, up.depth + 1 FROM up "
            f"  JOIN entry e ON e.node_id = up.at WHERE up.at != {ROOT_ID} AND up.depth < 10000) "
            f"SELECT start FROM up GROUP BY start HAVING max(CASE WHEN at = {ROOT_ID} "
            f"OR at IN (SELECT node_id FROM trash) THEN 1 ELSE 0 END) = 0",
        ),
        # -- what each kind of node carries
        (
            "a video folder's insides belong to a video",
            f"SELECT id, kind FROM node WHERE kind IN {_in(_VIDEO_KINDS)} AND video_id IS NULL",
        ),
        (
            "an entry of a video folder is in the same video's folder",
            f"SELECT n.id, n.video_id, p.video_id FROM entry e JOIN node n ON n.id = e.node_id "
            f"JOIN node p ON p.id = e.parent_id WHERE n.kind IN {_in(_VIDEO_KINDS[1:])} "
            f"AND coalesce(p.video_id, -1) != coalesce(n.video_id, -1)",
        ),
        (
            "a segment file or init segment has a blob",
            "SELECT id FROM node WHERE kind = 'media' AND blob_id IS NULL",
        ),
        ("a symlink has a target", "SELECT id FROM node WHERE kind = 'symlink' AND target IS NULL"),
        (
            "only files and video files have content",
            "SELECT id, kind FROM node WHERE (blob_id IS NOT NULL AND kind NOT IN "
            "('file', 'media')) OR (spool IS NOT NULL AND kind != 'file')",
        ),
        # -- blobs and parts
        (
            "a blob's size is the sum of its parts",
            "SELECT b.id, b.size, sum(p.size) FROM blob b JOIN part p ON p.blob_id = b.id "
            "GROUP BY b.id HAVING b.size != sum(p.size)",
        ),
        (
            "a blob's parts are numbered 0… and follow each other",
            'SELECT p.blob_id, p."index" FROM part p LEFT JOIN part q ON q.blob_id = p.blob_id '
            'AND q."index" = p."index" - 1 WHERE (p."index" = 0 AND p."offset" != 0) OR '
            '(p."index" > 0 AND (q.id IS NULL OR q."offset" + q.size != p."offset"))',
        ),
        (
            "a stored location belongs to one part",
            "SELECT location, count(*) FROM part GROUP BY location HAVING count(*) > 1",
        ),
        (
            "a sealed part's salt is 32 bytes (tgfs.store.sealing)",
            "SELECT id, length(seal) FROM part WHERE seal IS NOT NULL AND length(seal) != 32",
        ),
        (
            "a part in use is not on the garbage list",
            "SELECT p.location FROM part p JOIN garbage g ON g.location = p.location",
        ),
        (
            "every blob is used (by a file, a segment or an init segment)",
            "SELECT b.id FROM blob b WHERE NOT EXISTS (SELECT 1 FROM node WHERE blob_id = b.id) "
            "AND NOT EXISTS (SELECT 1 FROM segment WHERE blob_id = b.id) "
            "AND NOT EXISTS (SELECT 1 FROM rendition WHERE init_blob_id = b.id)",
        ),
        # -- videos
        (
            "a video has one folder",
            "SELECT v.id, count(n.id) FROM video v LEFT JOIN node n ON n.video_id = v.id "
            "AND n.kind = 'video' GROUP BY v.id HAVING count(n.id) != 1",
        ),
        (
            "a rendition has its folder and playlist",
            "SELECT r.id FROM rendition r WHERE (SELECT count(*) FROM node n WHERE "
            "n.rendition_id = r.id AND n.kind IN ('rendition', 'playlist')) != 2",
        ),
        (
            "a rendition's segments are numbered 0, 1, …",
            "SELECT rendition_id, count(*), max(seq) FROM segment GROUP BY rendition_id "
            "HAVING min(seq) != 0 OR max(seq) != count(*) - 1",
        ),
        (
            "a segment's file shows its blob",
            "SELECT s.id FROM segment s WHERE NOT EXISTS (SELECT 1 FROM node n WHERE "
            "n.blob_id = s.blob_id AND n.kind = 'media')",
        ),
        (
            "a complete video has no job; one being made has",
            "SELECT id, complete, job_id FROM video WHERE (complete AND job_id IS NOT NULL) OR "
            "(NOT complete AND job_id IS NULL)",
        ),
        # -- jobs
        (
            "every job state is known",
            f"SELECT id, state FROM job WHERE state NOT IN {_in(tuple(s.value for s in JobState))}",
        ),
        (
            "an unfinished job's file exists",
            f"SELECT j.id, j.node_id FROM job j LEFT JOIN node n ON n.id = j.node_id "
            f"WHERE j.state IN {_in(_ACTIVE)} AND n.id IS NULL AND j.state != 'running'",
        ),
    ]


def check() -> list[Problem]:
    """Every broken rule, with its first offending rows; [] if the catalog is sound."""
    problems = []
    with db.atomic():  # one snapshot for all rules
        for rule, query in _rules():
            rows = db.execute_sql(query + " LIMIT 5").fetchall()
            if rows:
                problems.append(Problem(rule, [tuple(r) for r in rows]))
    return problems
