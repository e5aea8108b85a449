"""The composition root's runtime half: what the app owns while it runs (pool, Redis, services)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
from litestar import Litestar

from server.auth.notifier import LogNotifier, Notifier
from server.auth.service import Auth
from server.auth.tokens import TokenIssuer
from server.catalog.locations import Locations
from server.catalog.service import CATALOG_CHANNEL, Catalog
from server.counter import sql as counter_sql
from server.counter.live import LiveQueues
from server.counter.model import Return, Visit, VisitItem
from server.counter.points import CounterPoints
from server.counter.profiles import (
    fold_stored,
    record_completed_order,
    record_refunded_lines,
    record_return,
    record_visit,
    record_visits,
)
from server.counter.service import CounterDesk
from server.guests.service import Guests
from server.infra.audit import AUDIT
from server.infra.db import Database, create_pool
from server.infra.multiprocess_metrics import forget_dead_processes, forget_process
from server.infra.redis import RedisGate, open_redis
from server.infra.runtime import freeze_startup_objects
from server.loyalty.service import Loyalty, build_loyalty
from server.orders import sql as orders_sql
from server.orders.service import Orders
from server.pos.auth import TillAuth
from server.pos.batch import BatchIntake
from server.pos.chunks import ChunkIntake
from server.pos.claims import Claims
from server.pos.guest_sale import GuestSales
from server.pos.identify import TillGuests
from server.pos.imports import ReceiptImport
from server.pos.integrations import Integrations
from server.pos.points import LoyaltyPoints
from server.pos.pricing import TillPricing
from server.pos.receipts import Intake, ItemSold, ReceiptReturn, ReceiptVisit
from server.pos.sealing import Sealer
from server.pos.tender import Tender
from server.pos.webhooks import PosWebhooks
from server.settings import Settings
from server.staff.service import Staff

__all__ = [
    "HOT_STATEMENTS",
    "Services",
    "build_services",
    "fold_receipt_profile",
    "jwt_secret",
    "lifespan",
    "pos_seal_key",
    "record_receipt_return",
    "record_receipt_visit",
    "record_receipt_visits",
]

log = logging.getLogger("regulars.lifespan")

# The statements of the morning rush, prepared on every pooled connection at start-up when
# Settings.db_warm_up is on: the checkout and the kiosk scan.
HOT_STATEMENTS = (
    orders_sql.PLACE_ORDER,
    counter_sql.CARD_BY_PUBLIC_ID,
    counter_sql.OPEN_ORDERS_OF_GUEST,
    orders_sql.LINES_OF_ORDERS,
    AUDIT,
)


@dataclass
class Services:
    settings: Settings
    db: Database
    gate: RedisGate
    tokens: TokenIssuer
    catalog: Catalog
    loyalty: Loyalty
    orders: Orders
    guests: Guests
    auth: Auth
    staff: Staff
    locations: Locations
    desk: CounterDesk
    counter_points: CounterPoints
    live_queues: LiveQueues
    pos_webhooks: PosWebhooks
    till_auth: TillAuth
    pos_integrations: Integrations
    intake: Intake
    batch_intake: BatchIntake
    tender: Tender
    claims: Claims
    receipt_import: ReceiptImport

    async def close(self) -> None:
        await self.live_queues.close()
        await self.pos_webhooks.aclose()
        await self.db.pool.close()
        await self.gate.aclose()


def jwt_secret(settings: Settings) -> str:
    """The signing secret: from settings, or (outside prod) one kept in the data directory so
    `regulars token` and `regulars dev` agree without configuration."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = Path(settings.data_dir) / "jwt_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def pos_seal_key(settings: Settings) -> str:
    """The key till secrets are sealed with (server/pos/sealing.py): its own setting, else
    derived from the JWT secret under a label of its own."""
    return settings.pos_seal_key or "pos-seal:" + jwt_secret(settings)


async def _timezone(conn: asyncpg.Connection, location_id: UUID) -> ZoneInfo:
    return ZoneInfo(
        await conn.fetchval("SELECT timezone FROM locations WHERE id = $1", location_id)
    )


async def record_receipt_visit(conn: asyncpg.Connection, visit: ReceiptVisit) -> None:
    """A till receipt's visit folded into the guest's profile, like a counter accrual."""
    tz = await _timezone(conn, visit.location_id)
    await record_visit(conn, visit.guest_id, _counter_visit(visit, tz), datetime.now(UTC), tz)


async def record_receipt_return(conn: asyncpg.Connection, returned: ReceiptReturn) -> None:
    """A till refund folded into the guest's profile: what it gave back lowers their spend,
    average ticket, points earned and top items."""
    tz = await _timezone(conn, returned.location_id)
    folded = Return(
        returned.amount_minor,
        returned.points,
        _visit_items(returned.items),
    )
    await record_return(conn, returned.guest_id, folded, datetime.now(UTC), tz)


def fold_receipt_profile(
    stored: asyncpg.Record, visit: ReceiptVisit, timezone: str, now: datetime
) -> dict[str, object]:
    """A till receipt's visit folded into the guest's stored profile (its histograms started),
    as :func:`record_receipt_visit` folds it, for the two-statement guest sale."""
    return fold_stored(stored, _counter_visit(visit, ZoneInfo(timezone)), now)


def _counter_visit(visit: ReceiptVisit, tz: ZoneInfo) -> Visit:
    return Visit(
        at=visit.at,
        local_at=visit.at.astimezone(tz),
        amount_minor=visit.amount_minor,
        points=visit.points,
        items=_visit_items(visit.items),
    )


def _visit_items(items: Sequence[ItemSold]) -> tuple[VisitItem, ...]:
    return tuple(VisitItem(i.item_id, i.name, i.quantity, i.price_minor) for i in items)


async def record_receipt_visits(conn: asyncpg.Connection, visits: Sequence[ReceiptVisit]) -> None:
    """:func:`record_receipt_visit` for each of a batch's visits, in order: the time zones
    read once, each guest's profile folded and written once per run of visits at a location
    (a batch's are all at one)."""
    locations = sorted({visit.location_id for visit in visits})
    rows = await conn.fetch(
        "SELECT id, timezone FROM locations WHERE id = ANY($1::uuid[])", locations
    )
    zones = {row["id"]: ZoneInfo(row["timezone"]) for row in rows}
    now = datetime.now(UTC)
    for location_id, run in itertools.groupby(visits, key=lambda visit: visit.location_id):
        tz = zones[location_id]
        folded = [(visit.guest_id, _counter_visit(visit, tz)) for visit in run]
        await record_visits(conn, folded, now, tz)


def _intake(settings: Settings, db: Database, points: LoyaltyPoints) -> Intake:
    """Receipt intake with its hooks into the counter's profile fold."""
    guest_sales = GuestSales(settings, points, fold_receipt_profile)
    pricing, guests = TillPricing(settings, points), TillGuests(settings)
    return Intake(
        settings,
        db,
        points,
        pricing,
        guests,
        record_receipt_visit,
        record_receipt_return,
        guest_sales,
    )


async def build_services(settings: Settings, notifier: Notifier | None = None) -> Services:
    """Open the pool and the Redis client and wire every service. The one place that does."""
    assert settings.database_url and settings.redis_url, "resolve the URLs before building"
    pool = await create_pool(settings, settings.database_url)
    db = Database(pool, settings.db_acquire_timeout_s)
    client, line = await open_redis(settings, settings.redis_url)
    gate = RedisGate(client, line, settings.redis_retry_after_s)
    tokens = TokenIssuer(
        jwt_secret(settings),
        settings.jwt_issuer,
        settings.access_ttl_s,
        settings.verified_tokens_cached,
        tuple(filter(None, (part.strip() for part in settings.jwt_previous_secrets.split(",")))),
    )
    catalog = Catalog(db, gate, settings.menu_cache_ttl_s)
    loyalty = build_loyalty(
        db,
        gate,
        settings.reconcile_grace_s,
        settings.menu_cache_ttl_s,
        settings.loyalty_mirror_guests_at_once,
    )
    orders = Orders(
        settings,
        db,
        catalog,
        loyalty,
        on_completed=record_completed_order,
        on_refunded=record_refunded_lines,
    )
    guests = Guests(settings, db, loyalty)
    auth = Auth(settings, db, gate, tokens, guests, notifier or LogNotifier())
    staff = Staff(settings, db, gate, auth.issue)
    locations = Locations(db, settings.menu_cache_ttl_s)
    desk = CounterDesk(settings, db, gate, loyalty, guests, locations)
    counter_points = CounterPoints(settings, db, gate, loyalty, locations)
    live_queues = LiveQueues(gate, settings.redis_retry_after_s)
    sealer = Sealer(pos_seal_key(settings))
    pos_webhooks = PosWebhooks(settings, db, sealer)
    till_auth = TillAuth(settings, db, gate, sealer)
    points = LoyaltyPoints(loyalty)
    intake = _intake(settings, db, points)
    # The batch's chunks share the intake's pricing (its catalogue cache) and guest lookups.
    chunks = ChunkIntake(settings, intake.pricing, intake.guests, points, record_receipt_visits)
    batch_intake = BatchIntake(settings, db, till_auth, intake, chunks, points)
    return Services(
        settings,
        db,
        gate,
        tokens,
        catalog,
        loyalty,
        orders,
        guests,
        auth,
        staff,
        locations,
        desk,
        counter_points,
        live_queues,
        pos_webhooks,
        till_auth,
        Integrations(settings, db, sealer),
        intake,
        batch_intake,
        Tender(settings, db, gate, points),
        Claims(db, points, intake.pricing, record_receipt_visit),
        ReceiptImport(db, batch_intake),
    )


_FEED_POLL_S = 1.0


async def _follow_catalog_changes(services: Services) -> None:
    """Drop cached menus when another process says a location's menu changed.

    The feed polls rather than blocking in ``listen()``: a cancellation that arrives while
    redis-py connects can be swallowed by Python 3.11's ``asyncio.wait_for`` (fixed in 3.12),
    and a feed blocked in ``listen()`` would then never stop. Polling, it notices within
    ``_FEED_POLL_S`` that it was asked to stop.
    """
    task = asyncio.current_task()
    assert task is not None
    while not task.cancelling():
        pubsub = services.gate.client.pubsub()
        try:
            await pubsub.subscribe(CATALOG_CHANNEL)
            while not task.cancelling():
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_FEED_POLL_S
                )
                if message is not None and message.get("type") == "message":
                    services.catalog.forget(UUID(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: the menu TTL bounds staleness meanwhile
            log.debug("catalog change feed interrupted: %s", exc)
            await asyncio.sleep(services.settings.redis_retry_after_s)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
    raise asyncio.CancelledError


@contextlib.asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    forget_dead_processes()  # a worker that died before this one started
    services = await build_services(settings, app.state.get("notifier"))
    app.state.services = services
    app.state.tokens = services.tokens
    try:
        await services.loyalty.preload_scripts()  # Redis away is fine; a script error is not
        if settings.db_warm_up:
            await services.db.warm_up(HOT_STATEMENTS)
    except BaseException:  # say, a schema behind the code: stop start-up, close what it opened
        await services.close()
        raise
    follower = asyncio.create_task(_follow_catalog_changes(services))
    if settings.gc_freeze:
        freeze_startup_objects()
    try:
        yield
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await services.close()
        forget_process()
