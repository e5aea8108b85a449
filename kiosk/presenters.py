"""Pure view-models: what each screen shows, computed from contract Structs without Kivy.

Screens bind to these and hold no logic of their own, so everything a barista reads (labels,
colours, error wording, which button is offered) is tested here as plain Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Literal
from uuid import UUID

from kiosk.api import ApiProblem
from kiosk.outbox import APPROVAL_SLUG, ApprovalNeed, OutboxEntry
from shared import contract

__all__ = [
    "STATUS_COLOURS",
    "ApprovalView",
    "BannerView",
    "Connection",
    "GuestCardView",
    "Notice",
    "OrderRow",
    "QueueBook",
    "approval_notice",
    "approval_view",
    "approver_refused_notice",
    "approvers_phrase",
    "banner_view",
    "format_minor",
    "guest_card_view",
    "next_status",
    "order_row",
    "parse_amount_minor",
    "parse_points",
    "problem_notice",
    "role_name",
]

Tone = Literal["info", "success", "warning", "error"]
Connection = Literal["online", "offline", "signed-out", "starting"]
RGBA = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Notice:
    """A message for the barista: a short headline and, below it, what to do."""

    tone: Tone
    title: str
    detail: str = ""


# -- errors ----------------------------------------------------------------------------

# Exact slugs first; then keyword rules for slugs the server may name differently.
_BY_SLUG: dict[str, tuple[str, str]] = {
    "insufficient-points": (
        "Not enough points",
        "The guest doesn't have that many points available. Try a smaller amount.",
    ),
    "negative-balance": (
        "Redemptions are paused for this guest",
        "Their balance is below zero after a refund; new purchases repay it first.",
    ),
    "rate-limited": ("Too many attempts", "Wait a few seconds, then try again."),
    "unauthenticated": ("Signed out", "Please sign in again."),
    "invalid-token": ("Signed out", "Your session ended. Please sign in again."),
    "staff-only": ("Staff sign-in needed", "Please sign in with a staff account."),
    "insufficient-role": ("Not allowed for your role", "Ask a shift lead or manager."),
    "idempotency-conflict": (
        "Already being processed",
        "This request is already on its way. Wait a moment before trying again.",
    ),
    "invalid-transition": (
        "Order already moved on",
        "Someone else updated this order. The queue has been refreshed.",
    ),
    "already-resolved": ("Already done", "This redemption was already confirmed or cancelled."),
    # Receipt numbers earn once per brand. After an approval whose answer was lost, another
    # approver's attempt meets the first one's receipt: credited once, as it should be.
    "receipt-already-accrued": (
        "Receipt already credited",
        "This receipt number has already earned points; nothing more was added.",
    ),
}

_BY_KEYWORD: list[tuple[tuple[str, ...], str, str]] = [
    (
        ("expired",),
        "Code expired",
        "Ask the guest to refresh the code in the Regulars app and scan again.",
    ),
    (
        ("forged", "bad-mac", "invalid-signature", "invalid-code", "tampered"),
        "Code not valid",
        "This code wasn't issued by Regulars for this guest. Ask them to open the app again.",
    ),
    (
        ("brand", "foreign"),
        "Code from another brand",
        "This is another café's loyalty code. Ask for the code from our app.",
    ),
    (
        ("future",),
        "Check the clock",
        "The code is from the future. The tablet's clock may be wrong.",
    ),
]


# Only when the request was a lookup: there "not found" and "invalid" are about the code.
_LOOKUP_KEYWORDS: list[tuple[tuple[str, ...], str, str]] = [
    (
        ("not-found", "unknown"),
        "No guest found",
        "No guest matches that code, card number or phone number.",
    ),
    (
        ("malformed", "unrecognised", "unrecognized", "validation", "bad-request"),
        "Not a guest code",
        "That isn't a Regulars QR code, card number or phone number.",
    ),
]


def problem_notice(problem: ApiProblem, lookup: bool = False) -> Notice:
    """Turn a server refusal into words a barista can act on; never empty, never a traceback.

    Known slugs get fixed wording; ``lookup=True`` (a scan or typed code) also reads
    "not found"/"invalid" as being about the code; anything else falls back to ``detail``.
    """
    slug = problem.slug.lower()
    if slug == APPROVAL_SLUG:
        return approval_notice(ApprovalNeed.of(problem), waiting=False)
    if slug in _BY_SLUG:
        title, detail = _BY_SLUG[slug]
        return Notice("error", title, detail)
    rules = _BY_KEYWORD + (_LOOKUP_KEYWORDS if lookup else [])
    for keywords, title, detail in rules:
        if any(k in slug for k in keywords):
            return Notice("error", title, detail)
    if problem.status == 404:
        return Notice("error", "Not found", problem.detail or "The server doesn't know this one.")
    if problem.status >= 500:
        return Notice(
            "error", "Server problem", "Something went wrong on the server. Try again shortly."
        )
    return Notice("error", "Refused by the server", problem.detail or f"HTTP {problem.status}")


# -- accruals that need a higher role ---------------------------------------------------

_ROLE_NAMES = {"shift_lead": "shift lead"}


def role_name(role: str | None) -> str:
    """``shift_lead`` -> ``shift lead``."""
    return _ROLE_NAMES.get(role or "", (role or "staff").replace("_", " "))


_LIMIT_WORDS = {
    "max_points": "More points than one sale may earn without approval.",
    "per_staff_per_hour": "You have made as many accruals this hour as your role may alone.",
    "per_guest_per_day": "This guest has had as many accruals today as your role may give alone.",
}


def approvers_phrase(roles: Iterable[str]) -> str:
    """``["shift_lead", "manager", "admin"]`` -> ``A shift lead or manager``: the two lowest
    roles the server named (everyone above them may approve too; a barista needs the nearest),
    or ``Someone senior`` if it named nobody."""
    names = [role_name(r) for r in roles][:2]
    if not names:
        return "Someone senior"
    article = "An" if names[0][:1].lower() in "aeiou" else "A"
    return f"{article} {' or '.join(names)}"


def _approval_title(need: ApprovalNeed) -> str:
    points = f"{need.points:,} points" if need.points is not None else "this accrual"
    return f"{approvers_phrase(need.approver_roles)} must approve {points}"


@dataclass(frozen=True, slots=True)
class ApprovalView:
    """An accrual waiting for an approver, as the guest screen and the outbox show it."""

    key: str
    guest_id: str | None
    title: str  # "A shift lead or manager must approve 600 points"
    detail: str  # the amount, and which limit it passed
    approver_roles: tuple[str, ...]


def approval_view(entry: OutboxEntry, currency: str = "") -> ApprovalView:
    """Words for an entry waiting for approval: how many points, who may approve, and why."""
    need = entry.approval or ApprovalNeed()
    amount = format_minor(entry.accrual.amount_paid_minor, currency)
    why = _LIMIT_WORDS.get(need.limit, need.detail)
    return ApprovalView(
        key=entry.key,
        guest_id=entry.guest_id,
        title=_approval_title(need),
        detail=f"{amount} paid · {why}" if why else f"{amount} paid",
        approver_roles=tuple(need.approver_roles),
    )


def approval_notice(need: ApprovalNeed, waiting: bool = True) -> Notice:
    """The message when an accrual is refused as over the limits: it waits, nothing is lost."""
    next_step = "Saved on this tablet: tap Approve…, or Cancel accrual." if waiting else ""
    why = _LIMIT_WORDS.get(need.limit, need.detail)
    return Notice("warning", _approval_title(need), " ".join(x for x in (why, next_step) if x))


# What an approver's sign-in refusal means at the counter; the accrual keeps waiting.
_APPROVER_REFUSALS: dict[str, tuple[str, str]] = {
    "wrong-pin": ("Wrong email or PIN", "Check both and try again."),
    "invalid-credentials": ("Wrong email or password", "Check both and try again."),
    "wrong-totp": ("Wrong authenticator code", "Use the current code and try again."),
    "second-factor-required": (
        "This role approves with a password",
        "Use password and authenticator code instead of a PIN.",
    ),
    "device-not-paired": ("Tablet not paired", "Pair it again to approve with a PIN."),
}


def approver_refused_notice(problem: ApiProblem) -> Notice:
    """An approver's sign-in was refused (wrong PIN, slowed down, ...): say why and that the
    accrual is still waiting."""
    title, detail = _APPROVER_REFUSALS.get(problem.slug, ("", ""))
    if not title and problem.status == 429:
        title, detail = "Too many wrong attempts on this tablet", problem.detail
    if not title:
        base = problem_notice(problem)
        title, detail = base.title, base.detail
    detail = detail.strip()
    if detail and detail[-1] not in ".!?":
        detail += "."
    return Notice("error", title, f"{detail} The accrual is still waiting.".strip())


def offline_notice(what: str) -> Notice:
    """The plain statement that ``what`` needs the server, which is unreachable now."""
    return Notice(
        "warning", "Server unreachable", f"{what} needs the server. Try again when online."
    )


# -- money and input -------------------------------------------------------------------

_SYMBOLS = {"EUR": "€", "GBP": "£", "USD": "$", "CHF": "CHF ", "JPY": "¥"}


def format_minor(amount_minor: int, currency: str = "") -> str:
    """``1250, "EUR"`` -> ``€12.50``; no floats are involved."""
    sign = "-" if amount_minor < 0 else ""
    whole, cents = divmod(abs(amount_minor), 100)
    symbol = _SYMBOLS.get(currency.upper(), f"{currency} " if currency else "")
    return f"{sign}{symbol}{whole:,}.{cents:02d}"


def parse_amount_minor(text: str, max_minor: int = 100_000_00) -> int:
    """Read a typed amount (``12``, ``12.5``, ``12,50``) as minor units.

    Refuses (ValueError with a message for the barista) empty, negative, zero, more than two
    decimals, or above ``max_minor``.
    """
    cleaned = text.strip().replace(" ", "").replace(",", ".")
    for symbol in ("€", "£", "$", "¥"):
        cleaned = cleaned.replace(symbol, "")
    if not cleaned:
        raise ValueError("Enter the amount paid.")
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError("The amount should be a number like 4.50.") from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError("The amount must be more than zero.")
    exponent = amount.as_tuple().exponent  # an int: only NaN and infinities have a letter
    if isinstance(exponent, int) and exponent < -2:
        raise ValueError("Use at most two decimals.")
    minor = int(amount * 100)
    if minor > max_minor:
        raise ValueError(f"That is more than {format_minor(max_minor)}; check the amount.")
    return minor


def parse_points(text: str, available: int | None = None) -> int:
    """Read a whole number of points to redeem; refuses zero, negatives, over the balance."""
    cleaned = text.strip()
    if not cleaned.isdigit():
        raise ValueError("Enter whole points, like 100.")
    points = int(cleaned)
    if points <= 0:
        raise ValueError("Points must be more than zero.")
    if available is not None and points > available:
        raise ValueError(f"The guest has {available:,} points available.")
    return points


# -- guest card ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsualButton:
    label: str
    price_minor: int


@dataclass(frozen=True, slots=True)
class GuestCardView:
    guest_id: UUID
    name: str
    tier: str
    points_line: str
    points_available: int
    value_line: str
    next_tier_line: str
    member_line: str
    habit_lines: list[str]
    usual: list[UsualButton]
    usual_total_minor: int
    offers: list[str]
    open_orders: list[str]
    can_redeem: bool


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    days = (now.date() - value.astimezone(UTC).date()).days
    if days <= 0:
        return "today"
    if days == 1:
        return "yesterday"
    return f"{days} days ago"


def guest_card_view(
    card: contract.GuestCard, currency: str = "", now: datetime | None = None
) -> GuestCardView:
    """Everything the scan returned, worded for the counter. Masked data stays masked."""
    now = now or datetime.now(UTC)
    wallet, habits, guest = card.wallet, card.habits, card.guest
    pending = f" ({wallet.points_pending:,} on hold)" if wallet.points_pending else ""
    worth = wallet.points_available * wallet.point_value_minor
    next_tier = guest.next_tier or wallet.next_tier
    to_next = guest.points_to_next_tier or wallet.points_to_next_tier
    next_line = f"{to_next:,} points to {next_tier}" if next_tier and to_next else ""
    member = f"Member since {guest.member_since:%b %Y}" if guest.member_since else ""
    habit_lines = [f"{habits.visits_30d} visits in 30 days · {habits.visits_total} in total"]
    if habits.usual_weekday or habits.usual_time:
        when = " ".join(x for x in (habits.usual_weekday, habits.usual_time) if x)
        habit_lines.append(f"Usually comes {when}")
    if habits.avg_ticket_minor:
        habit_lines.append(f"Average ticket {format_minor(habits.avg_ticket_minor, currency)}")
    habit_lines.append(f"Last visit {_when(habits.last_visit_at, now)}")
    for exp in wallet.expiring[:1]:
        habit_lines.append(f"{exp.points:,} points expire {exp.expires_at:%d %b}")
    usual = [
        UsualButton(f"{u.name}  {format_minor(u.price_minor, currency)}", u.price_minor)
        for u in card.usual
    ]
    open_orders = [
        f"{o.status.replace('_', ' ').title()} · {_order_summary(o)} · pickup {o.pickup_at:%H:%M}"
        for o in card.open_orders
    ]
    return GuestCardView(
        guest_id=guest.id,
        name=guest.display_name,
        tier=guest.tier.title(),
        points_line=f"{wallet.points_available:,} points{pending}",
        points_available=wallet.points_available,
        value_line=f"worth {format_minor(worth, currency)}" if worth else "",
        next_tier_line=next_line,
        member_line=member,
        habit_lines=habit_lines,
        usual=usual,
        usual_total_minor=sum(u.price_minor for u in card.usual),
        offers=[f"{o.title} — {o.reason}" for o in card.offers],
        open_orders=open_orders,
        can_redeem=wallet.points_available > 0,
    )


# -- pre-order queue -------------------------------------------------------------------

_FLOW: dict[str, str] = {
    "placed": "accepted",
    "accepted": "preparing",
    "preparing": "ready",
    "ready": "completed",
}
_ACTION = {
    "accepted": "Accept",
    "preparing": "Start making",
    "ready": "Mark ready",
    "completed": "Handed over",
}
# Colour by status, readable on a white card at arm's length (and not by colour alone:
# every row also prints its status word).
STATUS_COLOURS: dict[str, RGBA] = {
    "placed": (0.96, 0.62, 0.04, 1),  # amber: new, needs someone
    "accepted": (0.15, 0.45, 0.85, 1),  # blue
    "preparing": (0.55, 0.30, 0.80, 1),  # purple
    "ready": (0.13, 0.60, 0.30, 1),  # green: call the guest
    "completed": (0.55, 0.55, 0.55, 1),
    "cancelled": (0.75, 0.20, 0.20, 1),
    "refunded": (0.75, 0.20, 0.20, 1),
    "awaiting_payment": (0.70, 0.70, 0.70, 1),
}
_SHOWN = set(_FLOW)  # placed..ready; completed/cancelled leave the queue


def next_status(status: str) -> str | None:
    """The one status a tap moves an order to, or None at the end of the flow."""
    return _FLOW.get(status)


def _order_summary(order: contract.Order) -> str:
    return ", ".join(f"{line.quantity}× {line.name}" for line in order.lines) or "no items"


@dataclass(frozen=True, slots=True)
class OrderRow:
    order_id: UUID
    title: str
    summary: str
    status_label: str
    colour: RGBA
    action_label: str
    next_status: str | None
    is_new: bool


def order_row(order: contract.Order, is_new: bool = False) -> OrderRow:
    """One queue row: who, what, when, its status colour and the single next action."""
    nxt = next_status(order.status)
    who = order.guest_display_name or "Guest"
    return OrderRow(
        order_id=order.id,
        title=f"{order.pickup_at.astimezone():%H:%M}  {who}",
        summary=_order_summary(order),
        status_label=order.status.replace("_", " ").upper(),
        colour=STATUS_COLOURS.get(order.status, (0.5, 0.5, 0.5, 1)),
        action_label=_ACTION.get(nxt, "") if nxt else "",
        next_status=nxt,
        is_new=is_new,
    )


@dataclass(slots=True)
class QueueBook:
    """The open orders of a location, merged from snapshots and live events.

    Promise: each order appears once, in pickup order, showing its newest status; an order is
    flagged new when it first arrives as ``placed`` after the first snapshot.
    """

    orders: dict[UUID, contract.Order] = field(default_factory=dict)
    unseen: set[UUID] = field(default_factory=set)
    primed: bool = False

    def replace(self, orders: Iterable[contract.Order]) -> list[contract.Order]:
        """Take a full snapshot; returns orders that are new since the last snapshot."""
        fresh = {o.id: o for o in orders if o.status in _SHOWN}
        new = [o for oid, o in fresh.items() if oid not in self.orders and o.status == "placed"]
        self.orders = fresh
        self.unseen &= set(fresh)
        if self.primed:
            self.unseen |= {o.id for o in new}
        else:
            new = []
        self.primed = True
        return new

    def apply(self, order: contract.Order) -> bool:
        """Apply one live event; True if it is a new order to alert on."""
        known = self.orders.get(order.id)
        if known is not None and _rank(known.status) > _rank(order.status):
            return False  # a late event must not move an order backwards
        if order.status not in _SHOWN:
            self.orders.pop(order.id, None)
            self.unseen.discard(order.id)
            return False
        self.orders[order.id] = order
        if known is None and order.status == "placed":
            self.unseen.add(order.id)
            return True
        if order.status != "placed":
            self.unseen.discard(order.id)
        return False

    def rows(self) -> list[OrderRow]:
        """Rows in pickup order (earliest first)."""
        ordered = sorted(self.orders.values(), key=lambda o: (o.pickup_at, str(o.id)))
        return [order_row(o, o.id in self.unseen) for o in ordered]


def _rank(status: str) -> int:
    order = ["awaiting_payment", "placed", "accepted", "preparing", "ready", "completed"]
    return order.index(status) if status in order else len(order)


# -- connection banner -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BannerView:
    text: str
    tone: Tone


def banner_view(
    connection: Connection,
    pending: int,
    rejected: int = 0,
    live: bool = True,
    needs_approval: int = 0,
) -> BannerView:
    """The always-visible strip: online or not, and what is waiting to be sent or approved."""
    waiting = (
        f" · {pending} accrual{'s' if pending != 1 else ''} waiting to send" if pending else ""
    )
    if needs_approval:
        waiting += f" · {needs_approval} need{'s' if needs_approval == 1 else ''} approval"
    stuck = f" · {rejected} refused (see Settings)" if rejected else ""
    if connection == "offline":
        return BannerView(f"Offline — accruals are saved and sent later{waiting}{stuck}", "warning")
    if connection == "signed-out":
        return BannerView(f"Signed out{waiting}{stuck}", "info")
    if connection == "starting":
        return BannerView("Connecting…", "info")
    queue = "" if live else " · live queue reconnecting"
    tone: Tone = "error" if stuck else ("warning" if waiting or queue else "success")
    return BannerView(f"Online{waiting}{queue}{stuck}", tone)
