"""Pacing one bot's messages so Telegram's flood control never trips: a schedule of when
each message may go (a sliding window of the last `per_minute` messages).

Pure bookkeeping on times the caller passes in (trio's clock in the store), so it is
tested without waiting.
"""

from __future__ import annotations

import collections


class Ticket:
    """One message's place in its bot's schedule."""

    __slots__ = ("after", "time")

    def __init__(self, time: float, after: Ticket | None) -> None:
        self.time = time  # when it may go; once sent, when it was done
        self.after = after  # the message `per_minute` places earlier, until this one is sent


class Pacer:
    """When each message of one bot may go: at most `per_minute` in any `window` seconds.

    This is how Telegram's limits are reported (~20 messages a minute per group or
    channel), so pacing to it does not trip them, while a short clip (up to `per_minute`
    messages) still goes at once. Telegram counts a message when it arrives, which is
    somewhere within its upload; tgfs only knows when the upload ends. So each message
    waits until `window` after the *end* of the one `per_minute` places before it: never
    early, at the cost of one upload's duration per window.
    """

    def __init__(self, per_minute: int, window: float = 60.0) -> None:
        self.window = window
        self._paced = per_minute > 0
        self._recent: collections.deque[Ticket] = collections.deque(maxlen=max(per_minute, 1))

    def next_slot(self, now: float) -> float:
        """Estimate for placement decisions: when a message reserved now could go."""
        if not self._paced or len(self._recent) < (self._recent.maxlen or 1):
            return now
        return max(now, self._recent[0].time + self.window)

    def reserve(self, now: float) -> Ticket:
        full = self._paced and len(self._recent) == self._recent.maxlen
        ticket = Ticket(self.next_slot(now), self._recent[0] if full else None)
        if self._paced:
            self._recent.append(ticket)
        return ticket

    def turn(self, ticket: Ticket) -> float:
        """When the message may go, given what is known now (earlier uploads may have
        ended later than planned)."""
        after = ticket.after
        return max(ticket.time, after.time + self.window if after else ticket.time)

    @staticmethod
    def done(ticket: Ticket, when: float) -> None:
        ticket.time = max(ticket.time, when)
        ticket.after = None
