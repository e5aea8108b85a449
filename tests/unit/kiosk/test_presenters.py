"""What the barista reads: error wording, money input, the guest card, queue rows, banner."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kiosk.api import ApiProblem
from kiosk.presenters import (
    STATUS_COLOURS,
    QueueBook,
    banner_view,
    format_minor,
    guest_card_view,
    next_status,
    order_row,
    parse_amount_minor,
    parse_points,
    problem_notice,
)


@pytest.mark.parametrize(
    ("status", "slug", "title"),
    [
        (422, "qr-expired", "Code expired"),
        (422, "code-expired", "Code expired"),
        (422, "qr-forged", "Code not valid"),
        (422, "invalid-code", "Code not valid"),
        (422, "qr-other-brand", "Code from another brand"),
        (404, "guest-not-found", "No guest found"),
        (422, "malformed-code", "Not a guest code"),
        (400, "malformed-json", "Not a guest code"),
        (422, "insufficient-points", "Not enough points"),
        (429, "rate-limited", "Too many attempts"),
        (401, "invalid-token", "Signed out"),
        (403, "insufficient-role", "Not allowed for your role"),
        (500, "internal-error", "Server problem"),
    ],
)
def test_problem_types_map_to_plain_messages(status: int, slug: str, title: str) -> None:
    notice = problem_notice(ApiProblem(status, slug, "server words"), lookup=True)
    assert notice.tone == "error"
    assert notice.title == title
    assert notice.detail  # always says what to do next


def test_outside_a_lookup_validation_errors_keep_the_servers_words() -> None:
    notice = problem_notice(ApiProblem(422, "validation-error", "receipt_ref: too long"))
    assert (notice.title, notice.detail) == ("Refused by the server", "receipt_ref: too long")


def test_unknown_problem_falls_back_to_the_servers_detail() -> None:
    notice = problem_notice(ApiProblem(422, "slot-full", "that pickup slot is full"))
    assert notice.title == "Refused by the server"
    assert notice.detail == "that pickup slot is full"


@pytest.mark.parametrize(
    ("text", "minor"),
    [("4.5", 450), ("4,50", 450), ("€12", 1200), (" 0.99 ", 99), ("1000", 100000)],
)
def test_amounts_are_read_as_minor_units(text: str, minor: int) -> None:
    assert parse_amount_minor(text) == minor


@pytest.mark.parametrize("text", ["", "abc", "-3", "0", "1.234", "nan", "inf", "200000"])
def test_bad_amounts_are_refused_with_a_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_amount_minor(text)


def test_points_are_whole_positive_and_within_the_balance() -> None:
    assert parse_points("100", available=420) == 100
    for bad in ("", "1.5", "-1", "0"):
        with pytest.raises(ValueError):
            parse_points(bad)
    with pytest.raises(ValueError, match="420"):
        parse_points("500", available=420)


def test_money_is_formatted_without_floats() -> None:
    assert format_minor(1250, "EUR") == "€12.50"
    assert format_minor(5, "") == "0.05"
    assert format_minor(-123456, "GBP") == "-£1,234.56"


def test_guest_card_view_shows_what_the_scan_returned(card_factory: Any) -> None:
    view = guest_card_view(card_factory(), "EUR", now=datetime(2025, 3, 4, 9, tzinfo=UTC))
    assert view.name == "Ada L."
    assert view.tier == "Gold"
    assert view.points_line == "420 points (20 on hold)"
    assert view.next_tier_line == "80 points to platinum"
    assert view.member_line == "Member since May 2023"
    assert "14 visits in 30 days · 212 in total" in view.habit_lines
    assert "Usually comes weekdays 8:00" in view.habit_lines
    assert "Last visit yesterday" in view.habit_lines
    assert [u.price_minor for u in view.usual] == [380, 320]
    assert view.usual_total_minor == 700
    assert view.offers == ["Free pastry — 10th visit this month"]
    assert view.can_redeem


def test_queue_rows_offer_the_one_next_step(order_factory: Any) -> None:
    flow = ["placed", "accepted", "preparing", "ready"]
    for status, expected in zip(flow, [*flow[1:], "completed"], strict=True):
        row = order_row(order_factory(status))
        assert row.next_status == expected == next_status(status)
        assert row.action_label
        assert row.colour == STATUS_COLOURS[status]
        assert row.status_label == status.upper()
    assert next_status("completed") is None
    assert "2× Flat white" in order_row(order_factory()).summary


def test_queue_book_flags_new_orders_and_never_moves_backwards(order_factory: Any) -> None:
    book = QueueBook()
    first = order_factory("placed", pickup_min=20)
    assert book.replace([first]) == []  # the first snapshot is not an alert
    late = order_factory("placed", pickup_min=5)
    assert book.apply(late) is True
    assert [r.order_id for r in book.rows()] == [late.id, first.id]  # pickup order
    assert book.rows()[0].is_new

    accepted = order_factory("accepted", id=late.id, pickup_min=5)
    assert book.apply(accepted) is False
    assert book.apply(order_factory("placed", id=late.id, pickup_min=5)) is False  # stale event
    assert book.orders[late.id].status == "accepted"
    assert not book.rows()[0].is_new

    book.apply(order_factory("completed", id=late.id, pickup_min=5))
    assert list(book.orders) == [first.id]  # done orders leave the queue

    newer = order_factory("placed")
    assert book.replace([first, newer]) == [newer]  # a snapshot after reconnect alerts too


def test_banner_says_connection_and_waiting_accruals() -> None:
    assert banner_view("online", 0).text == "Online"
    assert banner_view("online", 0).tone == "success"
    offline = banner_view("offline", 2)
    assert offline.tone == "warning"
    assert "Offline" in offline.text and "2 accruals waiting" in offline.text
    assert "reconnecting" in banner_view("online", 0, live=False).text
    assert banner_view("online", 0, rejected=1).tone == "error"
