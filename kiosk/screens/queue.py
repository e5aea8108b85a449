"""The pre-order queue: live, coloured by status, one tap moves an order on."""

from __future__ import annotations

from typing import Any

from kivy.animation import Animation
from kivy.app import App
from kivy.properties import BooleanProperty, ColorProperty, ObjectProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.screenmanager import Screen

from kiosk.presenters import OrderRow
from kiosk.screens._kv import load_kv

__all__ = ["OrderRowView", "QueueScreen"]

load_kv(__file__)


class OrderRowView(BoxLayout):
    order_id = ObjectProperty(None)
    title = StringProperty("")
    summary = StringProperty("")
    status_label = StringProperty("")
    colour = ColorProperty((0.5, 0.5, 0.5, 1))
    action_label = StringProperty("")
    is_new = BooleanProperty(False)
    highlight = ColorProperty((1, 1, 1, 0))

    def show(self, row: OrderRow) -> None:
        self.order_id = row.order_id
        self.title = row.title
        self.summary = row.summary
        self.status_label = row.status_label
        self.colour = row.colour
        self.action_label = row.action_label
        if row.is_new and not self.is_new:
            # Pulse a few times so a new order is noticed from across the counter.
            self.highlight = (0.96, 0.62, 0.04, 0.0)
            pulse = Animation(highlight=(0.96, 0.62, 0.04, 0.45), d=0.35) + Animation(
                highlight=(0.96, 0.62, 0.04, 0.12), d=0.35
            )
            pulse.repeat = True
            pulse.start(self)
            self._pulse = pulse
        elif not row.is_new:
            Animation.cancel_all(self, "highlight")
            self.highlight = (1, 1, 1, 0)
        self.is_new = row.is_new

    def advance(self) -> None:
        App.get_running_app().advance_order(self.order_id)


class QueueScreen(Screen):
    live = BooleanProperty(False)
    empty = BooleanProperty(True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._views: dict[Any, OrderRowView] = {}

    def show_live(self, live: bool) -> None:
        self.live = live

    def show_rows(self, rows: list[OrderRow]) -> None:
        """Re-render the list in pickup order, reusing row widgets so pulses continue."""
        box = self.ids.rows
        box.clear_widgets()
        keep: dict[Any, OrderRowView] = {}
        for row in rows:
            view = self._views.get(row.order_id) or OrderRowView()
            view.show(row)
            keep[row.order_id] = view
            box.add_widget(view)
        for gone in set(self._views) - set(keep):
            Animation.cancel_all(self._views[gone])
        self._views = keep
        self.empty = not rows

    def row_for(self, order_id: Any) -> OrderRowView | None:
        return self._views.get(order_id)
