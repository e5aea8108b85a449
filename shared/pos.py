"""The POS wire contract (DESIGN §10): what a till sends and what it gets back.

Same evolution rules as :mod:`shared.contract`: ``kw_only`` and ``frozen`` Structs, new fields
with defaults, a field never changes type. Money is integer minor units in the brand's
currency; quantities are decimals because tills sell by weight (0.25 kg of beans).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from msgspec import Meta, Struct

__all__ = [
    "BatchLineResult",
    "ClaimIn",
    "ClaimResult",
    "PosGuestLookupIn",
    "PosGuestLookupOut",
    "PosOrderEvent",
    "PosOrderFeed",
    "PosRedemptionIn",
    "ReceiptGuest",
    "ReceiptIn",
    "ReceiptLineIn",
    "ReceiptOut",
    "ReceiptPaymentIn",
    "Tender",
    "WebhookDeadLetter",
]

ExternalId = Annotated[str, Meta(min_length=1, max_length=120)]
Minor = Annotated[int, Meta(ge=0, le=100_000_000_00)]
# msgspec cannot bound a Decimal; the intake refuses quantities <= 0 or > 10,000.
LineQuantity = Decimal
Name = Annotated[str, Meta(min_length=1, max_length=200)]

Tender = Literal["cash", "card", "points", "gift_card", "other"]


class _Wire(Struct, kw_only=True, frozen=True):
    pass


class ReceiptLineIn(_Wire, kw_only=True, frozen=True):
    """One line of a till's receipt. A line with an unknown SKU is kept by its name."""

    name: Name
    quantity: LineQuantity = Decimal(1)
    unit_price_minor: Minor = 0
    # The line's whole discount (line-level and its share of order-level discounts).
    discount_minor: Minor = 0
    # The line's tax, whether included in its price or added on top (vendors do both), kept
    # for analytics; points are earned on the line's price less discounts and the points
    # tender's share, so this field does not change them.
    tax_minor: Minor = 0
    sku: Annotated[str, Meta(max_length=120)] | None = None
    category: Annotated[str, Meta(max_length=120)] | None = None
    voided: bool = False
    # A gift card sold on this line: money in, but not a purchase that earns points.
    gift_card: bool = False


class ReceiptPaymentIn(_Wire, kw_only=True, frozen=True):
    tender: Tender
    amount_minor: Minor


class ReceiptGuest(_Wire, kw_only=True, frozen=True):
    """How the till knew the guest; any one of these may resolve them (DESIGN §11)."""

    qr_code: Annotated[str, Meta(max_length=200)] | None = None
    # When the QR was scanned: an offline till's receipt is judged by this, not by arrival.
    scanned_at: datetime | None = None
    phone: Annotated[str, Meta(max_length=32)] | None = None
    card_number: Annotated[str, Meta(max_length=64)] | None = None
    pos_customer_id: Annotated[str, Meta(max_length=120)] | None = None


class ReceiptIn(_Wire, kw_only=True, frozen=True):
    """``POST /v1/pos/receipts``: one sale (or, with ``refund_of``, one return) at a till."""

    external_id: ExternalId
    location_id: UUID
    occurred_at: datetime
    lines: Annotated[list[ReceiptLineIn], Meta(max_length=500)]
    payments: Annotated[list[ReceiptPaymentIn], Meta(max_length=50)] = []
    # The external_id of the sale this receipt returns lines of.
    refund_of: ExternalId | None = None
    guest: ReceiptGuest | None = None
    # ISO 4217; when given it must be the brand's currency.
    currency: Annotated[str, Meta(pattern="^[A-Z]{3}$")] | None = None


class ReceiptOut(_Wire, kw_only=True, frozen=True):
    receipt_id: UUID
    points_earned: int
    guest_id: UUID | None = None
    points_reversed: int | None = None
    # Printed on an anonymous receipt; the guest claims the points in the app.
    claim_code: str | None = None
    # Points given back to the guest because they had paid for returned lines (a refund).
    points_restored: int | None = None
    # Why the guest the till named was not recognised ('expired', 'forged', 'malformed',
    # 'unknown' for a QR): the receipt was kept anonymous, with a claim code.
    guest_unresolved: str | None = None


class BatchLineResult(_Wire, kw_only=True, frozen=True):
    """One line of the answer to ``POST /v1/pos/receipts:batch`` (1-based ``line``)."""

    line: int
    status: Literal["created", "replayed", "refused"]
    receipt_id: UUID | None = None
    problem: dict[str, object] | None = None


class ClaimIn(_Wire, kw_only=True, frozen=True):
    """``POST /v1/me/claims``: a signed-in guest claims an anonymous receipt's points."""

    code: Annotated[str, Meta(min_length=4, max_length=32)]


class ClaimResult(_Wire, kw_only=True, frozen=True):
    receipt_id: UUID
    points_earned: int


class PosGuestLookupIn(_Wire, kw_only=True, frozen=True):
    """``POST /v1/pos/guests/lookup``: exactly one way of naming the guest."""

    qr_code: Annotated[str, Meta(max_length=200)] | None = None
    phone: Annotated[str, Meta(max_length=32)] | None = None
    card_number: Annotated[str, Meta(max_length=64)] | None = None


class PosGuestLookupOut(_Wire, kw_only=True, frozen=True):
    guest_id: UUID
    # Masked like a barista sees it: first name and last initial.
    display_name: str
    tier: str
    points_available: int
    # The most of the bill points may pay at this brand (max_points_share_pct).
    max_points_share_pct: int


class PosRedemptionIn(_Wire, kw_only=True, frozen=True):
    """``POST /v1/pos/redemptions``: reserve points as a tender; then ``/post`` or ``/void``."""

    guest_id: UUID
    points: Annotated[int, Meta(gt=0, le=1_000_000)]
    # The till's own reference for the sale, kept for reconciliation.
    external_ref: ExternalId | None = None


class PosOrderEvent(_Wire, kw_only=True, frozen=True):
    """A pre-order or its status change, as a till receives it by webhook (the body) or by
    polling ``GET /v1/pos/orders``; ``data`` is the order (:class:`shared.contract.Order`)."""

    type: Literal["order.placed", "order.status"]
    timestamp: datetime
    data: dict[str, Any]
    # The feed position of this event; pass the last one as ``after`` to read on.
    cursor: str | None = None


class PosOrderFeed(_Wire, kw_only=True, frozen=True):
    """``GET /v1/pos/orders?after=<cursor>``: events after ``cursor``, oldest first; ``cursor``
    is where to read on (unchanged when there was nothing new)."""

    events: list[PosOrderEvent]
    cursor: str


class WebhookDeadLetter(_Wire, kw_only=True, frozen=True):
    """A delivery to a till that failed every attempt; an admin may replay it."""

    webhook_id: str
    integration_id: UUID
    type: str
    attempts: int
    last_error: str | None
    created_at: datetime
    payload: dict[str, Any]
