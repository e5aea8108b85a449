"""Offer rules for the kiosk's guest card. Pure: facts in, offers out, no I/O.

The rules sit behind :class:`OfferRules` so the Guest 360 work can swap in a smarter engine
(recommendations, campaigns) without touching the scan path: the scan builds
:class:`OfferFacts` from precomputed rows and asks the rules, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from shared import contract

__all__ = ["OfferFacts", "OfferRules", "SimpleOfferRules"]


@dataclass(frozen=True, slots=True)
class OfferFacts:
    """What the scan already knows about the guest; every field comes from precomputed rows."""

    spendable: int
    point_value_minor: int
    # Local time at the counter (the location's timezone).
    local_now: datetime
    usual: list[contract.UsualItem] = field(default_factory=list)
    next_tier: str | None = None
    points_to_next_tier: int | None = None
    visits_total: int = 0
    last_visit_at: datetime | None = None
    usual_hour: int | None = None


class OfferRules(Protocol):
    def offers_for(self, facts: OfferFacts) -> list[contract.Offer]:
        """The offers for this guest, most useful first."""
        ...


class SimpleOfferRules:
    """Four plain rules, each with a reason a barista can say out loud.

    1. the points cover their usual item: "Redeem a free <item>";
    2. close to the next tier: "N points to <tier>";
    3. a lapsed regular (``lapsed_min_visits`` visits, none for ``lapsed_after_days``):
       a welcome back;
    4. it is their usual hour: "Their usual <item>?".
    """

    def __init__(
        self,
        near_tier_points: int = 100,
        lapsed_after_days: int = 14,
        lapsed_min_visits: int = 5,
        max_offers: int = 3,
    ) -> None:
        self.near_tier_points = near_tier_points
        self.lapsed_after = timedelta(days=lapsed_after_days)
        self.lapsed_min_visits = lapsed_min_visits
        self.max_offers = max_offers

    def offers_for(self, facts: OfferFacts) -> list[contract.Offer]:
        offers = [
            offer
            for offer in (
                self._free_usual(facts),
                self._near_tier(facts),
                self._welcome_back(facts),
                self._usual_now(facts),
            )
            if offer is not None
        ]
        return offers[: self.max_offers]

    def _free_usual(self, facts: OfferFacts) -> contract.Offer | None:
        for item in facts.usual:
            if item.price_minor <= 0:
                continue
            needed = -(-item.price_minor // facts.point_value_minor)  # ceil: never a unit short
            if 0 < needed <= facts.spendable:
                return contract.Offer(
                    id=f"free-usual:{item.item_id}",
                    title=f"Redeem a free {item.name}",
                    reason=f"{facts.spendable} points cover their usual {item.name} "
                    f"({needed} points)",
                )
        return None

    def _near_tier(self, facts: OfferFacts) -> contract.Offer | None:
        to_go = facts.points_to_next_tier
        if facts.next_tier is None or to_go is None or not 0 < to_go <= self.near_tier_points:
            return None
        return contract.Offer(
            id=f"next-tier:{facts.next_tier}",
            title=f"{to_go} points to {facts.next_tier}",
            reason=f"One more visit could take them to {facts.next_tier}",
        )

    def _welcome_back(self, facts: OfferFacts) -> contract.Offer | None:
        last = facts.last_visit_at
        if last is None or facts.visits_total < self.lapsed_min_visits:
            return None
        away = facts.local_now - last
        if away < self.lapsed_after:
            return None
        return contract.Offer(
            id="welcome-back",
            title="Welcome them back",
            reason=f"A regular ({facts.visits_total} visits) not seen for {away.days} days",
        )

    def _usual_now(self, facts: OfferFacts) -> contract.Offer | None:
        if facts.usual_hour is None or not facts.usual or facts.local_now.hour != facts.usual_hour:
            return None
        item = facts.usual[0]
        return contract.Offer(
            id=f"usual-now:{item.item_id}",
            title=f"Their usual {item.name}?",
            reason=f"They usually come in around {facts.usual_hour:02d}:00 and order it",
        )
