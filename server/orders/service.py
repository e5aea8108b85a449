"""Order use cases, one module each: the checkout (checkout.py), an order's lifecycle after it
(lifecycle.py: read, pay, status, cancel, expire) and line refunds (refunds.py). ``Orders``
puts them under the one name that controllers, the checkout lane and the worker depend on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

import asyncpg

from server.catalog.service import Catalog
from server.infra.db import Database
from server.loyalty.service import Loyalty
from server.orders.checkout import Checkout, PlaceOrderStatement
from server.orders.lifecycle import Lifecycle
from server.orders.refunds import RefundedHook, Refunds
from server.orders.views import order_from_rows
from server.settings import Settings

__all__ = ["Orders", "order_from_rows"]


class Orders:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        catalog: Catalog,
        loyalty: Loyalty,
        on_completed: Callable[[asyncpg.Connection, UUID], Awaitable[None]],
        on_refunded: RefundedHook,
        statement: PlaceOrderStatement | None = None,
    ) -> None:
        """``on_completed`` runs in the transaction that completes an order, ``on_refunded``
        in the one that refunds lines of it; ``statement`` is the checkout's writes (a test
        may inject a fake)."""
        self.checkout = Checkout(settings, db, catalog, loyalty, statement)
        self.lifecycle = Lifecycle(db, loyalty, on_completed)
        self.refunds = Refunds(db, loyalty, on_refunded)
        # Bound once: the checkout lane calls place on every request.
        self.place = self.checkout.place
        self.get = self.lifecycle.get
        self.list_for_guest = self.lifecycle.list_for_guest
        self.pay = self.lifecycle.pay
        self.change_status = self.lifecycle.change_status
        self.cancel = self.lifecycle.cancel
        self.expire_unpaid = self.lifecycle.expire_unpaid
        self.refund_lines = self.refunds.refund_lines
