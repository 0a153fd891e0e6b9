"""Live progress of one job: what `.tgfs/status.json` and `tgfs status` show."""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any


class Stage(enum.StrEnum):
    """Where a running job is (status.json's "stage")."""

    QUEUED = "queued"
    PROBE = "probe"  # hashing and probing the file
    COPY = "copy"  # the media child remuxes (messages.Progress stages)
    TRANSCODE = "transcode"  # … or encodes
    AUDIO = "audio"  # … or makes an audio-only file HLS
    UPLOAD = "upload"  # storing what is left of a video's files
    STORE = "store"  # storing the file as it is
    FETCH = "fetch"  # fetching a file stored first, to make its video (store-first ingest)


_MEDIA_STAGES = (Stage.COPY, Stage.TRANSCODE, Stage.AUDIO)  # done/total in media seconds


@dataclasses.dataclass
class Progress:
    stage: str = Stage.QUEUED  # a Stage (the media child's stage names are the same)
    done: float = 0.0  # media seconds (copy/transcode) or bytes (upload/store)
    total: float = 0.0
    size: int = 0  # bytes of the dropped file, for media-stage bytes/s
    stage_started: float = dataclasses.field(default_factory=time.monotonic)

    def enter(self, stage: str, total: float = 0.0) -> None:
        self.stage, self.done, self.total = stage, 0.0, total
        self.stage_started = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.stage_started, 1e-6)
        fraction = min(self.done / self.total, 1.0) if self.total else None
        out: dict[str, Any] = {
            "stage": self.stage,
            "percent": None,
            "bytes_per_s": None,
            "speed": None,
            "eta_s": None,
        }
        if fraction is None:
            return out
        out["percent"] = round(100 * fraction, 1)
        if self.stage in _MEDIA_STAGES:
            out["speed"] = round(self.done / elapsed, 2)  # × realtime
            out["bytes_per_s"] = round(self.size * fraction / elapsed)
        else:
            out["bytes_per_s"] = round(self.done / elapsed)
        if fraction > 0:
            out["eta_s"] = round(elapsed * (1 - fraction) / fraction, 1)
        return out
