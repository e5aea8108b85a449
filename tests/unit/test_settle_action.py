"""The settle decision (server/loyalty/model.py: settle_action), for every combination of its
inputs: what Redis does once PostgreSQL has decided a spend that Redis admitted (or not)."""

from __future__ import annotations

import itertools

import pytest

from server.loyalty.model import AdmissionStatus, SettleAction, settle_action

STATUSES: tuple[AdmissionStatus, ...] = (
    "ok", "exists", "insufficient", "skipped", "none", "miss", "overruled",
)  # fmt: skip


def expected(
    status: AdmissionStatus, committed: bool, redis_agrees: bool, answer_lost: bool
) -> SettleAction:
    """The rules as DESIGN §4 states them, one line each (read top to bottom)."""
    table: dict[AdmissionStatus, SettleAction] = {
        "insufficient": "keep",  # Redis refused and PostgreSQL was not asked to hold
        "none": "keep",  # nothing to spend: Redis untouched
        "skipped": "distrust",  # Redis did not answer the reserve: it may be wrong
        "overruled": "distrust",  # Redis refused what the ledger had: it is wrong
        "miss": "reload",  # the wallet was not in Redis: load it
    }
    if status in table:
        return table[status]
    if status == "exists":  # Redis had this transfer already (a retry)
        return "reload" if committed else "keep"
    # "ok": this request reserved in Redis
    if not committed:
        return "forget" if answer_lost else "void_and_reload"
    return "keep" if redis_agrees else "reload"


CASES = list(itertools.product(STATUSES, (False, True), (False, True), (False, True)))


@pytest.mark.parametrize(("status", "committed", "redis_agrees", "answer_lost"), CASES)
def test_settle_action(
    status: AdmissionStatus, committed: bool, redis_agrees: bool, answer_lost: bool
) -> None:
    got = settle_action(
        status, committed=committed, redis_agrees=redis_agrees, answer_lost=answer_lost
    )
    assert got == expected(status, committed, redis_agrees, answer_lost)


def test_every_combination_is_covered() -> None:
    assert len(CASES) == 7 * 2 * 2 * 2


@pytest.mark.parametrize(
    ("status", "committed", "redis_agrees", "answer_lost", "action"),
    [
        # The cases whose mistakes cost the most, spelled out.
        ("ok", False, False, False, "void_and_reload"),  # a refusal undoes its reserve
        ("ok", False, False, True, "forget"),  # a lost answer must not void a late commit
        ("ok", True, True, False, "keep"),  # the common checkout: nothing more to do
        ("ok", True, False, False, "reload"),  # Redis and PostgreSQL disagree
        ("exists", True, True, False, "reload"),  # a retry of a refused spend committed
        ("exists", False, True, False, "keep"),  # a replay: the first request settled
    ],
)
def test_named_cases(
    status: AdmissionStatus,
    committed: bool,
    redis_agrees: bool,
    answer_lost: bool,
    action: SettleAction,
) -> None:
    got = settle_action(
        status, committed=committed, redis_agrees=redis_agrees, answer_lost=answer_lost
    )
    assert got == action
