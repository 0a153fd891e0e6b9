"""The ingest queue: one Job row per version of a file, from its first write until stored.

States: `writing` (a write session has a working spool file; not ready) → `queued` (close()
or fsync() accepted it) → `running` → `done` | `failed`. Only queued jobs are picked up,
and never while their file is open for writing again.

A job belongs to the host whose spool holds its file (tgfs.catalog.host): only that host
picks it up, and only that host's start-up recovers or restarts it; on a catalog several
hosts share, another host's unfinished job is its own business, not a crash's leftover.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable

import peewee as pw

from tgfs.catalog import host
from tgfs.catalog.schema import (
    ANY_HOST,
    HOSTS_CLASS,
    JOBS_NOTICE,
    NOTICES_CHANNEL,
    Job,
    JobState,
    Node,
    db,
    display,
    durable,
    host_key,
    is_sqlite,
    now_ns,
)

log = logging.getLogger(__name__)


# A queued job waits until its file has been left alone this long (seconds). Tools finish
# a file after closing it: rsync and `cp -p` set its mode and times, rsync renames it from
# a temporary name. Ingesting at once would race them (and take the temporary name).
SETTLE = 1.0

WRITING, QUEUED, RUNNING, DONE, FAILED = (
    JobState.WRITING,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.DONE,
    JobState.FAILED,
)


def _mine(query: pw.ModelSelect | pw.ModelUpdate) -> pw.Query:
    """`query` narrowed to this host's jobs (all of them on SQLite, which has one host)."""
    return query if is_sqlite() else query.where(Job.host == host.me())


def start_version(node: Node, path: str, spool: str) -> Job:
    """A write session has new content for `node` in `spool`: record it before it matters,
    so a crash finds it (see recover_writes)."""
    return Job.create(node=node, path=display(path), spool=spool, size=0, state=WRITING)


def accept(job_id: int, node: Node, spool: str, size: int, mtime_ns: int | None) -> list[str]:
    """close()/fsync() accepted `spool` as `node`'s content, in one durable transaction: the
    node points at it with its size, its job is queued, and the versions it supersedes
    (queued, not yet running) are dropped. Returns the spool files nothing refers to now."""
    with durable():
        old_spool = node.spool
        node.spool, node.size, node.ctime_ns = spool, size, now_ns()
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        node.save()
        superseded = list(
            Job.select().where((Job.node == node.id) & (Job.state == QUEUED) & (Job.id != job_id))
        )
        Job.delete().where(Job.id.in_([j.id for j in superseded] or [0])).execute()
        Job.update(
            state=QUEUED,
            size=size,
            not_before=time.time() + SETTLE,
            attempts=0,
            error=None,
            spool=spool,
        ).where(Job.id == job_id).execute()
    unused = {j.spool for j in superseded} | {old_spool}
    return [p for p in unused if p and p != spool and not _spool_in_use(p)]


def settle(node_id: int) -> None:
    """The file was renamed or its attributes changed: give the tool more time (SETTLE)."""
    Job.update(not_before=time.time() + SETTLE).where(
        (Job.node == node_id) & (Job.state == QUEUED) & (Job.attempts == 0)
    ).execute()


def reopen(job_id: int) -> None:
    """More writes after an accept: the version is being written again."""
    Job.update(state=WRITING).where(Job.id == job_id).execute()


def drop(job_id: int) -> None:
    """A write session rolled back: its version never existed."""
    Job.delete().where(Job.id == job_id).execute()


def _spool_in_use(path: str) -> bool:
    return (
        Node.select().where(Node.spool == path).exists()
        or Job.select()
        .where((Job.spool == path) & Job.state.in_([WRITING, QUEUED, RUNNING]))
        .exists()
    )


def recover_writes() -> list[Job]:
    """Writes the daemon never finished (it died before close()): keep what reached the
    spool file under the file's name, queue it, and say so. Returns the recovered jobs."""
    recovered = []
    for job in list(_mine(Job.select().where(Job.state == WRITING))):
        node = Node.get_or_none(Node.id == job.node_id) if job.node_id else None
        try:
            size = os.stat(job.spool).st_size
        except OSError:
            size = None
        if node is None or node.links == 0 or size is None:  # gone, or unlinked while open
            Job.delete().where(Job.id == job.id).execute()
            continue
        unused = accept(job.id, node, job.spool, size, None)
        note = (
            f"the daemon stopped while this file was being written; kept the {size} "
            "byte(s) that had arrived"
        )
        Job.update(note=note).where(Job.id == job.id).execute()
        for path in unused:
            _unlink(path)
        log.warning("%s: %s", job.path, note)
        recovered.append(job)
    return recovered


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def active_for(node_id: int) -> Job | None:
    """The file's accepted version on its way to the store, if any."""
    return Job.get_or_none((Job.node == node_id) & (Job.state.in_([QUEUED, RUNNING])))


def cancel(node_id: int) -> None:
    """The file is gone: forget its versions that have not started (a running job notices
    by itself)."""
    Job.delete().where((Job.node == node_id) & Job.state.in_([WRITING, QUEUED])).execute()


def next_ready(
    exclude_jobs: Iterable[int], exclude_nodes: Iterable[int], makes_videos: bool = True
) -> Job | None:
    """The oldest queued job of this host whose retry time has come and whose file is not
    open for writing (None if there is none). A host that makes no videos
    (TGFS_INGEST_JOBS=0) gets only jobs still to store their file first."""
    query = _mine(Job.select()).where(
        (Job.state == QUEUED)
        & (Job.not_before <= time.time())
        & Job.id.not_in(list(exclude_jobs) or [0])
        & (Job.node.is_null() | Job.node.not_in(list(exclude_nodes) or [0]))
    )
    if not makes_videos:
        query = query.where(Job.source_blob.is_null())
    return query.order_by(Job.id).first()


def release(job: Job, source_blob: int) -> None:
    """Store-first ingest: the job's file is stored (`source_blob`); any host with
    TGFS_INGEST_JOBS > 0 may now claim the job and make the video."""
    mark(job, QUEUED, host=ANY_HOST, spool="", source_blob=source_blob)
    _tell_hosts()


def _tell_hosts() -> None:
    """Wake the other hosts' runners at commit (tgfs.fs.notices): a job is anyone's."""
    if not is_sqlite():
        db.execute_sql("SELECT pg_notify(%s, %s)", (NOTICES_CHANNEL, JOBS_NOTICE))


def claim() -> Job | None:
    """The oldest store-first job no host has claimed, now this host's (None if there is
    none). Two hosts asking at once get two different jobs: FOR UPDATE SKIP LOCKED."""
    with db.atomic():
        query = (
            Job.select()
            .where(
                (Job.host == ANY_HOST)
                & (Job.state == QUEUED)
                & Job.source_blob.is_null(False)
                & (Job.not_before <= time.time())
            )
            .order_by(Job.id)
            .limit(1)
        )
        if not is_sqlite():
            query = query.for_update("FOR UPDATE SKIP LOCKED")
        job = query.first()
        if job is None:
            return None
        Job.update(host=host.me()).where(Job.id == job.id).execute()
        job.host = host.me()
        return job


def still_mine(job: Job) -> bool:
    """Whether the job is still this host's (another host frees a store-first job whose
    host it found gone: see free_abandoned)."""
    return is_sqlite() or Job.select().where((Job.id == job.id) & (Job.host == host.me())).exists()


def free_abandoned() -> int:
    """Store-first jobs claimed by hosts that are not connected any more (their lock is
    free): back to ANY_HOST, for a host that is. Returns how many. (A host that comes back
    finds them gone: its own start-up requeues only what is still its own.)"""
    if is_sqlite():
        return 0
    holders = {
        h
        for (h,) in Job.select(Job.host)
        .where(
            Job.source_blob.is_null(False)
            & Job.state.in_([QUEUED, RUNNING])
            & Job.host.not_in([ANY_HOST, host.me()])
        )
        .distinct()
        .tuples()
    }
    freed = 0
    for holder in holders:
        key = (HOSTS_CLASS, host_key(holder))
        (gone,) = db.execute_sql("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
        if not gone:
            continue  # connected: its jobs are its own
        try:
            freed += (
                Job.update(host=ANY_HOST, state=QUEUED, spool="")
                .where(
                    (Job.host == holder)
                    & Job.source_blob.is_null(False)
                    & Job.state.in_([QUEUED, RUNNING])
                )
                .execute()
            )
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s, %s)", key)
    if freed:
        log.info("ingest: %d job(s) of hosts gone are anyone's again", freed)
        _tell_hosts()
    return freed


def next_wakeup(makes_videos: bool = True) -> float | None:
    """Epoch seconds when the earliest delayed job this host may run becomes ready (a host
    that makes no videos may run only its own jobs, and only those still to be stored)."""
    query = Job.select().where(Job.state == QUEUED)
    if not makes_videos:
        query = query.where(Job.source_blob.is_null())
    if not is_sqlite():
        mine = Job.host == host.me()
        query = query.where(mine | (Job.host == ANY_HOST) if makes_videos else mine)
    job = query.order_by(Job.not_before).first()
    return job.not_before if job else None


def mark(job: Job, state: str, **fields) -> None:
    """Set a job's state (and other columns) by id.

    Only the named columns are written: the row's `node` may have been deleted (and set to
    NULL by the database) since `job` was loaded, and saving the stale object would
    resurrect the dangling reference.
    """
    fields["state"] = state
    if state in (DONE, FAILED):
        fields["finished_ns"] = now_ns()
    Job.update(**fields).where(Job.id == job.id).execute()
    for key, value in fields.items():
        setattr(job, key, value)


def retry_later(job: Job, error: str, delay: float) -> None:
    mark(job, QUEUED, error=error, attempts=job.attempts + 1, not_before=time.time() + delay)


def requeue_interrupted() -> int:
    """Jobs that were running when the daemon stopped start over (their spool is intact)."""
    return _mine(Job.update(state=QUEUED)).where(Job.state == RUNNING).execute()


def live_spools() -> set[str]:
    """Spool files some node or unfinished job refers to (the rest is a crash's litter)."""
    with db.atomic():
        keep = {n.spool for n in Node.select(Node.spool).where(Node.spool.is_null(False))}
        keep |= {
            j.spool for j in Job.select(Job.spool).where(Job.state.in_([WRITING, QUEUED, RUNNING]))
        }
    return keep


def recent(limit: int = 50) -> list[Job]:
    """Unfinished jobs first, then the latest finished ones (not files being written)."""
    active = list(Job.select().where(Job.state.in_([QUEUED, RUNNING])).order_by(Job.id))
    finished = list(
        Job.select().where(Job.state.in_([DONE, FAILED])).order_by(Job.id.desc()).limit(limit)
    )
    return active + finished
