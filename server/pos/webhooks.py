"""Orders out to the till (DESIGN §10): order events fanned out of the outbox into a feed per
location and into Standard Webhooks deliveries, which the worker sends with retries.

At least once, never twice at the same time: a delivery is claimed with a lease (``FOR UPDATE
SKIP LOCKED``, then ``next_attempt_at`` pushed past the lease) and sent outside any
transaction; a worker that dies mid-send leaves the claim to expire and another sends it
again with the same ``webhook-id``, which the till deduplicates on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import httpx
import msgspec

from server.infra.db import Database
from server.infra.problems import Problem
from server.pos import webhook_sql as sql
from server.pos.sealing import Sealer, SealError
from server.pos.webhook_model import (
    event_of,
    location_of,
    retry_delay_s,
    signed_headers,
    undeliverable,
)
from server.pos.webhook_net import public_only_transport
from server.settings import Settings
from shared.pos import PosOrderEvent, PosOrderFeed, WebhookDeadLetter

__all__ = ["PosWebhooks"]

log = logging.getLogger("regulars.pos.webhooks")
_ERROR_MAX = 500


class PosWebhooks:
    """Fan-out, delivery, dead letters and the polling feed of order events to tills."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        sealer: Sealer,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._db = db
        self._sealer = sealer
        self._clock = clock
        if transport is None and not settings.pos_webhook_private_ok:
            transport = public_only_transport()
        self._http = httpx.AsyncClient(
            timeout=settings.pos_webhook_timeout_s, follow_redirects=False, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- fan-out -------------------------------------------------------------------------

    async def fan_out(self, batch_size: int) -> int:
        """Turn up to ``batch_size`` new outbox rows into feed events (order events only) and
        deliveries for each active integration of the event's location that has a
        webhook_url; exactly once per row, in one transaction. Returns the rows consumed."""
        async with self._db.transaction() as conn:
            head = await conn.fetchval(sql.LOCK_HEAD)
            rows = await conn.fetch(sql.CLAIM_UNFANNED, batch_size)
            if not rows:
                return 0
            events: list[tuple[int, UUID, int, str, dict[str, Any]]] = []
            for row in rows:
                location = location_of(row["topic"], row["payload"])
                if location is not None:
                    event = event_of(row["topic"], row["payload"], row["created_at"])
                    events.append(
                        (head + len(events) + 1, UUID(location), row["id"], row["topic"], event)
                    )
            seq = head + len(events)
            if events:
                await conn.executemany(sql.INSERT_EVENT, events)
                await conn.execute(sql.INSERT_DELIVERIES, head, seq)
                await conn.execute(sql.SET_HEAD, seq)
            await conn.execute(sql.MARK_FANNED, [row["id"] for row in rows])
        return len(rows)

    # -- delivery ------------------------------------------------------------------------

    async def deliver_due(self, batch_size: int) -> int:
        """Claim up to ``batch_size`` due deliveries and send them concurrently; each ends
        delivered, scheduled again on the retry ladder, or dead after the last attempt.
        Returns how many were attempted."""
        settings = self._settings
        async with self._db.transaction() as conn:
            await conn.execute(sql.BURY_EXHAUSTED, settings.pos_webhook_max_attempts)
            claimed = await conn.fetch(
                sql.CLAIM_DUE,
                batch_size,
                settings.pos_webhook_lease_s,
                settings.pos_webhook_max_attempts,
            )
        if claimed:
            await asyncio.gather(*(self._attempt(row) for row in claimed))
        return len(claimed)

    async def seal_stored_secrets(self) -> int:
        """Seal the webhook secrets stored in the clear before migration 0028, and clear
        them: one of the worker's slow jobs (a row changed meanwhile is left to the next
        pass). Returns how many it sealed."""
        sealed = 0
        async with self._db.connection() as conn:
            for row in await conn.fetch(sql.CLEAR_SECRETS):
                secret = row["webhook_secret"]
                done = await conn.execute(
                    sql.SEAL_SECRET, row["id"], self._sealer.seal(secret), secret
                )
                sealed += done == "UPDATE 1"
        return sealed

    def _secret(self, row: Any) -> str | None:
        """The integration's signing secret: opened from its seal (or, until the worker has
        sealed it, as stored before migration 0028)."""
        if row["webhook_secret_sealed"] is not None:
            return self._sealer.open(bytes(row["webhook_secret_sealed"]))
        return cast("str | None", row["webhook_secret"])

    def _previous(self, row: Any) -> str | None:
        """The secret the integration's one replaced, while it still signs beside it
        (migration 0030). One that does not open only loses its own signature."""
        until = row["webhook_previous_until"]
        if row["webhook_previous_sealed"] is None or until is None or until <= self._clock():
            return None
        try:
            return self._sealer.open(bytes(row["webhook_previous_sealed"]))
        except SealError:
            log.warning("the replaced webhook secret of delivery %s does not open", row["id"])
            return None

    async def _attempt(self, row: Any) -> None:
        secret: str | None = None
        try:
            secret = self._secret(row)
        except SealError:  # sealed under another seal key: to the dead letters, for an admin
            error: str | None = "the webhook secret does not open with this server's seal key"
        else:
            error = undeliverable(row["webhook_url"], secret, row["disabled_at"] is not None)
        fatal = error is not None
        if error is None:
            assert secret is not None
            error = await self._send(row, secret, self._previous(row))
        async with self._db.transaction() as conn:
            if error is None:
                await conn.execute(sql.MARK_DELIVERED, row["id"], row["lease_token"])
                return
            delay = retry_delay_s(
                row["attempts"],
                self._settings.pos_webhook_backoff_base_s,
                self._settings.pos_webhook_backoff_max_s,
            )
            await conn.execute(
                sql.MARK_FAILED,
                row["id"],
                row["lease_token"],
                self._settings.pos_webhook_max_attempts,
                delay,
                fatal,
                error[:_ERROR_MAX],
            )
        log.info("webhook %s attempt %d failed: %s", row["id"], row["attempts"], error)

    async def _send(self, row: Any, secret: str, previous: str | None) -> str | None:
        """POST one delivery signed with ``secret`` (and ``previous``, being replaced); None
        when the till took it (any 2xx), else why not."""
        body = msgspec.json.encode(row["payload"])
        headers = signed_headers(secret, row["id"], self._clock(), body, previous=previous)
        try:
            response = await self._http.post(row["webhook_url"], content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a malformed URL or a broken secret must not stop the batch
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    # -- admin ---------------------------------------------------------------------------

    async def dead_letters(
        self, brand_id: UUID, integration_id: UUID | None = None
    ) -> list[WebhookDeadLetter]:
        """The brand's deliveries that failed every attempt, oldest first (a page)."""
        rows = await self._db.fetch(
            sql.DEAD_LETTERS, brand_id, integration_id, self._settings.page_size_max
        )
        return [
            WebhookDeadLetter(
                webhook_id=row["id"],
                integration_id=row["integration_id"],
                type=row["event_type"],
                attempts=row["attempts"],
                last_error=row["last_error"],
                created_at=row["created_at"],
                payload=row["payload"],
            )
            for row in rows
        ]

    async def replay(self, brand_id: UUID, webhook_id: str) -> None:
        """Send a dead letter again from a fresh ladder (same webhook-id). 404 when it is not
        the brand's; 409 ``not-dead-letter`` when it is pending or delivered."""
        async with self._db.transaction() as conn:
            state = await conn.fetchval(sql.DELIVERY_OF_BRAND, webhook_id, brand_id)
            if state is None:
                raise Problem(404, "not-found", "no such webhook delivery")
            if await conn.fetchval(sql.REPLAY, webhook_id) is None:
                raise Problem(409, "not-dead-letter", f"the delivery is {state}, not dead")

    # -- polling feed --------------------------------------------------------------------

    async def feed(self, location_id: UUID, after: str | None, limit: int) -> PosOrderFeed:
        """Order events of ``location_id`` after the cursor ``after`` (from the start when
        None), oldest first, at most ``limit``. 422 ``invalid-cursor`` for a cursor this feed
        never gave."""
        try:
            position = int(after) if after else 0
        except ValueError:
            position = -1
        if position < 0:
            raise Problem(422, "invalid-cursor", f"{after!r} is not a cursor of this feed")
        rows = await self._db.fetch(sql.FEED, location_id, position, limit)
        events = [
            msgspec.convert({**row["payload"], "cursor": str(row["seq"])}, PosOrderEvent)
            for row in rows
        ]
        cursor = str(rows[-1]["seq"]) if rows else str(position)
        return PosOrderFeed(events=events, cursor=cursor)
