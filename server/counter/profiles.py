"""Guest profiles folded forward one visit at a time, so the guest card never reads order
history: accruals and completed orders update ``guest_profiles`` in their own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg

from server.counter import sql
from server.counter.model import (
    RECENT_VISITS_MAX,
    Profile,
    Return,
    Row,
    Visit,
    VisitItem,
    fold_return,
    fold_visit,
    histogram_from,
)

__all__ = [
    "fold_stored",
    "record_completed_order",
    "record_refunded_lines",
    "record_return",
    "record_visit",
    "record_visits",
]


async def record_visit(
    conn: asyncpg.Connection,
    guest_id: UUID,
    visit: Visit,
    now: datetime,
    tz: ZoneInfo,
    exclude_order_id: UUID | None = None,
) -> None:
    """Fold one visit into the guest's ``guest_profiles`` row, in the caller's transaction.

    The first time a row is folded forward, its histograms are started from the guest's
    completed orders (bounded); after that only the new visit is read.

    A guest without a row gets an empty one first, so that two first visits at once queue on
    it: FOR UPDATE locks no row that is not there, and both used to fold onto nothing, the
    second overwriting the first (one visit counted of two).
    """
    row = await conn.fetchrow(sql.PROFILE_FOR_UPDATE, guest_id)
    if row is None:
        await conn.execute(sql.CLAIM_PROFILE, guest_id)  # waits for a concurrent first visit
        row = await conn.fetchrow(sql.PROFILE_FOR_UPDATE, guest_id)
    profile = await _profile_of(conn, guest_id, row, now, tz, exclude_order_id)
    await conn.execute(sql.UPSERT_PROFILE, *_upsert_args(guest_id, fold_visit(profile, visit, now)))


async def record_return(
    conn: asyncpg.Connection, guest_id: UUID, returned: Return, now: datetime, tz: ZoneInfo
) -> None:
    """Fold a refund into the guest's ``guest_profiles`` row (:func:`fold_return`), in the
    caller's transaction. A guest without a row has nothing to lower."""
    row = await conn.fetchrow(sql.PROFILE_FOR_UPDATE, guest_id)
    if row is None:
        return
    profile = await _profile_of(conn, guest_id, row, now, tz, None)
    await conn.execute(sql.UPSERT_PROFILE, *_upsert_args(guest_id, fold_return(profile, returned)))


async def record_visits(
    conn: asyncpg.Connection, visits: Sequence[tuple[UUID, Visit]], now: datetime, tz: ZoneInfo
) -> None:
    """:func:`record_visit` for each (guest, visit), folded in order, one profile write per
    guest: the guests' rows locked in one statement (in guest id order, missing ones claimed
    first, as :func:`record_visit` does for one), written back in one statement."""
    guest_ids = sorted({guest_id for guest_id, _ in visits})
    rows = {r["guest_id"]: r for r in await conn.fetch(sql.PROFILES_FOR_UPDATE, guest_ids)}
    missing = [guest_id for guest_id in guest_ids if guest_id not in rows]
    if missing:
        await conn.execute(sql.CLAIM_PROFILES, missing)  # waits for concurrent first visits
        rows |= {r["guest_id"]: r for r in await conn.fetch(sql.PROFILES_FOR_UPDATE, missing)}
    profiles = {
        guest_id: await _profile_of(conn, guest_id, rows.get(guest_id), now, tz, None)
        for guest_id in guest_ids
    }
    for guest_id, visit in visits:
        profiles[guest_id] = fold_visit(profiles[guest_id], visit, now)
    await conn.execute(
        sql.UPDATE_PROFILES,
        [_row(guest_id, profiles[guest_id]) for guest_id in guest_ids],
    )


def fold_stored(row: Row, visit: Visit, now: datetime) -> dict[str, object]:
    """A stored profile row (as PROFILE_FOR_UPDATE reads it, its histograms started) after
    :func:`fold_visit` of ``visit``: the columns UPDATE_PROFILES writes, for a writer that
    checks the row is unchanged (``guest_profile_replace``, migrations 0023 and 0029), and
    ``spend_read``, the spend it was folded from, which that check compares: a refund
    (:func:`record_return`) lowers the spend and may leave the other two it compares alone."""
    assert row["weekday_counts"] is not None, "the histograms are started"
    return {
        **_columns(fold_visit(_stored(row), visit, now)),
        "spend_read": row["spend_total_minor"],
    }


def _row(guest_id: UUID, folded: Profile) -> dict[str, object]:
    """A folded profile as UPDATE_PROFILES reads it."""
    return {"guest_id": guest_id, **_columns(folded)}


def _columns(folded: Profile) -> dict[str, object]:
    return {
        "visits_total": folded.visits_total,
        "visits_30d": folded.visits_30d,
        "spend_total_minor": folded.spend_total_minor,
        "avg_ticket_minor": folded.avg_ticket_minor,
        "usual_weekday": folded.usual_weekday,
        "usual_hour": folded.usual_hour,
        "last_visit_at": folded.last_visit_at,
        "top_items": folded.top_items,
        "points_earned_12m": folded.points_earned_12m,
        "weekday_counts": folded.weekday_counts,
        "hour_counts": folded.hour_counts,
        "recent_visits": folded.recent_visits,
    }


def _upsert_args(guest_id: UUID, folded: Profile) -> tuple[object, ...]:
    """A folded profile as UPSERT_PROFILE's parameters (its columns in ``_columns``' order)."""
    return (guest_id, *_columns(folded).values())


async def _profile_of(
    conn: asyncpg.Connection,
    guest_id: UUID,
    row: asyncpg.Record | None,
    now: datetime,
    tz: ZoneInfo,
    exclude_order_id: UUID | None,
) -> Profile:
    """The stored profile to fold onto; histograms started from the guest's completed orders
    (bounded) when the row has none yet."""
    if row is not None and row["weekday_counts"] is not None:
        return _stored(row)
    history = [
        r["created_at"]
        for r in await conn.fetch(
            sql.COMPLETED_VISITS, guest_id, exclude_order_id, RECENT_VISITS_MAX * 5
        )
    ]
    weekdays, hours = histogram_from(at.astimezone(tz) for at in history)
    recent = tuple(sorted(at for at in history if at > now - timedelta(days=30)))
    if row is None:
        return Profile(recent_visits=recent, weekday_counts=weekdays, hour_counts=hours)
    return _from_row(row, weekdays, hours, recent)


def _stored(row: Row) -> Profile:
    """A row whose histograms are started, as a Profile."""
    return _from_row(
        row,
        tuple(row["weekday_counts"]),
        tuple(row["hour_counts"]),
        tuple(row["recent_visits"] or ()),
    )


def _from_row(
    row: Row,
    weekdays: tuple[int, ...],
    hours: tuple[int, ...],
    recent: tuple[datetime, ...],
) -> Profile:
    return Profile(
        visits_total=row["visits_total"],
        spend_total_minor=row["spend_total_minor"],
        avg_ticket_minor=row["avg_ticket_minor"],
        usual_weekday=row["usual_weekday"],
        usual_hour=row["usual_hour"],
        last_visit_at=row["last_visit_at"],
        top_items=tuple(row["top_items"]),
        points_earned_12m=row["points_earned_12m"],
        weekday_counts=weekdays,
        hour_counts=hours,
        recent_visits=recent,
    )


async def record_completed_order(conn: asyncpg.Connection, order_id: UUID) -> None:
    """Fold a just-completed order into its guest's profile (call after the status is set,
    in the same transaction). Does nothing when the order is not completed."""
    row = await conn.fetchrow(sql.COMPLETED_ORDER, order_id)
    if row is None:
        return
    now = datetime.now(UTC)
    tz = ZoneInfo(row["timezone"])
    items = tuple(
        VisitItem(
            UUID(str(i["item_id"])), str(i["name"]), int(i["quantity"]), int(i["price_minor"])
        )
        for i in row["items"]
    )
    visit = Visit(
        at=now,
        local_at=now.astimezone(tz),
        amount_minor=int(row["paid_minor"]),
        points=row["points_earned"],
        items=items,
    )
    await record_visit(conn, row["guest_id"], visit, now, tz, exclude_order_id=order_id)


async def record_refunded_lines(
    conn: asyncpg.Connection, order_id: UUID, line_ids: Sequence[UUID]
) -> None:
    """Count lines of a completed order that were just refunded out of its guest's profile
    (:func:`record_return`), in the refund's transaction."""
    rows = await conn.fetch(sql.REFUNDED_ORDER_LINES, order_id, list(line_ids))
    if not rows:
        return
    returned = Return(
        amount_minor=sum(int(r["paid_minor"]) for r in rows),
        points=sum(int(r["points_earned"]) for r in rows),
        items=tuple(
            VisitItem(r["item_id"], str(r["name"]), int(r["quantity"]), int(r["unit_price_minor"]))
            for r in rows
            if r["item_id"] is not None
        ),
    )
    tz = ZoneInfo(rows[0]["timezone"])
    await record_return(conn, rows[0]["guest_id"], returned, datetime.now(UTC), tz)
