"""`regulars seed --demo`: one café chain with locations, a menu, a program, staff and a few
hundred guests with six months of order history. Deterministic (a seeded RNG, ids derived from
names) and idempotent (the whole brand is written in one transaction, once).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
from argon2 import PasswordHasher

from server.counter.model import RECENT_VISITS_MAX, TOP_ITEMS_MAX, histogram_from
from server.loyalty.model import Program, Tier, add_months, allocate, earn_points, tier_for
from shared import qr

__all__ = [
    "DEMO_BRAND",
    "DEMO_GUEST_PHONE",
    "DEMO_PASSWORD",
    "DEMO_PIN",
    "DEMO_TOTP_SECRET",
    "seed_demo",
]

DEMO_BRAND = "regulars-demo"
DEMO_PASSWORD = "demo-password"
DEMO_PIN = "1234"
# Managers and admins use a second factor; the demo's secret is public on purpose.
DEMO_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"
DEMO_GUEST_PHONE = "+4915100000001"
GUESTS = 300
HISTORY_DAYS = 182
_NS = uuid.UUID("0d7d3f4e-8f5a-4a8e-9d61-6b2f6b1d9c10")

PROGRAM = Program(
    point_value_minor=1,
    earn_per_100_minor=5,
    tiers=[
        Tier(name="Bronze", min_points=0, multiplier_pct=100),
        Tier(name="Silver", min_points=500, multiplier_pct=125),
        Tier(name="Gold", min_points=2000, multiplier_pct=150),
    ],
    tier_window_days=365,
    max_points_share_pct=30,
    lot_expiry_months=12,
    welcome_bonus_points=100,
)

WEEKDAYS_7_19 = {d: [["07:00", "19:00"]] for d in ("mon", "tue", "wed", "thu", "fri")} | {
    "sat": [["08:00", "18:00"]],
    "sun": [["09:00", "17:00"]],
}
ALWAYS = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
LOCATIONS = [
    # slug, name, address, timezone, hours, lead min, slot min, orders per slot
    (
        "mitte",
        "Regulars Mitte",
        "Torstraße 101, Berlin",
        "Europe/Berlin",
        WEEKDAYS_7_19,
        10,
        15,
        20,
    ),
    (
        "kreuzberg",
        "Regulars Kreuzberg",
        "Oranienstraße 12, Berlin",
        "Europe/Berlin",
        WEEKDAYS_7_19,
        10,
        15,
        15,
    ),
    (
        "lisbon",
        "Regulars Chiado",
        "Rua Garrett 40, Lisboa",
        "Europe/Lisbon",
        WEEKDAYS_7_19,
        5,
        10,
        12,
    ),
    # A station counter that never closes: the demo works at any hour.
    (
        "station",
        "Regulars Hauptbahnhof 24/7",
        "Europaplatz 1, Berlin",
        "Europe/Berlin",
        ALWAYS,
        5,
        5,
        500,
    ),
]

COFFEE_MODS = ("size", "milk", "shot")
MenuEntry = tuple[str, str, int, tuple[str, ...]]
MENU: list[tuple[str, bool, list[MenuEntry]]] = [
    # category, earns points, [(sku, name, price_minor, modifier groups)]
    (
        "Coffee",
        True,
        [
            ("ESP", "Espresso", 240, ("shot",)),
            ("DOP", "Doppio", 300, ()),
            ("AME", "Americano", 320, ("size", "shot")),
            ("CAP", "Cappuccino", 380, COFFEE_MODS),
            ("FLW", "Flat White", 400, COFFEE_MODS),
            ("LAT", "Caffè Latte", 410, COFFEE_MODS),
            ("COR", "Cortado", 350, ("milk",)),
            ("MOC", "Mocha", 450, COFFEE_MODS),
            ("FIL", "Filter Coffee", 290, ("size",)),
            ("CLD", "Cold Brew", 420, ("size", "milk")),
        ],
    ),
    (
        "Tea & more",
        True,
        [
            ("CHA", "Chai Latte", 420, ("size", "milk")),
            ("MAT", "Matcha Latte", 460, ("size", "milk")),
            ("HOT", "Hot Chocolate", 390, ("size", "milk")),
            ("TEA", "Loose Leaf Tea", 300, ("size",)),
        ],
    ),
    (
        "Cold drinks",
        True,
        [
            ("LEM", "Homemade Lemonade", 380, ()),
            ("OJ", "Fresh Orange Juice", 450, ()),
            ("WAT", "Sparkling Water", 250, ()),
            ("ICT", "Iced Tea", 350, ()),
        ],
    ),
    (
        "Bakery",
        True,
        [
            ("CRO", "Butter Croissant", 260, ()),
            ("PAC", "Pain au Chocolat", 290, ()),
            ("CIN", "Cinnamon Bun", 340, ()),
            ("BAN", "Banana Bread", 330, ()),
            ("MUF", "Blueberry Muffin", 320, ()),
            ("COO", "Chocolate Cookie", 250, ()),
        ],
    ),
    (
        "Breakfast",
        True,
        [
            ("POR", "Porridge with Berries", 650, ()),
            ("AVO", "Avocado Toast", 850, ()),
            ("GRA", "Granola Bowl", 700, ()),
            ("EGG", "Egg Muffin", 590, ()),
        ],
    ),
    (
        "Lunch",
        True,
        [
            ("SAN", "Grilled Cheese Sandwich", 790, ()),
            ("SOU", "Soup of the Day", 620, ()),
            ("SAL", "Seasonal Salad", 890, ()),
            ("QUI", "Quiche", 720, ()),
        ],
    ),
    # Gift cards and beans to take home earn nothing (DESIGN §3).
    (
        "Shop",
        False,
        [
            ("GC25", "Gift Card 25", 2500, ()),
            ("GC50", "Gift Card 50", 5000, ()),
            ("BNS", "House Blend Beans 250 g", 1290, ()),
        ],
    ),
]
MODIFIERS = [
    ("size", "Small", -40),
    ("size", "Regular", 0),
    ("size", "Large", 60),
    ("milk", "Whole milk", 0),
    ("milk", "Oat milk", 40),
    ("milk", "Almond milk", 40),
    ("milk", "Lactose-free", 20),
    ("shot", "Extra shot", 60),
]
STAFF = [
    ("barista", "Bea Barista", ["mitte", "station"]),
    ("shift_lead", "Sam Shiftlead", ["mitte", "station"]),
    ("manager", "Mia Manager", []),
    ("admin", "Ada Admin", []),
]
FIRST = [
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Ela",
    "Finn",
    "Greta",
    "Hugo",
    "Ida",
    "Jonas",
    "Lea",
    "Max",
    "Nora",
    "Oskar",
    "Paula",
    "Rafael",
    "Sofia",
    "Tom",
    "Uma",
    "Vito",
    "Wanda",
    "Yusuf",
]
LAST = [
    "Schmidt",
    "Müller",
    "Silva",
    "Weber",
    "Costa",
    "Fischer",
    "Wagner",
    "Santos",
    "Becker",
    "Hoffmann",
    "Koch",
    "Ferreira",
    "Richter",
    "Klein",
    "Wolf",
    "Neumann",
    "Braun",
    "Pereira",
]
PROMOS = [
    # code, kind, value, starts (days from now), ends, per guest, total
    ("WELCOME10", "percent", 10, -30, 365, 1, None),
    ("FIVEOFF", "fixed", 500, -30, 365, 3, 1000),
    ("SUMMER24", "percent", 15, -400, -200, 1, None),
    ("LASTFIVE", "fixed", 100, -1, 30, 1, 5),
]


def _id(*parts: object) -> UUID:
    return uuid.uuid5(_NS, ":".join(str(p) for p in parts))


@dataclass
class _Item:
    id: UUID
    sku: str
    name: str
    price: int
    earns: bool


async def seed_demo(conn: asyncpg.Connection, now: datetime | None = None) -> bool:
    """Write the demo brand unless it exists; returns True when it was written now."""
    now = now or datetime.now(UTC)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('regulars-demo-seed'))")
        if await conn.fetchval("SELECT 1 FROM brands WHERE slug = $1", DEMO_BRAND):
            return False
        brand = _id("brand")
        await conn.execute(
            "INSERT INTO brands (id, slug, name, currency, created_at) VALUES ($1, $2, $3, 'EUR', $4)",
            brand,
            DEMO_BRAND,
            "Regulars Coffee",
            now - timedelta(days=400),
        )
        await conn.execute(
            "INSERT INTO loyalty_programs (brand_id, rules) VALUES ($1, $2)",
            brand,
            msgspec.to_builtins(PROGRAM),
        )
        await conn.execute(
            "INSERT INTO accounts (id, brand_id, kind) SELECT gen_random_uuid(), $1, k"
            " FROM unnest(ARRAY['issued', 'redeemed', 'expired', 'adjustments']) k",
            brand,
        )
        locations = await _locations(conn, brand)
        items = await _menu(conn, brand)
        await _staff(conn, brand, locations)
        await _promos(conn, brand, now)
        await _guests(conn, brand, locations, items, now)
    return True


async def _locations(conn: asyncpg.Connection, brand: UUID) -> dict[str, UUID]:
    ids = {}
    for slug, name, address, tz, hours, lead, slot, per_slot in LOCATIONS:
        ids[slug] = _id("location", slug)
        await conn.execute(
            "INSERT INTO locations (id, brand_id, slug, name, address, timezone, opening_hours,"
            " lead_time_min, slot_minutes, orders_per_slot) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            ids[slug],
            brand,
            slug,
            name,
            address,
            tz,
            hours,
            lead,
            slot,
            per_slot,
        )
    return ids


async def _menu(conn: asyncpg.Connection, brand: UUID) -> list[_Item]:
    modifiers: dict[str, list[UUID]] = {}
    for group, name, delta in MODIFIERS:
        modifiers.setdefault(group, []).append(_id("modifier", group, name))
        await conn.execute(
            "INSERT INTO modifiers (id, brand_id, group_name, name, price_delta_minor) VALUES ($1,$2,$3,$4,$5)",
            _id("modifier", group, name),
            brand,
            group,
            name,
            delta,
        )
    items = []
    for position, (category, earns, entries) in enumerate(MENU):
        category_id = _id("category", category)
        await conn.execute(
            "INSERT INTO menu_categories (id, brand_id, name, position, earns_points) VALUES ($1,$2,$3,$4,$5)",
            category_id,
            brand,
            category,
            position,
            earns,
        )
        for item_position, (sku, name, price, groups) in enumerate(entries):
            item_id = _id("item", sku)
            await conn.execute(
                "INSERT INTO menu_items (id, brand_id, category_id, sku, name, price_minor,"
                " is_gift_card, position) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                item_id,
                brand,
                category_id,
                sku,
                name,
                price,
                sku.startswith("GC"),
                item_position,
            )
            await conn.executemany(
                "INSERT INTO item_modifiers (item_id, modifier_id) VALUES ($1, $2)",
                [(item_id, m) for group in groups for m in modifiers[group]],
            )
            items.append(_Item(item_id, sku, name, price, earns))
    # Seasonal: the lisbon café has no soup.
    await conn.execute(
        "INSERT INTO item_unavailable (location_id, item_id) VALUES ($1, $2)",
        _id("location", "lisbon"),
        _id("item", "SOU"),
    )
    return items


async def _staff(conn: asyncpg.Connection, brand: UUID, locations: dict[str, UUID]) -> None:
    # Cheap parameters for the demo only: four hashes at start-up, not a production policy.
    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    password_hash = hasher.hash(DEMO_PASSWORD)
    pin_hash = hasher.hash(DEMO_PIN)
    for role, name, slugs in STAFF:
        await conn.execute(
            "INSERT INTO staff_users (id, brand_id, email, display_name, role, location_ids,"
            " password_hash, pin_hash, totp_secret) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            _id("staff", role),
            brand,
            f"{role}@demo.regulars.test",
            name,
            role,
            [locations[s] for s in slugs],
            password_hash,
            pin_hash,
            DEMO_TOTP_SECRET if role in ("manager", "admin") else None,
        )


async def _promos(conn: asyncpg.Connection, brand: UUID, now: datetime) -> None:
    for code, kind, value, start, end, per_guest, total in PROMOS:
        await conn.execute(
            "INSERT INTO promo_codes (id, brand_id, code, kind, value, valid_from, valid_until,"
            " per_guest_limit, total_limit) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            _id("promo", code),
            brand,
            code,
            kind,
            value,
            now + timedelta(days=start),
            now + timedelta(days=end),
            per_guest,
            total,
        )


@dataclass
class _Rows:
    """The demo guests' rows, gathered per table and written with one COPY each."""

    guests: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    order_lines: list[tuple[Any, ...]] = field(default_factory=list)
    transfers: list[tuple[Any, ...]] = field(default_factory=list)
    profiles: list[tuple[Any, ...]] = field(default_factory=list)


# The columns of each table's rows, in the order _Rows holds them.
_COLUMNS = {
    "guests": [
        "id", "brand_id", "public_id", "qr_secret", "card_number", "phone_e164", "first_name",
        "last_name", "created_at",
    ],
    "accounts": ["id", "brand_id", "kind", "guest_id", "credits_posted", "version"],
    "orders": [
        "id", "brand_id", "location_id", "guest_id", "status", "currency", "subtotal_minor",
        "discount_minor", "points_spent", "points_value_minor", "amount_due_minor",
        "points_to_earn", "points_earned", "pickup_at", "slot_start", "created_at", "updated_at",
    ],
    "order_lines": [
        "id", "order_id", "line_no", "item_id", "sku", "name", "quantity", "unit_price_minor",
        "gross_minor", "discount_minor", "points_spent", "paid_minor", "earns_points",
        "points_earned",
    ],
    "transfers": [
        "id", "brand_id", "debit_account_id", "credit_account_id", "amount", "phase", "code",
        "order_id", "location_id", "expires_at", "created_at",
    ],
}  # fmt: skip


@dataclass(frozen=True)
class _Brand:
    """What every demo guest's rows refer to."""

    id: UUID
    issued_account_id: UUID
    location_ids: list[UUID]
    items: list[_Item]
    now: datetime
    tz: ZoneInfo  # where the visits' hours are chosen
    zones: dict[UUID, ZoneInfo]  # each location's, for its regulars' profiles


@dataclass
class _Tally:
    """What one guest's history adds up to."""

    credits: int = 0
    earned_in_window: int = 0
    spend_minor: int = 0
    item_counts: Counter[UUID] = field(default_factory=Counter)


async def _guests(
    conn: asyncpg.Connection,
    brand: UUID,
    locations: dict[str, UUID],
    items: list[_Item],
    now: datetime,
) -> None:
    rng = random.Random(20261122)
    issued = await conn.fetchval(
        "SELECT id FROM accounts WHERE brand_id = $1 AND kind = 'issued'", brand
    )
    location_ids = [
        locations["mitte"],
        locations["kreuzberg"],
        locations["lisbon"],
        locations["station"],
    ]
    zones = {locations[row[0]]: ZoneInfo(row[3]) for row in LOCATIONS}
    demo = _Brand(brand, issued, location_ids, items, now, ZoneInfo("Europe/Berlin"), zones)
    rows = _Rows()
    for n in range(1, GUESTS + 1):
        _guest(rows, rng, demo, n)
    await _write(conn, rows)


def _guest(rows: _Rows, rng: random.Random, demo: _Brand, n: int) -> None:
    """One guest: the guest row, habits, six months of orders, the welcome bonus, the account
    and the profile. The RNG is drawn from in a fixed order: the demo stays the same."""
    guest_id, account_id = _id("guest", n), _id("account", n)
    first, last = ("Demo", "Guest") if n == 1 else (rng.choice(FIRST), rng.choice(LAST))
    joined = demo.now - timedelta(days=HISTORY_DAYS + rng.randint(0, 200))
    rows.guests.append(
        (
            guest_id, demo.id, qr.new_public_id(), qr.new_secret(), f"{n:012d}",
            f"+49151{n:08d}", first, last, joined,
        )
    )  # fmt: skip
    # Habits: a favourite weekday set, hour, location and two or three favourite items.
    visits_per_week = rng.choice([0.5, 1, 2, 3, 5])
    hour = rng.choice([7, 8, 8, 9, 12, 13, 15])
    home = rng.choice(demo.location_ids)
    favourites = rng.sample([i for i in demo.items if i.earns], 3)
    history = _visit_times(rng, demo, visits_per_week, hour)
    tally = _Tally()
    for number, at in enumerate(history):
        _order(rows, rng, demo, tally, (n, number), guest_id, account_id, home, favourites, at)
    rows.transfers.append(
        (
            _id("welcome", n), demo.id, demo.issued_account_id, account_id,
            PROGRAM.welcome_bonus_points, "single", "welcome", None, None,
            add_months(joined, PROGRAM.lot_expiry_months), joined,
        )
    )  # fmt: skip
    tally.credits += PROGRAM.welcome_bonus_points
    rows.accounts.append((account_id, demo.id, "guest", guest_id, tally.credits, len(history) + 1))
    rows.profiles.append(
        _profile(
            guest_id, history, tally.item_counts, demo.items, tally.spend_minor,
            tally.earned_in_window, demo.now, demo.zones[home],
        )
    )  # fmt: skip


def _visit_times(
    rng: random.Random, demo: _Brand, visits_per_week: float, hour: int
) -> list[datetime]:
    """When a guest with these habits came, over the history (fewer on weekends)."""
    history = []
    day = demo.now - timedelta(days=HISTORY_DAYS)
    while day < demo.now - timedelta(hours=2):
        day += timedelta(days=rng.expovariate(visits_per_week / 7))
        local = day.astimezone(demo.tz).replace(hour=hour, minute=rng.randint(0, 50))
        if local >= demo.now or (local.weekday() >= 5 and rng.random() < 0.6):
            continue
        history.append(local.astimezone(UTC))
    return history


def _order(
    rows: _Rows,
    rng: random.Random,
    demo: _Brand,
    tally: _Tally,
    number: tuple[int, int],
    guest_id: UUID,
    account_id: UUID,
    home: UUID,
    favourites: list[_Item],
    at: datetime,
) -> None:
    """One completed order of the guest's history (``number``: guest, visit), its lines and
    the points it earned at the tier the guest held then."""
    order_id = _id("order", *number)
    cafe_items = [i for i in demo.items if i.earns]
    picks = [
        rng.choice(favourites) if rng.random() < 0.8 else rng.choice(cafe_items)
        for _ in range(rng.choice([1, 1, 2, 2, 3]))
    ]
    subtotal = sum(p.price for p in picks)
    tier, _ = tier_for(PROGRAM, tally.earned_in_window)
    points = earn_points(PROGRAM, subtotal, tier)
    shares = allocate(points, [p.price for p in picks])
    rows.orders.append(
        (
            order_id, demo.id, home, guest_id, "completed", "EUR", subtotal, 0, 0, 0, subtotal,
            points, points, at, at, at, at,
        )
    )  # fmt: skip
    for line_no, (pick, share) in enumerate(zip(picks, shares, strict=True)):
        rows.order_lines.append(
            (
                _id("line", *number, line_no), order_id, line_no, pick.id, pick.sku, pick.name,
                1, pick.price, pick.price, 0, 0, pick.price, True, share,
            )
        )  # fmt: skip
        tally.item_counts[pick.id] += 1
    if points:
        rows.transfers.append(
            (
                _id("transfer", *number), demo.id, demo.issued_account_id, account_id, points,
                "single", "earn", order_id, home, add_months(at, PROGRAM.lot_expiry_months), at,
            )
        )  # fmt: skip
        tally.credits += points
        if at > demo.now - timedelta(days=PROGRAM.tier_window_days):
            tally.earned_in_window += points
    tally.spend_minor += subtotal


async def _write(conn: asyncpg.Connection, rows: _Rows) -> None:
    for table, columns in _COLUMNS.items():
        await conn.copy_records_to_table(table, records=getattr(rows, table), columns=columns)
    # executemany, not COPY: binary COPY has no encoder for our text-format jsonb codec.
    await conn.executemany(
        "INSERT INTO guest_profiles (guest_id, visits_total, visits_30d, spend_total_minor,"
        " avg_ticket_minor, usual_weekday, usual_hour, last_visit_at, top_items, points_earned_12m,"
        " weekday_counts, hour_counts, recent_visits)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        rows.profiles,
    )


def _profile(
    guest_id: UUID,
    history: list[datetime],
    counts: Counter[UUID],
    items: list[_Item],
    spend: int,
    earned: int,
    now: datetime,
    tz: ZoneInfo,
) -> tuple[object, ...]:
    """The profile row a rebuild from the guest's history would make (server.counter.profiles:
    histograms from the latest visits in the home location's time, the recent visits that the
    card counts ``visits_30d`` from, relative to whenever it is read), so a seeded guest looks
    right before their next visit, and that visit folds onto it."""
    names = {i.id: i for i in items}
    latest = sorted(history)[-RECENT_VISITS_MAX * 5 :]
    weekdays, hours = histogram_from(at.astimezone(tz) for at in latest)
    recent = sorted(at for at in history if at > now - timedelta(days=30))[-RECENT_VISITS_MAX:]
    top = [
        {
            "item_id": str(item_id),
            "name": names[item_id].name,
            "count": count,
            "price_minor": names[item_id].price,
        }
        for item_id, count in counts.most_common(TOP_ITEMS_MAX)
    ]
    return (
        guest_id,
        len(history),
        len(recent),
        spend,
        spend // len(history) if history else 0,
        max(range(7), key=lambda d: weekdays[d]) if history else None,
        max(range(24), key=lambda h: hours[h]) if history else None,
        max(history) if history else None,
        top,
        earned,
        list(weekdays),
        list(hours),
        recent,
    )
