"""Locust user classes: guests (most of the traffic), baristas at the kiosk, POS tills.

Every state-changing request carries an ``Idempotency-Key``: a fresh key per *intended*
operation, and the very same key (and body) when that operation is retried after a timeout,
a 5xx or a 409 ``idempotency-in-progress``: that is what a phone on a flaky network does, and
the server must answer the retry with the first response, never a second order.

Request names are the route templates (``POST /v1/orders``), so the report has one row per
endpoint and the SLO gate can find checkout and kiosk-scan by name.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import time
import urllib.request
from typing import Any, cast

from locust import FastHttpUser, between, events, task
from locust.env import Environment

from loadtests.common import (
    BARISTA_PATHS,
    POS_PATHS,
    Guest,
    SetupData,
    choose_location,
    env_float,
    env_int,
    load_setup,
    new_key,
    order_body,
)
from loadtests.pos_receipts import TillStream
from shared.pos_signing import Signer

__all__ = ["BaristaUser", "GuestUser", "PosUser"]

log = logging.getLogger("loadtests")

CHECKOUT = "POST /v1/orders"
PAY = "POST /v1/orders/{id}/payments"
ORDER_STATUS = "GET /v1/orders/{id}"
SCAN = "POST /v1/kiosk/scan"
POS_RECEIPTS = "/v1/pos/receipts"
POS_RECEIPTS_NAME = "POST /v1/pos/receipts"
RETRYABLE = {0, 409, 429, 502, 503, 504}

WAIT_SCALE = env_float("LOADTEST_WAIT_SCALE", 1.0)  # <1 makes every user busier (smoke tests)
REPLAY_P = env_float("LOADTEST_REPLAY_P", 0.03)  # share of checkouts the phone sends twice
SPREAD_H = env_float("LOADTEST_PICKUP_SPREAD_H", 48.0)  # pickup times over this many hours
POINTS_SHARE_PCT = env_int("LOADTEST_POINTS_SHARE_PCT", 30)  # the brand's cap on points
MAX_ATTEMPTS = env_int("LOADTEST_MAX_ATTEMPTS", 3)


def scaled_between(low: float, high: float) -> Any:
    return between(low * WAIT_SCALE, high * WAIT_SCALE)


class _Shared:
    """Per-process state: the setup file, the location and its menu, a guest dealer."""

    setup: SetupData | None = None
    location: dict[str, Any] | None = None
    items: list[dict[str, Any]] = []
    deal = itertools.count(random.SystemRandom().randrange(1_000_000))

    @classmethod
    def load(cls) -> SetupData:
        if cls.setup is None:
            cls.setup = load_setup()
        return cls.setup

    @classmethod
    def next_guest(cls) -> Guest:
        guests = cls.load().guests
        return guests[next(cls.deal) % len(guests)]


def _problem_type(response: Any) -> str:
    try:
        return str(json.loads(response.text or "{}").get("type", "")).rsplit("/", 1)[-1]
    except (ValueError, AttributeError):
        return ""


class _ApiUser(FastHttpUser):
    abstract = True
    # Keep-alive connections like a real client; no connection reuse across users.
    network_timeout = 10.0
    connection_timeout = 5.0

    def _headers(self, token: str, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def post_once_only(
        self, path: str, body: dict[str, Any], token: str, *, name: str, expect: tuple[int, ...]
    ) -> tuple[Any, str] | None:
        """POST one intended operation, retrying with the *same* key and body.

        Returns the final response and its key (None if every attempt failed). A failed attempt is
        reported as a failure under ``name``; a retry is reported as ``name [retry]``.
        """
        key = new_key()
        for attempt in range(MAX_ATTEMPTS):
            label = name if attempt == 0 else f"{name} [retry]"
            with self.client.post(
                path, json=body, headers=self._headers(token, key), name=label, catch_response=True
            ) as response:
                if response.status_code in expect:
                    response.success()
                    return response, key
                response.failure(f"{response.status_code} {_problem_type(response)}".strip())
                if response.status_code not in RETRYABLE:
                    return None
            time.sleep(min(2.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.5))
        return None


class GuestUser(_ApiUser):
    """A guest with the app: browses, pre-orders (with and without points), pays, polls."""

    weight = 20
    wait_time = scaled_between(2, 8)

    def on_start(self) -> None:
        setup = _Shared.load()
        self.guest = _Shared.next_guest()
        self.rng = random.Random()
        if _Shared.location is None:
            # Locust annotates json() as a dict; /v1/locations answers a list of locations.
            locations = cast(
                "list[dict[str, Any]]",
                self.client.get("/v1/locations", name="GET /v1/locations").json(),
            )
            wanted = setup.location_id or os.environ.get("REGULARS_LOADTEST_LOCATION")
            _Shared.location = choose_location(locations, wanted)
            self._menu()

    def _menu(self) -> None:
        location = _Shared.location
        assert location is not None
        with self.client.get(
            f"/v1/locations/{location['id']}/menu",
            name="GET /v1/locations/{id}/menu",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}")
                return
            menu = response.json()
        items = [it for cat in menu["categories"] for it in cat["items"] if it["available"]]
        if items:
            _Shared.items = items

    @task(5)
    def browse(self) -> None:
        self.client.get("/v1/locations", name="GET /v1/locations")
        self._menu()

    @task(2)
    def wallet(self) -> None:
        self.client.get(
            "/v1/me/wallet", headers=self._headers(self.guest.token), name="GET /v1/me/wallet"
        )

    @task(1)
    def history(self) -> None:
        self.client.get(
            "/v1/me/orders?limit=10",
            headers=self._headers(self.guest.token),
            name="GET /v1/me/orders",
        )

    @task(3)
    def order_paid_with_money(self) -> None:
        self._checkout(with_points=False)

    @task(2)
    def order_with_points(self) -> None:
        self._checkout(with_points=True)

    def _checkout(self, *, with_points: bool) -> None:
        location, items = _Shared.location, _Shared.items
        if location is None or not items:
            return
        body = order_body(
            location,
            items,
            self.rng,
            with_points=with_points,
            spread_h=SPREAD_H,
            max_share_pct=POINTS_SHARE_PCT,
        )
        placed = self.post_once_only(
            "/v1/orders", body, self.guest.token, name=CHECKOUT, expect=(201,)
        )
        if placed is None:
            return
        order = placed[0].json()
        if self.rng.random() < REPLAY_P:
            self._replay(body, placed[1], order["id"])
        if order["status"] == "awaiting_payment":
            paid = self.post_once_only(
                f"/v1/orders/{order['id']}/payments",
                {"provider": "test", "token": "ok"},
                self.guest.token,
                name=PAY,
                expect=(200,),
            )
            if paid is None:
                return
        for _ in range(self.rng.randint(1, 3)):  # the app polls the status screen
            time.sleep(self.rng.uniform(1, 3) * WAIT_SCALE)
            with self.client.get(
                f"/v1/orders/{order['id']}",
                headers=self._headers(self.guest.token),
                name=ORDER_STATUS,
                catch_response=True,
            ) as response:
                if response.status_code != 200:
                    response.failure(f"{response.status_code}")
                elif response.json()["status"] not in (
                    "placed",
                    "accepted",
                    "preparing",
                    "ready",
                    "completed",
                ):
                    response.failure(f"unexpected status {response.json()['status']}")

    def _replay(self, body: dict[str, Any], key: str, order_id: str) -> None:
        """The phone did not see the answer and sends the same request again."""
        with self.client.post(
            "/v1/orders",
            json=body,
            headers=self._headers(self.guest.token, key),
            name=f"{CHECKOUT} [replay]",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(
                    f"replay answered {response.status_code} {_problem_type(response)}"
                )
            elif response.json()["id"] != order_id:
                response.failure("replay created a second order")


class BaristaUser(_ApiUser):
    """A barista at the kiosk: scans a guest's QR code, books points, redeems a reward.

    Disabled (weight 0) while the server lacks the kiosk endpoints."""

    weight = 2
    wait_time = scaled_between(10, 40)

    def on_start(self) -> None:
        setup = _Shared.load()
        self.token = setup.staff.get("barista", "")
        self.location_id = setup.location_id
        self.rng = random.Random()

    @task
    def serve_a_guest(self) -> None:
        from shared import qr

        guest = _Shared.next_guest()
        code = qr.generate(guest.public_id, bytes.fromhex(guest.qr_secret_hex), step_s=60)
        with self.client.post(
            "/v1/kiosk/scan",
            json={"code": code},
            headers=self._headers(self.token),
            name=SCAN,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code} {_problem_type(response)}")
                return
        if self.rng.random() < 0.6:
            self.post_once_only(
                f"/v1/guests/{guest.id}/accruals",
                {
                    "amount_paid_minor": self.rng.randint(250, 1800),
                    "location_id": self.location_id,
                    "receipt_ref": f"lt-{new_key()}",
                },
                self.token,
                name="POST /v1/guests/{id}/accruals",
                expect=(200, 201),
            )
        if self.rng.random() < 0.2:
            held = self.post_once_only(
                f"/v1/guests/{guest.id}/redemptions",
                {"points": self.rng.randint(20, 120), "location_id": self.location_id},
                self.token,
                name="POST /v1/guests/{id}/redemptions",
                expect=(200, 201),
            )
            if held is not None:
                self.post_once_only(
                    f"/v1/redemptions/{held[0].json()['id']}/post",
                    {},
                    self.token,
                    name="POST /v1/redemptions/{id}/post",
                    expect=(200, 201),
                )


class PosUser(_ApiUser):
    """A till streaming receipts, each signed with the real scheme (shared/pos_signing.py):
    sales of 1-4 lines, a third with a guest, a few refunds, late offline resyncs and exact
    replays (loadtests/pos_receipts.py). Disabled while /v1/pos/receipts is missing or no key
    is configured (REGULARS_POS_KEY_ID, REGULARS_POS_SECRET: what `regulars integration
    create` printed as key_id and secret)."""

    weight = 3
    wait_time = scaled_between(1, 6)

    def on_start(self) -> None:
        self.signer = Signer(
            os.environ.get("REGULARS_POS_KEY_ID", ""), os.environ.get("REGULARS_POS_SECRET", "")
        )
        setup = _Shared.load()
        self.stream = TillStream(setup.location_id, setup.guests, random.Random())

    @task
    def receipt(self) -> None:
        sent = self.stream.next()
        # Idempotent on the receipt's external_id: a retry re-sends the same bytes, signed
        # afresh (the server refuses a signature it has seen).
        for attempt in range(MAX_ATTEMPTS):
            with self.client.post(
                POS_RECEIPTS,
                # The exact signed bytes. Locust annotates data as str | dict, but its docstring
                # and the client take bytes as they are.
                data=sent.body,  # type: ignore[arg-type]
                headers=self.signer.headers(sent.body),
                name=POS_RECEIPTS_NAME + (" [retry]" if attempt else ""),
                catch_response=True,
            ) as response:
                if response.status_code in (200, 201):
                    return
                response.failure(f"{response.status_code} {_problem_type(response)} ({sent.kind})")
                if response.status_code not in RETRYABLE:
                    return
            time.sleep(0.2 * 2**attempt)


def _openapi_paths(host: str) -> set[str] | None:
    try:
        with urllib.request.urlopen(host.rstrip("/") + "/schema/openapi.json", timeout=10) as r:
            return set(json.load(r).get("paths", {}))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s/schema/openapi.json (%s); optional users disabled", host, exc)
        return None


def _disable(environment: Environment, user_class: type[_ApiUser], why: str) -> None:
    user_class.weight = 0
    user_class.fixed_count = 0
    environment.user_classes[:] = [u for u in environment.user_classes if u is not user_class]
    log.warning("%s disabled: %s", user_class.__name__, why)


# Locust leaves EventHook.add_listener unannotated; it returns the function unchanged.
@events.init.add_listener  # type: ignore[untyped-decorator]
def _enable_what_exists(environment: Environment, **_: Any) -> None:
    """Drop the user classes whose endpoints the server does not have (yet)."""
    if not environment.host:
        with contextlib.suppress(OSError, ValueError):
            environment.host = load_setup().base_url or None
    if not environment.host:
        return
    paths = _openapi_paths(environment.host) or set()

    def has(wanted: tuple[str, ...]) -> bool:
        # Path parameters may be named differently ({guest_id} vs {id}).
        shapes = {_shape(p) for p in paths}
        return all(_shape(w) in shapes for w in wanted)

    if BaristaUser in environment.user_classes and not has(BARISTA_PATHS):
        _disable(
            environment, BaristaUser, "the server has no kiosk scan/accrual/redemption endpoints"
        )
    if PosUser in environment.user_classes:
        if not has(POS_PATHS):
            _disable(environment, PosUser, "the server has no /v1/pos/receipts")
        elif not os.environ.get("REGULARS_POS_SECRET"):
            _disable(environment, PosUser, "set REGULARS_POS_KEY_ID and REGULARS_POS_SECRET")


def _shape(path: str) -> str:
    return "/".join("{}" if part.startswith("{") else part for part in path.split("/"))
