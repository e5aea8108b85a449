"""The pure rules of POS intake: pricing and earning shares, refund shares, refund matching,
the signature header, sealing of till secrets."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest

from server.infra.problems import Problem
from server.pos.model import (
    SoldLine,
    masked_name,
    match_refund,
    normalise_claim_code,
    price_receipt,
    refund_share,
    returns_of,
    with_points_earned,
)
from server.pos.sealing import Sealer, SealError, new_secret
from server.pos.signing import BodyMac, parse_signature
from shared.pos import ReceiptIn, ReceiptLineIn, ReceiptPaymentIn
from shared.pos_signing import signature as sign


def receipt(*lines: ReceiptLineIn, points_minor: int = 0) -> ReceiptIn:
    payments = (
        [ReceiptPaymentIn(tender="points", amount_minor=points_minor)] if points_minor else []
    )
    return ReceiptIn(
        external_id="R1",
        location_id=uuid4(),
        occurred_at=datetime.now(UTC),
        lines=list(lines),
        payments=payments,
    )


def never(_: ReceiptLineIn) -> bool:
    return False


def test_only_net_paid_money_of_earning_lines_earns() -> None:
    priced = price_receipt(
        receipt(
            ReceiptLineIn(name="A", quantity=Decimal(2), unit_price_minor=300, discount_minor=100),
            ReceiptLineIn(name="Void", unit_price_minor=999, voided=True),
            ReceiptLineIn(name="Gift", unit_price_minor=2500, gift_card=True),
            ReceiptLineIn(name="Excluded", unit_price_minor=400, category="shop"),
            points_minor=100,
        ),
        point_value_minor=1,
        excluded=lambda line: line.category == "shop",
    )
    assert [p.earns for p in priced.lines] == [True, False, False, False]
    # The points tender is shared by the goods it paid for (500 and 400), never the gift card.
    assert [p.points_paid for p in priced.lines] == [56, 0, 0, 44]
    assert priced.earning_paid_minor == 500 - 56
    assert priced.points_tender == 100
    split = with_points_earned(priced, 7)
    assert [p.points_earned for p in split.lines] == [7, 0, 0, 0]


def test_weighed_quantities_round_half_to_even_and_bad_lines_are_refused() -> None:
    priced = price_receipt(
        receipt(ReceiptLineIn(name="Beans", quantity=Decimal("0.125"), unit_price_minor=4004)),
        point_value_minor=1,
        excluded=never,
    )
    assert priced.gross_minor == 500  # 500.5 rounds to even
    for bad in (
        ReceiptLineIn(name="X", quantity=Decimal(0)),
        ReceiptLineIn(name="X", quantity=Decimal(10_001)),
        ReceiptLineIn(name="X", unit_price_minor=5, discount_minor=6),
    ):
        with pytest.raises(Problem) as refused:
            price_receipt(receipt(bad), point_value_minor=1, excluded=never)
        assert refused.value.slug == "invalid-line"


@pytest.mark.parametrize("steps", [[3], [1, 1, 1], [1, 2], [2, 1]])
def test_refunding_a_whole_line_in_any_steps_gives_back_exactly_its_total(steps: list[int]) -> None:
    done, total = Decimal(0), 0
    for step in steps:
        total += refund_share(17, Decimal(3), done, done + step)
        done += step
    assert total == 17


def test_refund_lines_match_by_sku_or_name_and_never_exceed_the_sale() -> None:
    sale = [
        SoldLine(1, "CAP", "Cappuccino", 380, Decimal(2)),
        SoldLine(2, None, "Cake", 450, Decimal(1)),
        SoldLine(3, "CAP", "Cappuccino", 350, Decimal(1)),
    ]
    takes = match_refund(
        [ReceiptLineIn(name="cap", sku="CAP", quantity=Decimal(3), unit_price_minor=350),
         ReceiptLineIn(name=" CAKE ", unit_price_minor=450)],
        sale,
    )  # fmt: skip
    assert [(t.sale_line_no, t.quantity) for t in takes] == [(3, 1), (1, 2), (2, 1)]
    with pytest.raises(Problem) as refused:
        match_refund([ReceiptLineIn(name="Cake", quantity=Decimal(2))], sale)
    assert refused.value.slug == "refund-exceeds-sale"


def test_returns_carry_their_share_of_points_earned_and_paid() -> None:
    sale = [SoldLine(1, "CAP", "Cappuccino", 380, Decimal(3), Decimal(1), 20, 10)]
    returns = returns_of([ReceiptLineIn(name="Cappuccino", sku="CAP", quantity=Decimal(2))], sale)
    # Two of the three, one returned before: 20 * 3/3 - 20 * 1/3 = 20 - 6.
    assert returns.quantities == {1: Decimal(2)}
    assert (returns.points_reversed, returns.points_restored) == (14, 7)


def test_a_line_returned_in_parts_gives_back_exactly_the_money_paid_for_it() -> None:
    # 3 cappuccinos for which 1000 was paid: no part is a whole number of cents.
    line = SoldLine(1, "CAP", "Cappuccino", 380, Decimal(3), paid_minor=1000)
    one = ReceiptLineIn(name="Cappuccino", sku="CAP")
    first = returns_of([one], [line])
    second = returns_of([one], [replace(line, refunded_quantity=Decimal(1))])
    third = returns_of([one], [replace(line, refunded_quantity=Decimal(2))])
    assert [first.paid_minor, second.paid_minor, third.paid_minor] == [333, 333, 334]


def test_names_and_claim_codes() -> None:
    assert masked_name("Anna", "Schmidt") == "Anna S." and masked_name("", "X") == "Guest"
    assert normalise_claim_code("abcd-efgh 23") == "ABCDEFGH23"


def test_signature_header_parsing() -> None:
    header = sign("secret", 1_700_000_000, b"{}")
    parsed = parse_signature(header)
    assert parsed is not None and parsed.timestamp == 1_700_000_000
    mac = BodyMac("secret", 1_700_000_000)
    mac.update(b"{")
    mac.update(b"}")
    assert mac.matches(parsed)
    rotated = parse_signature(f"{header},v1={'0' * 64}")
    assert rotated is not None and mac.matches(rotated)
    for bad in (None, "", "t=1", "v1=" + "0" * 64, "t=x,v1=" + "0" * 64, "t=1,v1=zz"):
        assert parse_signature(bad) is None


def test_sealed_secrets_open_only_with_their_key_and_unaltered() -> None:
    secret = new_secret()
    sealed = Sealer("server key").seal(secret)
    assert secret.encode() not in sealed
    assert Sealer("server key").open(sealed) == secret
    with pytest.raises(SealError):
        Sealer("another key").open(sealed)
    assert sealed[:1] == b"\x02"  # AES-256-GCM
    for at in (0, 1, 20, len(sealed) - 1):  # the version, the nonce, the text, the tag
        altered = bytearray(sealed)
        altered[at] ^= 1
        with pytest.raises(SealError):
            Sealer("server key").open(bytes(altered))
    for cut in (sealed[:1], sealed[:10], sealed[:-1], b""):
        with pytest.raises(SealError):
            Sealer("server key").open(cut)


# Sealed by the hand-made cipher used before AES-GCM (format 1), under "server key": keys made
# then are still in databases and must keep working until they are rotated away.
SEALED_BEFORE = bytes.fromhex(
    "01dc18cfe24be851aadd0b9b627da853552ffd46cd1cb256369e6d1f16536527b9950a2f71f414f8d8"
    "931406d528ef3b1726720037a7d7be17d244b05d590cad4c1ae25b5a1de311"
)


def test_a_secret_sealed_before_aes_gcm_still_opens_and_only_unaltered() -> None:
    assert Sealer("server key").open(SEALED_BEFORE) == "rps_made-before-aes-gcm"
    with pytest.raises(SealError):
        Sealer("another key").open(SEALED_BEFORE)
    altered = bytearray(SEALED_BEFORE)
    altered[20] ^= 1
    with pytest.raises(SealError):
        Sealer("server key").open(bytes(altered))
