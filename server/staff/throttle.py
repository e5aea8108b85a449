"""Slowing down sign-in guesses per client address or per kiosk device, before anything locks.

A lock on what an attacker can name (a staff email, a kiosk) is a denial of service: anyone
who knows the email could keep a manager out. So failures are counted first where they come
from: the first ``free`` failures of a source cost nothing, each one after makes that source
wait twice as long as the last (``first_delay_s``, then twice that ... at most ``max_delay_s``; 429 ``sign-in-slowed``
with Retry-After), and ``per_window`` failures in ``window_s`` stop it for the rest of the
window (429 ``too-many-sign-ins``). Each of these is an alert: a structured log line and
``regulars_sign_in_throttled_total``. Without Redis nothing is counted here; the per-email
lock in PostgreSQL and the PIN limits (which refuse without Redis) still hold.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from prometheus_client import Counter

from server.infra.problems import Problem
from server.infra.ratelimit import count_failure, refuse_if_over
from server.infra.redis import RedisGate, RedisUnavailable

__all__ = ["THROTTLED", "SignInThrottle", "alert"]

log = logging.getLogger("regulars.staff.security")
THROTTLED = Counter(
    "regulars_sign_in_throttled_total",
    "Staff sign-ins slowed, stopped or locked, by source kind and what happened",
    ("source", "outcome"),
)


def alert(source: str, outcome: str, subject: str, failures: int) -> None:
    """A security event someone should look at: a log line with fields, and the metric."""
    THROTTLED.labels(source, outcome).inc()
    fields = {"event": "sign_in_throttled", "source": source, "outcome": outcome,
              "subject": subject, "failures": failures}  # fmt: skip
    log.warning(
        "sign-in throttled: %s %s after %d failures (%s)",
        source, subject, failures, outcome, extra={"fields": fields},
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SignInThrottle:
    """Failure counting for one kind of source (``client`` or ``device``)."""

    gate: RedisGate
    source: str
    free: int
    first_delay_s: int
    max_delay_s: int
    per_window: int
    window_s: int

    def _subject(self, subject: str) -> str:
        return f"{self.source}:{subject}"

    async def check(self, subject: str) -> None:
        """429 while the source must wait (slowed) or has used up its window."""
        name = f"sign-in-delay:{self._subject(subject)}"
        try:
            wait_s = await self.gate.run(lambda: self.gate.client.ttl(f"rg:limit:{name}"))
        except RedisUnavailable:
            return
        if int(wait_s) > 0:
            raise Problem(
                429,
                "sign-in-slowed",
                f"too many failed sign-ins from here; try again in {wait_s} s",
                retry_after_s=int(wait_s),
            )
        await refuse_if_over(
            self.gate, "sign-ins", self._subject(subject), self.per_window, "failed sign-ins"
        )

    async def failed(self, subject: str) -> None:
        """Count a failure; past ``free`` ones, make the source wait before its next try."""
        key = self._subject(subject)
        failures = await count_failure(self.gate, "sign-ins", key, self.window_s)
        if failures <= self.free:
            return
        wait_s = min(self.first_delay_s * 2 ** (failures - self.free - 1), self.max_delay_s)
        with contextlib.suppress(RedisUnavailable):
            await self.gate.run(
                lambda: self.gate.client.set(f"rg:limit:sign-in-delay:{key}", 1, ex=wait_s)
            )
        if failures == self.free + 1 or failures == self.per_window:
            alert(self.source, "blocked" if failures >= self.per_window else "slowed",
                  subject, failures)  # fmt: skip
