"""Fakes for the kiosk's session layer: a plain class with KioskApi's methods, no network."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from kiosk.api import ApiProblem, Offline
from kiosk.config import KioskConfig
from kiosk.outbox import Outbox
from kiosk.session import KioskSession
from shared import contract

LOCATION_ID = UUID("0190f0a0-0000-7000-8000-000000000001")
NOW = datetime(2025, 3, 4, 8, 30, tzinfo=UTC)


def make_card(guest_id: UUID | None = None, points: int = 420, **guest: Any) -> contract.GuestCard:
    """A guest card as the scan endpoint returns it for a barista (masked profile)."""
    gid = guest_id or uuid4()
    return contract.GuestCard(
        guest=contract.GuestSummary(
            id=gid,
            display_name=guest.get("display_name", "Ada L."),
            tier=guest.get("tier", "gold"),
            points_to_next_tier=80,
            next_tier="platinum",
            member_since=date(2023, 5, 1),
        ),
        wallet=contract.Wallet(
            points_available=points, points_pending=20, tier="gold", point_value_minor=1
        ),
        usual=[
            contract.UsualItem(item_id=uuid4(), name="Flat white", count=31, price_minor=380),
            contract.UsualItem(item_id=uuid4(), name="Almond croissant", count=12, price_minor=320),
        ],
        habits=contract.Habits(
            usual_weekday="weekdays",
            usual_time="8:00",
            visits_30d=14,
            visits_total=212,
            avg_ticket_minor=690,
            last_visit_at=NOW - timedelta(days=1),
        ),
        offers=[contract.Offer(id="o1", title="Free pastry", reason="10th visit this month")],
    )


def make_order(status: str = "placed", pickup_min: int = 10, **kw: Any) -> contract.Order:
    return contract.Order(
        id=kw.get("id", uuid4()),
        status=status,  # type: ignore[arg-type]
        location_id=kw.get("location_id", LOCATION_ID),
        guest_id=uuid4(),
        currency="EUR",
        subtotal_minor=700,
        discount_minor=0,
        points_spent=0,
        points_value_minor=0,
        amount_due_minor=700,
        points_to_earn=7,
        lines=[
            contract.OrderLine(
                id=uuid4(),
                item_id=uuid4(),
                sku="FW",
                name="Flat white",
                quantity=2,
                unit_price_minor=350,
                gross_minor=700,
                discount_minor=0,
                points_spent=0,
                paid_minor=700,
            )
        ],
        pickup_at=NOW + timedelta(minutes=pickup_min),
        created_at=NOW,
        guest_display_name=kw.get("guest_display_name", "Ada L."),
    )


class FakeApi:
    """Behaves like the server as far as the kiosk can tell: idempotent on keys.

    ``offline`` makes every call raise Offline; ``fail_next`` queues exceptions; ``lose_reply``
    applies the effect but raises Offline (a response lost on the way back).

    Role limits as the server has them (issue 21): ``max_points`` maps an access token to the
    largest accrual it may make alone (points are amount // 100 here); above it, 403
    ``accrual-needs-approval``. ``staff`` maps an email to (PIN, role) for ``pin_tokens``.
    """

    def __init__(self) -> None:
        self.tokens: contract.TokenPair | None = contract.TokenPair(
            access_token="a", refresh_token="r", expires_in=900, role="barista"
        )
        self.offline = False
        self.fail_next: list[BaseException] = []
        self.lose_reply = False
        self.cards: dict[str, contract.GuestCard] = {}
        self.scan_calls: list[tuple[str, datetime | None]] = []
        self.accrue_calls: list[tuple[str, contract.AccrualIn, str]] = []
        self.effects: dict[str, contract.Transfer] = {}  # idempotency key -> transfer
        self.balances: dict[str, int] = {}
        # What an accrual answers about the guest's tier after it (none: an older server).
        self.standing_after_accrual: dict[str, Any] = {}
        self.redemptions: dict[UUID, contract.Transfer] = {}
        self.redemption_calls: list[tuple[str, str]] = []
        self.orders: dict[UUID, contract.Order] = {}
        self.before_accrue: Callable[[str], None] | None = None
        self._seq = itertools.count(1)
        self.max_points: dict[str, int] = {}
        self.staff: dict[str, tuple[str, str]] = {}
        self.accrue_tokens: list[str | None] = []
        self.pin_calls: list[tuple[str, str]] = []
        self.ended_sessions: list[str] = []

    async def pin_tokens(
        self, device_id: str, device_secret: str, email: str, pin: str
    ) -> contract.TokenPair:
        self.pin_calls.append((email, pin))
        self._gate()
        if email not in self.staff or self.staff[email][0] != pin:
            raise ApiProblem(401, "wrong-pin", "the email or the PIN is not right")
        return contract.TokenPair(
            access_token=f"token-{email}",
            refresh_token="r-approver",
            expires_in=900,
            role=self.staff[email][1],
        )

    async def password_tokens(
        self, email: str, password: str, totp: str | None = None
    ) -> contract.TokenPair:
        """Approvers sign in with ``<their PIN>-password`` and, for managers, TOTP ``123456``."""
        self._gate()
        if email not in self.staff or password != f"{self.staff[email][0]}-password":
            raise ApiProblem(401, "invalid-credentials", "wrong email or password")
        role = self.staff[email][1]
        if role == "manager" and totp != "123456":
            raise ApiProblem(401, "wrong-totp", "the authenticator code is not right")
        return contract.TokenPair(
            access_token=f"token-{email}", refresh_token="r-approver", expires_in=900, role=role
        )

    async def end_session(self, access_token: str) -> bool:
        self.ended_sessions.append(access_token)
        return True

    def _over_limit(self, token: str, points: int) -> None:
        limit = self.max_points.get(token)
        if limit is None or points <= limit:
            return
        # As the server lists them: every higher role whose own limits allow it, lowest first.
        roles = ["shift_lead", "manager", "admin"] if points <= 2000 else ["manager", "admin"]
        body = {"limit": "max_points", "approver_roles": roles, "points": points}
        raise ApiProblem(403, "accrual-needs-approval", "over the limit max_points", body)

    def _gate(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)
        if self.offline:
            raise Offline("fake: server down")

    async def health(self) -> bool:
        return not self.offline

    async def aclose(self) -> None:
        pass

    def sign_out(self) -> None:
        self.tokens = None

    async def login_staff(self, email: str, password: str, totp: str | None = None) -> Any:
        self._gate()
        if password != "demo-password":
            raise ApiProblem(401, "invalid-credentials", "wrong email or password")
        self.tokens = contract.TokenPair(access_token="a", refresh_token="r", expires_in=900)
        return self.tokens

    async def locations(self) -> list[contract.Location]:
        self._gate()
        return [
            contract.Location(
                id=LOCATION_ID,
                name="Canal St",
                address="1 Canal St",
                timezone="UTC",
                open_now=True,
                lead_time_min=5,
                slot_minutes=10,
            )
        ]

    async def currency(self, location_id: UUID | str) -> str:
        self._gate()
        return "EUR"

    async def scan(self, code: str, scanned_at: datetime | None = None) -> contract.GuestCard:
        self.scan_calls.append((code, scanned_at))
        self._gate()
        if code not in self.cards:
            raise ApiProblem(404, "guest-not-found", "no guest for this code")
        return self.cards[code]

    async def accrue(
        self,
        guest_id: UUID | str,
        body: contract.AccrualIn,
        idempotency_key: UUID | str,
        access_token: str | None = None,
    ) -> contract.Transfer:
        key = str(idempotency_key)
        if self.before_accrue is not None:
            self.before_accrue(key)
        self.accrue_calls.append((str(guest_id), body, key))
        self.accrue_tokens.append(access_token)
        self._gate()
        token = access_token or (self.tokens.access_token if self.tokens else "")
        if key not in self.effects:  # the server's idempotency table
            self._over_limit(token, body.amount_paid_minor // 100)
            gid = str(guest_id)
            points = body.amount_paid_minor // 100
            self.balances[gid] = self.balances.get(gid, 0) + points
            self.effects[key] = contract.Transfer(
                id=uuid4(),
                guest_id=UUID(gid),
                code="earn",
                points=points,
                state="posted",
                created_at=NOW,
                points_available=self.balances[gid],
                **self.standing_after_accrual,
            )
        if self.lose_reply:
            self.lose_reply = False
            raise Offline("fake: reply lost")
        return self.effects[key]

    async def reserve_redemption(
        self, guest_id: UUID | str, body: contract.RedemptionIn, idempotency_key: UUID | str
    ) -> contract.Transfer:
        self.redemption_calls.append(("reserve", str(idempotency_key)))
        self._gate()
        t = contract.Transfer(
            id=uuid4(),
            guest_id=UUID(str(guest_id)),
            code="redeem",
            points=-body.points,
            state="pending",
            created_at=NOW,
            points_available=400 - body.points,
        )
        self.redemptions[t.id] = t
        return t

    async def post_redemption(self, transfer_id: UUID | str, idempotency_key: UUID | str) -> Any:
        pending = self._resolving("post", transfer_id, idempotency_key)
        return _resolved(pending, pending.points, "posted", pending.points_available)

    async def void_redemption(self, transfer_id: UUID | str, idempotency_key: UUID | str) -> Any:
        pending = self._resolving("void", transfer_id, idempotency_key)
        return _resolved(pending, -pending.points, "voided", 400)

    def _resolving(
        self, op: str, transfer_id: UUID | str, idempotency_key: UUID | str
    ) -> contract.Transfer:
        self.redemption_calls.append((op, str(idempotency_key)))
        self._gate()
        return self.redemptions[UUID(str(transfer_id))]

    async def queue(self, location_id: UUID | str) -> list[contract.Order]:
        self._gate()
        return list(self.orders.values())

    async def set_order_status(
        self, order_id: UUID | str, status: str, idempotency_key: UUID | str
    ) -> contract.Order:
        self._gate()
        import msgspec

        order = msgspec.structs.replace(self.orders[UUID(str(order_id))], status=status)
        self.orders[order.id] = order
        return order

    def live_queue_url(self, location_id: UUID | str) -> str:
        return "ws://127.0.0.1:9/none"

    async def refresh_tokens(self) -> bool:
        return False


class RecordingListener:
    def __init__(self) -> None:
        self.statuses: list[Any] = []
        self.queues: list[tuple[list[Any], list[Any]]] = []
        self.signed_out_notices: list[Any] = []
        self.drains: list[Any] = []

    def status_changed(self, status: Any) -> None:
        self.statuses.append(status)

    def queue_changed(self, rows: list[Any], new_orders: list[Any]) -> None:
        self.queues.append((rows, new_orders))

    def signed_out(self, notice: Any) -> None:
        self.signed_out_notices.append(notice)

    def outbox_drained(self, report: Any) -> None:
        self.drains.append(report)


@pytest.fixture
def fake_api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box  # type: ignore[misc]
    box.close()


@pytest.fixture
def listener() -> RecordingListener:
    return RecordingListener()


@pytest.fixture
def session(
    fake_api: FakeApi, outbox: Outbox, tmp_path: Path, listener: RecordingListener
) -> KioskSession:
    config = KioskConfig(
        data_dir=tmp_path,
        server_url="http://fake",
        location_id=str(LOCATION_ID),
        location_name="Canal St",
        currency="EUR",
    )
    return KioskSession(
        fake_api,  # type: ignore[arg-type]
        outbox,
        config,
        listener=listener,
        save_config=lambda _c: None,
    )


@pytest.fixture
def card_factory() -> Callable[..., contract.GuestCard]:
    return make_card


@pytest.fixture
def order_factory() -> Callable[..., contract.Order]:
    return make_order


def _resolved(pending: contract.Transfer, points: int, state: str, available: int) -> Any:
    """The transfer a post or void of ``pending`` answers with."""
    return contract.Transfer(
        id=uuid4(),
        guest_id=pending.guest_id,
        code="redeem",
        points=points,
        state=state,
        created_at=NOW,
        points_available=available,
    )
