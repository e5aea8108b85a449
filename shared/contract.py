"""The wire contract of the Regulars API (DESIGN §9), shared by server, kiosk and load tests.

Evolution rules (after msgspec's own): Structs are ``kw_only`` and ``frozen``; a new field
always has a default; a field never changes type; no ``array_like`` on the public API. Money
fields end in ``_minor`` (integer minor units), points are integers.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

from msgspec import Meta, Struct

__all__ = [
    "AccrualIn",
    "AdjustmentIn",
    "DeviceCreated",
    "DeviceIn",
    "DevicePaired",
    "EnrolIn",
    "ExpiringPoints",
    "GuestCard",
    "GuestSummary",
    "Habits",
    "LedgerEntry",
    "LedgerPage",
    "Location",
    "Me",
    "Menu",
    "MenuCategory",
    "MenuItem",
    "Modifier",
    "Offer",
    "Order",
    "OrderIn",
    "OrderLine",
    "OrderLineIn",
    "OrderStatus",
    "OtpRequest",
    "OtpSent",
    "OtpVerify",
    "PairIn",
    "PaymentIn",
    "PinLogin",
    "Problem",
    "ProblemField",
    "QrCode",
    "RedemptionIn",
    "RefreshIn",
    "RefundIn",
    "ScanIn",
    "Slot",
    "Slots",
    "StaffLogin",
    "StatusChange",
    "TokenPair",
    "Transfer",
    "UsualItem",
    "Wallet",
]


class _Wire(Struct, kw_only=True, frozen=True):
    pass


Points = Annotated[int, Meta(ge=0, le=10_000_000)]
Quantity = Annotated[int, Meta(ge=1, le=99)]
ShortText = Annotated[str, Meta(min_length=1, max_length=200)]

OrderStatus = Literal[
    "awaiting_payment",
    "placed",
    "accepted",
    "preparing",
    "ready",
    "completed",
    "cancelled",
    "refunded",
]

# -- errors ----------------------------------------------------------------------------


class ProblemField(_Wire, kw_only=True, frozen=True):
    field: str
    message: str


class Problem(_Wire, kw_only=True, frozen=True):
    """Every error, as RFC 9457 problem details (``application/problem+json``): ``type`` ends
    in a stable slug (``…/insufficient-points``) to match on, ``detail`` is for people."""

    type: str
    title: str
    status: Annotated[int, Meta(ge=400, le=599)]
    detail: str
    instance: str | None = None
    # A validation error names each field that is wrong.
    errors: list[ProblemField] | None = None
    # A refusal to come back later (429, 503) says when; so does its Retry-After header.
    retry_after_s: int | None = None


# -- auth ------------------------------------------------------------------------------


class OtpRequest(_Wire, kw_only=True, frozen=True):
    phone: Annotated[str, Meta(min_length=3, max_length=32)]


class OtpSent(_Wire, kw_only=True, frozen=True):
    phone: str
    expires_in_s: int


class OtpVerify(_Wire, kw_only=True, frozen=True):
    phone: Annotated[str, Meta(min_length=3, max_length=32)]
    code: Annotated[str, Meta(pattern=r"^\d{6}$")]
    first_name: Annotated[str, Meta(max_length=80)] | None = None


class TokenPair(_Wire, kw_only=True, frozen=True):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"
    guest_id: UUID | None = None
    staff_id: UUID | None = None
    role: str | None = None
    # The locations a staff token acts for; empty means every location of the brand.
    location_ids: list[UUID] = []


class RefreshIn(_Wire, kw_only=True, frozen=True):
    refresh_token: Annotated[str, Meta(min_length=10, max_length=200)]


class StaffLogin(_Wire, kw_only=True, frozen=True):
    email: Annotated[str, Meta(min_length=3, max_length=200)]
    password: Annotated[str, Meta(min_length=1, max_length=200)]
    totp: Annotated[str, Meta(pattern=r"^\d{6}$")] | None = None


class PinLogin(_Wire, kw_only=True, frozen=True):
    device_id: UUID
    device_secret: Annotated[str, Meta(min_length=10, max_length=200)]
    email: Annotated[str, Meta(min_length=3, max_length=200)]
    pin: Annotated[str, Meta(pattern=r"^\d{4,8}$")]


# -- catalog ---------------------------------------------------------------------------


class Location(_Wire, kw_only=True, frozen=True):
    id: UUID
    name: str
    address: str
    timezone: str
    open_now: bool
    lead_time_min: int
    slot_minutes: int
    opening_hours: dict[str, list[list[str]]] = {}


class Modifier(_Wire, kw_only=True, frozen=True):
    id: UUID
    group: str
    name: str
    price_delta_minor: int


class MenuItem(_Wire, kw_only=True, frozen=True):
    id: UUID
    sku: str
    name: str
    description: str = ""
    price_minor: int
    available: bool
    earns_points: bool = True
    modifiers: list[Modifier] = []


class MenuCategory(_Wire, kw_only=True, frozen=True):
    id: UUID
    name: str
    items: list[MenuItem]


class Menu(_Wire, kw_only=True, frozen=True):
    location_id: UUID
    currency: str
    categories: list[MenuCategory]


class Slot(_Wire, kw_only=True, frozen=True):
    starts_at: datetime
    capacity: int
    free: int


class Slots(_Wire, kw_only=True, frozen=True):
    location_id: UUID
    date: date
    slots: list[Slot]


# -- guests and wallet -----------------------------------------------------------------


class Me(_Wire, kw_only=True, frozen=True):
    id: UUID
    first_name: str
    last_name: str
    phone: str | None
    email: str | None = None
    tier: str
    card_number: str | None = None


class ExpiringPoints(_Wire, kw_only=True, frozen=True):
    points: int
    expires_at: datetime


class Wallet(_Wire, kw_only=True, frozen=True):
    points_available: int
    points_pending: int
    tier: str
    points_to_next_tier: int | None = None
    next_tier: str | None = None
    point_value_minor: int = 1
    expiring: list[ExpiringPoints] = []


class LedgerEntry(_Wire, kw_only=True, frozen=True):
    id: UUID
    code: str
    points: int
    state: Literal["pending", "posted", "voided"]
    created_at: datetime
    order_id: UUID | None = None
    reason: str | None = None


class LedgerPage(_Wire, kw_only=True, frozen=True):
    entries: list[LedgerEntry]
    next_cursor: str | None = None


class QrCode(_Wire, kw_only=True, frozen=True):
    code: str
    valid_until: datetime
    secret_ttl_s: int | None = None


# -- orders ----------------------------------------------------------------------------


class OrderLineIn(_Wire, kw_only=True, frozen=True):
    item_id: UUID
    # Bounds are checked by the service so that a bad quantity gets its own problem type.
    quantity: int
    modifier_ids: list[UUID] = []


class OrderIn(_Wire, kw_only=True, frozen=True):
    location_id: UUID
    lines: Annotated[list[OrderLineIn], Meta(min_length=1, max_length=100)]
    pickup_at: datetime | None = None
    points_to_spend: Points = 0
    promo_code: Annotated[str, Meta(min_length=1, max_length=40)] | None = None


class OrderLine(_Wire, kw_only=True, frozen=True):
    id: UUID
    item_id: UUID
    sku: str
    name: str
    quantity: int
    unit_price_minor: int
    modifiers: list[str] = []
    gross_minor: int
    discount_minor: int
    points_spent: int
    paid_minor: int
    points_earned: int = 0
    refunded: bool = False


class Order(_Wire, kw_only=True, frozen=True):
    id: UUID
    status: OrderStatus
    location_id: UUID
    guest_id: UUID
    currency: str
    subtotal_minor: int
    discount_minor: int
    points_spent: int
    points_value_minor: int
    amount_due_minor: int
    points_to_earn: int
    points_earned: int = 0
    lines: list[OrderLine]
    pickup_at: datetime
    created_at: datetime
    payment_expires_at: datetime | None = None
    guest_display_name: str | None = None


class PaymentIn(_Wire, kw_only=True, frozen=True):
    provider: Literal["test"] = "test"
    token: Annotated[str, Meta(min_length=1, max_length=200)]


class StatusChange(_Wire, kw_only=True, frozen=True):
    status: OrderStatus


class RefundIn(_Wire, kw_only=True, frozen=True):
    line_ids: Annotated[list[UUID], Meta(min_length=1, max_length=100)]


# -- staff and kiosk -------------------------------------------------------------------


class ScanIn(_Wire, kw_only=True, frozen=True):
    code: Annotated[str, Meta(min_length=1, max_length=200)]
    # When an offline kiosk scanned the code; verification uses it for late replays.
    scanned_at: datetime | None = None


class GuestSummary(_Wire, kw_only=True, frozen=True):
    id: UUID
    display_name: str
    tier: str
    points_to_next_tier: int | None = None
    next_tier: str | None = None
    member_since: date | None = None
    phone: str | None = None
    email: str | None = None


class UsualItem(_Wire, kw_only=True, frozen=True):
    item_id: UUID
    name: str
    count: int
    price_minor: int = 0


class Habits(_Wire, kw_only=True, frozen=True):
    usual_weekday: str | None = None
    usual_time: str | None = None
    visits_30d: int = 0
    visits_total: int = 0
    avg_ticket_minor: int = 0
    last_visit_at: datetime | None = None


class Offer(_Wire, kw_only=True, frozen=True):
    id: str
    title: str
    reason: str


class GuestCard(_Wire, kw_only=True, frozen=True):
    guest: GuestSummary
    wallet: Wallet
    usual: list[UsualItem] = []
    habits: Habits = Habits()
    offers: list[Offer] = []
    open_orders: list[Order] = []


class AccrualIn(_Wire, kw_only=True, frozen=True):
    amount_paid_minor: Annotated[int, Meta(gt=0, le=100_000_00)]
    location_id: UUID
    receipt_ref: Annotated[str, Meta(min_length=1, max_length=100)]
    # Scan time of an offline kiosk, so a replay is judged by when it happened.
    scanned_at: datetime | None = None


class RedemptionIn(_Wire, kw_only=True, frozen=True):
    points: Annotated[int, Meta(gt=0, le=1_000_000)]
    location_id: UUID


class AdjustmentIn(_Wire, kw_only=True, frozen=True):
    points: Annotated[int, Meta(ge=-1_000_000, le=1_000_000)]
    reason: ShortText


class Transfer(_Wire, kw_only=True, frozen=True):
    id: UUID
    guest_id: UUID
    code: str
    points: int
    state: Literal["pending", "posted", "voided"]
    created_at: datetime
    points_available: int | None = None
    # An accrual: the guest's tier after it, and what the next one still needs (the kiosk's
    # "N points to Silver" line would otherwise keep the scan's figure).
    tier: str | None = None
    next_tier: str | None = None
    points_to_next_tier: int | None = None


# -- kiosk devices and counter enrolment --------------------------------------------


class DeviceIn(_Wire, kw_only=True, frozen=True):
    """``POST /v1/kiosk/devices``: register a kiosk tablet at a location (manager+)."""

    location_id: UUID
    name: Annotated[str, Meta(min_length=1, max_length=80)]


class DeviceCreated(_Wire, kw_only=True, frozen=True):
    device_id: UUID
    # Shown once; only its hash is stored.
    pairing_code: str
    expires_at: datetime


class PairIn(_Wire, kw_only=True, frozen=True):
    """``POST /v1/kiosk/devices/pair``: the tablet trades the code for its device secret."""

    pairing_code: Annotated[str, Meta(min_length=4, max_length=20)]


class DevicePaired(_Wire, kw_only=True, frozen=True):
    device_id: UUID
    # Shown once; the tablet keeps it and sends it with every PIN sign-in.
    device_secret: str
    location_id: UUID
    location_name: str


class EnrolIn(_Wire, kw_only=True, frozen=True):
    """``POST /v1/kiosk/guests``: enrol the guest at the counter by phone."""

    phone: Annotated[str, Meta(min_length=3, max_length=32)]
    first_name: Annotated[str, Meta(max_length=80)] | None = None
