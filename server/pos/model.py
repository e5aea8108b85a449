"""Pure rules of receipt intake: pricing a till's receipt, what earns, refund shares, claim
codes. No I/O: the intake service feeds these with what it read.

Money is integer minor units; a line's gross is ``quantity × unit_price_minor`` rounded half to
even (tills sell by weight). DESIGN §3: points are earned on net money paid only: not on the
points tender, discounts, voided lines, gift-card sales or lines of excluded categories.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from server.infra.problems import Problem
from server.loyalty.model import allocate
from shared.pos import ReceiptIn, ReceiptLineIn

__all__ = [
    "CLAIM_ALPHABET",
    "MAX_QUANTITY",
    "PricedLine",
    "Pricing",
    "RefundTake",
    "Returns",
    "SoldLine",
    "masked_name",
    "match_refund",
    "new_claim_code",
    "normalise_claim_code",
    "price_receipt",
    "refund_share",
    "returns_of",
    "with_points_earned",
]

MAX_QUANTITY = Decimal(10_000)
# No 0/O, 1/I/L, U: a code read aloud or typed from paper is hard to get wrong.
CLAIM_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
CLAIM_CODE_CHARS = 10


@dataclass(frozen=True, slots=True)
class PricedLine:
    line_no: int
    line: ReceiptLineIn
    gross_minor: int
    discount_minor: int
    earns: bool
    # The line's share of the points tender, in points and in money.
    points_paid: int
    paid_minor: int
    points_earned: int = 0


@dataclass(frozen=True, slots=True)
class Pricing:
    lines: tuple[PricedLine, ...]
    gross_minor: int
    discount_minor: int
    # Money paid for lines that earn: what points are earned on.
    earning_paid_minor: int
    points_tender: int

    @property
    def earning_weights(self) -> list[int]:
        return [p.paid_minor if p.earns else 0 for p in self.lines]


def _gross(line: ReceiptLineIn) -> int:
    return int((line.quantity * line.unit_price_minor).to_integral_value(ROUND_HALF_EVEN))


def _check_line(index: int, line: ReceiptLineIn, gross: int) -> None:
    if not (0 < line.quantity <= MAX_QUANTITY) or not line.quantity.is_finite():
        raise Problem(
            422,
            "invalid-line",
            f"lines[{index}].quantity must be above 0 and at most {MAX_QUANTITY}",
        )
    if line.discount_minor > gross:
        raise Problem(
            422, "invalid-line", f"lines[{index}].discount_minor is more than the line's price"
        )


def price_receipt(
    receipt: ReceiptIn,
    *,
    point_value_minor: int,
    excluded: Callable[[ReceiptLineIn], bool],
) -> Pricing:
    """Price every line and split the points tender over the lines it paid for.

    Refuses 422 ``invalid-line`` for a quantity outside (0, 10,000] or a discount above the
    line's price. A receipt with no prices prices to zero and earns nothing.
    """
    grosses = []
    for index, line in enumerate(receipt.lines):
        gross = _gross(line) if line.quantity.is_finite() else 0
        _check_line(index, line, gross)
        grosses.append(gross)
    nets = [
        0 if line.voided else gross - line.discount_minor
        for line, gross in zip(receipt.lines, grosses, strict=True)
    ]
    tender_minor = sum(p.amount_minor for p in receipt.payments if p.tender == "points")
    # Points pay for goods, never for a gift card sold on the same receipt.
    weights = [0 if line.gift_card else net for line, net in zip(receipt.lines, nets, strict=True)]
    tender_minor = min(tender_minor, sum(weights))
    money_shares = allocate(tender_minor, weights)
    point_shares = allocate(tender_minor // point_value_minor, weights)
    priced = []
    for index, line in enumerate(receipt.lines):
        paid = nets[index] - money_shares[index]
        earns = not line.voided and not line.gift_card and not excluded(line) and paid > 0
        priced.append(
            PricedLine(
                line_no=index + 1,
                line=line,
                gross_minor=grosses[index],
                discount_minor=line.discount_minor,
                earns=earns,
                points_paid=point_shares[index],
                paid_minor=paid,
            )
        )
    return Pricing(
        lines=tuple(priced),
        gross_minor=sum(grosses),
        discount_minor=sum(line.discount_minor for line in receipt.lines),
        earning_paid_minor=sum(p.paid_minor for p in priced if p.earns),
        points_tender=sum(point_shares),
    )


def with_points_earned(pricing: Pricing, points: int) -> Pricing:
    """The pricing with ``points`` split over the earning lines by the money paid for them
    (exactly: the shares add up to ``points``), so each line knows what to reverse."""
    shares = allocate(points, pricing.earning_weights)
    lines = tuple(replace(p, points_earned=s) for p, s in zip(pricing.lines, shares, strict=True))
    return replace(pricing, lines=lines)


def refund_share(total: int, quantity: Decimal, before: Decimal, after: Decimal) -> int:
    """What returning ``before → after`` of a line's ``quantity`` gives back of its ``total``
    (points earned, or points that paid for it): cumulative rounding down, so returning the
    whole line in any number of refunds gives back exactly ``total``, never a point more."""

    def upto(done: Decimal) -> int:
        return int((total * done / quantity).to_integral_value(ROUND_FLOOR))

    return upto(after) - upto(before)


@dataclass(frozen=True, slots=True)
class SoldLine:
    """A line of the sale a refund returns: what it was, what it earned and what points paid
    for it, and how much of it earlier refunds returned."""

    line_no: int
    sku: str | None
    name: str
    unit_price_minor: int
    quantity: Decimal
    refunded_quantity: Decimal = Decimal(0)
    points_earned: int = 0
    points_paid: int = 0
    # The money paid for the line (net of discounts and of the points that paid for it).
    paid_minor: int = 0

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.refunded_quantity


@dataclass(frozen=True, slots=True)
class RefundTake:
    sale_line_no: int
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class Returns:
    """What a refund returns: quantities by sale line, the points that go with them, and the
    money that had been paid for them."""

    quantities: dict[int, Decimal]
    points_reversed: int
    points_restored: int
    paid_minor: int = 0


def _same_item(refund: ReceiptLineIn, sale: SoldLine) -> bool:
    if refund.sku and sale.sku:
        return refund.sku == sale.sku
    return refund.name.strip().casefold() == sale.name.strip().casefold()


def match_refund(
    refund_lines: Sequence[ReceiptLineIn], sale: Sequence[SoldLine]
) -> list[RefundTake]:
    """Which sale lines (and how much of each) the refund's lines return.

    A returned line matches a sale line of the same SKU (or, without SKUs, the same name),
    preferring the same unit price; it may span several such lines. Refuses 422
    ``refund-exceeds-sale`` when more is returned than is left to return.
    """
    left = {s.line_no: s.remaining for s in sale}
    takes: list[RefundTake] = []
    for index, line in enumerate(refund_lines):
        if line.voided:
            continue
        wanted = line.quantity
        candidates = sorted(
            (s for s in sale if _same_item(line, s)),
            key=lambda s: (s.unit_price_minor != line.unit_price_minor, s.line_no),
        )
        for candidate in candidates:
            take = min(wanted, left[candidate.line_no])
            if take > 0:
                takes.append(RefundTake(candidate.line_no, take))
                left[candidate.line_no] -= take
                wanted -= take
            if wanted == 0:
                break
        if wanted > 0:
            raise Problem(
                422,
                "refund-exceeds-sale",
                f"lines[{index}] returns more of {line.name!r} than the sale has left to return",
            )
    return takes


def returns_of(refund_lines: Sequence[ReceiptLineIn], sale: Sequence[SoldLine]) -> Returns:
    """The refund's returns and their points: each returned part of a line takes back its
    share of what the line earned and gives back its share of the points that paid for it
    (:func:`refund_share`, so a line returned in parts gives back exactly its whole); the
    money paid for what is returned is shared out the same way."""
    by_no = {s.line_no: s for s in sale}
    returned: dict[int, Decimal] = {}
    reversed_points = restored = paid = 0
    for take in match_refund(refund_lines, sale):
        line = by_no[take.sale_line_no]
        before = line.refunded_quantity + returned.get(take.sale_line_no, Decimal(0))
        after = before + take.quantity
        reversed_points += refund_share(line.points_earned, line.quantity, before, after)
        restored += refund_share(line.points_paid, line.quantity, before, after)
        paid += refund_share(line.paid_minor, line.quantity, before, after)
        returned[take.sale_line_no] = after - line.refunded_quantity
    return Returns(returned, reversed_points, restored, paid)


_CLAIM_CODES = len(CLAIM_ALPHABET) ** CLAIM_CODE_CHARS


def new_claim_code() -> str:
    """A code drawn uniformly from every code of the alphabet: one draw from the system's
    randomness (not one per character: a batch makes hundreds at once), written in the
    alphabet's base."""
    number = secrets.randbelow(_CLAIM_CODES)
    chars = []
    for _ in range(CLAIM_CODE_CHARS):
        number, digit = divmod(number, len(CLAIM_ALPHABET))
        chars.append(CLAIM_ALPHABET[digit])
    return "".join(chars)


def normalise_claim_code(code: str) -> str:
    """The code as stored: upper case, without the spaces or dashes people type."""
    return "".join(ch for ch in code.upper() if ch not in " -")


def masked_name(first_name: str, last_name: str) -> str:
    """What a till shows: first name and last initial ("Anna S."), never more."""
    first, last = first_name.strip(), last_name.strip()
    if not first:
        return "Guest"
    return f"{first} {last[0]}." if last else first
