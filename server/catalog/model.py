"""Pure catalog rules: opening hours, pickup slots and the priced menu index. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

from shared import contract

__all__ = [
    "BOOKING_HORIZON",
    "Location",
    "MenuIndex",
    "PricedItem",
    "PricedModifier",
    "is_open",
    "slot_runs",
    "slot_runs_after_today",
    "slot_runs_rest_of_day",
    "slot_start",
    "slots_on",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BOOKING_HORIZON = timedelta(days=14)  # how far ahead a pickup may be booked


@dataclass(frozen=True, slots=True)
class Location:
    """A location's facts as the server uses them (the API shows them as contract.Location)."""

    id: UUID
    brand_id: UUID
    name: str
    address: str
    timezone: str
    opening_hours: dict[str, list[list[str]]]
    lead_time_min: int
    slot_minutes: int
    orders_per_slot: int

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class PricedModifier:
    id: UUID
    group: str
    name: str
    price_delta_minor: int


@dataclass(frozen=True, slots=True)
class PricedItem:
    id: UUID
    sku: str
    name: str
    price_minor: int
    earns_points: bool
    available: bool
    modifiers: dict[UUID, PricedModifier] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MenuIndex:
    """Everything checkout needs to price an order, keyed for O(1) lookups per line."""

    location: Location
    currency: str
    items: dict[UUID, PricedItem]
    menu: contract.Menu


def _parse(hhmm: str) -> time | None:
    if hhmm == "24:00":
        return None
    hour, minute = hhmm.split(":")
    return time(int(hour), int(minute))


def is_open(location: Location, moment: datetime) -> bool:
    """Whether ``moment`` falls inside one of the location's opening intervals."""
    local = moment.astimezone(location.tz)
    for start, end in location.opening_hours.get(WEEKDAYS[local.weekday()], []):
        start_t, end_t = _parse(start), _parse(end)
        assert start_t is not None
        if local.time() >= start_t and (end_t is None or local.time() < end_t):
            return True
    return False


def slot_start(location: Location, moment: datetime) -> datetime:
    """The start of the pickup slot containing ``moment`` (slots are aligned in local time)."""
    local = moment.astimezone(location.tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    minutes = int((local - midnight).total_seconds() // 60)
    start = midnight + timedelta(minutes=minutes - minutes % location.slot_minutes)
    return start.astimezone(UTC)


def earliest_pickup(location: Location, now: datetime) -> datetime:
    """The first slot start at or after now + lead time."""
    ready = now + timedelta(minutes=location.lead_time_min)
    start = slot_start(location, ready)
    return start if start >= ready else start + timedelta(minutes=location.slot_minutes)


def slot_runs(
    location: Location, day: datetime, after: datetime
) -> list[tuple[datetime, datetime]]:
    """The open slots of the location's local day of ``day`` starting at or after ``after``
    (a slot start), as runs of (first, last) slot starts, each run stepping by
    ``slot_minutes``: one run per opening interval, so the database gets a day's candidates
    in a few values (the same slots as ``slots_on``). On the checkout's path: a few datetime
    operations per opening interval, no walk over the day."""
    tz = location.tz
    local = day.astimezone(tz)
    midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
    step = location.slot_minutes
    runs = []
    for start, end in location.opening_hours.get(WEEKDAYS[local.weekday()], []):
        start_t, end_t = _parse(start), _parse(end)
        assert start_t is not None
        opens = start_t.hour * 60 + start_t.minute
        closes = 24 * 60 if end_t is None else end_t.hour * 60 + end_t.minute
        first_min, last_min = -(-opens // step) * step, (closes - 1) // step * step
        if first_min > last_min:
            continue
        last = (midnight + timedelta(minutes=last_min)).astimezone(UTC)
        if last < after:
            continue
        first = max((midnight + timedelta(minutes=first_min)).astimezone(UTC), after)
        runs.append((first, last))
    return runs


def slot_runs_rest_of_day(location: Location, now: datetime) -> list[tuple[datetime, datetime]]:
    """The open slots left in the location's day, from the earliest pickup (lead time) on: the
    candidates of an "as soon as possible" checkout.

    When the lead time carries the earliest pickup past the location's midnight, the day is
    the next one if the location is open then: a 24/7 place or a bar open through midnight
    takes an order at 23:55 (it used to answer "closed for the rest of today" from ~23:45),
    while a café closed since the evening still does not offer tomorrow morning as "as soon
    as possible"."""
    earliest = earliest_pickup(location, now)
    if local_date(location, earliest) != local_date(location, now) and not is_open(
        location, earliest
    ):
        return []
    return slot_runs(location, earliest, earliest)


def slot_runs_after_today(
    location: Location, now: datetime, days: int
) -> list[tuple[datetime, datetime]]:
    """The open slots of the ``days`` local days after the location's today, as runs."""
    today = local_date(location, now)
    runs = []
    for ahead in range(1, days + 1):
        date_ = today + timedelta(days=ahead)
        noon = datetime(date_.year, date_.month, date_.day, 12, tzinfo=location.tz)
        runs += slot_runs(location, noon, datetime.min.replace(tzinfo=UTC))
    return runs


def local_date(location: Location, moment: datetime) -> date:
    """The calendar day at the location at ``moment``: its "today" is not UTC's (a Berlin
    café's day starts at 23:00 UTC in winter)."""
    return moment.astimezone(location.tz).date()


def slots_on(location: Location, day: datetime) -> list[datetime]:
    """Every slot start (UTC) on the local calendar day of ``day`` while the location is open."""
    local_day = day.astimezone(location.tz).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = []
    step = timedelta(minutes=location.slot_minutes)
    moment = local_day
    while moment.date() == local_day.date():
        if is_open(location, moment):
            starts.append(moment.astimezone(UTC))
        moment = (moment.astimezone(UTC) + step).astimezone(location.tz)
    return starts
