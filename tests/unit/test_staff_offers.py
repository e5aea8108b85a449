"""Offer rules and staff rules, pure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from server.offers.model import OfferFacts, SimpleOfferRules
from server.staff.model import (
    PAIRING_ALPHABET,
    PAIRING_CODE_LEN,
    needs_totp,
    new_pairing_code,
    normalise_pairing_code,
)
from shared import contract

NOW = datetime(2026, 11, 23, 8, 15, tzinfo=UTC)
LATTE = contract.UsualItem(item_id=uuid.uuid4(), name="Latte", count=9, price_minor=410)


def facts(**overrides: object) -> OfferFacts:
    base: dict[str, object] = {"spendable": 0, "point_value_minor": 1, "local_now": NOW}
    return OfferFacts(**{**base, **overrides})  # type: ignore[arg-type]


def ids(offers: list[contract.Offer]) -> list[str]:
    return [offer.id.split(":")[0] for offer in offers]


def test_points_cover_the_usual() -> None:
    rules = SimpleOfferRules()
    offers = rules.offers_for(facts(spendable=410, usual=[LATTE]))
    assert ids(offers) == ["free-usual"] and offers[0].title == "Redeem a free Latte"
    assert rules.offers_for(facts(spendable=409, usual=[LATTE])) == []
    # A point worth 2 minor units: 205 points buy the latte.
    assert ids(rules.offers_for(facts(spendable=205, point_value_minor=2, usual=[LATTE]))) == [
        "free-usual"
    ]


def test_near_the_next_tier() -> None:
    rules = SimpleOfferRules(near_tier_points=100)
    near = rules.offers_for(facts(next_tier="Silver", points_to_next_tier=40))
    assert near[0].title == "40 points to Silver"
    assert rules.offers_for(facts(next_tier="Silver", points_to_next_tier=400)) == []
    assert rules.offers_for(facts(next_tier=None, points_to_next_tier=None)) == []


def test_lapsed_regular_gets_a_welcome_back() -> None:
    rules = SimpleOfferRules()
    lapsed = facts(visits_total=8, last_visit_at=NOW - timedelta(days=20))
    assert ids(rules.offers_for(lapsed)) == ["welcome-back"]
    assert rules.offers_for(facts(visits_total=2, last_visit_at=NOW - timedelta(days=20))) == []
    assert rules.offers_for(facts(visits_total=8, last_visit_at=NOW - timedelta(days=3))) == []


def test_their_usual_at_their_usual_time_and_at_most_three() -> None:
    rules = SimpleOfferRules()
    now = facts(usual_hour=8, usual=[LATTE])
    assert rules.offers_for(now)[0].title == "Their usual Latte?"
    assert rules.offers_for(facts(usual_hour=15, usual=[LATTE])) == []
    everything = facts(
        spendable=1000,
        usual=[LATTE],
        usual_hour=8,
        next_tier="Gold",
        points_to_next_tier=10,
        visits_total=10,
        last_visit_at=NOW - timedelta(days=30),
    )
    assert ids(rules.offers_for(everything)) == ["free-usual", "next-tier", "welcome-back"]


def test_pairing_codes_and_second_factor() -> None:
    code = new_pairing_code()
    assert len(code) == PAIRING_CODE_LEN and set(code) <= set(PAIRING_ALPHABET)
    assert normalise_pairing_code(" abcd-efgh ") == "ABCDEFGH"
    assert needs_totp("manager", None) and needs_totp("admin", "SECRET")
    assert not needs_totp("barista", None) and needs_totp("barista", "SECRET")
