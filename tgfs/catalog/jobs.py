"""The ingest queue: one Job row per dropped file, from release until stored."""

from __future__ import annotations

import time

from tgfs.catalog.schema import Job, Node, now_ns

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


def enqueue(node: Node, path: str, spool: str, size: int) -> Job:
    """Queue a freshly written file. A still-queued job for the same file is superseded."""
    Job.delete().where((Job.node == node.id) & (Job.state == QUEUED)).execute()
    return Job.create(node=node, path=path, spool=spool, size=size)


def active_for(node_id: int) -> Job | None:
    return Job.get_or_none((Job.node == node_id) & (Job.state.in_([QUEUED, RUNNING])))


def cancel_queued(node_id: int) -> None:
    Job.delete().where((Job.node == node_id) & (Job.state == QUEUED)).execute()


def next_ready(exclude: set[int]) -> Job | None:
    """The oldest queued job whose retry time has come (None if there is none)."""
    return (
        Job.select()
        .where((Job.state == QUEUED) & (Job.not_before <= time.time())
               & Job.id.not_in(list(exclude) or [0]))
        .order_by(Job.id)
        .first()
    )


def next_wakeup() -> float | None:
    """Epoch seconds when the earliest delayed job becomes ready, if any."""
    job = Job.select().where(Job.state == QUEUED).order_by(Job.not_before).first()
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
    return Job.update(state=QUEUED).where(Job.state == RUNNING).execute()


def recent(limit: int = 50) -> list[Job]:
    """Unfinished jobs first, then the latest finished ones."""
    active = list(Job.select().where(Job.state.in_([QUEUED, RUNNING])).order_by(Job.id))
    finished = list(Job.select().where(Job.state.in_([DONE, FAILED]))
                    .order_by(Job.id.desc()).limit(limit))
    return active + finished
