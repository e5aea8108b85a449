"""The guest card: who is at the counter, their usual, points; accrue and redeem."""

from __future__ import annotations

from kivy.app import App
from kivy.factory import Factory
from kivy.properties import BooleanProperty, ListProperty, NumericProperty, StringProperty
from kivy.uix.screenmanager import Screen

from kiosk.presenters import (
    ApprovalView,
    Notice,
    format_minor,
    parse_amount_minor,
    parse_points,
)
from kiosk.screens._kv import load_kv
from kiosk.session import CurrentGuest, RedemptionHold

__all__ = ["GuestScreen"]

load_kv(__file__)


class GuestScreen(Screen):
    name_text = StringProperty("")
    tier_text = StringProperty("")
    points_text = StringProperty("")
    value_text = StringProperty("")
    details_text = StringProperty("")
    offers_text = StringProperty("")
    orders_text = StringProperty("")
    usual_label = StringProperty("")
    usual_total_minor = NumericProperty(0)
    offline = BooleanProperty(False)
    can_redeem = BooleanProperty(False)
    hold_text = StringProperty("")  # non-empty while a redemption awaits confirmation
    # The guest's oldest accrual waiting for a shift lead or manager, if any.
    approval_key = StringProperty("")
    approval_title = StringProperty("")
    approval_detail = StringProperty("")
    form_error = StringProperty("")
    usual_items = ListProperty([])

    def show_guest(self, current: CurrentGuest) -> None:
        """Render a looked-up card, or the offline placeholder for a code-only guest."""
        self.ids.amount.text = ""
        self.ids.receipt.text = ""
        self.ids.points.text = ""
        self.hold_text = ""
        self.form_error = ""
        self.offline = current.offline
        view = current.view
        if view is None:
            self.name_text = "Guest (offline)"
            self.tier_text = "Not looked up — the server is unreachable"
            self.points_text = "Balance unknown"
            self.value_text = ""
            self.details_text = (
                "Purchases recorded now are saved on this tablet and credited, with the scan "
                "time, when the server is back."
            )
            self.offers_text = ""
            self.orders_text = ""
            self.usual_total_minor = 0
            self.can_redeem = False
            self._set_usual([])
            return
        self.name_text = view.name
        self.tier_text = " · ".join(x for x in (view.tier, view.member_line) if x)
        self.points_text = view.points_line
        self.value_text = " · ".join(x for x in (view.value_line, view.next_tier_line) if x)
        self.details_text = "\n".join(view.habit_lines)
        self.offers_text = "\n".join(f"• {o}" for o in view.offers)
        self.orders_text = "\n".join(f"• {o}" for o in view.open_orders)
        self.usual_total_minor = view.usual_total_minor
        currency = App.get_running_app().session.currency
        self.usual_label = f"Usual order  {format_minor(view.usual_total_minor, currency)}"
        self.can_redeem = view.can_redeem
        self._set_usual([(u.label, u.price_minor) for u in view.usual])

    def _set_usual(self, items: list[tuple[str, int]]) -> None:
        box = self.ids.usual_box
        box.clear_widgets()
        for label, price_minor in items:
            button = Factory.QuietButton(text=label)
            button.bind(on_release=lambda _b, p=price_minor: self.add_to_amount(p))
            box.add_widget(button)

    def add_to_amount(self, price_minor: int) -> None:
        """Add ``price_minor`` to the amount being accrued (taps accumulate)."""
        try:
            current = parse_amount_minor(self.ids.amount.text) if self.ids.amount.text else 0
        except ValueError:
            current = 0
        self.ids.amount.text = format_minor(current + price_minor).replace(",", "")
        self.form_error = ""

    def add_usual(self) -> None:
        self.add_to_amount(int(self.usual_total_minor))

    def submit_accrual(self) -> None:
        try:
            amount_minor = parse_amount_minor(self.ids.amount.text)
        except ValueError as exc:
            self.form_error = str(exc)
            return
        self.form_error = ""
        App.get_running_app().accrue(amount_minor, self.ids.receipt.text)

    def accrual_done(self, notice: Notice, current: CurrentGuest | None) -> None:
        if notice.tone in ("success", "warning"):
            self.ids.amount.text = ""
            self.ids.receipt.text = ""
        if current is not None and current.view is not None:
            self.points_text = current.view.points_line

    def submit_redemption(self) -> None:
        app = App.get_running_app()
        current = app.session.current
        available = current.view.points_available if current and current.view else None
        try:
            points = parse_points(self.ids.points.text, available)
        except ValueError as exc:
            self.form_error = str(exc)
            return
        self.form_error = ""
        app.reserve_redemption(points)

    def show_hold(self, hold: RedemptionHold, current: CurrentGuest | None = None) -> None:
        if current is not None and current.view is not None:
            self.points_text = current.view.points_line
        self.hold_text = (
            f"{hold.points:,} points are on hold for {self.name_text}.\n"
            "Give the reward, then confirm. Cancel gives the points back."
        )

    def hold_finished(
        self, notice: Notice, hold: RedemptionHold | None, current: CurrentGuest | None
    ) -> None:
        if hold is None:  # confirmed, cancelled or refused: the hold is gone
            self.hold_text = ""
            self.ids.points.text = ""
        if current is not None and current.view is not None:
            self.points_text = current.view.points_line
            self.can_redeem = current.view.can_redeem

    def show_approval(self, view: ApprovalView | None, waiting: int = 0) -> None:
        """Show the guest's accrual waiting for approval (and how many more), or nothing."""
        if view is None:
            self.approval_key = self.approval_title = self.approval_detail = ""
            return
        more = f" · {waiting - 1} more waiting" if waiting > 1 else ""
        self.approval_key = view.key
        self.approval_title = view.title
        self.approval_detail = view.detail + more
