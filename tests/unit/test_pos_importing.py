"""Import files of past receipts (server/pos/importing.py): NDJSON and CSV, streamed, with
per-line refusals."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from server.pos.importing import (
    ImportedReceipt,
    ImportFileError,
    RefusedLine,
    parse_column_map,
    parse_import,
)
from shared.pos import ReceiptGuest, ReceiptLineIn, ReceiptPaymentIn

LOCATION = UUID("00000000-0000-4000-8000-00000000000a")
BERLIN = "Europe/Berlin"


def parse(text: str, **options: Any) -> list[ImportedReceipt | RefusedLine]:
    options = {"location_id": LOCATION, "timezone": BERLIN, "currency": "EUR", **options}
    return list(parse_import(io.StringIO(text), **options))


def receipts(results: list[ImportedReceipt | RefusedLine]) -> list[Any]:
    return [r.receipt for r in results if isinstance(r, ImportedReceipt)]


def refusals(results: list[ImportedReceipt | RefusedLine]) -> list[int]:
    return [r.line for r in results if isinstance(r, RefusedLine)]


CSV = """external_id,occurred_at,sku,name,category,quantity,unit_price,discount,tender,guest_phone,guest_card
T-1,2024-03-02 08:21:05,LAT,Latte,coffee,2,4.50,0.50,card,+4915212345678,
T-1,2024-03-02 08:21:05,,Banana bread,,1,3.20,,card,,
T-2,2024-03-02T09:00:00Z,BEANS,House blend,beans,0.25,24.00,,cash,,CARD-77
"""


def test_csv_rows_of_one_external_id_form_one_receipt() -> None:
    first, second = receipts(parse(CSV))
    assert first.external_id == "T-1"
    # No offset: Berlin's local time (UTC+1 in March).
    assert first.occurred_at == datetime(2024, 3, 2, 8, 21, 5, tzinfo=ZoneInfo(BERLIN))
    assert first.occurred_at.astimezone(UTC).hour == 7
    assert first.lines == [
        ReceiptLineIn(
            name="Latte",
            quantity=Decimal(2),
            unit_price_minor=450,
            discount_minor=50,
            sku="LAT",
            category="coffee",
        ),
        ReceiptLineIn(name="Banana bread", quantity=Decimal(1), unit_price_minor=320),
    ]
    assert first.payments == [ReceiptPaymentIn(tender="card", amount_minor=850 + 320)]
    assert first.guest == ReceiptGuest(phone="+4915212345678")
    assert second.occurred_at == datetime(2024, 3, 2, 9, tzinfo=UTC)
    assert second.lines[0].quantity == Decimal("0.25")
    assert second.lines[0].unit_price_minor == 2400
    assert second.payments == [ReceiptPaymentIn(tender="cash", amount_minor=600)]
    assert second.guest == ReceiptGuest(card_number="CARD-77")


def test_csv_needs_only_external_id_a_time_and_a_name() -> None:
    [receipt] = receipts(parse("external_id,date,time,name\nA,2024-03-02,08:21,Espresso\n"))
    assert receipt.occurred_at == datetime(2024, 3, 2, 8, 21, tzinfo=ZoneInfo(BERLIN))
    assert receipt.lines == [ReceiptLineIn(name="Espresso")]  # quantity 1, no price
    assert receipt.payments == []


def test_map_renames_the_files_columns_to_ours() -> None:
    text = "TransactionNo,When,Item,Qty,PriceCents\n77,2024-03-02T08:00:00+00:00,Tea,3,250\n"
    mapping = parse_column_map(
        "external_id=TransactionNo,occurred_at=When,name=Item,quantity=Qty,unit_price_minor=PriceCents"
    )
    [receipt] = receipts(parse(text, column_map=mapping))
    assert (receipt.external_id, receipt.lines[0].quantity) == ("77", Decimal(3))
    assert receipt.lines[0].unit_price_minor == 250


def test_bad_lines_are_reported_with_their_numbers_and_the_rest_proceeds() -> None:
    text = (
        "external_id,occurred_at,name,quantity,unit_price,tender\n"  # line 1
        "A,2024-03-02T08:00:00Z,Latte,1,4.50,card\n"  # 2
        "B,2024-03-02T08:01:00Z,,1,4.50,card\n"  # 3: no name
        "B,2024-03-02T08:01:00Z,Scone,1,2.00,card\n"  # 4: same receipt, refused with it
        "C,2024-03-02T08:02:00Z,Tea,two,2.00,card\n"  # 5: quantity
        "D,2024-03-02T08:03:00Z,Tea,1,2.005,card\n"  # 6: more decimals than EUR
        "E,2024-03-02T08:04:00Z,Tea,1,2.00,bitcoin\n"  # 7: tender
        "F,not a time,Tea,1,2.00,cash\n"  # 8: time
        "\n"  # 9: blank, skipped
        "G,2024-03-02T08:05:00Z,Tea,1,2.00,cash\n"  # 10
    )
    results = parse(text)
    assert [r.external_id for r in receipts(results)] == ["A", "G"]
    assert refusals(results) == [3, 5, 6, 7, 8]
    details = {r.line: r.detail for r in results if isinstance(r, RefusedLine)}
    assert "name" in details[3]
    assert "quantity" in details[5]
    assert "decimals" in details[6]
    assert "tender" in details[7]
    assert "ISO 8601" in details[8]
    assert [r.line for r in results if isinstance(r, ImportedReceipt)] == [2, 10]


def test_rows_of_one_receipt_split_by_another_are_refused_not_merged() -> None:
    text = (
        "external_id,occurred_at,name\n"
        "A,2024-03-02T08:00:00Z,Latte\n"
        "B,2024-03-02T08:01:00Z,Tea\n"
        "A,2024-03-02T08:00:00Z,Scone\n"
    )
    results = parse(text)
    assert [r.external_id for r in receipts(results)] == ["A", "B"]
    [refused] = [r for r in results if isinstance(r, RefusedLine)]
    assert refused.line == 4
    assert "line 2" in refused.detail


def test_a_file_missing_a_required_column_is_refused_whole() -> None:
    with pytest.raises(ImportFileError, match="occurred_at"):
        parse("external_id,name\nA,Latte\n")
    with pytest.raises(ImportFileError, match="no column 'Item'"):
        parse("external_id,occurred_at,name\n", column_map={"name": "Item"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nom=Item", "not one of our columns"),
        ("name", "OURS=THEIRS"),
        ("name=A,name=B", "twice"),
    ],
)
def test_bad_maps_are_refused(text: str, message: str) -> None:
    with pytest.raises(ImportFileError, match=message):
        parse_column_map(text)


def test_ndjson_of_our_receipts_with_per_line_refusals() -> None:
    good = {
        "external_id": "N-1",
        "occurred_at": "2024-03-02T08:00:00Z",
        "lines": [{"name": "Latte", "quantity": 1.5, "unit_price_minor": 450}],
        "payments": [{"tender": "cash", "amount_minor": 675}],
    }
    elsewhere = {**good, "external_id": "N-3", "location_id": str(UUID(int=7))}
    text = "\n".join(
        [
            json.dumps(good),
            "{broken",
            json.dumps(elsewhere),
            "",
            json.dumps({**good, "lines": []}),
            "[1]",
        ]
    )
    results = parse(text)
    receipt, no_lines = receipts(results)
    assert no_lines.lines == []  # kept: a receipt with no lines is the intake's to judge
    assert receipt.location_id == LOCATION
    assert receipt.lines[0].quantity == Decimal("1.5")  # never through a float
    assert refusals(results) == [2, 3, 6]


def test_the_file_is_read_as_a_stream() -> None:
    """The parser pulls lines as it yields receipts: the first receipt is out before the
    source is read past its rows."""
    read: list[int] = []

    def source() -> Iterator[str]:
        yield "external_id,occurred_at,name\n"
        for i in range(1, 1_000_000):
            read.append(i)
            yield f"R{i},2024-03-02T08:00:00Z,Tea\n"

    stream = parse_import(source(), location_id=LOCATION, timezone=BERLIN, currency="EUR")
    first = next(stream)
    assert isinstance(first, ImportedReceipt) and first.receipt.external_id == "R1"
    assert len(read) == 2  # R1's row and the row that ended it


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ImportFileError, match="time zone"):
        parse("external_id,occurred_at,name\n", timezone="Mars/Olympus")
