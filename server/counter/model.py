"""Pure kiosk rules: what a scanned code is, how old a replayed scan may be, what a role may
see of a guest, and how a guest profile moves forward by one visit. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol
from uuid import UUID

from server.infra.problems import Problem
from shared import contract

__all__ = [
    "OPEN_STATUSES",
    "RECENT_VISITS_MAX",
    "TOP_ITEMS_MAX",
    "WEEKDAYS",
    "CodeKind",
    "Profile",
    "Return",
    "Visit",
    "VisitItem",
    "classify_code",
    "fold_return",
    "fold_visit",
    "habits_of",
    "histogram_from",
    "require_scan_time",
    "scan_time_problem",
    "sees_full_profile",
    "usual_items",
    "visits_in_30d",
]

# The pre-orders staff still have to make or hand over.
OPEN_STATUSES = ("placed", "accepted", "preparing", "ready")
# An offline kiosk replays a queued scan at most this late (then the QR is judged by the scan
# time, so an older replay would make any screenshot of a code good for longer).
RECENT_VISITS_MAX = 100
TOP_ITEMS_MAX = 5
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

CodeKind = Literal["qr", "card", "phone"]


class Row(Protocol):
    """A database row read by column name (asyncpg's Record, a dict in unit tests)."""

    def __getitem__(self, key: str, /) -> Any: ...


_CARD = re.compile(r"^\d{12}$")
_PHONE = re.compile(r"^\+?[\d\s().\-/]{6,24}$")
_SEPARATORS = re.compile(r"[\s\-]")


def classify_code(code: str) -> tuple[CodeKind, str] | None:
    """What a scanned or typed code is: a rotating QR, a 12-digit card number or a phone.

    Returns the kind and the code cleaned for lookup, or None when it is none of them. A
    12-digit number is read as a card number (cards are printed with 12 digits).
    """
    text = code.strip()
    if text[:4].upper() == "RG1:":
        return "qr", text.upper()
    digits = _SEPARATORS.sub("", text)
    if _CARD.match(digits):
        return "card", digits
    if _PHONE.match(text) and sum(ch.isdigit() for ch in text) >= 6:
        return "phone", text
    return None


def scan_time_problem(
    scanned_at: datetime | None, now: datetime, max_age_s: int, skew_s: int
) -> str | None:
    """Why ``scanned_at`` cannot be used as the scan time (None when it can)."""
    if scanned_at is None:
        return None
    if scanned_at.tzinfo is None:
        return "scanned_at needs a timezone offset"
    if scanned_at > now + timedelta(seconds=skew_s):
        return "scanned_at is in the future; check the kiosk's clock"
    if scanned_at < now - timedelta(seconds=max_age_s):
        return f"scanned_at is older than {max_age_s // 3600} hours"
    return None


def require_scan_time(
    scanned_at: datetime | None, now: datetime, max_age_s: int, skew_s: int
) -> None:
    """422 ``invalid-scan-time`` when :func:`scan_time_problem` finds one."""
    problem = scan_time_problem(scanned_at, now, max_age_s, skew_s)
    if problem is not None:
        raise Problem(422, "invalid-scan-time", problem)


def sees_full_profile(role: str) -> bool:
    """Managers and admins see name, phone and email (and the view is audited)."""
    return role in ("manager", "admin")


def usual_items(top_items: Iterable[Mapping[str, Any]], limit: int = 3) -> list[contract.UsualItem]:
    """The guest's most frequent items as stored in ``guest_profiles.top_items``."""
    items = []
    for entry in list(top_items)[:limit]:
        items.append(
            contract.UsualItem(
                item_id=UUID(str(entry["item_id"])),
                name=str(entry["name"]),
                count=int(entry["count"]),
                price_minor=int(entry.get("price_minor", 0)),
            )
        )
    return items


def visits_in_30d(recent: Sequence[datetime] | None, stored: int, now: datetime) -> int:
    """Visits in the last 30 days: counted from recent visits when known, else as stored."""
    if recent is None:
        return stored
    since = now - timedelta(days=30)
    return sum(1 for at in recent if at > since)


def habits_of(profile: Row | None, now: datetime) -> contract.Habits:
    """The habits block of the guest card, from a ``guest_profiles`` row (None: no history)."""
    if profile is None or profile["visits_total"] is None:
        return contract.Habits()
    weekday, hour = profile["usual_weekday"], profile["usual_hour"]
    return contract.Habits(
        usual_weekday=WEEKDAYS[weekday] if weekday is not None else None,
        usual_time=f"{hour:02d}:00" if hour is not None else None,
        visits_30d=visits_in_30d(profile["recent_visits"], profile["visits_30d"], now),
        visits_total=profile["visits_total"],
        avg_ticket_minor=profile["avg_ticket_minor"],
        last_visit_at=profile["last_visit_at"],
    )


# -- folding a visit into the profile -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VisitItem:
    item_id: UUID
    name: str
    quantity: int
    price_minor: int


@dataclass(frozen=True, slots=True)
class Visit:
    """One visit: a completed pre-order or a counter accrual."""

    at: datetime
    # ``at`` in the location's timezone: the usual weekday and hour are local.
    local_at: datetime
    amount_minor: int
    points: int
    items: tuple[VisitItem, ...] = ()


@dataclass(frozen=True, slots=True)
class Return:
    """What a refund gives back of an earlier visit: the money the guest paid for what they
    returned, the points that money had earned, and the items."""

    amount_minor: int
    points: int
    items: tuple[VisitItem, ...] = ()


@dataclass(frozen=True, slots=True)
class Profile:
    """A ``guest_profiles`` row; the histograms and recent visits are always known here."""

    visits_total: int = 0
    spend_total_minor: int = 0
    avg_ticket_minor: int = 0
    usual_weekday: int | None = None
    usual_hour: int | None = None
    last_visit_at: datetime | None = None
    top_items: tuple[Mapping[str, Any], ...] = ()
    points_earned_12m: int = 0
    weekday_counts: tuple[int, ...] = (0,) * 7
    hour_counts: tuple[int, ...] = (0,) * 24
    recent_visits: tuple[datetime, ...] = field(default_factory=tuple)

    @property
    def visits_30d(self) -> int:
        return len(self.recent_visits)


def histogram_from(local_times: Iterable[datetime]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Weekday and hour histograms of visit times (already in local time)."""
    weekdays, hours = [0] * 7, [0] * 24
    for at in local_times:
        weekdays[at.weekday()] += 1
        hours[at.hour] += 1
    return tuple(weekdays), tuple(hours)


def _mode(counts: Sequence[int], current: int | None) -> int | None:
    if not any(counts):
        return current
    # Ties keep the current usual, so one odd visit does not flip it.
    return max(range(len(counts)), key=lambda i: (counts[i], i == current))


def _bump(counts: tuple[int, ...], index: int) -> tuple[int, ...]:
    return (*counts[:index], counts[index] + 1, *counts[index + 1 :])


def _top_items(
    current: Iterable[Mapping[str, Any]], items: Iterable[VisitItem]
) -> tuple[dict[str, Any], ...]:
    merged: dict[str, dict[str, Any]] = {str(entry["item_id"]): dict(entry) for entry in current}
    for item in items:
        entry = merged.setdefault(
            str(item.item_id),
            {"item_id": str(item.item_id), "name": item.name, "count": 0, "price_minor": 0},
        )
        entry["count"] = int(entry["count"]) + item.quantity
        entry["name"], entry["price_minor"] = item.name, item.price_minor
    ranked = sorted(merged.values(), key=lambda e: -int(e["count"]))
    return tuple(ranked[:TOP_ITEMS_MAX])


def _top_items_less(
    current: Iterable[Mapping[str, Any]], items: Iterable[VisitItem]
) -> tuple[dict[str, Any], ...]:
    """The top items with returned ones counted out (an item no longer counted is dropped;
    one that had already left the top has nothing to lower)."""
    counts = {str(entry["item_id"]): dict(entry) for entry in current}
    for item in items:
        entry = counts.get(str(item.item_id))
        if entry is not None:
            entry["count"] = int(entry["count"]) - item.quantity
    kept = [entry for entry in counts.values() if int(entry["count"]) > 0]
    return tuple(sorted(kept, key=lambda e: -int(e["count"])))


def fold_return(profile: Profile, returned: Return) -> Profile:
    """The profile after a refund of part of an earlier visit: spend, average ticket, points
    earned and top items lowered. The visit still took place, so visits, habits and recent
    visits stay as they are. Never below zero (a refund of a visit from before the profile
    was started lowers only what the profile holds)."""
    spend = max(0, profile.spend_total_minor - returned.amount_minor)
    return replace(
        profile,
        spend_total_minor=spend,
        avg_ticket_minor=spend // profile.visits_total if profile.visits_total else 0,
        points_earned_12m=max(0, profile.points_earned_12m - returned.points),
        top_items=_top_items_less(profile.top_items, returned.items),
    )


def fold_visit(profile: Profile, visit: Visit, now: datetime) -> Profile:
    """The profile after one more visit; only this visit is read, never the history.

    ``points_earned_12m`` only grows here: a rolling window needs a periodic recount (the
    ledger's own tier query is the exact figure).
    """
    visits = profile.visits_total + 1
    spend = profile.spend_total_minor + visit.amount_minor
    weekdays = _bump(profile.weekday_counts, visit.local_at.weekday())
    hours = _bump(profile.hour_counts, visit.local_at.hour)
    since = now - timedelta(days=30)
    recent = tuple(at for at in (*profile.recent_visits, visit.at) if at > since)
    last = visit.at if profile.last_visit_at is None else max(profile.last_visit_at, visit.at)
    return replace(
        profile,
        visits_total=visits,
        spend_total_minor=spend,
        avg_ticket_minor=spend // visits,
        usual_weekday=_mode(weekdays, profile.usual_weekday),
        usual_hour=_mode(hours, profile.usual_hour),
        last_visit_at=last,
        top_items=_top_items(profile.top_items, visit.items),
        points_earned_12m=profile.points_earned_12m + visit.points,
        weekday_counts=weekdays,
        hour_counts=hours,
        recent_visits=tuple(sorted(recent))[-RECENT_VISITS_MAX:],
    )
