"""The kiosk's behaviour without Kivy: sign-in, scanning, accruals, redemptions, the queue.

Every public coroutine runs on the session's asyncio loop and returns a view-model or a
:class:`~kiosk.presenters.Notice`; none raises for anything a server or network can do, so a
bad code or a dead server becomes a message on screen, never a crash. Background work (health
checks, outbox replay, the live queue) reports through a :class:`SessionListener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

import msgspec

from kiosk.api import ApiProblem, KioskApi, Offline, token_locations
from kiosk.config import KioskConfig
from kiosk.ids import uuid7
from kiosk.live import LiveEvent, LiveQueue
from kiosk.outbox import (
    APPROVAL_SLUG,
    ApprovalNeed,
    ApprovalOutcome,
    DrainReport,
    Outbox,
    OutboxRelay,
)
from kiosk.presenters import (
    ApprovalView,
    BannerView,
    Connection,
    GuestCardView,
    Notice,
    OrderRow,
    QueueBook,
    approval_notice,
    approval_view,
    approver_refused_notice,
    approvers_phrase,
    banner_view,
    format_minor,
    guest_card_view,
    next_status,
    offline_notice,
    problem_notice,
    role_name,
)
from kiosk.settings import KioskSettings
from shared import contract, qr

__all__ = [
    "CurrentGuest",
    "KioskSession",
    "RedemptionHold",
    "SessionListener",
    "SessionStatus",
    "normalise_code",
]

log = logging.getLogger("kiosk.session")
_NOTHING_WAITING = Notice(
    "info", "Nothing waiting", "This accrual was already approved or cancelled."
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class SessionStatus:
    connection: Connection
    live_queue: bool
    pending: int
    rejected: int
    staff: str
    location_name: str
    banner: BannerView
    needs_approval: int = 0


@dataclass(frozen=True, slots=True)
class CurrentGuest:
    """The guest at the counter: a looked-up card, or (offline) only the scanned code."""

    code: str
    scanned_at: datetime
    card: contract.GuestCard | None = None
    view: GuestCardView | None = None

    @property
    def offline(self) -> bool:
        return self.card is None


@dataclass(frozen=True, slots=True)
class RedemptionHold:
    """Points reserved (pending) and awaiting the barista's confirmation."""

    transfer: contract.Transfer
    points: int
    post_key: str = field(default_factory=lambda: str(uuid7()))
    void_key: str = field(default_factory=lambda: str(uuid7()))


class SessionListener(Protocol):
    """What the UI hears from background work (called on the session loop's thread)."""

    def status_changed(self, status: SessionStatus) -> None: ...
    def queue_changed(self, rows: list[OrderRow], new_orders: list[contract.Order]) -> None: ...
    def signed_out(self, notice: Notice) -> None: ...
    def outbox_drained(self, report: DrainReport) -> None: ...


class _NullListener:
    def status_changed(self, status: SessionStatus) -> None:
        pass

    def queue_changed(self, rows: list[OrderRow], new_orders: list[contract.Order]) -> None:
        pass

    def signed_out(self, notice: Notice) -> None:
        pass

    def outbox_drained(self, report: DrainReport) -> None:
        pass


def normalise_code(raw: str, max_length: int = 200) -> str:
    """Trim what a scanner or a finger typed; RG1 QR codes are upper-cased.

    Raises ValueError with a barista-facing message for empty or over-long input.
    """
    code = _CONTROL.sub("", raw).strip()
    if not code:
        raise ValueError("Scan a code or type a card number or phone number.")
    if len(code) > max_length:
        raise ValueError("That is too long to be a guest code.")
    if code.upper().startswith("RG1:"):
        code = code.upper()
    return code


class KioskSession:
    """One kiosk's state and use cases. Use from a single asyncio loop."""

    def __init__(
        self,
        api: KioskApi,
        outbox: Outbox,
        config: KioskConfig,
        settings: KioskSettings | None = None,
        listener: SessionListener | None = None,
        save_config: Callable[[KioskConfig], None] | None = None,
    ) -> None:
        self.api = api
        self.outbox = outbox
        self.config = config
        self.settings = settings or KioskSettings()
        self.listener: SessionListener = listener or _NullListener()
        self._save_config = save_config or (lambda c: c.save())
        self.relay = OutboxRelay(outbox, api, self.settings.outbox_batch_size)
        self.queue = QueueBook()
        self.connection: Connection = "starting"
        self.live_connected = False
        self.staff_email: str | None = None
        self.current: CurrentGuest | None = None
        self.hold: RedemptionHold | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._live_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_drain = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def signed_in(self) -> bool:
        return self.api.tokens is not None

    def status(self) -> SessionStatus:
        """The banner's view of connection, live queue and outbox, right now."""
        counts = self.outbox.counts()
        connection: Connection = self.connection
        if connection == "online" and not self.signed_in:
            connection = "signed-out"
        return SessionStatus(
            connection=connection,
            live_queue=self.live_connected,
            pending=counts.pending,
            rejected=counts.rejected,
            staff=self.staff_email or "",
            location_name=self.config.location_name or "",
            banner=banner_view(
                connection,
                counts.pending,
                counts.rejected,
                live=self.live_connected or not self.signed_in,
                needs_approval=counts.needs_approval,
            ),
            needs_approval=counts.needs_approval,
        )

    def _publish(self) -> None:
        self.listener.status_changed(self.status())

    async def start(self) -> None:
        """Begin health checks and outbox replay in the background."""
        self._tasks.append(asyncio.create_task(self._health_loop(), name="kiosk-health"))
        self._publish()

    async def close(self) -> None:
        """Stop background work and close the HTTP pool (the outbox stays on disk)."""
        tasks = [*self._tasks, *([self._live_task] if self._live_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._live_task = None
        await self.api.aclose()

    def poke(self) -> None:
        """Re-check the server now instead of at the next interval."""
        self._wake.set()

    async def _health_loop(self) -> None:
        while True:
            healthy = await self.api.health()
            self._set_connection("online" if healthy else "offline")
            if healthy and self.signed_in:
                due = time.monotonic() - self._last_drain >= self.settings.outbox_retry_s
                if due and self.outbox.counts().pending:
                    await self.drain_outbox()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.health_interval_s)

    def _set_connection(self, connection: Connection) -> None:
        if connection != self.connection:
            log.info("connection %s -> %s", self.connection, connection)
            was_offline = self.connection == "offline"
            self.connection = connection
            if was_offline and connection == "online":
                self._last_drain = 0.0  # came back: replay now, not at the next retry tick
                self.poke()
        self._publish()

    def _on_offline(self) -> None:
        self._set_connection("offline")

    def _on_problem(self, problem: ApiProblem, lookup: bool = False) -> Notice:
        self._set_connection("online")
        notice = problem_notice(problem, lookup)
        if problem.status == 401:
            self._signed_out(notice)
        return notice

    def _signed_out(self, notice: Notice) -> None:
        self.api.sign_out()
        self._stop_live()
        self.listener.signed_out(notice)
        self._publish()

    # -- sign-in --------------------------------------------------------------------------

    async def pair(self, pairing_code: str) -> Notice:
        """Pair this tablet with a location using a code from the back office."""
        code = pairing_code.strip()
        if not code:
            return Notice("error", "Enter the pairing code", "Find it in the back office.")
        try:
            pairing = await self.api.pair_device(code)
        except Offline:
            self._on_offline()
            return offline_notice("Pairing")
        except ApiProblem as problem:
            return self._on_problem(problem)
        self.config = self.config.with_changes(
            device_id=str(pairing.device_id),
            device_secret=pairing.device_secret,
            location_id=str(pairing.location_id),
            location_name=pairing.location_name or self.config.location_name,
        )
        self._save_config(self.config)
        return Notice("success", "Tablet paired", f"Location: {pairing.location_name}")

    async def sign_in_password(self, email: str, password: str, totp: str | None = None) -> Notice:
        """Staff sign-in with email and password (and TOTP where the role needs it)."""
        if not email.strip() or not password:
            return Notice("error", "Enter email and password")
        try:
            await self.api.login_staff(email.strip(), password, totp or None)
            return await self._after_sign_in(email.strip())
        except Offline:
            self._on_offline()
            return offline_notice("Signing in")
        except ApiProblem as problem:
            return self._sign_in_refused(problem)

    async def sign_in_pin(self, email: str, pin: str) -> Notice:
        """PIN sign-in on a paired tablet."""
        if not self.config.paired:
            return Notice("error", "Tablet not paired", "Pair it first, or use your password.")
        if not email.strip() or not pin.strip().isdigit():
            return Notice("error", "Enter your email and PIN")
        assert self.config.device_id and self.config.device_secret
        try:
            await self.api.login_pin(
                self.config.device_id, self.config.device_secret, email.strip(), pin.strip()
            )
            return await self._after_sign_in(email.strip())
        except Offline:
            self._on_offline()
            return offline_notice("Signing in")
        except ApiProblem as problem:
            return self._sign_in_refused(problem)

    def _sign_in_refused(self, problem: ApiProblem) -> Notice:
        self.api.sign_out()
        self._set_connection("online")
        if problem.status in (401, 403, 422):
            return Notice("error", "Sign-in refused", problem.detail or "Check and try again.")
        return problem_notice(problem)

    async def _after_sign_in(self, email: str) -> Notice:
        self.staff_email = email
        self.config = self.config.with_changes(last_email=email)
        allowed = token_locations(self.api.tokens.access_token) if self.api.tokens else None
        location = self.config.location_id
        if not location or (allowed is not None and location not in allowed):
            # Not paired (or moved): work at the first location this staff member serves
            # until Settings or pairing says otherwise.
            locations = await self.api.locations()
            usable = [loc for loc in locations if allowed is None or str(loc.id) in allowed]
            if not usable:
                self.api.sign_out()
                return Notice("error", "No location", "Your account has no café assigned.")
            self.config = self.config.with_changes(
                location_id=str(usable[0].id), location_name=usable[0].name
            )
        if not self.config.currency and self.config.location_id:
            with contextlib.suppress(ApiProblem, Offline):
                currency = await self.api.currency(self.config.location_id)
                self.config = self.config.with_changes(currency=currency)
        self._save_config(self.config)
        self._set_connection("online")
        self._start_live()
        self.poke()  # replay anything left in the outbox from before
        role = self.api.tokens.role if self.api.tokens else None
        who = f"{email} ({role})" if role else email
        return Notice("success", "Signed in", f"{who} at {self.config.location_name or 'location'}")

    def sign_out(self) -> None:
        """Forget the staff tokens and stop the live queue; the outbox is kept."""
        self.staff_email = None
        self.current = None
        self.hold = None
        self.api.sign_out()
        self._stop_live()
        self._publish()

    async def set_server_url(self, url: str) -> Notice:
        """Switch servers (signs out); the URL is saved for the next start."""
        url = url.strip().rstrip("/")
        if not re.match(r"^https?://[^\s/]+", url):
            return Notice("error", "Not a server address", "Use e.g. http://127.0.0.1:8000")
        self.sign_out()
        await self.api.set_base_url(url)
        self.config = self.config.with_changes(server_url=url)
        self._save_config(self.config)
        self.poke()
        return Notice("success", "Server saved", url)

    # -- scanning and the guest card ------------------------------------------------------

    async def scan(self, raw: str, scanned_at: datetime | None = None) -> CurrentGuest | Notice:
        """Look up whoever the code names. Offline, keep the code so purchases can queue."""
        try:
            code = normalise_code(raw, self.settings.max_code_length)
        except ValueError as exc:
            return Notice("error", "Nothing to look up", str(exc))
        if code.startswith("RG") and ":" in code:
            try:
                qr.parse(code)
            except qr.QrError:
                return Notice(
                    "error", "Damaged code", "Part of the QR code is missing. Scan again."
                )
        scanned_at = scanned_at or datetime.now(UTC)
        self.hold = None
        try:
            card = await self.api.scan(code, scanned_at)
        except Offline:
            self._on_offline()
            self.current = CurrentGuest(code=code, scanned_at=scanned_at)
            return self.current
        except ApiProblem as problem:
            return self._on_problem(problem, lookup=True)
        self._set_connection("online")
        self.current = CurrentGuest(code, scanned_at, card, guest_card_view(card, self.currency))
        return self.current

    @property
    def currency(self) -> str:
        return self.config.currency

    async def accrue(self, amount_minor: int, receipt_ref: str = "") -> Notice:
        """Credit a counter purchase to the current guest via the outbox.

        The entry (and its Idempotency-Key) is on disk before the request; offline, it waits
        and is replayed with the scan time. Refuses when no guest is at the counter.
        """
        current = self.current
        if current is None or not self.config.location_id:
            return Notice("error", "Scan a guest first")
        body = contract.AccrualIn(
            amount_paid_minor=amount_minor,
            location_id=UUID(self.config.location_id),
            receipt_ref=receipt_ref.strip() or f"KIOSK-{uuid7().hex[-12:].upper()}",
            scanned_at=current.scanned_at,
        )
        if current.card is not None:
            entry = self.outbox.add_accrual(body, guest_id=current.card.guest.id)
        else:
            entry = self.outbox.add_accrual(body, code=current.code)
        report = await self.drain_outbox(only_key=entry.key)
        amount = format_minor(amount_minor, self.currency)
        for done, transfer in report.delivered:
            if done.key == entry.key:
                self._update_points(transfer)
                total = (
                    f" · balance {transfer.points_available:,}"
                    if transfer.points_available is not None
                    else ""
                )
                return Notice("success", f"+{transfer.points:,} points", f"for {amount}{total}")
        for done, problem in report.rejected:
            if done.key == entry.key:
                return problem_notice(problem, lookup=done.guest_id is None)
        for done, need in report.needs_approval:
            if done.key == entry.key:
                return approval_notice(need)
        pending = self.outbox.counts().pending
        if report.stopped == "signed-out":
            return Notice("warning", "Saved, not sent", "Sign in again to send it.")
        return Notice(
            "warning",
            "Saved — will be credited when the server is back",
            f"{amount} for {self._who(current)} · {pending} waiting",
        )

    @staticmethod
    def _who(current: CurrentGuest) -> str:
        return current.view.name if current.view else "the scanned guest"

    def _update_points(self, transfer: contract.Transfer) -> None:
        current = self.current
        if current is None or current.card is None or transfer.points_available is None:
            return
        if current.card.guest.id != transfer.guest_id:
            return
        wallet = msgspec.structs.replace(
            current.card.wallet, points_available=transfer.points_available
        )
        card = msgspec.structs.replace(current.card, wallet=wallet)
        if transfer.tier is not None:  # an accrual says where the guest's tier now stands
            standing = {
                "tier": transfer.tier,
                "next_tier": transfer.next_tier,
                "points_to_next_tier": transfer.points_to_next_tier,
            }
            card = msgspec.structs.replace(
                card,
                wallet=msgspec.structs.replace(wallet, **standing),
                guest=msgspec.structs.replace(card.guest, **standing),
            )
        self.current = CurrentGuest(
            current.code, current.scanned_at, card, guest_card_view(card, self.currency)
        )

    async def drain_outbox(self, only_key: str | None = None) -> DrainReport:
        """Replay pending accruals now; reports what was delivered or refused."""
        self._last_drain = time.monotonic()
        report = await self.relay.drain(only_key)
        if report.stopped == "offline":
            self._on_offline()
        elif report.stopped == "signed-out":
            self._signed_out(Notice("warning", "Signed out", "Sign in again to send accruals."))
        elif report.delivered or report.rejected or report.needs_approval:
            self._set_connection("online")
        if only_key is None and (report.delivered or report.rejected or report.needs_approval):
            # Replays of earlier entries; a fresh accrual reports through its own Notice.
            self.listener.outbox_drained(report)
        self._publish()
        return report

    # -- accruals over the barista's limits --------------------------------------------

    def approvals(self, guest_id: UUID | str | None = None) -> list[ApprovalView]:
        """Accruals waiting for an approver, oldest first (only ``guest_id``'s if given)."""
        waiting = self.outbox.entries("needs_approval")
        if guest_id is not None:
            waiting = [e for e in waiting if e.guest_id == str(guest_id)]
        return [approval_view(e, self.currency) for e in waiting]

    async def approve_with_pin(self, key: str, email: str, pin: str) -> Notice:
        """A shift lead or manager approves a waiting accrual with their PIN on this tablet.

        Their sign-in is borrowed for this one accrual and then ended; the barista stays
        signed in. Wrong PIN, a role that may not approve, no server: a message, and the
        entry keeps waiting. See :meth:`OutboxRelay.send_approved` for exactly-once.
        """
        if not self.config.paired:
            return Notice(
                "error", "Tablet not paired", "Approving with a PIN needs a paired tablet."
            )
        email, pin = email.strip(), pin.strip()
        if not email or not pin.isdigit():
            return Notice("error", "Enter the approver's email and PIN")
        assert self.config.device_id and self.config.device_secret
        device_id, secret = self.config.device_id, self.config.device_secret
        return await self._approve(
            key, email, lambda: self.api.pin_tokens(device_id, secret, email, pin)
        )

    async def approve_with_password(
        self, key: str, email: str, password: str, totp: str | None = None
    ) -> Notice:
        """As :meth:`approve_with_pin`, for roles that sign in with a password and an
        authenticator code (managers, admins), or an unpaired tablet."""
        email = email.strip()
        if not email or not password:
            return Notice("error", "Enter the approver's email and password")
        return await self._approve(
            key, email, lambda: self.api.password_tokens(email, password, totp or None)
        )

    async def _approve(
        self, key: str, email: str, sign_in: Callable[[], Awaitable[contract.TokenPair]]
    ) -> Notice:
        entry = self.outbox.get(key)
        if entry is None or entry.state != "needs_approval":
            return _NOTHING_WAITING
        need = entry.approval or ApprovalNeed()
        try:
            tokens = await sign_in()
        except Offline:
            self._on_offline()
            return offline_notice("Approving")
        except ApiProblem as problem:
            self._set_connection("online")
            return approver_refused_notice(problem)
        try:
            if need.approver_roles and tokens.role not in need.approver_roles:
                return Notice(
                    "error",
                    f"A {role_name(tokens.role)} cannot approve this",
                    f"{approvers_phrase(need.approver_roles)} must. The accrual is still waiting.",
                )
            outcome = await self.relay.send_approved(key, tokens.access_token, email)
        except LookupError:  # cancelled or approved elsewhere meanwhile
            return _NOTHING_WAITING
        finally:
            # Borrowed for this one accrual: end the approver's session at once.
            await self.api.end_session(tokens.access_token)
        self._publish()
        return self._approved(outcome, email)

    def _approved(self, outcome: ApprovalOutcome, email: str) -> Notice:
        if outcome.transfer is not None:
            self._set_connection("online")
            self._update_points(outcome.transfer)
            balance = self._balance(outcome.transfer)
            return Notice(
                "success",
                f"+{outcome.transfer.points:,} points",
                " · ".join(x for x in (f"approved by {email}", balance) if x),
            )
        if outcome.offline:
            self._on_offline()
            return Notice(
                "warning",
                "Not sent — server unreachable",
                "The accrual is still waiting; approve it again when online.",
            )
        problem = outcome.problem
        assert problem is not None
        self._set_connection("online")
        if problem.slug == APPROVAL_SLUG and outcome.entry.approval is not None:
            return approval_notice(outcome.entry.approval)  # over the approver's limits too
        notice = problem_notice(problem)
        if outcome.entry.state == "needs_approval":
            return Notice("warning", notice.title, f"{notice.detail} The accrual is still waiting.")
        return Notice("error", notice.title, f"{notice.detail} The accrual was not credited.")

    async def cancel_approval(self, key: str) -> Notice:
        """Drop an accrual waiting for approval; it is kept in the outbox as refused."""
        entry = self.outbox.get(key)
        if entry is None or not self.outbox.cancel(key, "cancelled at the counter, not approved"):
            return _NOTHING_WAITING
        self._publish()
        amount = format_minor(entry.accrual.amount_paid_minor, self.currency)
        return Notice("info", "Accrual cancelled", f"No points were credited for {amount}.")

    async def reserve_redemption(self, points: int) -> RedemptionHold | Notice:
        """Hold ``points`` for the current guest; the barista then confirms or cancels.

        Needs the server: offline, it says so and holds nothing.
        """
        current = self.current
        if current is None or current.card is None or not self.config.location_id:
            if current is not None and current.offline:
                return offline_notice("Redeeming points")
            return Notice("error", "Scan a guest first")
        body = contract.RedemptionIn(points=points, location_id=UUID(self.config.location_id))
        try:
            transfer = await self.api.reserve_redemption(current.card.guest.id, body, uuid7())
        except Offline:
            self._on_offline()
            return offline_notice("Redeeming points")
        except ApiProblem as problem:
            return self._on_problem(problem)
        self._set_connection("online")
        self._update_points(transfer)  # held points are no longer spendable
        self.hold = RedemptionHold(transfer, points)
        return self.hold

    async def confirm_redemption(self) -> Notice:
        """Make the held redemption final (exactly once: retries reuse the same key)."""
        hold = self.hold
        if hold is None:
            return Notice("error", "Nothing to confirm")
        try:
            transfer = await self.api.post_redemption(hold.transfer.id, hold.post_key)
        except Offline:
            self._on_offline()
            return Notice(
                "warning",
                "Not confirmed — server unreachable",
                "Tap Confirm again when online. Unconfirmed holds are released automatically.",
            )
        except ApiProblem as problem:
            self.hold = None
            return self._on_problem(problem)
        self.hold = None
        self._update_points(transfer)
        return Notice("success", f"Redeemed {hold.points:,} points", self._balance(transfer))

    async def cancel_redemption(self) -> Notice:
        """Release the held points back to the guest."""
        hold = self.hold
        if hold is None:
            return Notice("info", "Nothing on hold")
        try:
            transfer = await self.api.void_redemption(hold.transfer.id, hold.void_key)
        except Offline:
            self._on_offline()
            self.hold = None
            return Notice("warning", "Hold not released yet", "It is released automatically.")
        except ApiProblem as problem:
            self.hold = None
            return self._on_problem(problem)
        self.hold = None
        self._update_points(transfer)
        return Notice("info", "Redemption cancelled", self._balance(transfer))

    @staticmethod
    def _balance(transfer: contract.Transfer) -> str:
        if transfer.points_available is None:
            return ""
        return f"Balance {transfer.points_available:,} points"

    # -- pre-order queue ------------------------------------------------------------------

    async def refresh_queue(self) -> Notice | None:
        """Re-read the whole queue (after connecting, or when a tap was refused)."""
        if not self.config.location_id or not self.signed_in:
            return None
        try:
            orders = await self.api.queue(self.config.location_id)
        except Offline:
            self._on_offline()
            return offline_notice("The queue")
        except ApiProblem as problem:
            return self._on_problem(problem)
        new = self.queue.replace(orders)
        self.listener.queue_changed(self.queue.rows(), new)
        return None

    async def advance(self, order_id: UUID) -> Notice | None:
        """Move an order one step on (placed → accepted → preparing → ready → completed)."""
        order = self.queue.orders.get(order_id)
        if order is None:
            return Notice("info", "Order no longer in the queue")
        nxt = next_status(order.status)
        if nxt is None:
            return None
        try:
            updated = await self.api.set_order_status(order_id, nxt, uuid7())
        except Offline:
            self._on_offline()
            return offline_notice("Updating an order")
        except ApiProblem as problem:
            notice = self._on_problem(problem)
            await self.refresh_queue()
            return notice
        self.queue.apply(updated)
        self.listener.queue_changed(self.queue.rows(), [])
        return None

    def _start_live(self) -> None:
        self._stop_live()
        location_id = self.config.location_id
        if not location_id:
            return
        live = LiveQueue(
            url=lambda: self.api.live_queue_url(location_id),
            on_event=self._on_live_event,
            on_connected=self._on_live_connected,
            refresh_auth=self.api.refresh_tokens,
            settings=self.settings,
        )
        self._live_task = asyncio.create_task(live.run(), name="kiosk-live-queue")

    def _stop_live(self) -> None:
        if self._live_task is not None:
            self._live_task.cancel()
            self._live_task = None
        self.live_connected = False

    async def _on_live_connected(self, connected: bool) -> None:
        self.live_connected = connected
        self._publish()
        if connected:
            await self.refresh_queue()  # catch up on whatever happened while disconnected

    async def _on_live_event(self, event: LiveEvent) -> None:
        if self.config.location_id and str(event.order.location_id) != self.config.location_id:
            return
        is_new = self.queue.apply(event.order)
        self.listener.queue_changed(self.queue.rows(), [event.order] if is_new else [])
